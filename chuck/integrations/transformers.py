"""Hugging Face transformers: ``ChuckTrainer(..., chuck_policy="default")`` instead of ``Trainer``.

A ``TrainerCallback`` receives the optimizer but cannot replace it, so this is a
``Trainer`` subclass: ``create_optimizer`` wraps the optimizer the Trainer built
(AdamW with its own weight-decay groups) in a ``ChuckOptimizer``; the Trainer's
lr scheduler is created on top of it and keeps working (chuck multiplies its lr).
``training_step`` hands each micro-batch loss to chuck (``record_loss``), and an
internal callback reports ``eval_loss`` after every evaluation.

The budget: chuck gets ``total_steps`` = the optimizer steps the Trainer will take, also when
training is set in epochs (``num_train_epochs``, ``max_steps=-1``): the Trainer computes that
count before it builds the optimizer (``set_initial_training_values``; older versions pass it
to ``create_optimizer_and_scheduler``), and the default policy plans its cooldown on it.

The effective lr: the Trainer logs ``learning_rate`` from its scheduler (the lr of
the step just taken), which writes ``group["lr"]``; chuck multiplies that value only
inside its step, so the Trainer's own number is the lr *before* chuck.
``ChuckTrainer.log`` replaces it with the lr that step really used (times the
multiplier it ran under, ``ActionSpec.step_lr_mult``) and keeps the scheduler's value
as ``learning_rate_scheduled`` and the multiplier as ``chuck_lr_multiplier``: every
``report_to`` integration and ``trainer.state.log_history`` see the same three.
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import Trainer, TrainerCallback
except ImportError as exc:  # pragma: no cover
    raise ImportError("chuck.integrations.transformers needs transformers: pip install transformers") from exc

from chuck.core.optimizer import ChuckOptimizer


class _Observe(TrainerCallback):
    def __init__(self, trainer: ChuckTrainer) -> None:
        self.trainer = trainer

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        opt = self.trainer.chuck_optimizer
        if opt is not None and metrics and "eval_loss" in metrics:
            opt.observe(val_loss=metrics["eval_loss"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.chuck_optimizer is not None:
            self.trainer.chuck_optimizer.close()


class ChuckTrainer(Trainer):
    """``transformers.Trainer`` whose optimizer is steered by chuck.

    Args:
        chuck_policy: any ``chuck.load_policy`` name/path/URI, or a Policy.
        chuck_kwargs: passed to :class:`chuck.ChuckOptimizer` (interval, tracking, history, ...).
        *args, **kwargs: the usual ``Trainer`` arguments.
    """

    def __init__(
        self, *args: Any, chuck_policy: Any = "default", chuck_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.chuck_policy = chuck_policy
        self.chuck_kwargs = chuck_kwargs or {}
        self.chuck_optimizer: ChuckOptimizer | None = None
        self._micro_losses: list[float] = []
        self._planned_steps: int | None = None
        self.add_callback(_Observe(self))

    def set_initial_training_values(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's own count of optimizer steps (``max_steps``, the last value), kept for chuck's budget."""
        values = super().set_initial_training_values(*args, **kwargs)
        self._planned_steps = _positive(values[-1])
        return values

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        """transformers < 5 passes the count of optimizer steps here, before building the optimizer."""
        self._planned_steps = _positive(num_training_steps) or self._planned_steps
        super().create_optimizer_and_scheduler(num_training_steps)

    def create_optimizer(self, *args: Any, **kwargs: Any):
        opt = super().create_optimizer(*args, **kwargs)
        if not isinstance(opt, ChuckOptimizer):
            total = _positive(self.args.max_steps) or self._planned_steps
            self.chuck_optimizer = ChuckOptimizer(
                opt, self.chuck_policy, model=self.model, total_steps=total, **self.chuck_kwargs
            )
            self.optimizer = self.chuck_optimizer
        return self.optimizer

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, with ``learning_rate`` the lr in use (see the module docstring)."""
        opt = self.chuck_optimizer
        scheduled = logs.get("learning_rate")
        if opt is not None and isinstance(scheduled, (int, float)):
            mult = opt.action_spec.step_lr_mult
            logs = {
                **logs,
                "learning_rate": scheduled * mult,
                "learning_rate_scheduled": scheduled,
                "chuck_lr_multiplier": mult,
            }
        super().log(logs, *args, **kwargs)

    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any):
        loss = super().training_step(model, inputs, *args, **kwargs)
        if self.chuck_optimizer is not None:
            self._micro_losses.append(float(loss.detach()))
            # the step after the last micro-batch sees the mean of the accumulated losses
            self.chuck_optimizer.record_loss(sum(self._micro_losses) / len(self._micro_losses))
            if len(self._micro_losses) >= self.args.gradient_accumulation_steps:
                self._micro_losses = []
        return loss


def _positive(steps: Any) -> int | None:
    """A step count if it is one (``max_steps=-1`` means "by epochs"), else ``None``."""
    return int(steps) if isinstance(steps, int) and steps > 0 else None
