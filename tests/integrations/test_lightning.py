"""ChuckCallback inside a real Lightning Trainer, with a user scheduler."""

from __future__ import annotations

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
