"""Guardrails that run under every policy: non-finite steps, loss spikes, rollback.

* A non-finite loss or gradient norm skips the step: the base optimizer never
  sees it, so weights and optimizer state are untouched; the lr is backed off.
* A loss more than ``spike_factor`` times its recent median rolls the model and
  optimizer state back to the last good in-memory snapshot (or, before the first
  snapshot, skips the step) and backs off. PaLM (Chowdhery et al. 2022, sec. 5.1)
  handled spikes the same way: restart from a checkpoint ~100 steps earlier and
  skip the offending data.
* A "spike" that comes back ``max_rollbacks_in_a_row`` times with no good step in
  between is a lasting shift of the loss level (a curriculum change, a new data
  mix, a resumed run on new data): it is accepted, the spike reference restarts
  from the new level and the lr multiplier is restored to its value before the
  streak. This holds whether or not a snapshot exists (faults issue, item 1: before
  it, an early shift was skipped for 857 of 1000 steps).

Snapshots are taken every ``snapshot_every`` healthy steps into preallocated
buffers (one copy of parameters and optimizer state), so their cost is a
memcpy amortized over that many steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch


class Verdict(str, Enum):
    OK = "ok"
    SKIP_NONFINITE = "skip_nonfinite"
    ROLLBACK_SPIKE = "rollback_spike"


class Action(str, Enum):
    """What the optimizer does about a verdict (the names guardrail records and monitors see)."""

    SKIP_NONFINITE = "skip_nonfinite"
    ROLLBACK_SPIKE = "rollback_spike"
    SKIP_SPIKE = "skip_spike"  # a spike before any snapshot exists
    ACCEPT_LEVEL_SHIFT = "accept_level_shift"
    AMP_OVERFLOW = "amp_overflow"  # GradScaler skipped the step: counted, no backoff


@dataclass
class GuardrailConfig:
    """Guardrail settings.

    Attributes:
        spike_factor: loss / recent median above which a step is a spike (10x; see module doc).
        min_history: losses needed before spikes are judged (the median needs a history).
        snapshot_every: steps between in-memory snapshots; 0 disables rollback (spikes then only skip).
            A due snapshot waits until the loss is healthy (at most ``healthy_factor`` x its median),
            so that it never captures weights that are already going bad.
        healthy_factor: see ``snapshot_every``.
        min_spike_fraction: a spike must also reach this fraction of the run's initial loss. Once a
            run has driven its loss a thousandfold down, minibatch losses 10x the median are routine
            and still far below where training started: rolling back on them drove a ResNet's lr
            to its floor (validation split, textures_resnet). A real divergence climbs back towards
            the starting loss, which this keeps catching.
        backoff: lr multiplier factor after a skip or rollback.
        max_rollbacks_in_a_row: after this many spike verdicts (rollbacks, or skips before the
            first snapshot) with no good step between them the loss level has shifted for good
            (a new data phase, a curriculum): the spike reference is reset, the lr multiplier
            restored, and training goes on, instead of rolling back or skipping forever.
    """

    spike_factor: float = 10.0
    min_history: int = 20
    snapshot_every: int = 50
    healthy_factor: float = 3.0
    min_spike_fraction: float = 0.1
    backoff: float = 0.5
    max_rollbacks_in_a_row: int = 3

    def __post_init__(self) -> None:
        if self.spike_factor <= 1:
            raise ValueError(f"spike_factor must be > 1, got {self.spike_factor}")
        if not (0 < self.backoff <= 1):
            raise ValueError(f"backoff must be in (0, 1], got {self.backoff}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0, got {self.snapshot_every}")
        if self.max_rollbacks_in_a_row < 1:
            raise ValueError(f"max_rollbacks_in_a_row must be >= 1, got {self.max_rollbacks_in_a_row}")


class Guardrails:
    """Checks each step and keeps the rollback snapshot."""

    def __init__(self, config: GuardrailConfig | None = None) -> None:
        self.config = config or GuardrailConfig()
        self._snap_params: list[torch.Tensor] | None = None
        self._snap_state: dict[int, dict[str, Any]] | None = None
        self.snapshot_step: int | None = None
        self.skips = 0
        self.rollbacks = 0
        self.amp_overflows = 0  # GradScaler skips: counted, never backed off (routine in AMP)
        self.spikes_in_a_row = 0
        self.good_in_a_row = 0
        self.lr_mult_before_streak: float | None = None
        self._snapshot_pending = False

    def react(self, verdict: Verdict) -> Action:
        """The action for a non-OK verdict, updating the spike streak."""
        self.good_in_a_row = 0
        if verdict is Verdict.SKIP_NONFINITE:
            self.skips += 1
            return Action.SKIP_NONFINITE
        if self.spikes_in_a_row >= self.config.max_rollbacks_in_a_row:
            self.spikes_in_a_row = 0
            self.skips += 1
            return Action.ACCEPT_LEVEL_SHIFT
        self.spikes_in_a_row += 1
        if self.has_snapshot:
            self.rollbacks += 1
            return Action.ROLLBACK_SPIKE
        self.skips += 1
        return Action.SKIP_SPIKE

    def good_step(self) -> None:
        """A step passed every check: any spike streak is over.

        The lr multiplier from before the streak is remembered until ``min_history`` good steps
        in a row: a shifted batch that happens to pass the test between two streaks must not
        make the backed-off value the one restored when the shift is accepted.
        """
        self.spikes_in_a_row = 0
        self.good_in_a_row += 1
        if self.good_in_a_row >= self.config.min_history:
            self.lr_mult_before_streak = None

    def check(
        self, loss: float | None, grad_norm: float, median_loss: float, history: int, initial_loss: float = math.nan
    ) -> Verdict:
        """Judge one step from its loss (``None`` when the user gave none) and global grad norm.

        Args:
            median_loss: the recent median training loss (spike reference).
            history: how many losses that median is over.
            initial_loss: the run's starting loss level (``nan`` when unknown); see ``min_spike_fraction``.
        """
        if not math.isfinite(grad_norm):
            return Verdict.SKIP_NONFINITE
        if loss is None:
            return Verdict.OK
        if not math.isfinite(loss):
            return Verdict.SKIP_NONFINITE
        floor = self.config.min_spike_fraction * initial_loss if initial_loss > 0 else 0.0
        if (
            history >= self.config.min_history
            and median_loss > 0
            and loss > self.config.spike_factor * median_loss
            and loss > floor
        ):
            return Verdict.ROLLBACK_SPIKE
        return Verdict.OK

    # -- snapshots --------------------------------------------------------
    def due(self, step: int, loss: float | None, median_loss: float) -> bool:
        """Whether to snapshot now: every ``snapshot_every`` steps, postponed while the loss is unhealthy."""
        every = self.config.snapshot_every
        if every > 0 and step % every == 0:
            self._snapshot_pending = True
        healthy = loss is None or not (median_loss > 0) or loss <= self.config.healthy_factor * median_loss
        return self._snapshot_pending and healthy

    @torch.no_grad()
    def snapshot(self, step: int, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        params = list(params)
        if self._snap_params is None or len(self._snap_params) != len(params):
            self._snap_params = [p.detach().clone() for p in params]
        else:
            torch._foreach_copy_(self._snap_params, [p.detach() for p in params])
        state: dict[int, dict[str, Any]] = {}
        old = self._snap_state or {}
        for i, p in enumerate(params):
            st = optimizer.state.get(p)
            if not st:
                continue
            entry = {}
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    prev = old.get(i, {}).get(k)
                    if isinstance(prev, torch.Tensor) and prev.shape == v.shape and prev.dtype == v.dtype:
                        entry[k] = prev.copy_(v)
                    else:
                        entry[k] = v.detach().clone()
                else:
                    entry[k] = v
            state[i] = entry
        self._snap_state = state
        self.snapshot_step = step
        self._snapshot_pending = False

    def drop_snapshot(self) -> None:
        self._snap_params = self._snap_state = None
        self.snapshot_step = None

    def covers(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether the snapshot holds exactly these parameters' shapes (a layer unfrozen since: no)."""
        snap = self._snap_params
        return snap is not None and len(snap) == len(params) and all(s.shape == p.shape for s, p in zip(snap, params))

    @property
    def has_snapshot(self) -> bool:
        return self._snap_params is not None

    @torch.no_grad()
    def restore(self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """Put parameters and optimizer state back to the snapshot."""
        if self._snap_params is None:
            raise RuntimeError("no snapshot to roll back to")
        params = list(params)
        torch._foreach_copy_([p.data for p in params], self._snap_params)
        for i, p in enumerate(params):
            snap = (self._snap_state or {}).get(i)
            if snap is None:
                optimizer.state.pop(p, None)
                continue
            st = optimizer.state.setdefault(p, {})
            st.clear()
            for k, v in snap.items():
                st[k] = v.clone() if isinstance(v, torch.Tensor) else v

    # -- checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "skips": self.skips,
            "rollbacks": self.rollbacks,
            "amp_overflows": self.amp_overflows,
            "spikes_in_a_row": self.spikes_in_a_row,
            "good_in_a_row": self.good_in_a_row,
            "lr_mult_before_streak": self.lr_mult_before_streak,
            "snapshot_pending": self._snapshot_pending,
            "snapshot_step": self.snapshot_step,
            "snap_params": None if self._snap_params is None else [t.clone() for t in self._snap_params],
            "snap_state": None
            if self._snap_state is None
            else {
                i: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in e.items()}
                for i, e in self._snap_state.items()
            },
        }

    def validate_state_dict(self, state: dict[str, Any], params: Sequence[torch.Tensor]) -> str | None:
        """Why ``state`` cannot be loaded for these parameters (``None`` when it can)."""
        for key in ("skips", "rollbacks", "spikes_in_a_row"):
            if not isinstance(state.get(key), int) or state[key] < 0:
                return f"guardrails.{key} must be a non-negative integer, got {state.get(key)!r}"
        snap = state.get("snap_params")
        if snap is not None:
            shapes = [tuple(t.shape) for t in snap]
            want = [tuple(p.shape) for p in params]
            if shapes != want:
                return f"the rollback snapshot holds {len(shapes)} tensors of other shapes than the model's {len(want)}: another model?"
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skips, self.rollbacks = state["skips"], state["rollbacks"]
        self.amp_overflows = int(state.get("amp_overflows", 0))
        self.spikes_in_a_row, self._snapshot_pending = state["spikes_in_a_row"], state["snapshot_pending"]
        self.lr_mult_before_streak = state.get("lr_mult_before_streak")
        self.good_in_a_row = int(state.get("good_in_a_row", 0))
        self.snapshot_step = state["snapshot_step"]
        self._snap_params = None if state["snap_params"] is None else [t.clone() for t in state["snap_params"]]
        self._snap_state = None if state["snap_state"] is None else {int(i): dict(e) for i, e in state["snap_state"].items()}
