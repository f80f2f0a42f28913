"""A base class for supervised families: data arrays + a model factory -> SupervisedInstance."""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chuck.zoo.task import SupervisedInstance, Task, TaskConfig, make_optimizer, split_train_val


def sequence_ce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position of a (N, T, V) output."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.squeeze(-1), target)


class SupervisedTask(Task):
    """Subclasses give ``data`` and ``model``; classification unless ``n_classes`` is None.

    Attributes:
        n_classes: number of classes (``None`` for regression and reconstruction: MSE on the
            targets at whatever scale ``data`` gives them).
        per_position: targets are per sequence position (language models, copy/reverse).

    The loss reference (the "hopeless" loss the meta-env scales divergence by) is log(#classes)
    for classification and the validation targets' variance (the MSE of predicting their mean)
    for regression, so regression families at any target scale are judged alike.
    """

    n_classes: int | None = 2
    per_position: bool = False

    @abstractmethod
    def data(self, config: TaskConfig) -> tuple[np.ndarray, np.ndarray]:
        """All examples (x, y); the instance splits them into train and a fixed validation part."""

    @abstractmethod
    def model(self, config: TaskConfig) -> nn.Module:
        """A fresh model for these settings (global torch RNG already seeded)."""

    def loss_fn(self):
        if self.n_classes is None:
            return mse
        return sequence_ce if self.per_position else F.cross_entropy

    def build(self, config: TaskConfig) -> SupervisedInstance:
        torch.manual_seed(config.seed)
        x, y = self.data(config)
        noise_classes = None if (self.n_classes is None or self.per_position) else self.n_classes
        train, val = split_train_val(x, y, config, n_classes=noise_classes)
        model = self.model(config)
        opt = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
        ref = math.log(self.n_classes) if self.n_classes else max(float(val[1].float().var()), 1e-12)
        return SupervisedInstance(model, opt, config, train, val, self.loss_fn(), ref, accuracy=self.n_classes is not None)


class DatasetMLPTask(SupervisedTask):
    """An MLP on a tabular data set: subclasses set ``dataset`` (a bundled set of
    ``chuck.zoo.data.sklearn_dataset`` or a generated one of ``chuck.zoo.data.GENERATED_TABULAR``),
    ``d_in`` and ``n_out`` (classes, or 1 with ``n_classes = None`` for regression).

    ``architecture`` picks the network: ``"mlp"`` (plain, ``depth`` hidden layers; depth 0 is a
    linear model) or ``"residual"`` (``depth`` pre-norm residual blocks).
    """

    dataset: str = ""
    d_in: int = 0
    n_out: int = 0
    architecture: str = "mlp"

    def data(self, config: TaskConfig) -> tuple[np.ndarray, np.ndarray]:
        from chuck.zoo import data

        if self.dataset in data.GENERATED_TABULAR:
            return data.generated_tabular(self.dataset)
        return data.sklearn_dataset(self.dataset)

    def model(self, config: TaskConfig) -> nn.Module:
        from chuck.zoo import models

        make = {"mlp": models.mlp, "residual": models.residual_mlp}[self.architecture]
        return make(self.d_in, self.n_out, config.width, config.depth, config.activation, config.norm, config.dropout)
