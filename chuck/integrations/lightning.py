"""PyTorch Lightning: ``trainer = Trainer(callbacks=[ChuckCallback("default")])``.

At ``on_fit_start`` (after Lightning has built the optimizers from
``configure_optimizers``) the callback wraps each optimizer in a
``ChuckOptimizer``. Lightning's automatic optimization calls
``optimizer.step(closure=...)``; chuck takes the loss from the closure. Your
schedulers keep pointing at the base optimizer and keep working: chuck
multiplies their lr. The validation loss (``val_key`` in
``trainer.callback_metrics``) is reported at the end of each validation epoch.

The effective lr: Lightning's ``LearningRateMonitor`` reads ``group["lr"]``, which
keeps the scheduler's value (chuck multiplies it only inside its step), so its
``lr-AdamW`` line is the lr *before* chuck. The callback logs the lr really in use
next to it, as ``lr-effective`` (``lr-effective/pg2``... for more groups,
``lr-effective-1``... for more optimizers), at the start of every training batch,
after the scheduler has stepped, as the monitor does: through ``pl_module.log``, so
it reaches every logger, ``trainer.logged_metrics`` and ``trainer.callback_metrics``
and follows ``log_every_n_steps``.
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef,assignment]
    except ImportError as exc:
        raise ImportError("chuck.integrations.lightning needs lightning: pip install lightning") from exc

from chuck.core.optimizer import ChuckOptimizer


class ChuckCallback(Callback):
    """Wrap the LightningModule's optimizers in ChuckOptimizer.

    Args:
        policy: any ``chuck.load_policy`` name/path/URI, or a Policy.
        val_key: ``callback_metrics`` key of the validation loss.
        lr_key: name under which the effective lr is logged (``None``: not logged).
        **kwargs: passed to :class:`chuck.ChuckOptimizer` (interval, tracking, history, ...).
    """

    def __init__(
        self, policy: Any = "default", val_key: str = "val_loss", lr_key: str | None = "lr-effective", **kwargs: Any
    ) -> None:
        self.policy, self.val_key, self.lr_key, self.kwargs = policy, val_key, lr_key, kwargs
        self.optimizers: list[ChuckOptimizer] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        total = trainer.estimated_stepping_batches
        total = int(total) if total and total != float("inf") else None
        wrapped = []
        for opt in trainer.strategy.optimizers:
            if not isinstance(opt, ChuckOptimizer):
                opt = ChuckOptimizer(opt, self.policy, model=pl_module, total_steps=total, **self.kwargs)
            wrapped.append(opt)
        trainer.strategy.optimizers = wrapped  # the setter rebuilds Lightning's optimizer wrappers
        self.optimizers = wrapped

    def effective_lrs(self) -> dict[str, float]:
        """The lr in use per optimizer and param group, under the names the callback logs."""
        out: dict[str, float] = {}
        for i, opt in enumerate(self.optimizers):
            lrs = opt.effective_lrs()
            for j, lr in enumerate(lrs):
                name = f"{self.lr_key}-{i}" if i else str(self.lr_key)
                out[f"{name}/pg{j + 1}" if len(lrs) > 1 else name] = lr
        return out

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.lr_key is None:
            return
        for name, lr in self.effective_lrs().items():
            pl_module.log(name, lr, on_step=True, on_epoch=False, logger=bool(trainer.loggers), batch_size=1)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        v = trainer.callback_metrics.get(self.val_key)
        if v is not None:
            for opt in self.optimizers:
                opt.observe(val_loss=v)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        for opt in self.optimizers:
            opt.close()
