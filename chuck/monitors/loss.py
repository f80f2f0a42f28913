"""Loss monitor: convergence speed, oscillation, spikes, plateaus, overfitting.

Everything is computed on ``log(loss)``: a factor change in loss is the same
signal whatever the loss's scale, so one threshold serves cross-entropy on 10
classes and MSE on house prices alike. The per-step path appends one float;
fits and percentiles run at decision steps only.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from chuck.monitors.base import Indicator, Monitor, Status, StepRecord, grade, median

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
    def history(self) -> int:
        """How many recent training losses the window holds."""
        return len(self._log_losses)

    def initial_loss(self) -> float:
        """The mean of the first training losses (the run's starting level), ``nan`` before any."""
        return float(np.mean(self._initial)) if self._initial else float("nan")

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
                "loss.log_slope", "loss.noise", "loss.noise_to_progress", "loss.spike",
                "loss.plateau", "loss.log_ratio_initial", "loss.gen_gap", "loss.val_trend",
                "loss.overfit_gl", "loss.has_val",
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
            out["loss.log_ratio_initial"] = math.log(max(self._ema, 1e-30) / max(float(np.mean(self._initial)), 1e-30))
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
        slope, ntp = s["loss.log_slope"], s["loss.noise_to_progress"]
        conv_status: Status = "n/a" if math.isnan(slope) else ("ok" if slope < -0.01 else ("warn" if slope < 0.5 else "bad"))
        inds = [
            Indicator(
                "loss.convergence", slope, conv_status,
                f"log-loss slope {slope:+.3f} per 100 steps" if not math.isnan(slope) else "fewer than 8 losses seen",
                "" if conv_status in ("ok", "n/a") else "loss is not falling: check the learning rate (too low: flat; too high: rising)",
                "log-linear fit over the monitor window",
            ),
            Indicator(
                "loss.oscillation", ntp, grade(ntp, 0.8, 0.95),
                f"noise is {ntp:.0%} of noise+progress over the window" if not math.isnan(ntp) else "not enough data",
                "lower the learning rate or raise the batch size" if grade(ntp, 0.8, 0.95) in ("warn", "bad") else "",
                "rule of thumb: progress should dominate minibatch noise",
            ),
            Indicator(
                "loss.spike", s["loss.spike"],
                grade(s["loss.spike"], math.log(SPIKE_WARN_FACTOR), math.log(SPIKE_BAD_FACTOR)),
                f"latest loss is x{math.exp(s['loss.spike']):.2f} its recent median" if not math.isnan(s["loss.spike"]) else "not enough data",
                "spikes: lower lr or clip gradients" if grade(s["loss.spike"], math.log(SPIKE_WARN_FACTOR), math.log(SPIKE_BAD_FACTOR)) != "ok" else "",
                "PaLM (Chowdhery et al. 2022, sec. 5.1): roll back and skip on loss spikes",
            ),
            Indicator(
                "loss.plateau", s["loss.plateau"], grade(s["loss.plateau"], 0.5, 1.0),
                f"{self._since_improve} steps without a {PLATEAU_REL_IMPROVEMENT:.0%} improvement of the smoothed loss",
                "plateau: try a warm restart (raise lr briefly) or decay it" if grade(s["loss.plateau"], 0.5, 1.0) != "ok" else "",
                "ReduceLROnPlateau-style patience, expressed as a fraction of the window",
            ),
        ]
        gl = s["loss.overfit_gl"]
        st = grade(gl, OVERFIT_GL_WARN, OVERFIT_GL_BAD)
        if st != "n/a" and not (s["loss.val_trend"] > 0 or math.isnan(s["loss.val_trend"])):
            st = "ok" if st == "warn" else st  # val falling again: not (yet) overfitting
        inds.append(
            Indicator(
                "loss.overfitting", gl, st,
                (f"validation loss is {gl:.1%} above its best; gap log(val/train) = {s['loss.gen_gap']:+.2f}")
                if not math.isnan(gl) else "no validation loss observed (call opt.observe(val_loss=...))",
                "more regularization (weight decay, dropout, augmentation) or stop early" if st in ("warn", "bad") else "",
                "Prechelt 1998, generalization-loss criterion GL_2 / GL_5",
            )
        )
        return inds

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
        self._ema = state["ema"]
        self._best_ema = state["best_ema"]
        self._since_improve = state["since_improve"]
        self._steps = state["steps"]
        self._val = deque((tuple(v) for v in state["val"]), maxlen=100)
        self._best_val = state["best_val"]
        self._cache = None
        self._median, self._median_at = state["median"], state["median_at"]
