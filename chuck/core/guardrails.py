"""Guardrails: they decide what to do about a step or a validation loss; the optimizer carries it out.

A guardrail must never make a healthy run worse than the bare optimizer, so every test below
judges a loss against *this run's own* losses, and every lr cut it makes is temporary.

* **Non-finite** loss or gradient norm: the step is skipped (the base optimizer never sees it,
  so weights and optimizer state are untouched) and the lr is backed off. When
  ``max_rollbacks_in_a_row`` steps in a row are non-finite, the weights themselves may be what
  overflows: they go back to the last snapshot (the first is the run's starting state, taken before
  its first update), once per streak. A streak that outlasts that
  rollback is non-finite whatever the weights (a bug in the loss, bad data): chuck keeps skipping
  and says so once (``NONFINITE_WARN_AFTER`` steps).
* **Spike**: a loss far outside the run's own recent distribution, on three tests that must all
  hold: ``spike_factor`` times the recent median (when the median is positive), more than
  ``tail_factor`` times the largest recent excursion above the median (the run's own upper tail:
  per-sample and label-noise minibatches have tails a fixed ratio mistakes for spikes), and at
  least ``min_spike_fraction`` of the starting loss. The response escalates with the evidence:
  the first spike only skips the step (a corrupted batch leaves the weights unharmed, nothing
  else is needed); a second in a row means the weights are bad (the previous update blew them
  up), so they go back to the last snapshot and the lr is backed off, as PaLM handled its spikes
  (Chowdhery et al. 2022, sec. 5.1: restart from a checkpoint ~100 steps earlier and skip the
  offending data); a third is a lasting shift of the loss level (a curriculum, a new data mix):
  it is accepted, the spike reference restarts from the new level and the streak's cut is undone.
* **Too noisy to judge**: when more than ``noisy_share`` of recent losses sit above
  ``spike_factor`` times the median (batch-of-one training, alternating task batches, heavy label
  noise), a "spike" is routine; the spike test stands aside (non-finite steps are still caught)
  and the optimizer says so once.
* **Recovery**: every lr cut of the two guardrails above is a debt, repaid over healthy steps
  (a factor of ``1 / backoff`` per ``recovery_steps``), so a run is not slowed for good by one
  bad batch.
* **Overfitting**: a validation loss (``observe(val_loss=...)``) that rose above the best so far
  by more than it could by noise puts the best weights back and lowers the lr: early stopping's
  "restore the best weights" (Prechelt 1998, "Early stopping - but when?"; Keras'
  ``restore_best_weights``) inside a run that goes on. The rise is compared in the loss's own
  units, so any sign and offset work: it must exceed ``overfit_gl`` of the best loss's magnitude
  (Prechelt's generalization loss for a loss bounded below by 0), ``overfit_min_fraction`` of the
  starting loss's magnitude, and ``overfit_noise`` robust standard deviations of the validation
  loss's evaluation-to-evaluation noise (from second differences, which a steady trend does not
  inflate). This cut stays: the lr that led past the best would lead there again.

Snapshots are taken every ``snapshot_every`` healthy steps into preallocated buffers
(:class:`chuck.core.snapshot.Snapshot`), keyed by the parameters' identity, so a rollback never
writes one parameter's values into another; the best-validation snapshot is a second copy.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from statistics import median
from typing import Any

import torch

from chuck.core.restart import StartGuard
from chuck.core.snapshot import Snapshot

#: Non-finite steps in a row after which chuck tells the user (once a run): by then a rollback,
#: where a snapshot existed, has been tried, and the lr backed off that many times.
NONFINITE_WARN_AFTER = 20

#: Steps between recomputations of the recent median and maximum: a spike test against a
#: window of about a hundred losses does not need them fresher, and the test runs every step.
REFRESH_EVERY = 10

#: Evaluations whose second differences estimate the validation loss's noise, and the fewest that do.
VAL_NOISE_WINDOW = 20
VAL_NOISE_MIN = 5

#: 1.4826 x the median absolute deviation estimates a normal standard deviation; a second
#: difference of independent noise has sqrt(6) times the noise's standard deviation.
_MAD_TO_SD = 1.4826 / math.sqrt(6.0)


class Verdict(str, Enum):
    OK = "ok"
    SKIP_NONFINITE = "skip_nonfinite"
    SPIKE = "spike"
    ROLLBACK_SPIKE = "spike"  # the former name of a spike verdict


class Action(str, Enum):
    """What the optimizer does about a verdict (the names guardrail records and monitors see)."""

    SKIP_NONFINITE = "skip_nonfinite"
    ROLLBACK_NONFINITE = "rollback_nonfinite"  # non-finite steps in a row: back to the snapshot, once a streak
    SKIP_SPIKE = "skip_spike"  # the first spike of a streak, or any spike before a snapshot exists
    ROLLBACK_SPIKE = "rollback_spike"  # a second spike in a row: the weights are bad
    ACCEPT_LEVEL_SHIFT = "accept_level_shift"
    AMP_OVERFLOW = "amp_overflow"  # GradScaler skipped the step: counted, no backoff
    ROLLBACK_OVERFIT = "rollback_overfit"  # back to the best validation loss's weights
    RESTART = "restart"  # a blow-up in the first steps: back to the starting weights, a tenth of the lr


class ValidationVote(int, Enum):
    """What an observed validation loss asks the next step to do (ranks agree on the largest)."""

    NONE = 0
    SNAPSHOT = 1  # a new best: keep the weights it was measured on
    RESTORE = 2  # overfitting: put the best weights back


@dataclass(frozen=True)
class Response:
    """What the optimizer must do about one step or one validation vote.

    Attributes:
        action: what happened, as guardrail records and monitors name it.
        restore: which snapshot to put back first: ``"spike"`` (the last healthy state), ``"best"``
            (the best validation loss's state), ``"start"`` (the run's starting state) or ``None``.
        lr_factor: multiply chuck's lr multiplier by this (``1.0``: leave it). The optimizer reports
            the factor actually applied (bounds may clip it) with :meth:`Guardrails.charged`.
        recoverable: whether the cut is a debt repaid over healthy steps.
        reset_loss_reference: the loss monitors' recent-loss reference must restart (the level moved).
        reason: one line for the decision log.
    """

    action: Action
    restore: str | None = None
    lr_factor: float = 1.0
    recoverable: bool = True
    reset_loss_reference: bool = False
    reason: str = ""


@dataclass
class GuardrailConfig:
    """Guardrail settings (see the module docstring for what each test is for).

    Attributes:
        spike_factor: a spike is at least this many times the recent median loss.
        tail_factor: ... and more than this many times the largest recent excursion above the median.
        min_spike_fraction: ... and at least this fraction of the run's starting loss. Once a run has
            driven its loss a thousandfold down, minibatch losses 10x the median are routine and still
            far below where training started; a real divergence climbs back towards the start.
        min_history: losses needed before spikes are judged (the median needs a history).
        window: recent losses the spike tests read.
        noisy_share: share of recent losses above ``spike_factor`` x the median beyond which the
            spike test stands aside (a run too noisy to judge).
        snapshot_every: steps between in-memory snapshots; 0 disables rollback (spikes then only skip).
            A due snapshot waits until the loss is healthy (at most ``healthy_factor`` x its median),
            so that it never captures weights that are already going bad.
        healthy_factor: see ``snapshot_every``.
        backoff: lr multiplier factor after a non-finite skip or a rollback.
        recovery_steps: healthy steps over which a cut of ``backoff`` is undone (0: cuts stay).
        max_rollbacks_in_a_row: non-finite steps in a row before the rollback to the snapshot; spike
            verdicts in a row before the level shift is accepted; overfitting rollbacks with no new
            best validation loss before the newest loss becomes the reference.
        spike_patience: spikes in a row that only skip their step before the next rolls back (0: the
            first spike rolls back). One: a lone corrupted batch leaves the weights unharmed.
        overfit_gl: the validation loss must rise above its best by this fraction of the best's
            magnitude (Prechelt's generalization loss for losses bounded below by 0); ``None``
            disables the overfitting rollback. Prechelt's criteria use 1-5%; minibatch-sized
            validation sets cross that by noise.
        overfit_min_fraction: ... and by this fraction of the starting loss's magnitude: at near-zero
            losses a ratio of two losses is noise.
        overfit_noise: ... and by this many robust standard deviations of the validation loss's
            evaluation-to-evaluation noise (the best of many noisy evaluations is itself a low draw).
        overfit_min_evaluations: evaluations before the overfitting rollback may act. The noise of
            fewer than ``VAL_NOISE_MIN`` is unknown: below that the noise term counts as 0, so a value
            under ``VAL_NOISE_MIN`` trusts the first evaluations as they are.
        overfit_persistence: a rise above the first two thresholds but within the noise counts too once it
            lasts this many evaluations in a row; 0 (the default) never. Off by default: a noisy validation
            loss whose best was a lucky low reading sits above it at almost every evaluation (measured in
            the noisy-validation run of ``experiments/noisy_runs.py``: 2 rollbacks, 3.8x the bare optimizer's error);
            a small but clean validation set that overfits gains from it (a 250-step wine MLP: 0.34 against
            0.68 without, docs/results.md).
        overfit_backoff: after an overfitting rollback the lr multiplier is this factor times the
            smaller of its value now and its value when the best weights were taken.
        restart_window: updates after the start (or a restart) during which a blow-up restarts the run
            from its starting weights (:mod:`chuck.core.restart`); 0 disables restarts.
        restart_rise: a blow-up: the median of the last five losses exceeds the median of the first five
            by this multiple of its magnitude (and by the loss's noise).
        restart_factor: each restart multiplies the lr multiplier by this (a cut that stays).
        max_restarts: restarts at most.
    """

    spike_factor: float = 10.0
    tail_factor: float = 2.0
    min_spike_fraction: float = 0.1
    min_history: int = 20
    window: int = 100
    noisy_share: float = 0.05
    snapshot_every: int = 50
    healthy_factor: float = 3.0
    backoff: float = 0.5
    recovery_steps: int = 100
    max_rollbacks_in_a_row: int = 3
    spike_patience: int = 1
    overfit_gl: float | None = 0.2
    overfit_min_fraction: float = 0.05
    overfit_noise: float = 5.0
    overfit_min_evaluations: int = VAL_NOISE_MIN
    overfit_persistence: int = 0
    overfit_backoff: float = 0.5
    restart_window: int = 50
    restart_rise: float = 1.0
    restart_factor: float = 0.1
    max_restarts: int = 3

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"GuardrailConfig.{name} must be a finite number, got {v!r}")
            return float(v)

        if number("spike_factor") <= 1:
            raise ValueError(f"spike_factor must be > 1, got {self.spike_factor}")
        if number("tail_factor") < 1:
            raise ValueError(f"tail_factor must be >= 1, got {self.tail_factor}")
        if not (0 < number("backoff") <= 1):
            raise ValueError(f"backoff must be in (0, 1], got {self.backoff}")
        if not (0 < number("noisy_share") <= 1):
            raise ValueError(f"noisy_share must be in (0, 1], got {self.noisy_share}")
        for name in ("min_spike_fraction", "healthy_factor", "overfit_min_fraction", "overfit_noise", "restart_rise"):
            if number(name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, low in (
            ("snapshot_every", 0),
            ("recovery_steps", 0),
            ("min_history", 1),
            ("window", 2),
            ("restart_window", 0),
            ("max_restarts", 0),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if isinstance(self.max_rollbacks_in_a_row, bool) or not isinstance(self.max_rollbacks_in_a_row, int):
            raise ValueError(f"max_rollbacks_in_a_row must be an integer, got {self.max_rollbacks_in_a_row!r}")
        if self.max_rollbacks_in_a_row < 1:
            raise ValueError(f"max_rollbacks_in_a_row must be >= 1, got {self.max_rollbacks_in_a_row}")
        for name in ("spike_patience", "overfit_min_evaluations", "overfit_persistence"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if self.spike_patience >= self.max_rollbacks_in_a_row:
            raise ValueError(
                f"spike_patience ({self.spike_patience}) must be below max_rollbacks_in_a_row ({self.max_rollbacks_in_a_row}): "
                "a spike streak that long is accepted as a new loss level"
            )
        if self.overfit_gl is not None and not number("overfit_gl") > 0:
            raise ValueError(f"overfit_gl must be > 0 (or None to disable), got {self.overfit_gl}")
        if not (0 < number("overfit_backoff") <= 1):
            raise ValueError(f"overfit_backoff must be in (0, 1], got {self.overfit_backoff}")
        if not (0 < number("restart_factor") < 1):
            raise ValueError(f"restart_factor must be in (0, 1), got {self.restart_factor}")


class Guardrails:
    """Judges each step and each validation loss, keeps the snapshots and the lr debt.

    It never touches the lr itself: every judgement returns a :class:`Response` that the optimizer
    carries out (``ActionSpec`` alone moves a multiplier).
    """

    def __init__(self, config: GuardrailConfig | None = None) -> None:
        self.config = config or GuardrailConfig()
        self._spike = Snapshot()  # the last healthy state, for spike and non-finite rollbacks
        cfg = self.config
        self.start = StartGuard(cfg.restart_window, cfg.restart_rise, cfg.max_restarts)
        self.best = Snapshot()  # the best validation loss's state, for the overfitting rollback
        self.best_val = math.inf
        self.last_val = math.nan  # the validation loss judged last (for the rollback's record)
        self.best_lr_mult = 1.0
        self.overfit_rollbacks = 0
        self.overfit_in_a_row = 0
        self.val_rises_in_a_row = 0  # evaluations in a row above the best by more than the plain thresholds
        self.skips = 0
        self.rollbacks = 0
        self.amp_overflows = 0  # GradScaler skips: counted, never backed off (routine in AMP)
        self.spikes_in_a_row = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_rolled_back = False  # the current non-finite streak has had its rollback
        self.good_in_a_row = 0
        self.debt = 0.0  # log of the recoverable lr cuts not yet undone
        self.streak_debt = 0.0  # the part of it the current spike streak made
        self.exceed_share = 0.0  # running share of losses above spike_factor x the median
        self.noisy = False  # the spike test stands aside (see ``noisy_share``)
        self._losses: deque[float] = deque(maxlen=self.config.window)
        self._median = math.nan
        self._max = math.nan
        self._fresh_for = 0  # losses added since the median and maximum were computed
        self._vals: deque[float] = deque(maxlen=VAL_NOISE_WINDOW)
        self._snapshot_pending = False

    # -- the loss's recent distribution ------------------------------------
    @property
    def history(self) -> int:
        """How many recent losses the spike tests read."""
        return len(self._losses)

    def recent_median(self) -> float:
        """The median of the recent losses (``nan`` before any)."""
        self._refresh()
        return self._median

    def _refresh(self) -> None:
        if self._fresh_for == 0 and not math.isnan(self._median):
            return
        if not self._losses:
            self._median = self._max = math.nan
        elif self._fresh_for >= REFRESH_EVERY or math.isnan(self._median):
            self._median, self._max = median(self._losses), max(self._losses)
            self._fresh_for = 0

    def _add_loss(self, loss: float) -> None:
        self._losses.append(loss)
        self._fresh_for += 1
        if not math.isnan(self._max):
            self._max = max(self._max, loss)

    def reset_reference(self) -> None:
        """Forget the recent losses: the loss level moved for good."""
        self._losses.clear()
        self._median = self._max = math.nan
        self._fresh_for = 0
        self.exceed_share = 0.0
        self.noisy = False

    # -- a step ----------------------------------------------------------
    def check(self, loss: float | None, grad_norm: float, initial_loss: float = math.nan) -> Verdict:
        """Judge one step from its loss (``None`` when the user gave none) and global grad norm."""
        if not math.isfinite(grad_norm):
            return Verdict.SKIP_NONFINITE
        if loss is None:
            return Verdict.OK
        if not math.isfinite(loss):
            return Verdict.SKIP_NONFINITE
        cfg = self.config
        if len(self._losses) < cfg.min_history:
            return Verdict.OK
        self._refresh()
        m = self._median
        above_ratio = m > 0 and loss > cfg.spike_factor * m
        if m > 0:  # the running share of routine "spikes": one per step, a window's worth of memory
            self.exceed_share += (float(above_ratio) - self.exceed_share) / cfg.window
            self.noisy = self.exceed_share > cfg.noisy_share
        if self.noisy or not (above_ratio or m <= 0):
            return Verdict.OK
        floor = cfg.min_spike_fraction * initial_loss if initial_loss > 0 else -math.inf
        excursion = max(self._max - m, 0.0)
        if loss - m > cfg.tail_factor * excursion and loss > floor and loss > m:
            return Verdict.SPIKE
        return Verdict.OK

    def respond(self, verdict: Verdict, loss: float | None, grad_norm: float, params: Sequence[torch.Tensor]) -> Response:
        """The response to a non-OK verdict, updating the streaks (see the module docstring)."""
        cfg = self.config
        self.good_in_a_row = 0
        if self._spike.exists and not self._spike.covers(params):
            self._spike.drop()  # the trainable set changed since: a rollback would be partial
        if verdict is Verdict.SKIP_NONFINITE:
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= cfg.max_rollbacks_in_a_row and self._spike.exists and not self.nonfinite_rolled_back:
                self.nonfinite_rolled_back = True
                self.rollbacks += 1
                why = (
                    f"loss={loss}, grad_norm={grad_norm}, non-finite {self.nonfinite_in_a_row} steps in a row "
                    f"(the weights themselves may overflow); restored step {self._spike.step}"
                )
                return Response(Action.ROLLBACK_NONFINITE, "spike", cfg.backoff, reason=f"rollback_nonfinite: {why}")
            self.skips += 1
            return Response(
                Action.SKIP_NONFINITE,
                lr_factor=cfg.backoff,
                reason=f"skip_nonfinite: loss={loss}, grad_norm={grad_norm}; step skipped, weights untouched",
            )
        self.spikes_in_a_row += 1
        m = self._median
        if self.spikes_in_a_row >= cfg.max_rollbacks_in_a_row:
            repay, self.streak_debt = self.streak_debt, 0.0
            self.spikes_in_a_row = 0
            self.skips += 1
            self.reset_reference()
            self.start.new_level()
            return Response(
                Action.ACCEPT_LEVEL_SHIFT,
                lr_factor=math.exp(repay),
                reset_loss_reference=True,
                reason=(
                    f"accept_level_shift: loss {loss:.4g} stayed far above the old median {m:.4g} "
                    f"{cfg.max_rollbacks_in_a_row} steps in a row; spike reference reset, the streak's lr cut undone"
                ),
            )
        if self.spikes_in_a_row <= cfg.spike_patience or not self._spike.exists:
            self.skips += 1
            return Response(
                Action.SKIP_SPIKE,
                reason=f"skip_spike: loss {loss:.4g} far outside the recent losses (median {m:.4g}); step skipped",
            )
        self.rollbacks += 1
        return Response(
            Action.ROLLBACK_SPIKE,
            "spike",
            cfg.backoff,
            reason=(
                f"rollback_spike: loss {loss:.4g} far outside the recent losses (median {m:.4g}) "
                f"{self.spikes_in_a_row} steps in a row; restored step {self._spike.step}"
            ),
        )

    def blew_up(self, loss: float | None, grad_norm: float, params: Sequence[torch.Tensor]) -> Response | None:
        """The restart of a run whose first steps blew up (:mod:`chuck.core.restart`), or ``None``."""
        why = self.start.check(loss, grad_norm)
        if why is None or not self.start.can_restore(params):
            return None
        cfg = self.config
        self.debt = self.streak_debt = 0.0  # the cuts that led here were about the lr, and stay
        self.spikes_in_a_row = self.nonfinite_in_a_row = 0
        self.nonfinite_rolled_back = False
        self.reset_reference()
        n = self.start.restarts + 1
        return Response(
            Action.RESTART,
            "start",
            cfg.restart_factor,
            recoverable=False,
            reset_loss_reference=True,
            reason=f"restart: blow-up in the first steps ({why}); starting weights restored (restart {n} of at most {cfg.max_restarts})",
        )

    def charged(self, response: Response, applied: float) -> None:
        """Record the lr factor the optimizer actually applied for ``response`` (bounds may clip it)."""
        if not (applied > 0 and math.isfinite(applied)) or not response.recoverable:
            return
        change = math.log(applied)
        self.debt = max(0.0, self.debt - change)
        if response.action is Action.ACCEPT_LEVEL_SHIFT:
            return
        if response.action in (Action.ROLLBACK_SPIKE, Action.SKIP_SPIKE):
            self.streak_debt -= change

    def repaid(self, asked: float, applied: float) -> None:
        """Record a repayment: ``applied`` of the ``asked`` factor (bounds, or the policy's own raises
        since the cut, may have left no room: then the debt is forgiven)."""
        if applied > 0 and math.isfinite(applied):
            self.debt = max(0.0, self.debt - math.log(applied))
        if applied < asked * (1.0 - 1e-9):
            self.debt = 0.0

    def good_step(self, step: int, loss: float | None) -> float:
        """A step passed every check and was taken: streaks end, the loss joins the reference.

        Returns the lr factor (>= 1) that repays part of the guardrails' debt this step."""
        self.spikes_in_a_row = 0
        self.streak_debt = 0.0
        self.nonfinite_in_a_row = 0
        self.nonfinite_rolled_back = False
        self.good_in_a_row += 1
        cfg = self.config
        if loss is not None:
            self._add_loss(loss)
        every = cfg.snapshot_every
        if every > 0 and step % every == 0:
            self._snapshot_pending = True
        if self.debt <= 0.0 or cfg.recovery_steps == 0:
            return 1.0
        return math.exp(min(self.debt, math.log(1.0 / cfg.backoff) / cfg.recovery_steps))

    # -- snapshots --------------------------------------------------------
    def snapshot_due(self, loss: float | None) -> bool:
        """Whether to snapshot now: one is pending and the loss is healthy (not far above its median)."""
        if not self._snapshot_pending:
            return False
        m = self.recent_median()
        return loss is None or not (m > 0) or loss <= self.config.healthy_factor * m

    def snapshot(self, step: int, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        self._spike.take(step, params, optimizer)
        self._snapshot_pending = False

    def drop_snapshot(self) -> None:
        """Forget the snapshots (the trainable set changed: a rollback would be partial)."""
        self._spike.drop()
        self.best.drop()
        self.start.drop()

    def covers(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether the spike snapshot holds exactly these parameters (a layer unfrozen since: no)."""
        return self._spike.covers(params)

    @property
    def has_snapshot(self) -> bool:
        return self._spike.exists

    @property
    def snapshot_step(self) -> int | None:
        return self._spike.step

    def restore(
        self,
        which: str,
        params: Sequence[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        buffers: Sequence[torch.Tensor] = (),
    ) -> None:
        """Put parameters and optimizer state back to the ``"spike"``, ``"best"`` or ``"start"`` snapshot.

        After the best one, the spike snapshot becomes the restored state: it held the overfitted
        weights, and a spike rollback to them would undo this one."""
        if which == "best":
            self.best.restore(params, optimizer, buffers)
            self._spike.take(self.best.step or 0, params, optimizer)
        elif which == "start":
            self.start.restore(params, optimizer, buffers)
            self._spike.take(0, params, optimizer)
            # the validation losses so far belong to the run that blew up: its best is no rollback target
            self.best.drop()
            self.best_val, self.last_val = math.inf, math.nan
            self._vals.clear()
            self.overfit_in_a_row = self.val_rises_in_a_row = 0
        else:
            self._spike.restore(params, optimizer)

    # -- the overfitting rollback --------------------------------------------
    def val_noise(self) -> float:
        """A robust standard deviation of the validation loss's noise between evaluations: the median
        absolute second difference, which a linear trend leaves out and a single turn of the curve (the
        best itself) does not move; 0 before ``VAL_NOISE_MIN`` evaluations (unknown: see
        ``GuardrailConfig.overfit_min_evaluations``)."""
        v = list(self._vals)
        if len(v) < VAL_NOISE_MIN:
            return 0.0
        second = [abs(v[i + 1] - 2 * v[i] + v[i - 1]) for i in range(1, len(v) - 1)]
        return _MAD_TO_SD * median(second)

    def judge_validation(self, val_loss: float, initial_loss: float) -> ValidationVote:
        """What a finite validation loss asks of the next step (see the module docstring).

        A new best asks for a snapshot of the weights it was measured on; a rise beyond noise asks
        for the best snapshot back. After ``max_rollbacks_in_a_row`` rollbacks with no new best the
        best was a lucky evaluation or the task's level moved: this loss becomes the reference (and
        its weights the snapshot) instead of rolling back forever.
        """
        cfg = self.config
        self.last_val = val_loss
        self._vals.append(val_loss)
        if cfg.overfit_gl is None:
            return ValidationVote.NONE
        if val_loss < self.best_val:
            self.best_val, self.overfit_in_a_row, self.val_rises_in_a_row = val_loss, 0, 0
            return ValidationVote.SNAPSHOT
        start = abs(initial_loss) if math.isfinite(initial_loss) else 0.0
        rise = val_loss - self.best_val
        plain = max(cfg.overfit_gl * abs(self.best_val), cfg.overfit_min_fraction * start)
        self.val_rises_in_a_row = self.val_rises_in_a_row + 1 if rise > plain else 0
        if len(self._vals) < cfg.overfit_min_evaluations:
            return ValidationVote.NONE  # the noise is not known yet
        beyond_noise = rise > max(plain, cfg.overfit_noise * self.val_noise())
        lasting = 0 < cfg.overfit_persistence <= self.val_rises_in_a_row
        if not (beyond_noise or lasting) or not self.best.exists:
            return ValidationVote.NONE
        if self.overfit_in_a_row >= cfg.max_rollbacks_in_a_row:
            self.best_val, self.overfit_in_a_row = val_loss, 0
            return ValidationVote.SNAPSHOT
        return ValidationVote.RESTORE

    def respond_to_vote(self, vote: int, params: Sequence[torch.Tensor], lr_mult: float) -> Response | None:
        """The response to an agreed validation vote: ``None`` for a snapshot (the optimizer takes it
        with :meth:`take_best`) or when the best snapshot no longer covers the trainable set."""
        if vote != ValidationVote.RESTORE:
            return None
        if not self.best.covers(params):
            self.best.drop()  # the trainable set changed since: a rollback would be partial
            return None
        cfg = self.config
        target = min(lr_mult, self.best_lr_mult) * cfg.overfit_backoff
        self.overfit_rollbacks += 1
        self.overfit_in_a_row += 1
        self.val_rises_in_a_row = 0  # the next rollback needs evidence of its own
        return Response(
            Action.ROLLBACK_OVERFIT,
            "best",
            target / lr_mult,
            recoverable=False,
            reset_loss_reference=True,
            reason=(
                f"rollback_overfit: validation loss {self.last_val:.4g} rose beyond its noise above its best "
                f"{self.best_val:.4g}; restored the weights of step {self.best.step}"
            ),
        )

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
            "debt": self.debt,
            "streak_debt": self.streak_debt,
            "exceed_share": self.exceed_share,
            "noisy": self.noisy,
            "losses": list(self._losses),
            "fresh_for": self._fresh_for,
            "vals": list(self._vals),
            "snapshot_pending": self._snapshot_pending,
            "start": self.start.state_dict(),
            "snapshot_step": self._spike.step,
            "snap_params": params,
            "snap_state": state,
            "overfit": {
                "rollbacks": self.overfit_rollbacks,
                "in_a_row": self.overfit_in_a_row,
                "rises_in_a_row": self.val_rises_in_a_row,
                "best_val": self.best_val,
                "last_val": self.last_val,
                "lr_mult": self.best_lr_mult,
                "step": self.best.step,
                "params": best_params,
                "state": best_state,
                "buffers": [b.clone() for b in self.best.buffers],
            },
        }

    def validate_state_dict(
        self, state: Any, params: Sequence[torch.Tensor], reference: Sequence[dict[str, Any] | None] | None = None
    ) -> str | None:
        """Why ``state`` cannot be loaded for these parameters (``None`` when it can): every field
        is checked, so that a load either takes all of it or nothing.

        ``reference``: per parameter (in the order of ``params``), the base optimizer's state that the
        snapshots' optimizer state must resemble (the same keys, tensors of the same dtype and shape);
        ``None``, or ``None`` for a parameter: only generic checks (finite tensors shaped like the
        parameter or scalars)."""
        if not isinstance(state, dict):
            return f"guardrails must be a dict, got {type(state).__name__}"
        for key in ("skips", "rollbacks", "amp_overflows", "spikes_in_a_row", "nonfinite_in_a_row", "good_in_a_row"):
            if key in state and not _count(state[key]):
                return f"guardrails.{key} must be a non-negative integer, got {state[key]!r}"
        start = state.get("start", {})
        if not isinstance(start, dict) or ("restarts" in start and not _count(start["restarts"])):
            return f"guardrails.start must be a dict with a non-negative integer 'restarts', got {start!r}"
        for key in ("skips", "rollbacks", "spikes_in_a_row", "snapshot_pending", "snapshot_step", "snap_params", "snap_state"):
            if key not in state:
                return f"guardrails.{key} is missing"
        for key in ("debt", "streak_debt", "exceed_share"):
            if key in state and not _finite(state[key]):
                return f"guardrails.{key} must be a finite number, got {state[key]!r}"
        for key in ("nonfinite_rolled_back", "noisy", "snapshot_pending"):
            if key in state and not isinstance(state[key], bool):
                return f"guardrails.{key} must be True or False, got {state[key]!r}"
        for key in ("losses", "vals"):
            if key in state and not (isinstance(state[key], list) and all(_finite(v) for v in state[key])):
                return f"guardrails.{key} must be a list of finite numbers"
        if "fresh_for" in state and not _count(state["fresh_for"]):
            return f"guardrails.fresh_for must be a non-negative integer, got {state['fresh_for']!r}"
        over = state.get("overfit")
        if over is not None and not isinstance(over, dict):
            return "guardrails.overfit must be a dict"
        over = over or {}
        for key in ("rollbacks", "in_a_row", "rises_in_a_row"):
            if key in over and not _count(over[key]):
                return f"guardrails.overfit.{key} must be a non-negative integer, got {over[key]!r}"
        if "best_val" in over and not (
            _number(over["best_val"]) and not math.isnan(over["best_val"]) and over["best_val"] != -math.inf
        ):
            return f"guardrails.overfit.best_val must be a number or inf, got {over['best_val']!r}"
        if "last_val" in over and not (_number(over["last_val"]) and abs(over["last_val"]) != math.inf):  # NaN: none yet
            return f"guardrails.overfit.last_val must be a finite number or NaN, got {over['last_val']!r}"
        if "lr_mult" in over and not (_finite(over["lr_mult"]) and over["lr_mult"] > 0):
            return f"guardrails.overfit.lr_mult must be a positive number, got {over['lr_mult']!r}"
        if "buffers" in over and not (
            isinstance(over["buffers"], list) and all(isinstance(b, torch.Tensor) for b in over["buffers"])
        ):
            return "guardrails.overfit.buffers must be a list of tensors"
        for name, step, snap, snap_state in (
            ("rollback", state["snapshot_step"], state["snap_params"], state["snap_state"]),
            ("best-validation", over.get("step"), over.get("params"), over.get("state")),
        ):
            why = _snapshot_problem(name, step, snap, snap_state, params, reference)
            if why:
                return why
        return None

    def load_state_dict(self, state: dict[str, Any], params: Sequence[torch.Tensor]) -> None:
        """Load a state :meth:`validate_state_dict` accepted; the snapshots bind to ``params``."""
        self.skips, self.rollbacks = state["skips"], state["rollbacks"]
        self.amp_overflows = int(state.get("amp_overflows", 0))
        self.spikes_in_a_row, self._snapshot_pending = state["spikes_in_a_row"], state["snapshot_pending"]
        self.good_in_a_row = int(state.get("good_in_a_row", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.nonfinite_rolled_back = bool(state.get("nonfinite_rolled_back", False))
        self.debt = float(state.get("debt", 0.0))
        self.streak_debt = float(state.get("streak_debt", 0.0))
        self.exceed_share = float(state.get("exceed_share", 0.0))
        self.noisy = bool(state.get("noisy", False))
        self._losses = deque((float(v) for v in state.get("losses", [])), maxlen=self.config.window)
        self._fresh_for = int(state.get("fresh_for", 0))
        self._median = self._max = math.nan
        if self._losses:  # recomputed as the uninterrupted run had them: from the window as it stood then
            stale = list(self._losses)[: len(self._losses) - self._fresh_for] or list(self._losses)
            self._median, self._max = median(stale), max(self._losses)
            if self._fresh_for == 0 or len(stale) == len(self._losses):
                self._median = median(self._losses)
        self._vals = deque((float(v) for v in state.get("vals", [])), maxlen=VAL_NOISE_WINDOW)
        self._spike.load(state["snapshot_step"], state["snap_params"], state["snap_state"], params)
        self.start.load_state_dict(state.get("start") or {})
        over = state.get("overfit") or {}  # absent in checkpoints from before the overfitting rollback
        self.overfit_rollbacks = int(over.get("rollbacks", 0))
        self.overfit_in_a_row = int(over.get("in_a_row", 0))
        self.val_rises_in_a_row = int(over.get("rises_in_a_row", 0))
        self.best_val = float(over.get("best_val", math.inf))
        self.last_val = float(over.get("last_val", math.nan))
        self.best_lr_mult = float(over.get("lr_mult", 1.0))
        self.best.load(over.get("step"), over.get("params"), over.get("state"), params)
        self.best.buffers = [b.clone() for b in over.get("buffers") or []]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _number(v) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _snapshot_problem(
    name: str,
    step: Any,
    snap: Any,
    state: Any,
    params: Sequence[torch.Tensor],
    reference: Sequence[dict[str, Any] | None] | None = None,
) -> str | None:
    """Why a saved snapshot cannot be bound to ``params`` (``None`` when it can); its optimizer state is
    checked against ``reference`` (see :meth:`Guardrails.validate_state_dict`)."""
    if snap is None:
        return None if state is None else f"the {name} snapshot has optimizer state but no parameters"
    if not _count(step):
        return f"the {name} snapshot's step must be a non-negative integer, got {step!r}"
    if not (isinstance(snap, list) and all(isinstance(t, torch.Tensor) for t in snap)):
        return f"the {name} snapshot must be a list of tensors"
    want = [tuple(p.shape) for p in params]
    if [tuple(t.shape) for t in snap] != want:
        return f"the {name} snapshot holds {len(snap)} tensors of other shapes than the model's {len(want)}: another model?"
    if any(t.dtype != p.dtype for t, p in zip(snap, params)):
        return f"the {name} snapshot's dtypes differ from the model's"
    if any(not bool(torch.isfinite(t).all()) for t in snap if t.is_floating_point()):
        return f"the {name} snapshot holds non-finite weights"
    if state is None:
        return None
    if not isinstance(state, dict):
        return f"the {name} snapshot's optimizer state must be a dict"
    for i, entry in state.items():
        try:
            index = int(i)
        except (TypeError, ValueError):
            return f"the {name} snapshot's optimizer state is keyed by {i!r}, not a parameter position"
        if not (0 <= index < len(params)) or not isinstance(entry, dict):
            return f"the {name} snapshot's optimizer state names parameter {i!r} of {len(params)}"
        ref = reference[index] if reference is not None and index < len(reference) else None
        for k, v in entry.items():
            if ref is not None and k not in ref:
                return f"the {name} snapshot's state {k!r} of parameter {index} is not one the optimizer keeps ({sorted(ref)})"
            if not _like(v, ref[k] if ref is not None else None, params[index]):
                what = f"a {v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)[:60]
                return f"the {name} snapshot's state {k!r} of parameter {index} is {what}, unlike the optimizer's"
        if ref is not None and set(ref) - set(entry):
            return f"the {name} snapshot's state of parameter {index} lacks {sorted(set(ref) - set(entry))}"
    return None


def _like(v: Any, ref: Any, param: torch.Tensor, within: bool = False) -> bool:
    """Whether a snapshot's optimizer-state value can stand where the optimizer keeps ``ref`` (``None``:
    unknown): a finite tensor of ``ref``'s dtype and shape (within a list, such as LBFGS's history: its
    dtype and number of dimensions), a list of such, or a plain value of ``ref``'s type. Without ``ref``: a
    finite tensor shaped like the parameter or a scalar, a list of tensors, a number, a flag or ``None``."""
    if isinstance(v, torch.Tensor):
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            return False
        if ref is None:
            return v.dim() == 0 or v.shape == param.shape
        return (
            isinstance(ref, torch.Tensor) and v.dtype == ref.dtype and (v.dim() == ref.dim() if within else v.shape == ref.shape)
        )
    if isinstance(v, (list, tuple)):
        if ref is None:
            return all(isinstance(x, torch.Tensor) and _like(x, None, x, True) for x in v)
        return isinstance(ref, (list, tuple)) and (not ref or all(_like(x, ref[0], param, True) for x in v))
    if ref is None:
        return v is None or isinstance(v, bool) or _finite(v)
    if _number(ref):
        return _finite(v)
    return type(v) is type(ref)
