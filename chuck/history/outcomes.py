"""How a recorded run ended: ``ok``, ``diverged``, ``collapsed`` or ``unknown``.

One judgement, shared by the warm starts (:mod:`chuck.history.warm_start`, which leave
failed runs out and weight the rest by how they *ended*) and the ``chuck history``
table (its ``outcome`` column). Judging by the end matters: a run that reached a
good loss and then collapsed (final 1.44, best 0.62) once voted for its final,
far too high, lr as if it had gone well.

* ``diverged``: the record says so (non-finite weights or loss), or a final loss is
  infinite.
* ``collapsed``: the run ended far above the best it had reached: its final
  validation loss more than :data:`COLLAPSE_FACTOR` times its best validation loss,
  or its final training loss more than that many times its initial one.
* ``unknown``: no final loss was recorded (the loop never passed one to chuck).
* ``ok``: anything else.

A missing loss is NaN in a record (no validation reported); only infinities count
as divergence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: A run whose final loss is more than this many times its best (validation) or initial (training)
#: loss collapsed: 1.5 is far outside the noise of a finished run's last evaluation, and well short
#: of the 2.3x of the collapse that a user reported.
COLLAPSE_FACTOR = 1.5

#: The statuses a warm start leaves out.
FAILED = ("diverged", "collapsed")


@dataclass(frozen=True)
class RunOutcome:
    """How one recorded run ended.

    Attributes:
        status: ``"ok"``, ``"diverged"``, ``"collapsed"`` or ``"unknown"``.
        reason: the judgement in words (with the numbers it rests on).
        final_loss: the final validation loss, or the final training loss when the run
            reported no validation; ``None`` when neither was recorded.
        score: ``log(final_loss / initial training loss)``, lower is better; comparable across
            tasks with different loss scales. ``None`` without an initial loss (``chuck.tune``'s
            records) or a final one.
    """

    status: str
    reason: str
    final_loss: float | None
    score: float | None

    @property
    def failed(self) -> bool:
        return self.status in FAILED


def recorded_number(v: Any) -> float | None:
    """A recorded number, or None when absent (None, NaN, or not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def classify_run(row: dict[str, Any]) -> RunOutcome:
    """Judge one history row (a record as read by :func:`chuck.history.read_history`)."""
    final_val, best_val = recorded_number(row.get("outcome_final_val_loss")), recorded_number(row.get("outcome_best_val_loss"))
    final_train, initial = (
        recorded_number(row.get("outcome_final_train_loss")),
        recorded_number(row.get("outcome_initial_train_loss")),
    )
    final = final_val if final_val is not None else final_train
    score = None
    if (
        final is not None
        and initial is not None
        and final > 0
        and initial > 0
        and math.isfinite(final)
        and math.isfinite(initial)
    ):
        score = math.log(final / initial)

    def outcome(status: str, reason: str) -> RunOutcome:
        return RunOutcome(status, reason, final, score)

    if row.get("outcome_diverged") is True:
        return outcome("diverged", "the run diverged (non-finite weights or loss)")
    for name, v in (("validation", final_val), ("training", final_train)):
        if v is not None and math.isinf(v):
            return outcome("diverged", f"its final {name} loss is {v}")
    if final_val is not None and best_val is not None and best_val > 0 and final_val > COLLAPSE_FACTOR * best_val:
        return outcome(
            "collapsed",
            f"final validation loss {final_val:.4g} is {final_val / best_val:.2g}x its best {best_val:.4g}",
        )
    if final_train is not None and initial is not None and initial > 0 and final_train > COLLAPSE_FACTOR * initial:
        return outcome(
            "collapsed",
            f"final training loss {final_train:.4g} is {final_train / initial:.2g}x its initial {initial:.4g}",
        )
    if final is None:
        return outcome("unknown", "no final loss recorded")
    return outcome("ok", f"final {'validation' if final_val is not None else 'training'} loss {final:.4g}")
