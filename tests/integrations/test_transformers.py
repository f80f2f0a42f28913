"""ChuckTrainer: a real Hugging Face Trainer on a tiny model (no downloads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import chuck  # noqa: E402
from chuck.integrations.transformers import ChuckTrainer  # noqa: E402


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x=None, labels=None):
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class DS(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _args(tmp_path, **kw):
    """TrainingArguments for a quiet CPU run that saves and reports nothing, batches of 16."""
    quiet = {"save_strategy": "no", "report_to": [], "use_cpu": True, "disable_tqdm": True, "per_device_train_batch_size": 16}
    return transformers.TrainingArguments(output_dir=str(tmp_path), **(quiet | kw))


def test_chuck_trainer(tmp_path) -> None:
    torch.manual_seed(0)
    args = _args(
        tmp_path,
        max_steps=40,
        learning_rate=1e-5,
        eval_strategy="steps",
        eval_steps=10,
        logging_steps=10,
        gradient_accumulation_steps=2,
        lr_scheduler_type="linear",
    )
    trainer = ChuckTrainer(
        model=TinyClassifier(),
        args=args,
        train_dataset=DS(512, 0),
        eval_dataset=DS(64, 1),
        chuck_policy="heuristic",
        chuck_kwargs={"interval": 5},
    )
    trainer.train()
    opt = trainer.chuck_optimizer
    assert isinstance(opt, chuck.ChuckOptimizer)
    assert opt.step_count == 40
    assert len(opt.decisions) == 8
    assert opt.loss_monitor.history == 40, "every optimizer step should have received the (accumulated) loss"
    assert opt.stats()["loss.has_val"] == 1.0
    assert opt._closed


class _LrInUse(transformers.TrainerCallback):
    """Records the lr the base optimizer really stepped with (a step pre-hook on it sees chuck's
    multiplied value) and, at every log, the last one: the truth the logged value must match."""

    def __init__(self) -> None:
        self.trainer: ChuckTrainer | None = None
        self.last_lr: float | None = None
        self.at_log: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        def record(base, *_):
            self.last_lr = base.param_groups[0]["lr"]

        self.trainer.chuck_optimizer.optimizer.register_step_pre_hook(record)  # the AdamW chuck wraps

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs and "learning_rate" in logs:
            self.at_log.append(self.last_lr)


def test_trainer_logs_the_effective_learning_rate(tmp_path) -> None:
    """The Trainer's logged learning_rate is the lr the optimizer used (scheduler x chuck), not the scheduler's alone."""
    torch.manual_seed(0)
    args = _args(tmp_path, max_steps=40, learning_rate=1e-5, logging_steps=5, lr_scheduler_type="linear")
    probe = _LrInUse()
    trainer = ChuckTrainer(
        model=TinyClassifier(),
        args=args,
        train_dataset=DS(512, 0),
        chuck_policy="heuristic",
        chuck_kwargs={"interval": 5, "history": False},
        callbacks=[probe],
    )
    probe.trainer = trainer
    trainer.train()
    logged = [h for h in trainer.state.log_history if "learning_rate" in h]
    assert len(logged) == 40 // 5
    assert [h["learning_rate"] for h in logged] == pytest.approx(probe.at_log, rel=1e-9)
    for h in logged:
        assert h["learning_rate"] == pytest.approx(h["learning_rate_scheduled"] * h["chuck_lr_multiplier"], rel=1e-9)
    assert max(h["chuck_lr_multiplier"] for h in logged) > 2.0, "from lr=1e-5 the heuristic raises the lr"


def test_training_by_epochs_gives_chuck_the_trainers_step_count(tmp_path) -> None:
    """num_train_epochs with max_steps=-1 (the Trainer's usual set-up): chuck's total_steps is the count of
    optimizer steps the Trainer computes (before: None, so the default planned no cooldown)."""
    torch.manual_seed(0)
    args = _args(tmp_path, num_train_epochs=3, gradient_accumulation_steps=2)
    trainer = ChuckTrainer(
        model=TinyClassifier(), args=args, train_dataset=DS(160, 0), chuck_policy="heuristic", chuck_kwargs={"history": False}
    )
    trainer.train()
    opt = trainer.chuck_optimizer
    assert trainer.state.max_steps == 15  # 10 batches an epoch, 5 optimizer steps, 3 epochs
    assert opt.total_steps == trainer.state.max_steps and opt.step_count == 15
