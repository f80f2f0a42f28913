"""ChuckCallback inside a real Lightning Trainer, with a user scheduler."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")

import chuck  # noqa: E402
from chuck.integrations.lightning import ChuckCallback  # noqa: E402


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        self.lrs: list[float] = []

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-5)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)}


def _loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def test_lightning_callback_steers_the_optimizer() -> None:
    torch.manual_seed(0)
    model = Net()
    cb = ChuckCallback("heuristic", interval=5)
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
    )
    trainer.fit(model, _loader(0), _loader(1))
    (opt,) = cb.optimizers
    assert isinstance(opt, chuck.ChuckOptimizer)
    assert opt.step_count == 3 * 16
    assert len(opt.decisions) >= 3 * 16 // 5
    assert opt.loss_monitor.history > 0, "the loss must reach chuck through Lightning's closure"
    assert opt.stats()["loss.has_val"] == 1.0, "validation loss must be observed"
    # the user's StepLR still drives the base lr; chuck's multiplier sits on top of it
    base_lr = opt.param_groups[0]["lr"]
    assert base_lr == pytest.approx(1e-5 * 0.9**3)
    assert opt.hyperparameters["lr"] == pytest.approx(base_lr * opt.action_spec.lr_mult)
    assert opt.action_spec.lr_mult > 1.0, "from lr=1e-5 the heuristic should have raised the lr"


def test_effective_lr_is_logged_next_to_the_learning_rate_monitor(tmp_path) -> None:
    """LearningRateMonitor reads group["lr"] (the scheduler's value, before chuck's multiplier); the
    callback logs the lr really in use beside it, at the same batches, to the same loggers."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    model = Net()
    cb = ChuckCallback("heuristic", interval=5, history=False)
    logger = CSVLogger(str(tmp_path), name="run")
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb, LearningRateMonitor(logging_interval="step")],
    )
    trainer.fit(model, _loader(0), _loader(1))
    (opt,) = cb.optimizers
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    monitor = {r["step"]: float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")}
    effective = {r["step"]: float(r["lr-effective"]) for r in rows if r.get("lr-effective")}
    assert len(monitor) == 3 * 16 and effective.keys() == monitor.keys(), "one effective lr per LearningRateMonitor value"
    mults = {1.0, *(d.hyperparameters["lr_mult"] for d in opt.decisions)}
    ratios = [effective[s] / monitor[s] for s in monitor]
    # logged values are float32 tensors in Lightning: compare to a multiplier chuck had, to 1e-6
    assert all(min(abs(q - m) / m for m in mults) < 1e-6 for q in ratios), "effective = monitor's lr x chuck's multiplier"
    assert max(ratios) > 2.0, "from lr=1e-5 the heuristic raises the lr: the monitor alone would show the wrong number"
    # the same value sits on the param group for anyone else reading it (read fresh: StepLR stepped after the last step)
    group = opt.param_groups[0]
    assert opt.effective_lrs() == [pytest.approx(group["lr"] * opt.action_spec.lr_mult)]
    assert group[chuck.EFFECTIVE_LR_KEY] == pytest.approx(group["lr"] * opt.action_spec.lr_mult)
    assert "lr-effective" in trainer.logged_metrics
