"""Tabular families: scikit-learn's bundled sets and a synthetic regression, with label-noise
variants that overfit."""

from __future__ import annotations

import numpy as np

from chuck.zoo import models
from chuck.zoo.families.supervised import DatasetMLPTask, SupervisedTask
from chuck.zoo.task import SearchSpace, TaskConfig

_TAB = dict(widths=(32, 64, 128, 256), depths=(1, 2, 3), batch_sizes=(16, 32, 64))


class BreastCancerMLP(DatasetMLPTask):
    id, domain, n_classes, budget = "tabular.breast_cancer_mlp", "tabular", 2, 250
    dataset, d_in, n_out = "breast_cancer", 30, 2
    space = SearchSpace(label_noise=(0.0, 0.3), **_TAB)


class WineMLP(DatasetMLPTask):
    """178 samples: small data, overfits readily, more so with label noise."""

    id, domain, n_classes, budget = "tabular.wine_mlp", "tabular", 3, 250
    dataset, d_in, n_out = "wine", 13, 3
    space = SearchSpace(label_noise=(0.0, 0.3), **_TAB)


class DiabetesRegression(DatasetMLPTask):
    id, domain, n_classes, budget = "tabular.diabetes_regression", "tabular", None, 250
    dataset, d_in, n_out = "diabetes", 10, 1
    space = SearchSpace(**_TAB)


class FriedmanRegression(SupervisedTask):
    """Friedman #1 (Friedman 1991) generated with noise; standardized target."""

    id, domain, n_classes, budget = "tabular.friedman_regression", "tabular", None, 250
    space = SearchSpace(**_TAB)

    def data(self, config: TaskConfig):
        rng = np.random.default_rng(10)
        x = rng.uniform(0, 1, size=(1500, 10)).astype(np.float32)
        y = 10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
        y = y + rng.normal(0, 1.0, len(y))
        y = ((y - y.mean()) / y.std()).astype(np.float32)
        return (x - 0.5) * 3.4, y

    def model(self, config: TaskConfig):
        return models.mlp(10, 1, config.width, config.depth, config.activation, config.norm, config.dropout)


FAMILIES = [BreastCancerMLP, WineMLP, DiabetesRegression, FriedmanRegression]
