"""Loss monitor: convergence speed, oscillation, spikes, plateaus, overfitting.

Everything is computed on ``log(loss)``: a factor change in loss is the same
signal whatever the loss's scale, so one threshold serves cross-entropy on 10
classes and MSE on house prices alike. The per-step path appends one float;
fits and percentiles run at decision steps only.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from typing import Any

import numpy as np
import torch

from chuck.core import statecheck as check
from chuck.monitors.base import (
    Indicator,
    LrAdvice,
    Monitor,
    RunPhase,
    Status,
    StepRecord,
    advise,
    grade,
    lr_way,
    median,
    phase_of,
)


def require_scalar_loss(loss: Any) -> None:
    """Refuse anything but one real number: chuck reads the loss that was backpropagated, one number a step.

    Taken: ``None`` (no loss this step), Python and numpy real numbers, and real tensors or arrays
    of one element. Refused, saying what was given: a tensor of more than one element (a per-sample
    loss, ``reduction="none"``: ValueError), text (``"0.5"``, which ``float()`` would read), booleans,
    complex numbers and tensors (TypeError), and a meta tensor, which has a shape but no value
    (ValueError). The same rule as :meth:`ChuckOptimizer.observe` applies to validation losses.
    """
    if loss is None:
        return
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(
                "loss must be a scalar (the loss you backpropagated, e.g. loss.mean()), "
                f"got a tensor of shape {tuple(loss.shape)}"
            )
        if loss.is_complex() or loss.dtype == torch.bool:
            raise TypeError(f"loss must be a real number, got a {loss.dtype} tensor")
        if loss.is_meta:
            raise ValueError(
                "loss must be a number, got a meta tensor (a shape without a value): compute the loss on a real device"
            )
        return
    if isinstance(loss, np.ndarray):
        if loss.size != 1:
            raise ValueError(f"loss must be a scalar (e.g. loss.mean()), got an array of shape {loss.shape}")
        if loss.dtype.kind not in "iuf":
            raise TypeError(f"loss must be a real number, got an array of dtype {loss.dtype}")
        return
    if isinstance(loss, (bool, np.bool_)) or not isinstance(loss, numbers.Real):
        raise TypeError(f"loss must be a number (or a one-element tensor), got {type(loss).__name__} {loss!r:.60}")


#: A step counts as "improving" when the smoothed loss beats its best by this
#: relative margin. ReduceLROnPlateau's default is 1e-4 per *epoch*; per step the
#: smoothed minibatch loss is noisier, so we ask for 1% (a rule of thumb).
PLATEAU_REL_IMPROVEMENT = 0.01

#: Prechelt (1998), "Early Stopping - But When?", generalization loss
#: GL(t) = 100 * (E_val(t) / E_opt(t) - 1). GL > 2 and GL > 5 are two of the
#: stopping criteria studied there; we use them as warn and bad.
OVERFIT_GL_WARN = 0.02
OVERFIT_GL_BAD = 0.05

#: A minibatch loss this many times its recent median is a spike. PaLM
#: (Chowdhery et al. 2022, section 5.1) rolled back ~100 steps before spikes of
#: this kind; 10x is where chuck's guardrail rolls back, 3x only warns.
SPIKE_WARN_FACTOR = 3.0
SPIKE_BAD_FACTOR = 10.0

#: Slope of log(loss) per 100 steps at which a rising training loss is "bad" (act now) rather than
#: "warn": +50% per 100 steps is a run leaving its basin, not minibatch drift (rule of thumb).
CONVERGENCE_RISING_BAD = 0.5

#: Std of log(loss) around its trend above which noise that swamps progress is an oscillation
#: worth a look (x1.65 swings) or worth acting on (x2.7 swings, with no progress at all). Below
#: them a flat, noisy curve is ordinary minibatch noise late in training (rule of thumb).
OSCILLATION_NOISE_WARN = 0.5
OSCILLATION_NOISE_BAD = 1.0

#: log(val / train) from which the generalization gap alone is worth a look, even while the
#: validation loss is at its best: validation twice the training loss (rule of thumb).
GEN_GAP_WARN = math.log(2.0)

#: Slope of log(validation loss) per evaluation (over the last five) below which the validation
#: loss counts as still improving: 0.2% per evaluation, above the jitter of a fixed validation set.
VAL_IMPROVING = -0.002

#: Steps between refreshes of the cached median used by the spike guardrail.
MEDIAN_REFRESH = 8


class LossMonitor(Monitor):
    """Watches the training loss (every step) and the validation loss (when observed).

    Args:
        window: number of recent steps the fits and percentiles look at.
        ema_beta: smoothing of the training loss used for plateau and gap detection.
    """

    name = "loss"

    def __init__(self, window: int = 200, ema_beta: float = 0.95) -> None:
        if window < 8:
            raise ValueError(f"LossMonitor window must be >= 8 steps, got {window}")
        self.window = window
        self.ema_beta = ema_beta
        self._log_losses: deque[float] = deque(maxlen=window)
        self._initial: list[float] = []  # first few losses, the reference for progress
        self._initial_mean = float("nan")  # their mean (asked for every step, changes only with them)
        self._ema: float = float("nan")
        self._best_ema: float = float("inf")
        self._since_improve = 0
        self._steps = 0
        self._val: deque[tuple[int, float, float]] = deque(maxlen=100)  # (step, val, train_ema)
        self._best_val = float("inf")
        self._cache: dict[str, float] | None = None
        self._median: float | None = None
        self._median_at = 0

    # -- per step ---------------------------------------------------------
    def on_step(self, record: StepRecord) -> None:
        if record.loss is not None:
            self.add_loss(record.loss)

    def add_loss(self, loss: float) -> None:
        """Record one finite training loss (non-finite ones never reach here)."""
        self._steps += 1
        self._cache = None
        self._log_losses.append(math.log(max(loss, 1e-30)))
        if len(self._initial) < 5:
            self._initial.append(loss)
            self._initial_mean = _mean(self._initial)
        b = self.ema_beta
        self._ema = loss if math.isnan(self._ema) else b * self._ema + (1 - b) * loss
        if self._ema < self._best_ema * (1 - PLATEAU_REL_IMPROVEMENT):
            self._best_ema = self._ema
            self._since_improve = 0
        else:
            self._since_improve += 1

    def on_validation(self, step: int, val_loss: float) -> None:
        self._cache = None
        self._val.append((step, float(val_loss), self._ema))
        self._best_val = min(self._best_val, float(val_loss))

    def reset_spike_reference(self) -> None:
        """Forget the recent losses (the guardrail's median) after a lasting shift of the loss level."""
        self._log_losses.clear()
        self._median = None
        self._cache = None

    @property
    def best_val_loss(self) -> float:
        """The lowest validation loss of the whole run (``nan`` before any): the evaluations kept for
        the trend are the last 100 only, and the best may be older."""
        return self._best_val if self._val else float("nan")

    @property
    def losses_seen(self) -> int:
        """How many training losses the run has reported so far (0: every step came without one)."""
        return self._steps

    @property
    def history(self) -> int:
        """How many recent training losses the window holds."""
        return len(self._log_losses)

    def initial_loss(self) -> float:
        """The mean of the first training losses (the run's starting level), ``nan`` before any."""
        # kept up to date in add_loss: the guardrail asks every step (np.mean cost ~30 us here)
        return self._initial_mean

    def median_loss(self) -> float:
        """Median of the recent training losses (the spike guardrail's reference).

        Recomputed every ``MEDIAN_REFRESH`` steps: the guardrail asks every step, a
        median over the window moves slowly, and a 10x spike test does not need it fresher.
        """
        if not self._log_losses:
            return float("nan")
        if self._median is None or self._steps - self._median_at >= MEDIAN_REFRESH:
            self._median = math.exp(median(self._log_losses))
            self._median_at = self._steps
        return self._median

    # -- statistics -------------------------------------------------------
    def stats(self) -> dict[str, float]:
        if self._cache is None:
            self._cache = self._compute()
        return dict(self._cache)

    def _compute(self) -> dict[str, float]:
        nan = float("nan")
        out = dict.fromkeys(
            (
                "loss.log_slope",
                "loss.noise",
                "loss.noise_to_progress",
                "loss.spike",
                "loss.plateau",
                "loss.log_ratio_initial",
                "loss.gen_gap",
                "loss.val_trend",
                "loss.overfit_gl",
                "loss.has_val",
            ),
            nan,
        )
        n = len(self._log_losses)
        if n >= 8:
            y = np.fromiter(self._log_losses, float)
            x = np.arange(n, dtype=float) - (n - 1) / 2.0  # centred: closed-form least squares
            slope = float(x @ y / (x @ x))
            resid = y - y.mean() - slope * x
            noise = float(resid.std())
            progress = abs(slope) * n
            out["loss.log_slope"] = float(slope) * 100.0  # per 100 steps
            out["loss.noise"] = noise
            out["loss.noise_to_progress"] = noise / (noise + progress + 1e-12)
            out["loss.spike"] = float(y[-1]) - median(self._log_losses)
            out["loss.plateau"] = self._since_improve / self.window
        if self._initial and not math.isnan(self._ema):
            out["loss.log_ratio_initial"] = math.log(max(self._ema, 1e-30) / max(self.initial_loss(), 1e-30))
        out["loss.has_val"] = 1.0 if self._val else 0.0
        if self._val:
            _, last_val, train_ema = self._val[-1]
            if train_ema > 0 and last_val > 0:
                out["loss.gen_gap"] = math.log(last_val / train_ema)
            out["loss.overfit_gl"] = last_val / self._best_val - 1.0 if self._best_val > 0 else nan
            if len(self._val) >= 3:
                v = np.log(np.maximum([r[1] for r in list(self._val)[-5:]], 1e-30))
                xv = np.arange(len(v), dtype=float) - (len(v) - 1) / 2.0
                out["loss.val_trend"] = float(xv @ v / (xv @ xv))
        return out

    def indicators(self) -> list[Indicator]:
        s = self.stats()
        n = len(self._log_losses)
        val_falling = self._val_falling(s)
        # in a cooldown (or at the end) the lr is being lowered on purpose: a loss that has flattened
        # after falling is the converging run the schedule is for, and lowering the lr is under way
        phase = phase_of(self)
        winding = phase if phase is not None and phase.winding_down else None
        return [
            self._convergence(s, n, val_falling, winding, early=phase is not None and phase.name == "early"),
            self._oscillation(s, val_falling, winding),
            self._spike(s),
            self._plateau(s, n, val_falling, winding),
            self._overfitting(s),
        ]

    def _val_falling(self, s: dict[str, float]) -> bool:
        """The validation loss still improves: falling over the last evaluations and near its best, or
        the latest evaluation is the best so far (a slow late improvement has a flat trend but is no
        reason to act on the training loss's noise)."""
        trend, gl = s["loss.val_trend"], s["loss.overfit_gl"]
        if math.isnan(trend):
            return False
        if trend < VAL_IMPROVING and gl < OVERFIT_GL_WARN:
            return True
        # a new best by a real margin (the plateau test's 1%), not by the jitter of a flat curve
        vals = [v for _, v, _ in self._val]
        return len(vals) > 1 and vals[-1] <= min(vals[:-1]) * (1.0 - PLATEAU_REL_IMPROVEMENT)

    def _convergence(
        self, s: dict[str, float], n: int, val_falling: bool, winding: RunPhase | None = None, early: bool = False
    ) -> Indicator:
        slope, noise = s["loss.log_slope"], s["loss.noise"]
        src = "log-linear fit over the monitor window; a trend counts when it exceeds 2 standard errors"
        if math.isnan(slope):
            return Indicator("loss.convergence", slope, "n/a", f"fewer than 8 losses seen ({n})", "", src)
        # standard error of a least-squares slope, per 100 steps: noise / sqrt(sum x^2), x centred
        se = 100.0 * noise / math.sqrt(max(n * (n * n - 1) / 12.0, 1e-12))
        pct = f"{abs(math.expm1(slope)):.1%} per 100 steps"
        status: Status
        way: LrAdvice = ""
        if slope < -max(2.0 * se, 1e-3):
            status, why, rec = "ok", f"training loss falling {pct}", ""
        elif slope > 2.0 * se and slope > 0.01:
            status = "bad" if slope >= CONVERGENCE_RISING_BAD else "warn"
            why = f"training loss rising {pct} over the last {n} steps"
            rec, way = "the loss climbs: lower the learning rate (or check the data pipeline)", "lower"
        elif val_falling:
            status, rec = "ok", ""
            why = f"training loss flat within its minibatch noise over the last {n} steps, validation loss still falling"
        elif s["loss.log_ratio_initial"] < math.log(0.5):
            status = "warn"
            why = (
                f"training loss flat within its minibatch noise over the last {n} steps, after falling to "
                f"{math.exp(s['loss.log_ratio_initial']):.2g}x its start"
            )
            rec = (
                "converged or stalled: if the validation loss no longer improves, decay the lr or stop"
                if s["loss.has_val"] > 0
                else "converged or stalled: report a validation loss (opt.observe(val_loss=...)) to tell which"
            )
            if winding is not None:
                status, rec = "ok", ""
                why += f": converging while the lr decays {winding.where}, as expected"
        else:
            status = "warn"
            why = f"training loss has not moved from its starting level over the last {n} steps"
            rec = "no progress: check the learning rate (too low: flat; too high: noisy) and the data"
            if early:  # a warm-up, or the first steps of a slow start: too soon to call it no progress
                status, rec = "n/a", ""
                why += ", too early in the run to judge"
        return Indicator("loss.convergence", slope, status, why, rec, src, lr_way(status, way))

    def _oscillation(self, s: dict[str, float], val_falling: bool, winding: RunPhase | None = None) -> Indicator:
        ntp, noise = s["loss.noise_to_progress"], s["loss.noise"]
        src = (
            "rule of thumb: a small trend next to minibatch noise is normal late in training; swings beyond "
            f"+-{math.expm1(OSCILLATION_NOISE_WARN):.0%} (+-{math.expm1(OSCILLATION_NOISE_BAD):.0%}) without progress suggest a too-high lr"
        )
        if math.isnan(ntp):
            return Indicator("loss.oscillation", ntp, "n/a", "fewer than 8 losses seen", "", src)
        swing = f"minibatch losses swing about {math.expm1(noise):.0%} around the trend"
        status: Status = "ok"
        if ntp < 0.8:
            why = f"progress shows through the minibatch noise (noise is {ntp:.0%} of noise+progress, under 80%)"
        elif val_falling:
            why = f"noise is {ntp:.0%} of noise+progress, as expected once the trend flattens; validation loss still falling"
        elif noise < OSCILLATION_NOISE_WARN:
            why = f"noise is {ntp:.0%} of noise+progress but small: {swing}"
        else:
            status = "bad" if noise >= OSCILLATION_NOISE_BAD and ntp >= 0.95 else "warn"
            why = f"the loss jumps without progress: {swing}, noise is {ntp:.0%} of noise+progress"
            if status == "warn" and winding is not None:
                status = "ok"  # the remedy, a lower lr, is under way
                why += f"; the lr is already decaying {winding.where}"
        rec = advise(status, "lower the learning rate or raise the batch size (if the validation loss stalls too)")
        return Indicator("loss.oscillation", ntp, status, why, rec, src, lr_way(status, "lower"))

    def _spike(self, s: dict[str, float]) -> Indicator:
        spike = s["loss.spike"]
        status = grade(spike, math.log(SPIKE_WARN_FACTOR), math.log(SPIKE_BAD_FACTOR))
        return Indicator(
            "loss.spike",
            spike,
            status,
            f"latest loss is x{math.exp(spike):.2f} its recent median" if not math.isnan(spike) else "fewer than 8 losses seen",
            advise(
                status,
                "loss spikes: lower the lr or clip gradients (chuck's guardrails skip a loss far outside the run's recent ones and roll back a repeated one)",
            ),
            "PaLM (Chowdhery et al. 2022, sec. 5.1): roll back and skip on loss spikes",
            lr_way(status, "lower"),
        )

    def _plateau(self, s: dict[str, float], n: int, val_falling: bool, winding: RunPhase | None = None) -> Indicator:
        p = s["loss.plateau"]
        src = "ReduceLROnPlateau-style patience, as a fraction of the window (half: warn, a whole window: bad)"
        if math.isnan(p):
            return Indicator("loss.plateau", p, "n/a", f"fewer than 8 losses seen ({n})", "", src)
        why = f"{self._since_improve} steps without a {PLATEAU_REL_IMPROVEMENT:.0%} improvement of the smoothed training loss"
        status = grade(p, 0.5, 1.0)
        if status != "ok" and val_falling:
            status, why = "ok", why + ", but the validation loss is still falling"
        elif status != "ok" and winding is not None:
            status, why = "ok", why + f": the run is converging while the lr decays {winding.where}, as expected"
        rec = advise(status, "plateau: try a warm restart (raise the lr briefly) or decay it; stop if validation stalls too")
        return Indicator("loss.plateau", p, status, why, rec, src)

    def _overfitting(self, s: dict[str, float]) -> Indicator:
        gl, gap, trend = s["loss.overfit_gl"], s["loss.gen_gap"], s["loss.val_trend"]
        src = (
            f"Prechelt 1998, generalization-loss criterion GL_2 / GL_5; rule of thumb: validation "
            f"{math.exp(GEN_GAP_WARN):.0f}x the training loss"
        )
        if math.isnan(gl):
            return Indicator(
                "loss.overfitting", gl, "n/a", "no validation loss observed (call opt.observe(val_loss=...))", "", src
            )
        status = grade(gl, OVERFIT_GL_WARN, OVERFIT_GL_BAD)
        best_step = next((f"step {st}" for st, v, _ in self._val if v == self._best_val), f"before step {self._val[0][0]}")
        ratio = (
            f"validation loss {math.exp(gap):.2g}x the training loss" if not math.isnan(gap) else "no training loss to compare"
        )
        why = f"validation loss is {gl:.1%} above its best ({best_step}); {ratio}"
        rec = ""
        if status != "ok" and not (trend > 0):
            status, why = "ok", why + ", but falling again"  # not (yet) overfitting
        if status in ("warn", "bad"):
            rec = f"more regularization (weight decay, dropout, augmentation) or stop early (best validation loss at {best_step})"
        elif not math.isnan(gap) and gap >= GEN_GAP_WARN:
            status = "warn"
            why = f"{ratio}, though the validation loss is {'at its best' if gl <= 0 else f'{gl:.1%} above its best'}"
            rec = (
                "the model fits its training data far better than new data: watch for the validation loss "
                "turning up; more regularization (weight decay, dropout, augmentation) may help"
            )
        return Indicator("loss.overfitting", gl, status, why, rec, src)

    # -- checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "log_losses": list(self._log_losses),
            "initial": list(self._initial),
            "ema": self._ema,
            "best_ema": self._best_ema,
            "since_improve": self._since_improve,
            "steps": self._steps,
            "val": [list(v) for v in self._val],
            "best_val": self._best_val,
            "median": self._median,
            "median_at": self._median_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._log_losses = deque(state["log_losses"], maxlen=self.window)
        self._initial = list(state["initial"])
        self._initial_mean = _mean(self._initial)
        self._ema = state["ema"]
        self._best_ema = state["best_ema"]
        self._since_improve = state["since_improve"]
        self._steps = state["steps"]
        self._val = deque((tuple(v) for v in state["val"]), maxlen=100)
        self._best_val = state["best_val"]
        self._cache = None
        self._median, self._median_at = state["median"], state["median_at"]

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        val: Any = state.get("val")
        why = None if isinstance(val, (list, tuple)) else f"val must be a list, got {check.show(val)}"
        for i, record in enumerate(val if why is None else []):  # (step, validation loss, training-loss EMA then)
            if not isinstance(record, (list, tuple)) or len(record) != 3:
                return f"val[{i}] must be (step, validation loss, training loss EMA), got {check.show(record)}"
            why = check.first(
                check.count(f"val[{i}][0]", record[0]),
                check.number(f"val[{i}][1]", record[1]),
                check.number(f"val[{i}][2]", record[2], nan=True),
            )
            if why:
                break
        return check.first(
            why,
            check.numbers_list("log_losses", state.get("log_losses")),
            check.numbers_list("initial", state.get("initial"), max_len=5),
            check.number("ema", state.get("ema"), nan=True),
            check.number("best_ema", state.get("best_ema"), inf=True),
            check.count("since_improve", state.get("since_improve")),
            check.count("steps", state.get("steps")),
            check.number("best_val", state.get("best_val"), inf=True),
            check.optional(check.number, "median", state.get("median"), low=0.0),
            check.count("median_at", state.get("median_at")),
        )


def _mean(values: list[float]) -> float:
    """The mean of a few floats (``math.fsum`` over at most five), ``nan`` when there are none."""
    return math.fsum(values) / len(values) if values else float("nan")
