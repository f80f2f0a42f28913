"""The one training loop over a zoo task instance.

The demo, tuning, the meta-environment, ``chuck evaluate`` and the benchmarks all
train a :class:`~chuck.zoo.task.TaskInstance` the way a user's loop trains a model::

    loss = instance.train_step()        # forward + backward
    opt.step(loss=loss)                 # ChuckOptimizer (or opt.step() for a bare optimizer)
    opt.zero_grad()
    scheduler.step()                    # if any
    every `eval_every` steps: v = instance.evaluate(); opt.observe(val_loss=v)

Keeping it here means a change to that loop (where ``observe`` sits, how a
scheduler steps) reaches every caller at once, and the env's episodes look like
the runs users make.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from chuck.zoo.task import TaskInstance


@dataclass
class LoopResult:
    """What :func:`train` did.

    Attributes:
        calls: ``opt.step`` calls made (guardrail-skipped steps included).
        val_steps, val_losses: the evaluations made, at which call.
        train_losses: every training loss, as a float (only when ``keep_train_losses``).
        stopped: ``True`` when ``until`` ended the loop before ``steps`` calls.
    """

    calls: int = 0
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    stopped: bool = False


def train(
    instance: TaskInstance,
    opt: torch.optim.Optimizer,
    steps: int,
    *,
    eval_every: int | None = None,
    observe: bool = True,
    scheduler: Any | None = None,
    until: Callable[[], bool] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    keep_train_losses: bool = False,
    start: int = 0,
) -> LoopResult:
    """Train ``instance`` for up to ``steps`` optimizer calls.

    Args:
        opt: a :class:`chuck.ChuckOptimizer` (the loss is passed as ``step(loss=...)``) or any
            torch optimizer (``step()``).
        eval_every: evaluate every this many calls (counted from ``start``); ``None`` never.
        observe: report each evaluation to ``opt.observe(val_loss=...)`` when ``opt`` has it,
            as the README's loop does. ``False`` models the many loops that never call it.
        scheduler: stepped after every optimizer step; a ``ReduceLROnPlateau`` is stepped
            with each finite evaluation instead.
        until: checked after every call; the loop stops when it returns ``True``
            (the meta-environment stops at the optimizer's next decision point).
        on_step: called with ``(call, loss)`` after every step.
        on_eval: called with ``(call, val_loss)`` after every evaluation.
        keep_train_losses: record every training loss (one host sync per step).
        start: number of calls already made (for ``eval_every`` phase and the callbacks).
    """
    takes_loss = hasattr(opt, "observe")
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    out = LoopResult()
    for i in range(start + 1, start + steps + 1):
        loss = instance.train_step()
        if takes_loss:
            opt.step(loss=loss)  # type: ignore[call-arg,call-overload]
        else:
            opt.step()
        opt.zero_grad()
        if scheduler is not None and not plateau:
            scheduler.step()
        out.calls += 1
        if keep_train_losses:
            out.train_losses.append(float(loss))
        if on_step is not None:
            on_step(i, loss)
        if eval_every and i % eval_every == 0:
            v = evaluate(instance, opt)
            out.val_steps.append(i)
            out.val_losses.append(v)
            if plateau and math.isfinite(v):
                scheduler.step(v)  # type: ignore[union-attr]
            if observe and takes_loss and math.isfinite(v):
                opt.observe(val_loss=v)  # type: ignore[attr-defined]
            if on_eval is not None:
                on_eval(i, v)
        if until is not None and until():
            out.stopped = True
            break
    return out


def evaluate(instance: TaskInstance, opt: Any = None) -> float:
    """The instance's validation loss, ``inf`` when not finite.

    Optimizers that keep separate train/eval weights (schedule-free) are switched to
    their evaluation weights for the call.
    """
    switch = opt is not None and hasattr(opt, "eval") and hasattr(opt, "train") and not hasattr(opt, "observe")
    if switch:
        opt.eval()
    try:
        v = float(instance.evaluate())
    finally:
        if switch:
            opt.train()
    return v if math.isfinite(v) else math.inf
