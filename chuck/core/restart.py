"""Restart a run that blows up in its first steps: back to its starting weights, at a tenth of the lr.

A start far above a workable lr does its damage in the first few updates, before the first decision
can lower anything, and no later decision undoes it: the weights have grown, units have died, Adam's
moments hold the blow-up's gradients (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate
and Beyond"). A practitioner who sees the loss climb at once starts over with a ten-times-lower lr;
this guard does that, inside the run:

* before the run's first update it keeps the starting state (the weights, and with ``model=`` the
  model's buffers; the optimizer has no state yet, so going back to it also restarts Adam's moments);
* during the first ``restart_window`` updates after the start (or a restart), a **blow-up** is the
  median of the last :data:`WIDTH` losses above the median of the first :data:`WIDTH` (the starting
  level; one lucky first minibatch is not) by more than ``restart_rise`` times its magnitude (twice the
  starting level, for a positive loss) and by more than :data:`NOISE` robust standard deviations of the
  loss's step-to-step noise. Only steps the other guardrails let through count: a sudden jump is a
  spike (skipped, and a lasting one accepted as a new level, from which the rise is judged again); a
  blow-up climbs over several steps. Non-finite steps are the guardrails' (skipped, and a
  streak of them rolls back to the last snapshot, which in the first steps is this same starting
  state): one NaN from a corrupted batch says nothing about the lr;
* at a blow-up the starting state comes back, the lr multiplier is multiplied by ``restart_factor``
  (a cut that stays: the lr that blew up would blow up again) and the window starts over, at most
  ``max_restarts`` times; then the window ends and the guardrails' other tests carry on. The warm-up
  is not run again: the restart's lr is a decade below the one that blew up, and the best validation
  loss seen so far (the blown-up run's) is forgotten.

The threshold is the run's own starting level, so a healthy start does not reach it: on the 22 train
families, the bare optimizer (AdamW, and SGD with momentum) under the default's 20-step warm-up from a
decade below to three decades above each family's best lr (220 starts), this test, fed every loss of
the first 50 updates, fired on none of the 120 starts that ended within 2x of the best final loss, and
on 50 of the 74 that ended 5x above it or diverged (12 more went non-finite without firing first, which
the non-finite rollback handles; ``experiments/start_blowup_signals.py``,
docs/results/start_blowup_signals.csv). A loss that rises by the task's nature (a value function whose
targets grow as the policy improves) could cross it; a restart costs such a run the steps since its
start and a decade of lr, which the policy's raises can win back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median
from typing import Any

import torch

from chuck.core.snapshot import Snapshot

#: Losses per median: one minibatch's loss is noise, five in a row above twice the start are not.
WIDTH = 5
#: The rise must also exceed this many robust standard deviations of the step-to-step loss noise.
NOISE = 3.0


def robust_noise(losses: Sequence[float]) -> float:
    """A robust standard deviation of one loss's noise: 1.4826 x the median absolute step-to-step change,
    over sqrt(2) (a difference of two independent draws); a trend or the jump of a blow-up moves the
    median of the changes little."""
    d = [abs(b - a) for a, b in zip(losses, losses[1:])]
    return 1.4826 * median(d) / math.sqrt(2.0) if d else 0.0


class StartGuard:
    """The blow-up test of a run's first steps and the starting state it goes back to; one per run.

    Args:
        window: updates after the start (or a restart) during which a blow-up restarts the run; 0: never.
        rise: a blow-up: the recent median loss exceeds the starting level (the median of the first
            :data:`WIDTH`) by this multiple of its magnitude.
        max_restarts: restarts at most; after the last the guard ends.
    """

    def __init__(self, window: int, rise: float, max_restarts: int) -> None:
        self.window, self.rise, self.max_restarts = int(window), float(rise), int(max_restarts)
        self.active = self.window > 0 and self.max_restarts > 0
        self.restarts = 0
        self.updates = 0  # updates since the start or the last restart
        self.losses: list[float] = []  # since the start or the last restart
        self._start = Snapshot()

    def begin(self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, buffers: Sequence[torch.Tensor]) -> None:
        """Keep the starting state (called before the run's first update)."""
        if self.active and not self._start.exists:
            self._start.take(0, params, optimizer, buffers)

    def check(self, loss: float | None, grad_norm: float) -> str | None:
        """Judge the weights that produced ``loss`` before they are updated: why they blew up, or ``None``."""
        if not self.active or not self._start.exists or loss is None or not math.isfinite(loss):
            return None
        self.losses.append(float(loss))
        if len(self.losses) <= WIDTH:
            return None
        first = median(self.losses[:WIDTH])
        m = median(self.losses[-WIDTH:])
        if m - first > max(self.rise * abs(first), NOISE * robust_noise(self.losses)):
            return f"median of the last {WIDTH} losses {m:.4g}, of the first {first:.4g}"
        return None

    def new_level(self) -> None:
        """The loss moved to another level for good (the guardrails accepted a level shift): judge the
        rise from there."""
        self.losses = []

    def updated(self) -> None:
        """One update was taken; at the end of the window the guard ends and frees its copy."""
        if not self.active:
            return
        self.updates += 1
        if self.updates >= self.window:
            self.finish()

    def restore(self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, buffers: Sequence[torch.Tensor]) -> None:
        """Go back to the starting state and open a new window (or end, after the last restart)."""
        self._start.restore(params, optimizer, buffers)
        self.restarts += 1
        self.updates, self.losses = 0, []
        if self.restarts >= self.max_restarts:
            self.finish()

    def can_restore(self, params: Sequence[torch.Tensor]) -> bool:
        return self._start.exists and self._start.covers(params)

    def finish(self) -> None:
        self.active = False
        self._start.drop()

    def drop(self) -> None:
        """The trainable set changed: before the first update the start is taken again, after it the guard ends
        (a restart would be partial)."""
        self._start.drop()
        if self.updates > 0 or self.restarts > 0:
            self.active = False

    # -- checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The counts only: a run resumed from a checkpoint has no start to go back to, so the guard ends."""
        return {"restarts": self.restarts}

    def fresh(self) -> StartGuard:
        """A guard with these settings and nothing seen (what a checkpoint loads into, so that a failed load
        can put this one back untouched)."""
        return StartGuard(self.window, self.rise, self.max_restarts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restarts = int(state.get("restarts", 0))
        self.finish()
