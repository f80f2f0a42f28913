"""The Task API: what a zoo task (or a user's in-house task) provides.

A :class:`Task` is a *family*: a data set and a model family with a search
space of randomized settings. ``sample_config`` draws one instance's settings
(width, depth, activation, normalization, batch size, data size, label noise,
base optimizer, and a starting learning rate too low, near the family's best or
too high, a third each: see :mod:`chuck.zoo.starting_lr`);
``build`` turns them into a :class:`TaskInstance`, one real training run that
the meta-environment steps through ``ChuckOptimizer``.

To add an in-house task, subclass :class:`Task` (or use
:class:`SupervisedTask` with your own data and model factory) and call
:func:`chuck.zoo.register_task`; see docs/retraining.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from chuck.zoo.starting_lr import FALLBACK_LR, cache_entry, calibration_key, draw_lr, lookup_best_lr

OPTIMIZERS = ("AdamW", "Adam", "SGD", "RMSprop")
#: A base optimizer no sampled config draws, so no policy trains on it: what an evaluation on it
#: measures is how chuck carries to an optimizer it has never seen. Adafactor (Shazeer & Stern 2018,
#: ``torch.optim.Adafactor``) steps relative to each parameter's RMS, and its lr only caps that relative
#: step (``min(lr, 1/sqrt(t))``), so neither the lr's scale nor its effect is AdamW's.
HELD_OUT_OPTIMIZERS = ("Adafactor",)
#: Every base optimizer :func:`make_optimizer` builds: the zoo's sampled four, SGD with Nesterov
#: momentum, which half of the sampled SGD instances run (kept out of the sampled tuple, which is part of
#: every family's calibration key), and the held-out ones.
BASE_OPTIMIZERS = (*OPTIMIZERS, "NesterovSGD", *HELD_OUT_OPTIMIZERS)


@dataclass
class TaskConfig:
    """One instance's sampled settings (reported in the env's ``info``)."""

    width: int = 64
    depth: int = 2
    activation: str = "relu"
    norm: str = "none"
    batch_size: int = 32
    data_fraction: float = 1.0
    label_noise: float = 0.0
    dropout: float = 0.0
    optimizer: str = "AdamW"
    lr: float = 1e-3
    #: ``"low"``, ``"near"`` or ``"high"`` relative to the family's best lr when drawn by
    #: ``Task.sample_config``; empty for a hand-made config.
    lr_regime: str = ""
    weight_decay: float = 0.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    """What ``Task.sample_config`` draws from. Each field lists the choices (or a range).

    ``optimizers`` names base optimizers of :func:`make_optimizer`; an ``"SGD"`` draw is SGD with momentum 0.9,
    with Nesterov momentum (``"NesterovSGD"``) in the instances whose drawn seed is odd, half of them.
    """

    widths: Sequence[int] = (32, 64, 128)
    depths: Sequence[int] = (1, 2, 3)
    activations: Sequence[str] = ("relu", "tanh", "gelu", "leaky_relu")
    norms: Sequence[str] = ("none", "batch", "layer")
    batch_sizes: Sequence[int] = (16, 32, 64)
    data_fraction: tuple[float, float] = (0.3, 1.0)
    label_noise: tuple[float, float] = (0.0, 0.0)
    dropouts: Sequence[float] = (0.0, 0.0, 0.1, 0.3)
    optimizers: Sequence[str] = OPTIMIZERS
    weight_decays: Sequence[float] = (0.0, 1e-4, 1e-2)

    def sample(self, rng: np.random.Generator, best_lr: float = FALLBACK_LR) -> TaskConfig:
        """One instance's settings; the starting lr is drawn around ``best_lr`` (AdamW's best for the
        family) by :func:`chuck.zoo.starting_lr.draw_lr`."""
        opt = str(rng.choice(list(self.optimizers)))
        lr, regime = draw_lr(rng, best_lr, opt)
        config = TaskConfig(
            width=int(rng.choice(list(self.widths))),
            depth=int(rng.choice(list(self.depths))),
            activation=str(rng.choice(list(self.activations))),
            norm=str(rng.choice(list(self.norms))),
            batch_size=int(rng.choice(list(self.batch_sizes))),
            data_fraction=float(rng.uniform(*self.data_fraction)),
            label_noise=float(rng.uniform(*self.label_noise)) if self.label_noise[1] > 0 else 0.0,
            dropout=float(rng.choice(list(self.dropouts))),
            optimizer=opt,
            lr=lr,
            lr_regime=regime,
            weight_decay=float(rng.choice(list(self.weight_decays))),
            seed=int(rng.integers(0, 2**31 - 1)),
        )
        if opt == "SGD" and config.seed % 2:
            # half of the SGD runs use Nesterov momentum, as many vision recipes do; decided by the drawn
            # seed rather than a further draw, so every other setting of every instance stays as it was
            config.optimizer = "NesterovSGD"
        return config


class TaskInstance(ABC):
    """One training run. The meta-env calls ``train_step`` then ``ChuckOptimizer.step(loss=...)``.

    Attributes:
        model: the network being trained.
        optimizer: the *base* optimizer (chuck wraps it).
        config: the sampled settings.
        loss_reference: scale of a "hopeless" loss, for the divergence penalty
            (log #classes for classification, 1.0 for standardized regression).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TaskConfig
    loss_reference: float

    @abstractmethod
    def train_step(self) -> torch.Tensor:
        """Forward and backward on one batch; return the monitored loss (positive scalar tensor)."""

    @abstractmethod
    def evaluate(self) -> float:
        """The validation loss (positive; lower is better)."""

    def metrics(self) -> dict[str, float]:
        """Extra end-of-episode metrics (accuracy, return, ...)."""
        return {}


class Task(ABC):
    """A task family of the zoo.

    Attributes:
        id: unique id, ``"<domain>.<name>"``.
        domain: ``"cv"``, ``"nlp"``, ``"rl"``, ``"tabular"`` or a user's own.
        family: the family name (defaults to the id).
        budget: inner training steps per episode.
        space: the randomization of instances.
    """

    id: str = ""
    domain: str = ""
    budget: int = 300
    space: SearchSpace = SearchSpace()

    @property
    def family(self) -> str:
        return self.id

    @property
    def calibration_key(self) -> str:
        """Hash of what the best lr depends on (budget, search space): the cache entry's key."""
        return calibration_key(self.budget, self.space)

    @property
    def best_lr(self) -> float:
        """The family's best constant AdamW lr, from ``chuck/zoo/best_lr.json``.

        Falls back to 1e-3 with a warning when the entry is missing or stale (measured
        under another budget or search space). A user's task may override this property
        to declare its own value instead of calibrating.
        """
        return lookup_best_lr(self.id, self.calibration_key)

    def sample_config(self, rng: np.random.Generator) -> TaskConfig:
        return self.space.sample(rng, best_lr=self.best_lr)

    @abstractmethod
    def build(self, config: TaskConfig) -> TaskInstance:
        """Build the model, data and base optimizer for these settings."""

    def tags(self) -> dict[str, str]:
        return {"task_id": self.id, "family": self.family, "domain": self.domain}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, domain={self.domain!r}, budget={self.budget})"


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The base optimizers of the zoo (:data:`BASE_OPTIMIZERS`) with conventional defaults."""
    params = list(params)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "NesterovSGD":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "Adafactor":
        if not hasattr(torch.optim, "Adafactor"):
            raise RuntimeError(
                f"the Adafactor base needs torch.optim.Adafactor (torch >= 2.5); this is torch {torch.__version__}"
            )
        return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose from {BASE_OPTIMIZERS}")


class SupervisedInstance(TaskInstance):
    """A supervised run over in-memory tensors: random minibatches, full-val evaluation.

    Args:
        model, optimizer, config: as in :class:`TaskInstance`.
        train, val: (inputs, targets) tensors.
        loss_fn: ``loss_fn(output, target) -> scalar``.
        loss_reference: see :class:`TaskInstance`.
        max_eval: validation samples used per evaluation (bounded for speed).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: TaskConfig,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        loss_reference: float,
        max_eval: int = 512,
        accuracy: bool = True,
    ) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        self.x_train, self.y_train = train
        self.x_val, self.y_val = val[0][:max_eval], val[1][:max_eval]
        self.loss_fn = loss_fn
        self.loss_reference = loss_reference
        self.accuracy = accuracy
        self.generator = torch.Generator().manual_seed(config.seed)
        self.model.train()

    def train_step(self) -> torch.Tensor:
        # the model is in train mode: evaluate() and metrics() switch back after use
        idx = torch.randint(len(self.x_train), (self.config.batch_size,), generator=self.generator)
        loss = self.loss_fn(self.model(self.x_train[idx]), self.y_train[idx])
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        out = self.model(self.x_val)
        loss = float(self.loss_fn(out, self.y_val))
        self._last_out = out
        self.model.train()
        return loss

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        if not self.accuracy:
            return {}
        self.model.eval()
        out = self.model(self.x_val)
        self.model.train()
        pred = out.argmax(-1)
        return {"val_accuracy": float((pred == self.y_val).float().mean())}


def split_train_val(
    x: np.ndarray, y: np.ndarray, config: TaskConfig, val_fraction: float = 0.25, n_classes: int | None = None
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle, keep ``data_fraction`` of the training part, and flip ``label_noise`` of its labels.

    The validation part is fixed by a constant seed (so every instance of a family is
    evaluated on the same held-out data) and never gets label noise.
    """
    perm = np.random.default_rng(12345).permutation(len(x))
    n_val = int(len(x) * val_fraction)
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    rng = np.random.default_rng(config.seed)
    keep = max(32, int(len(tr_idx) * config.data_fraction))
    tr_idx = rng.permutation(tr_idx)[:keep]
    y_tr = np.array(y[tr_idx], copy=True)
    if config.label_noise > 0 and n_classes:
        flip = rng.random(len(y_tr)) < config.label_noise
        y_tr[flip] = rng.integers(0, n_classes, size=int(flip.sum()))
    return (
        (torch.as_tensor(x[tr_idx]), torch.as_tensor(y_tr)),
        (torch.as_tensor(x[val_idx]), torch.as_tensor(y[val_idx])),
    )


def uncalibrated(tasks: Any) -> list[str]:
    """The ids of ``tasks`` whose episodes start around :data:`FALLBACK_LR`: no fresh cache entry, and no
    ``best_lr`` of their own (a task class that overrides the property declares its value)."""
    return [
        t.id for t in tasks if getattr(type(t), "best_lr", None) is Task.best_lr and cache_entry(t.id, t.calibration_key) is None
    ]
