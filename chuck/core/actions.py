"""The policy's action: bounded, rate-limited multiplicative changes of hyperparameters.

:class:`ActionSpec` is the *only* code that writes ``param_groups`` (and
dropout modules, and user knobs). Deployment (``ChuckOptimizer``) and
meta-training (``chuck.envs``) both go through :meth:`ActionSpec.apply`.

Multiplier design: chuck never owns the learning rate. Whatever else writes
``group["lr"]`` (a user's LambdaLR, OneCycleLR, ReduceLROnPlateau, or code that
rewrites it every update, as stable-baselines3 does) keeps writing it; chuck
swaps in ``lr x multiplier`` for the duration of the base optimizer's step
(:meth:`ActionSpec.effective`) and puts the user's value back afterwards. The
same holds for weight decay. With multipliers at exactly 1 nothing is written.

Because ``group["lr"]`` keeps the user's value, whatever reads it (Lightning's
``LearningRateMonitor``, the Hugging Face Trainer's ``learning_rate``, a user's own
logging) sees the lr *before* chuck's multiplier. The value the optimizer really uses
is published on every param group under :data:`EFFECTIVE_LR_KEY`
(``group["chuck_effective_lr"]``) after every step and decision (:meth:`ActionSpec.publish`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from chuck.core import statecheck as check

#: The param-group key where chuck publishes the lr the group's next base step uses: the group's own
#: ``lr`` (the user's, or their scheduler's) times chuck's multiplier. Refreshed after every step and
#: decision; a scheduler that steps after ``opt.step()`` moves ``group["lr"]`` and the key follows at the
#: next step (``ChuckOptimizer.effective_lrs()`` reads it fresh at any time).
EFFECTIVE_LR_KEY = "chuck_effective_lr"

#: Action dimensions, in order. The learned policy's output has exactly these.
ACTION_DIMS: tuple[str, ...] = ("lr", "weight_decay", "clip", "dropout")

#: The learning-rate reach of each action spec version. v2 lets the lr move x3 per decision
#: within [1e-3, 1e3] of the user's value: from a start two decades off, a good lr is four
#: decisions away. Lab code may add a version here before building a policy for it
#: (``experiments/prior_variants.py`` adds v3, a decade per decision); artifacts, checkpoints and
#: ``ChuckOptimizer`` read this table when they meet a version.
ACTION_VERSIONS: dict[str, dict[str, Any]] = {
    "1": {"lr_bounds": (1e-3, 100.0), "lr_log_step": math.log(2.0)},
    "2": {"lr_bounds": (1e-3, 1000.0), "lr_log_step": math.log(3.0)},
}
LATEST_ACTION_VERSION = "2"

#: Clip ratio (threshold / median grad norm) at or above which clipping is off.
CLIP_OFF_LOG_RATIO = 5.0

#: Median gradient norms at or below this are no usable reference for a clip threshold
#: (float64 gradients can reach denormals; a threshold derived from them would be 0).
MIN_CLIP_REFERENCE = 1e-30


@dataclass
class Knob:
    """A user-registered hyperparameter chuck may change (e.g. augmentation strength).

    The user's code reads ``knob.value``; chuck changes it multiplicatively, in
    step with the action dimension named by ``follows`` (default: the dropout /
    regularization dimension), within ``[low, high]``.
    """

    name: str
    value: float
    low: float
    high: float
    follows: str = "dropout"

    def __post_init__(self) -> None:
        if self.follows not in ACTION_DIMS:
            raise ValueError(f"knob {self.name!r}: follows={self.follows!r} is not one of {ACTION_DIMS}")
        for field_name in ("value", "low", "high"):
            v = getattr(self, field_name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise TypeError(f"knob {self.name!r}: {field_name} must be a finite number, got {v!r}")
        if self.low <= 0:
            raise ValueError(
                f"knob {self.name!r}: low must be > 0, got {self.low}: chuck moves a knob multiplicatively (in log "
                "space), so it can never reach 0; for a knob that may be off, give a small positive low (e.g. 1e-3)"
            )
        if not (self.low <= self.value <= self.high):
            raise ValueError(f"knob {self.name!r}: need low <= value <= high, got {self.low}, {self.value}, {self.high}")


@dataclass
class ActionResult:
    """What one :meth:`ActionSpec.apply` did."""

    action: list[float]  # the action after clipping to [-1, 1]
    hyperparameters: dict[str, float]  # effective values afterwards
    limited: list[str] = field(default_factory=list)  # dims that hit a bound


class ActionSpec:
    """Bounded multiplicative control of lr, weight decay, clipping and dropout.

    Each action entry ``a`` in ``[-1, 1]`` multiplies its hyperparameter by
    ``exp(a * max_log_step)``: the rate limit. The cumulative multiplier is then
    clamped into its bounds. Clipping is expressed against the median gradient
    norm: ``log(clip / median)`` moves by ``a * clip_log_step`` and clipping turns
    off at ``CLIP_OFF_LOG_RATIO`` (e^5, ~150x the median).

    Args:
        lr_bounds: allowed range of chuck's lr multiplier.
        wd_bounds: allowed range of chuck's weight-decay multiplier.
        dropout_bounds: allowed range of the dropout multiplier (p is also capped at ``max_dropout``).
        lr_log_step: largest log change of the lr multiplier per decision (log 2: x2 or /2).
        wd_log_step: largest log change of the weight-decay multiplier per decision.
        clip_log_step: largest change of log(clip / median grad norm) per decision.
        dropout_log_step: largest log change of the dropout multiplier per decision.
        max_dropout: dropout p never exceeds this.
    """

    version = LATEST_ACTION_VERSION
    dims = ACTION_DIMS

    def __init__(
        self,
        *,
        version: str = LATEST_ACTION_VERSION,
        lr_bounds: tuple[float, float] | None = None,
        wd_bounds: tuple[float, float] = (1e-3, 100.0),
        dropout_bounds: tuple[float, float] = (0.1, 5.0),
        lr_log_step: float | None = None,
        wd_log_step: float = math.log(2.0),
        clip_log_step: float = math.log(4.0),
        dropout_log_step: float = math.log(1.5),
        max_dropout: float = 0.9,
    ) -> None:
        if version not in ACTION_VERSIONS:
            raise ValueError(f"action spec v{version} is unknown to this chuck (it knows {sorted(ACTION_VERSIONS)})")
        self.version = version
        lr_bounds = lr_bounds or ACTION_VERSIONS[version]["lr_bounds"]
        lr_log_step = lr_log_step or ACTION_VERSIONS[version]["lr_log_step"]
        for name, (lo, hi) in (("lr_bounds", lr_bounds), ("wd_bounds", wd_bounds), ("dropout_bounds", dropout_bounds)):
            if not (0 < lo <= 1 <= hi):
                raise ValueError(f"{name} must satisfy 0 < low <= 1 <= high, got {(lo, hi)}")
        self.lr_bounds, self.wd_bounds, self.dropout_bounds = lr_bounds, wd_bounds, dropout_bounds
        self.steps = np.array([lr_log_step, wd_log_step, clip_log_step, dropout_log_step], dtype=np.float64)
        self.max_dropout = max_dropout
        # bound state
        self.optimizer: torch.optim.Optimizer | None = None
        self.dropouts: list[tuple[nn.Module, float]] = []
        self.knobs: dict[str, Knob] = {}
        self.lr_mult = 1.0
        self.wd_mult = 1.0
        self.dropout_mult = 1.0
        self.clip = math.inf
        #: the lr multiplier the last base step ran under (``lr_mult`` may have moved since, at a
        #: decision): what a logger that reports the lr of the step just taken multiplies by
        self.step_lr_mult = 1.0
        #: steps of linear lr warm-up at the start of a run (0: none; see :meth:`start_warmup`)
        self.warmup_steps = 0
        #: a geometric ramp under the warm-up (the safe start's, :meth:`ramp_geometric`): its first factor
        #: and its length in steps; ``None``: the warm-up is linear
        self.warmup_ramp: tuple[float, int] | None = None
        #: the base steps [anneal_start, anneal_end) over which the lr decays linearly toward zero at the
        #: end of a known budget (``None``: no per-step anneal; see :meth:`start_anneal`)
        self.anneal_start: int | None = None
        self.anneal_end = 0
        self._warm = 1.0  # the schedule factor (warm-up x anneal) of the coming base step
        #: how many times :meth:`scale_lr` ran, and its last (multiplier before, after): what a decision
        #: record reads to say what a guardrail's cut changed
        self.lr_moves = 0
        self.last_lr_move = (1.0, 1.0)

    def start_warmup(self, steps: int, steps_taken: int = 0) -> None:
        """Warm the lr up linearly over a run's first ``steps`` base steps: step k (0-based) runs at
        ``(k + 1) / steps`` of the multiplier. A per-step schedule, not a decision (the policy's own
        ``warmup``, set by ChuckOptimizer; ``steps_taken`` > 0 when a run resumes)."""
        if steps < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {steps}")
        self.warmup_steps = int(steps)
        self._warm = self.schedule_factor(steps_taken)
        self.publish()

    def start_anneal(self, total_steps: int, fraction: float, steps_taken: int = 0) -> None:
        """Decay the lr linearly over the last ``fraction`` of a run of ``total_steps`` base steps: step k
        of the last n runs at ``max(1, total_steps - k) / n`` of the multiplier, so the budget's last step
        (and any step past it) runs at 1/n. The decay of warmup-stable-decay schedules (Hagele et al. 2024),
        applied per step like the warm-up (the policy's own ``anneal``, set by ChuckOptimizer)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"anneal must be a fraction of the run in (0, 1], got {fraction}")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        n = max(1, round(fraction * total_steps))
        self.anneal_start, self.anneal_end = int(total_steps) - n, int(total_steps)
        self._warm = self.schedule_factor(steps_taken)
        self.publish()

    def ramp_geometric(self, start: float, steps: int, steps_taken: int = 0) -> None:
        """Put a geometric ramp under the warm-up: step k (0-based) of the first ``steps`` runs at
        ``start ** ((steps - 1 - k) / (steps - 1))`` of the multiplier where that is below the linear
        warm-up's factor (the safe start's range test, Smith 2017); the warm-up lasts at least ``steps``."""
        if not 0.0 < start < 1.0 or steps < 2:
            raise ValueError(f"a geometric ramp starts in (0, 1) and lasts 2 steps or more, got {start}, {steps}")
        self.warmup_ramp = (float(start), int(steps))
        self.warmup_steps = max(self.warmup_steps, int(steps))
        self._warm = self.schedule_factor(steps_taken)
        self.publish()

    def end_warmup(self, steps_taken: int) -> None:
        """Stop the warm-up now (the safe start found the lr's limit): later steps run at the multiplier."""
        self.warmup_steps = 0
        self._warm = self.schedule_factor(steps_taken)
        self.publish()

    def warmup_factor(self, step: int) -> float:
        """The warm-up factor of the base step that ``step`` successful steps precede (1 after the ramp)."""
        if step >= self.warmup_steps:
            return 1.0
        linear = (step + 1) / self.warmup_steps
        if self.warmup_ramp is None or step >= self.warmup_ramp[1]:
            return linear
        start, n = self.warmup_ramp
        return min(linear, start ** ((n - 1 - step) / (n - 1)))

    def schedule_factor(self, step: int) -> float:
        """The per-step factor (warm-up, then the anneal of a known budget) of the base step that ``step``
        successful steps precede; 1 outside both."""
        warm = self.warmup_factor(step)
        if self.anneal_start is None or step < self.anneal_start:
            return warm
        return warm * max(1, self.anneal_end - step) / (self.anneal_end - self.anneal_start)

    # -- spaces -----------------------------------------------------------
    @property
    def space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=(len(self.dims),), dtype=np.float32)

    def card(self) -> dict[str, Any]:
        return {"version": self.version, "dims": list(self.dims), "log_steps": self.steps.tolist()}

    # -- binding ----------------------------------------------------------
    def bind(self, optimizer: torch.optim.Optimizer, model: nn.Module | None = None, clip: float | None = None) -> None:
        """Attach to the optimizer (and the model's dropout modules)."""
        self.optimizer = optimizer
        if model is not None:
            self.dropouts = [(m, float(m.p)) for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
        if clip is not None:
            if not (clip > 0):
                raise ValueError(f"max_grad_norm must be > 0, got {clip}")
            self.clip = float(clip)
        self.publish()

    def register_knob(self, knob: Knob) -> Knob:
        if knob.name in self.knobs:
            raise ValueError(f"a knob named {knob.name!r} is already registered")
        self.knobs[knob.name] = knob
        return knob

    # -- the one writer ---------------------------------------------------
    @contextmanager
    def effective(self) -> Iterator[None]:
        """Swap ``user value x multiplier`` into the groups for one base step, then restore.

        Restoring means schedulers and code that read or rewrite ``group["lr"]``
        always see their own values, and chuck composes with them as a multiplier.
        """
        saved = self.swap_in()
        try:
            yield
        finally:
            self.swap_out(saved)

    def swap_in(self, step: int | None = None) -> _Swapped | None:
        """:meth:`effective`'s entry, for the optimizer's per-step path (a generator-based context
        manager costs about 2 us a step): write the effective values into the groups and return
        what :meth:`swap_out` must restore (``None`` when the multipliers are 1: nothing to swap).
        ``step``: successful steps so far, for the warm-up (``None``: the coming step's factor)."""
        warm = self._warm
        if step is not None and (self.warmup_steps or self.anneal_start is not None):
            warm, self._warm = self.schedule_factor(step), self.schedule_factor(step + 1)
        lr_mult = self.lr_mult * warm  # x 1.0 is exact: no warm-up, the multiplier as it was
        self.step_lr_mult = lr_mult
        touch_lr = lr_mult != 1.0
        touch_wd = self.wd_mult != 1.0
        if not (touch_lr or touch_wd):
            return None
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        saved = _Swapped(groups, touch_lr, touch_wd, [(g.get("lr"), g.get("weight_decay")) for g in groups])
        try:
            for g, (lr, wd) in zip(groups, saved.values):
                if touch_lr and lr is not None:
                    g["lr"] = lr * lr_mult
                if touch_wd and wd is not None:
                    g["weight_decay"] = wd * self.wd_mult
        except BaseException:
            self.swap_out(saved)
            raise
        return saved

    @staticmethod
    def swap_out(saved: _Swapped | None) -> None:
        """Put back the groups' own values that :meth:`swap_in` replaced."""
        if saved is None:
            return
        for g, (lr, wd) in zip(saved.groups, saved.values):
            if saved.lr and lr is not None:
                g["lr"] = lr
            if saved.wd and wd is not None:
                g["weight_decay"] = wd

    def apply(self, action: Sequence[float] | np.ndarray, median_grad_norm: float = math.nan) -> ActionResult:
        """Apply one policy action. Non-finite entries count as 0 (hold)."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != len(self.dims):
            raise ValueError(f"action has {a.shape[0]} entries, ActionSpec v{self.version} expects {len(self.dims)} {self.dims}")
        a = np.clip(np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
        logs = a * self.steps
        limited: list[str] = []

        self.lr_mult, hit = _clamp(self.lr_mult * math.exp(logs[0]), *self.lr_bounds)
        if hit:
            limited.append("lr")
        self.wd_mult, hit = _clamp(self.wd_mult * math.exp(logs[1]), *self.wd_bounds)
        if hit:
            limited.append("weight_decay")
        self._apply_clip(logs[2], median_grad_norm)
        if self.dropouts or any(k.follows == "dropout" for k in self.knobs.values()):
            self.dropout_mult, hit = _clamp(self.dropout_mult * math.exp(logs[3]), *self.dropout_bounds)
            if hit:
                limited.append("dropout")
            for m, p0 in self.dropouts:
                m.p = min(self.max_dropout, p0 * self.dropout_mult)  # type: ignore[assignment]
        for knob in self.knobs.values():
            i = self.dims.index(knob.follows)
            knob.value = min(knob.high, max(knob.low, knob.value * math.exp(logs[i])))
        self.publish()
        return ActionResult(action=a.tolist(), hyperparameters=self.hyperparameters(), limited=limited)

    def _apply_clip(self, log_change: float, median: float) -> None:
        """Move log(clip / median grad norm) by ``log_change``; never raises, never writes a bad value.

        Ratios are formed in log space: ``clip / median`` underflows for denormal medians and
        ``math.log(0)`` would raise. A median that is not a usable positive
        float (0, denormal, inf, nan) leaves the threshold where it is.
        """
        if not (MIN_CLIP_REFERENCE < median < math.inf) or log_change == 0:
            return
        ratio = CLIP_OFF_LOG_RATIO if math.isinf(self.clip) else math.log(self.clip) - math.log(median)
        ratio = min(CLIP_OFF_LOG_RATIO, ratio + log_change)
        # Never clip below a tenth of the median norm: that is a learning-rate cut in disguise.
        ratio = max(ratio, math.log(0.1))
        clip = math.inf if ratio >= CLIP_OFF_LOG_RATIO else median * math.exp(ratio)
        if clip > 0:  # inf (off) or a positive finite threshold; an underflow to 0 keeps the old one
            self.clip = clip

    def scale_lr(self, factor: float) -> float:
        """Multiply the lr multiplier by ``factor`` within its bounds (a guardrail's cut or its
        recovery); returns the factor actually applied."""
        before = self.lr_mult
        self.lr_mult, _ = _clamp(self.lr_mult * factor, *self.lr_bounds)
        self.lr_moves += 1
        self.last_lr_move = (before, self.lr_mult)
        self.publish()
        return self.lr_mult / before

    def backoff(self, factor: float) -> None:
        """Multiply the lr multiplier by ``factor`` (< 1), within bounds (see :meth:`scale_lr`)."""
        self.scale_lr(factor)

    def publish(self) -> None:
        """Write every group's effective lr (its ``lr`` x chuck's multiplier) under :data:`EFFECTIVE_LR_KEY`.

        Why a key of its own: ``group["lr"]`` must keep the user's value (the multiplier design),
        yet loggers and people look at the param groups for the lr in use. A tensor lr on an
        accelerator stays a tensor (reading it would synchronize the device at every step).
        """
        if self.optimizer is None:
            return
        m = self.lr_mult * self._warm
        for g in self.optimizer.param_groups:
            lr = g.get("lr")
            if lr is None:
                continue
            if isinstance(lr, torch.Tensor) and lr.device.type != "cpu":
                g[EFFECTIVE_LR_KEY] = lr.detach() * m
            else:
                g[EFFECTIVE_LR_KEY] = _scalar(lr) * m

    # -- reading ----------------------------------------------------------
    def hyperparameters(self) -> dict[str, float]:
        """Effective values (first param group) after chuck's multipliers."""
        g = self.optimizer.param_groups[0] if self.optimizer is not None and self.optimizer.param_groups else {}
        lr = _scalar(g.get("lr", math.nan)) * self.lr_mult
        wd = _scalar(g.get("weight_decay", 0.0)) * self.wd_mult
        out = {"lr": lr, "weight_decay": wd, "clip": self.clip, "lr_mult": self.lr_mult, "wd_mult": self.wd_mult}
        out["dropout"] = float(np.mean([m.p for m, _ in self.dropouts])) if self.dropouts else 0.0
        out.update({f"knob.{k}": v.value for k, v in self.knobs.items()})
        return out

    # -- checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "lr_mult": self.lr_mult,
            "wd_mult": self.wd_mult,
            "dropout_mult": self.dropout_mult,
            "clip": self.clip,
            "dropout_p": [m.p for m, _ in self.dropouts],
            "knobs": {k: v.value for k, v in self.knobs.items()},
        }

    def validate_state_dict(self, state: Any) -> str | None:
        """Why ``state`` cannot be loaded (``None`` when it can): every value of the right type, finite
        and in bounds, one dropout probability per dropout module of the model."""
        if not isinstance(state, dict):
            return f"the action state must be a dict, got {type(state).__name__}"
        for key, (lo, hi) in (("lr_mult", self.lr_bounds), ("wd_mult", self.wd_bounds), ("dropout_mult", self.dropout_bounds)):
            why = check.number(key, state.get(key), low=lo, high=hi)
            if why:
                return why
        clip: Any = state.get("clip")
        if check.number("clip", clip, inf=True) or clip <= 0:
            return f"clip must be a positive number or inf (off), got {clip!r}"
        dropout_p = state.get("dropout_p", [])
        why = check.numbers_list("dropout_p", dropout_p, low=0.0, high=1.0)
        if why:
            return why
        if len(dropout_p) != len(self.dropouts):
            return f"the checkpoint has {len(dropout_p)} dropout modules, the model {len(self.dropouts)}"
        knobs = state.get("knobs", {})
        if not isinstance(knobs, dict):
            return f"knobs must be a dict, got {type(knobs).__name__}"
        for k, v in knobs.items():
            if k in self.knobs:
                why = check.number(f"knob {k!r}", v, low=self.knobs[k].low, high=self.knobs[k].high)
                if why:
                    return why
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        why = self.validate_state_dict(state)  # before any of it is applied
        if why:
            raise ValueError(f"cannot load the action state: {why}")
        self.lr_mult, self.wd_mult = float(state["lr_mult"]), float(state["wd_mult"])
        self.dropout_mult, self.clip = float(state["dropout_mult"]), float(state["clip"])
        self.step_lr_mult = self.lr_mult
        for (m, _), p in zip(self.dropouts, state.get("dropout_p", [])):
            m.p = float(p)  # type: ignore[assignment]
        for k, v in state.get("knobs", {}).items():
            if k in self.knobs:
                self.knobs[k].value = float(v)
        self.publish()


class _Swapped(NamedTuple):
    """What :meth:`ActionSpec.swap_in` replaced: the groups, which keys, their own values."""

    groups: list[dict[str, Any]]
    lr: bool
    wd: bool
    values: list[tuple[Any, Any]]


def _clamp(x: float, lo: float, hi: float) -> tuple[float, bool]:
    if x < lo:
        return lo, True
    if x > hi:
        return hi, True
    return x, False


def _scalar(x: Any) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)
