"""Advice said once a run: what in the user's loop needs attention, as a ``RuntimeWarning`` at their ``opt.step``.

Each topic is said at most once per run, and only while advice is on (``ChuckOptimizer.advise``; off in
meta-training, benchmark runs and loops that have nobody to read it). Every warning points at the first
frame outside chuck, the line of the user's loop that called ``opt.step``.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from chuck.core.guardrails import NONFINITE_WARN_AFTER, Guardrails


def caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside chuck: the user's ``opt.step``
    line, however many of chuck's own frames lie between (a closure-driven step adds one)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "chuck":
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


class Advisor:
    """The topics one run has been told, and the words for each."""

    def __init__(self) -> None:
        self.enabled = True
        self.told: set[str] = set()

    def due(self, topic: str) -> bool:
        """Whether to say ``topic`` now: advice is on and this run has not heard it yet (it is marked heard)."""
        if not self.enabled or topic in self.told:
            return False
        self.told.add(topic)
        return True

    @staticmethod
    def say(text: str) -> None:
        warnings.warn(f"chuck: {text}", RuntimeWarning, stacklevel=caller_level())

    def step_after_close(self) -> None:
        if self.due("closed"):
            self.say(
                "step() after close(): the run's history record was written when it closed and leaves out "
                "these steps; for a new run, wrap the base optimizer again (opt.optimizer)"
            )

    def no_loss(self, steps: int) -> None:
        """No step came with its loss by the first decision: the loss monitors, the spike guardrail and the
        policy's loss inputs are blind (``experiments/loss_blind.py`` measures what that costs)."""
        if self.due("no_loss"):
            self.say(
                f"{steps} steps and no loss: step() was called without it, so chuck's loss monitors, its "
                "spike guardrail and the policy's loss inputs see nothing (the default policy trains worse blind). "
                "Call opt.step(loss=loss) or opt.step(closure), or opt.record_loss(loss) before a step() you do not "
                "call yourself (GradScaler.step, a framework's loop)."
            )

    def past_budget(self, step: int, total_steps: Any) -> None:
        """The run went past ``total_steps``: the policy's end-of-run schedule assumed it ends there. Said
        whenever asked (the optimizer asks once, at the first step past the budget)."""
        self.say(
            f"step {step} is past total_steps={total_steps}; the policy planned the end of the "
            "run (its cooldown or anneal) for that step, and what it does after is not what it was trained for. "
            "Pass the number of optimizer steps the run will take (with gradient accumulation: the number of "
            "step() calls, not of batches)."
        )

    def mostly_out_of_distribution(self, controller: Any) -> None:
        """After a decision: once the run's decisions are mostly out-of-distribution fallbacks (the
        controller's :attr:`~chuck.core.controller.Controller.mostly_out_of_distribution`), the learned
        policy is not what steers it, which nothing else in the loop shows."""
        if controller.mostly_ood_at is not None and self.due("mostly_ood"):
            self.say(controller.out_of_distribution_text())

    def noisy_loss(self, g: Guardrails) -> None:
        if self.due("noisy_loss"):
            self.say(
                f"more than {g.config.noisy_share:.0%} of recent losses are over {g.config.spike_factor:g}x their "
                "median (tiny batches, mixed tasks or noisy labels): the spike guardrail stands aside while the run "
                "is this noisy; non-finite steps are still skipped."
            )

    def nonfinite_streak(self, g: Guardrails, lr_mult: float) -> None:
        """Every recent step was non-finite: training has stopped, and why is usually not the step size."""
        if not self.due("nonfinite"):
            return
        if g.nonfinite_rolled_back:
            tried = f"the weights went back to the snapshot of step {g.snapshot_step} once, which did not help"
        elif g.has_snapshot:
            tried = "no rollback was tried yet"
        else:
            tried = "there was no snapshot to roll back to yet"
        self.say(
            f"the last {NONFINITE_WARN_AFTER} steps all had a non-finite loss or gradient norm and were "
            f"skipped (the lr multiplier is down to x{lr_mult:.3g}); {tried}. "
            "If the loss is non-finite at any lr, look at the loss or the data (log of 0, division by 0, NaN "
            "inputs); if the weights overflowed in the first steps, start from a lower lr."
        )
