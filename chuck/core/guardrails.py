"""Guardrails that run under every policy: non-finite steps, loss spikes, rollback, overfitting.

* A non-finite loss or gradient norm skips the step: the base optimizer never
  sees it, so weights and optimizer state are untouched; the lr is backed off.
  When ``max_rollbacks_in_a_row`` steps in a row are non-finite, the weights themselves
  may be what overflows (a step that left them finite but huge): the model and optimizer
  state go back to the last snapshot, once per streak. A streak that outlasts that
  rollback is non-finite whatever the weights (a bug in the loss, bad data): chuck
  keeps skipping and says so once (``NONFINITE_WARN_AFTER`` steps).
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

* A validation loss (``observe(val_loss=...)``) ``overfit_gl`` above the best one so far
  rolls the model and optimizer state back to the best one's snapshot and halves the lr
  multiplier from its value there: early stopping's "restore the best weights" (Prechelt
  1998, "Early stopping - but when?"; Keras' ``restore_best_weights``) inside a run that
  goes on. The policy issue's harm target is measured on the final validation loss, and a
  small-data run overfits faster than ten decisions can lower its lr: a wine MLP started at
  its best lr 1e-4 was raised to 3e-3 while its validation loss fell, reached its best at
  step 60 and ended at 5x that loss (validation split, instance 4).

Spike snapshots are taken every ``snapshot_every`` healthy steps into preallocated
buffers (one copy of parameters and optimizer state, :class:`chuck.core.snapshot.Snapshot`),
so their cost is a memcpy amortized over that many steps; the best-validation snapshot
is taken at the step after each new best validation loss (a second copy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from chuck.core.snapshot import Snapshot

#: Non-finite steps in a row after which chuck tells the user (once a run): by then a rollback,
#: where a snapshot existed, has been tried, and the lr backed off that many times.
NONFINITE_WARN_AFTER = 20


class Verdict(str, Enum):
    OK = "ok"
    SKIP_NONFINITE = "skip_nonfinite"
    ROLLBACK_SPIKE = "rollback_spike"


class Action(str, Enum):
    """What the optimizer does about a verdict (the names guardrail records and monitors see)."""

    SKIP_NONFINITE = "skip_nonfinite"
    ROLLBACK_NONFINITE = "rollback_nonfinite"  # non-finite steps in a row: back to the snapshot, once a streak
    ROLLBACK_SPIKE = "rollback_spike"
    SKIP_SPIKE = "skip_spike"  # a spike before any snapshot exists
    ACCEPT_LEVEL_SHIFT = "accept_level_shift"
    AMP_OVERFLOW = "amp_overflow"  # GradScaler skipped the step: counted, no backoff
    ROLLBACK_OVERFIT = "rollback_overfit"  # back to the best validation loss's weights


class ValidationVote(int, Enum):
    """What an observed validation loss asks the next step to do (ranks agree on the largest)."""

    NONE = 0
    SNAPSHOT = 1  # a new best: keep the weights it was measured on
    RESTORE = 2  # overfitting: put the best weights back


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
            restored, and training goes on, instead of rolling back or skipping forever. The same
            count bounds overfitting rollbacks with no new best validation loss between them.
        overfit_gl: Prechelt's generalization loss (validation loss / best so far - 1) above which
            the weights go back to the best validation loss's snapshot; ``None`` disables it. 0.2,
            the prior's validation cut (``chuck.policies.prior.CUT_GL``): Prechelt's stopping
            criteria use 1-5%, which minibatch-sized validation sets cross by noise.
        overfit_min_fraction: the rise must also exceed this fraction of the run's starting loss:
            at near-zero losses a ratio of two losses is noise (a ResNet's 1.6e-6 read 5.8e-5 at
            the next evaluation), the ``min_spike_fraction`` argument for validation losses; and a
            small validation set moves by a few percent of the starting loss between evaluations
            (32 samples of a synthetic task: 3-5%). The overfitting it is for undoes a fifth or
            more of a run's progress (validation split: a wine MLP rose by 18% of its starting
            loss in 20 steps, a few-shot digits MLP by 10%).
        overfit_backoff: after an overfitting rollback the lr multiplier is this factor times the
            smaller of its value now and its value when the best weights were taken (the lr that
            led past the best would lead there again).
    """

    spike_factor: float = 10.0
    min_history: int = 20
    snapshot_every: int = 50
    healthy_factor: float = 3.0
    min_spike_fraction: float = 0.1
    backoff: float = 0.5
    max_rollbacks_in_a_row: int = 3
    overfit_gl: float | None = 0.2
    overfit_min_fraction: float = 0.05
    overfit_backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.spike_factor <= 1:
            raise ValueError(f"spike_factor must be > 1, got {self.spike_factor}")
        if not (0 < self.backoff <= 1):
            raise ValueError(f"backoff must be in (0, 1], got {self.backoff}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0, got {self.snapshot_every}")
        if self.max_rollbacks_in_a_row < 1:
            raise ValueError(f"max_rollbacks_in_a_row must be >= 1, got {self.max_rollbacks_in_a_row}")
        if self.overfit_gl is not None and not self.overfit_gl > 0:
            raise ValueError(f"overfit_gl must be > 0 (or None to disable), got {self.overfit_gl}")
        if not (0 < self.overfit_backoff <= 1):
            raise ValueError(f"overfit_backoff must be in (0, 1], got {self.overfit_backoff}")


class Guardrails:
    """Checks each step and keeps the rollback snapshot."""

    def __init__(self, config: GuardrailConfig | None = None) -> None:
        self.config = config or GuardrailConfig()
        self._spike = Snapshot()  # the last healthy state, for spike rollbacks
        self.best = Snapshot()  # the best validation loss's state, for the overfitting rollback
        self.best_val = math.inf
        self.last_val = math.nan  # the validation loss judged last (for the rollback's record)
        self.best_lr_mult = 1.0
        self.overfit_rollbacks = 0
        self.overfit_in_a_row = 0
        self.skips = 0
        self.rollbacks = 0
        self.amp_overflows = 0  # GradScaler skips: counted, never backed off (routine in AMP)
        self.spikes_in_a_row = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_rolled_back = False  # the current non-finite streak has had its rollback
        self.good_in_a_row = 0
        self.lr_mult_before_streak: float | None = None
        self._snapshot_pending = False

    def react(self, verdict: Verdict) -> Action:
        """The action for a non-OK verdict, updating the spike streak."""
        self.good_in_a_row = 0
        if verdict is Verdict.SKIP_NONFINITE:
            self.nonfinite_in_a_row += 1
            if (
                self.nonfinite_in_a_row >= self.config.max_rollbacks_in_a_row
                and self.has_snapshot
                and not self.nonfinite_rolled_back
            ):
                self.nonfinite_rolled_back = True
                self.rollbacks += 1
                return Action.ROLLBACK_NONFINITE
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
        self.nonfinite_in_a_row = 0
        self.nonfinite_rolled_back = False
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

    def snapshot(self, step: int, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        self._spike.take(step, params, optimizer)
        self._snapshot_pending = False

    def drop_snapshot(self) -> None:
        """Forget both snapshots (the trainable set changed: a rollback would be partial)."""
        self._spike.drop()
        self.best.drop()

    def covers(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether the spike snapshot holds exactly these parameters' shapes (a layer unfrozen since: no)."""
        return self._spike.covers(params)

    @property
    def has_snapshot(self) -> bool:
        return self._spike.exists

    @property
    def snapshot_step(self) -> int | None:
        return self._spike.step

    def restore(self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """Put parameters and optimizer state back to the spike snapshot."""
        self._spike.restore(params, optimizer)

    # -- the overfitting rollback --------------------------------------------
    def judge_validation(self, val_loss: float, initial_loss: float) -> ValidationVote:
        """What a finite validation loss asks of the next step (see ``GuardrailConfig.overfit_gl``).

        A new best asks for a snapshot of the weights it was measured on; a loss ``overfit_gl``
        above the best, by more than ``overfit_min_fraction`` of the starting loss, asks for the
        best snapshot back. After ``max_rollbacks_in_a_row`` rollbacks with no new best the best
        was a lucky evaluation or the task's level moved: this loss becomes the reference (and its
        weights the snapshot) instead of rolling back forever.
        """
        cfg = self.config
        self.last_val = val_loss
        if cfg.overfit_gl is None:
            return ValidationVote.NONE
        if val_loss < self.best_val:
            self.best_val, self.overfit_in_a_row = val_loss, 0
            return ValidationVote.SNAPSHOT
        floor = cfg.overfit_min_fraction * initial_loss if initial_loss > 0 else 0.0
        overfit = val_loss > (1.0 + cfg.overfit_gl) * self.best_val and val_loss - self.best_val > floor
        if not overfit or not self.best.exists:
            return ValidationVote.NONE
        if self.overfit_in_a_row >= cfg.max_rollbacks_in_a_row:
            self.best_val, self.overfit_in_a_row = val_loss, 0
            return ValidationVote.SNAPSHOT
        return ValidationVote.RESTORE

    def take_best(
        self,
        step: int,
        params: Sequence[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        lr_mult: float,
        buffers: Sequence[torch.Tensor] = (),
    ) -> None:
        """Snapshot the weights the best validation loss was measured on (with the model's buffers:
        batch-norm statistics belong to the weights they were measured with) and the lr multiplier then."""
        self.best.take(step, params, optimizer, buffers)
        self.best_lr_mult = lr_mult

    def restore_best(
        self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, buffers: Sequence[torch.Tensor] = ()
    ) -> None:
        """Roll back to the best validation loss's snapshot (counted; see ``judge_validation``).

        The spike snapshot becomes the restored state: it held the overfitted weights, and a spike
        rollback to them would undo this one."""
        self.best.restore(params, optimizer, buffers)
        self._spike.take(self.best.step or 0, params, optimizer)
        self.overfit_rollbacks += 1
        self.overfit_in_a_row += 1

    # -- checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        params, state = self._spike.copies()
        best_params, best_state = self.best.copies()
        return {
            "skips": self.skips,
            "rollbacks": self.rollbacks,
            "amp_overflows": self.amp_overflows,
            "spikes_in_a_row": self.spikes_in_a_row,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "nonfinite_rolled_back": self.nonfinite_rolled_back,
            "good_in_a_row": self.good_in_a_row,
            "lr_mult_before_streak": self.lr_mult_before_streak,
            "snapshot_pending": self._snapshot_pending,
            "snapshot_step": self._spike.step,
            "snap_params": params,
            "snap_state": state,
            "overfit": {
                "rollbacks": self.overfit_rollbacks,
                "in_a_row": self.overfit_in_a_row,
                "best_val": self.best_val,
                "lr_mult": self.best_lr_mult,
                "step": self.best.step,
                "params": best_params,
                "state": best_state,
                "buffers": [b.clone() for b in self.best.buffers],
            },
        }

    def validate_state_dict(self, state: dict[str, Any], params: Sequence[torch.Tensor]) -> str | None:
        """Why ``state`` cannot be loaded for these parameters (``None`` when it can)."""
        for key in ("skips", "rollbacks", "spikes_in_a_row"):
            if not isinstance(state.get(key), int) or state[key] < 0:
                return f"guardrails.{key} must be a non-negative integer, got {state.get(key)!r}"
        want = [tuple(p.shape) for p in params]
        for name, snap in (
            ("rollback", state.get("snap_params")),
            ("best-validation", (state.get("overfit") or {}).get("params")),
        ):
            if snap is not None and [tuple(t.shape) for t in snap] != want:
                return (
                    f"the {name} snapshot holds {len(snap)} tensors of other shapes than the model's {len(want)}: another model?"
                )
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skips, self.rollbacks = state["skips"], state["rollbacks"]
        self.amp_overflows = int(state.get("amp_overflows", 0))
        self.spikes_in_a_row, self._snapshot_pending = state["spikes_in_a_row"], state["snapshot_pending"]
        self.lr_mult_before_streak = state.get("lr_mult_before_streak")
        self.good_in_a_row = int(state.get("good_in_a_row", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))  # absent before the streak rollback
        self.nonfinite_rolled_back = bool(state.get("nonfinite_rolled_back", False))
        self._spike.load(state["snapshot_step"], state["snap_params"], state["snap_state"])
        over = state.get("overfit") or {}  # absent in checkpoints from before the overfitting rollback
        self.overfit_rollbacks = int(over.get("rollbacks", 0))
        self.overfit_in_a_row = int(over.get("in_a_row", 0))
        self.best_val = float(over.get("best_val", math.inf))
        self.best_lr_mult = float(over.get("lr_mult", 1.0))
        self.best.load(over.get("step"), over.get("params"), over.get("state"))
        self.best.buffers = [b.clone() for b in over.get("buffers") or []]
