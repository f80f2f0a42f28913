"""Safe start: a learning-rate range test inside the run's first steps (opt-in).

A run started far above a workable lr is wrecked in its first few updates, before the first
decision can lower anything: Adam's first steps rest on a second-moment estimate of a handful of
gradients (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond"), and a
linear warm-up from a step size two decades too high starts at a tenth of it, still far too high.
The safe start runs Smith's range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", sec. 3.3) on the training run itself:

* **Ramp**: over the first ``steps`` steps (half the policy's warm-up) the lr factor grows
  geometrically from ``start`` (1e-3) of the lr, and follows the policy's linear warm-up wherever that
  is lower (from about step 8 of 20 on), so that by the first decision a start that is fine, or one
  decade too high, has had the warm-up it has today, and one two or three decades too high began
  with steps that work.
* **Blow-up test**, after every step until the warm-up is over plus ``window`` steps (a blow-up shows
  in the loss a step or two after the update that caused it), on the run's own losses: a non-finite
  loss or gradient norm; or the median of the last ``window`` losses risen above the lowest such median
  by more than ``rise`` times that median's magnitude (2x for a positive loss), or by more than
  ``regress`` of the progress the ramp made (the first median less the lowest; at the start: any rise),
  and in either case by more than ``noise`` robust standard deviations of the loss's step-to-step
  noise. Medians, and the noise floor, so that noisy minibatches (a loss swinging 2x from batch to
  batch while the weights barely move) do not stop the ramp.
* **At a blow-up** the ramp stops for good: the weights, their optimizer state and the model's buffers
  go back to the state where the lowest median was reached (the update that was about to run on the
  blown-up weights is skipped), the warm-up ends, and the lr multiplier settles at ``settle`` of the
  warm-up factor of the first update after that state, where the blow-up began. The policy takes over
  from there at its next decision. A warm-up that ends without a blow-up leaves the multiplier as it was.

Like the guardrails, the safe start decides and the optimizer carries out (restore, move the multiplier
through ``ActionSpec``). It is off unless asked for: ``ChuckOptimizer(..., safe_start=True)``, or a
policy whose ``safe_start`` attribute is ``True``. ``experiments/safe_start.py`` measures it
(docs/results/safe_start/).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

import torch

from chuck.core import statecheck as check
from chuck.core.guardrails import _snapshot_problem
from chuck.core.restart import robust_noise
from chuck.core.snapshot import Snapshot


@dataclass
class SafeStartConfig:
    """Safe-start settings (see the module docstring).

    Attributes:
        start: the ramp's first lr factor (of the user's lr times chuck's multiplier).
        steps: length of the geometric ramp in steps; ``None``: half the policy's warm-up (without one, half
            its decision interval, and the ramp is the whole warm-up).
        watch: steps over which the blow-up test runs; ``None``: the whole warm-up plus ``window``.
        window: losses per median in the blow-up test.
        rise: a blow-up: the recent median exceeds the lowest median seen by this multiple of its magnitude.
        regress: ... or has given back this share of the ramp's progress (the first median less the lowest);
            at the start, with no progress yet, any rise beyond the noise.
        noise: ... and in either case by this many standard deviations of the loss's step-to-step noise.
        settle: after a blow-up the multiplier is this fraction of the warm-up factor where it began.
    """

    start: float = 1e-3
    steps: int | None = None
    watch: int | None = None
    window: int = 5
    rise: float = 1.0
    regress: float = 0.5
    noise: float = 3.0
    settle: float = 0.25

    def __post_init__(self) -> None:
        for name in ("start", "rise", "regress", "noise", "settle"):
            why = check.number(name, getattr(self, name), low=0.0)
            if why:
                raise ValueError(f"SafeStartConfig.{why}")
        if not (0 < self.start < 1) or not (0 < self.settle <= 1) or self.rise <= 0 or self.regress <= 0:
            raise ValueError("SafeStartConfig needs 0 < start < 1, 0 < settle <= 1, rise > 0 and regress > 0")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"SafeStartConfig.window must be an integer >= 1, got {self.window!r}")
        for name in ("steps", "watch"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
                raise ValueError(f"SafeStartConfig.{name} must be an integer >= 2 or None, got {v!r}")


@dataclass(frozen=True)
class SafeStartStop:
    """What the optimizer must do when the blow-up test fires: restore the best state (when there is
    one), skip the step, end the ramp and multiply the lr multiplier by ``lr_factor``."""

    restore: bool
    lr_factor: float
    reason: str


class SafeStart:
    """The ramp's blow-up test and its best state; one per run.

    Args:
        config: the settings.
        steps: the ramp's length (the warm-up the optimizer ramps over).
        watch: the steps over which the blow-up test runs (at least the ramp).
        warmup: the length of the whole warm-up the ramp runs under (what a resumed run warms up over).
        factor: the warm-up's lr factor by step (the optimizer's ``ActionSpec.warmup_factor``).
    """

    def __init__(self, config: SafeStartConfig, steps: int, watch: int, warmup: int, factor: Callable[[int], float]) -> None:
        self.config = config
        self.steps = int(steps)
        self.watch = max(int(watch), self.steps)
        self.warmup = int(warmup)
        #: the ramp's lr factor of the update that ``step`` successful steps precede
        #: (``ActionSpec.warmup_factor``, which applies it)
        self.factor = factor
        self.active = True  # the test runs (until a blow-up or ``watch`` steps)
        self.stopped_at = -1  # the step the ramp stopped at (-1: it did not)
        self.losses: list[float] = []
        self.first_median = math.nan
        self.best_median = math.nan
        self.best_step = 0
        self._best = Snapshot()

    def check(
        self,
        step: int,
        loss: float | None,
        grad_norm: float,
        params: Sequence[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        buffers: Sequence[torch.Tensor] = (),
    ) -> SafeStartStop | None:
        """Judge the weights that produced ``loss``, before the update ``step`` runs on them: ``None``
        to go on (a new lowest median snapshots them first), else what to do about a blow-up."""
        if not self.active:
            return None
        cfg = self.config
        if step >= self.watch:
            self.finish()
            return None
        if not math.isfinite(grad_norm) or (loss is not None and not math.isfinite(loss)):
            return self._stop(step, f"loss {loss}, gradient norm {grad_norm}")
        if loss is None:
            return None
        if not self._best.exists:
            self._best.take(step, params, optimizer, buffers)  # the start: what a blow-up at once goes back to
            self.best_step = step
        self.losses.append(float(loss))
        if len(self.losses) < cfg.window:
            return None
        m = median(self.losses[-cfg.window :])
        if math.isnan(self.first_median):
            self.first_median = m
        if math.isnan(self.best_median) or m < self.best_median:
            self.best_median, self.best_step = m, step
            self._best.take(step, params, optimizer, buffers)
            return None
        noise = cfg.noise * self.noise()
        if m - self.best_median > max(cfg.rise * abs(self.best_median), noise):
            return self._stop(step, f"median loss {m:.4g} over {cfg.window} steps, lowest {self.best_median:.4g}")
        if m - self.best_median > max(cfg.regress * (self.first_median - self.best_median), noise):
            return self._stop(
                step,
                f"median loss {m:.4g} over {cfg.window} steps gave back the ramp's progress {self.first_median:.4g} -> {self.best_median:.4g}",
            )
        return None

    def noise(self) -> float:
        """A robust standard deviation of one loss's noise (:func:`chuck.core.restart.robust_noise`)."""
        return robust_noise(self.losses)

    def _stop(self, step: int, what: str) -> SafeStartStop:
        onset = self.factor(self.best_step)
        self.active = False
        self.stopped_at = step
        target = self.config.settle * onset
        restore = self._best.exists
        back = f"; weights of step {self._best.step} restored" if restore else ""
        return SafeStartStop(
            restore,
            target,
            f"safe_start: blow-up at step {step} (ramp factor {self.factor(step):.3g}): {what}{back}; "
            f"lr factor settles at {target:.3g} ({self.config.settle:g} x {onset:.3g}, where the loss stopped falling)",
        )

    def restore(
        self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, buffers: Sequence[torch.Tensor] = ()
    ) -> None:
        """Put the best state back, then forget it (the test is over)."""
        if self._best.exists and self._best.covers(params):
            self._best.restore(params, optimizer, buffers)
        self._best.drop()

    def finish(self) -> None:
        """The ramp ended without a blow-up: the test stops and its snapshot is freed."""
        self.active = False
        self._best.drop()

    # -- checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        params, state = self._best.copies()
        return {
            "steps": self.steps,
            "watch": self.watch,
            "active": self.active,
            "stopped_at": self.stopped_at,
            "losses": list(self.losses),
            "first_median": self.first_median,
            "best_median": self.best_median,
            "best_step": self.best_step,
            "snapshot_step": self._best.step,
            "snap_params": params,
            "snap_state": state,
            "snap_buffers": [b.clone() for b in self._best.buffers],
        }

    def validate_state_dict(self, state: Any, params: Sequence[torch.Tensor]) -> str | None:
        """Why ``state`` cannot be loaded (``None`` when it can)."""
        if not isinstance(state, dict):
            return f"safe_start must be a dict, got {check.show(state)}"
        why = check.first(
            check.missing(
                state, ("steps", "watch", "active", "stopped_at", "losses", "first_median", "best_median", "best_step")
            ),
            None
            if (state.get("steps"), state.get("watch")) == (self.steps, self.watch)
            else f"the checkpoint ramps over {check.show(state.get('steps'))} steps and watches {check.show(state.get('watch'))}, "
            f"this run {self.steps} and {self.watch}",
            check.flag("active", state.get("active")),
            None
            if isinstance(state.get("stopped_at"), int) and state["stopped_at"] >= -1
            else "stopped_at must be an integer >= -1",
            check.items("losses", state.get("losses"), check.number),
            check.number("first_median", state.get("first_median"), nan=True),
            check.number("best_median", state.get("best_median"), nan=True),
            check.count("best_step", state.get("best_step")),
        )
        if why:
            return why
        buffers = state.get("snap_buffers", [])
        if not (isinstance(buffers, list) and all(isinstance(b, torch.Tensor) for b in buffers)):
            return "snap_buffers must be a list of tensors"
        return _snapshot_problem(
            "safe-start", state.get("snapshot_step"), state.get("snap_params"), state.get("snap_state"), params
        )

    def load_state_dict(self, state: dict[str, Any], params: Sequence[torch.Tensor]) -> None:
        """Load a state :meth:`validate_state_dict` accepted; the snapshot binds to ``params``."""
        self.active, self.stopped_at = bool(state["active"]), int(state["stopped_at"])
        self.losses = [float(v) for v in state["losses"]]
        self.first_median, self.best_median = float(state["first_median"]), float(state["best_median"])
        self.best_step = int(state["best_step"])
        self._best.load(state.get("snapshot_step"), state.get("snap_params"), state.get("snap_state"), params)
        self._best.buffers = [b.clone() for b in state.get("snap_buffers") or []]
