"""Tabular families: scikit-learn's bundled sets and generated ones (``chuck.zoo.data.GENERATED_TABULAR``).

They span the data regime (178 samples that overfit, 40k easy ones, labels that are
30% noise, 400 features for 600 samples), the objective (2 to 50 classes; regression
with targets of standard deviation 1e-2 to 4e2) and the architecture (a linear model,
plain MLPs, deep pre-norm residual MLPs).
"""

from __future__ import annotations

import numpy as np

from chuck.zoo import data, models
from chuck.zoo.families.supervised import DatasetMLPTask, SupervisedTask
from chuck.zoo.task import SearchSpace, TaskConfig

_TAB = dict(widths=(32, 64, 128, 256), depths=(1, 2, 3), batch_sizes=(16, 32, 64))


class BreastCancerMLP(DatasetMLPTask):
    """569 samples, binary, with label-noise variants. Axis: baseline small-data classification."""

    id, domain, n_classes, budget = "tabular.breast_cancer_mlp", "tabular", 2, 250
    dataset, d_in, n_out = "breast_cancer", 30, 2
    space = SearchSpace(label_noise=(0.0, 0.3), **_TAB)


class WineMLP(DatasetMLPTask):
    """178 samples: small data, overfits readily, more so with label noise. Axis: tiny data."""

    id, domain, n_classes, budget = "tabular.wine_mlp", "tabular", 3, 250
    dataset, d_in, n_out = "wine", 13, 3
    space = SearchSpace(label_noise=(0.0, 0.3), **_TAB)


class DiabetesRegression(DatasetMLPTask):
    """442 patients, standardized target: a small, noisy regression. Axis: regression, small data."""

    id, domain, n_classes, budget = "tabular.diabetes_regression", "tabular", None, 250
    dataset, d_in, n_out = "diabetes", 10, 1
    space = SearchSpace(**_TAB)


class FriedmanRegression(SupervisedTask):
    """Friedman #1 (Friedman 1991) generated with noise; standardized target. Axis: smooth regression."""

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


class ManyClassesMLP(DatasetMLPTask):
    """50 Gaussian classes in 24 features, 6000 samples. Axis: many-class classification (log 50 = 3.9 nats)."""

    id, domain, n_classes, budget = "tabular.many_classes_mlp", "tabular", 50, 600
    dataset, d_in, n_out = "many_classes", 24, 50
    space = SearchSpace(widths=(64, 128, 256), depths=(1, 2, 3), batch_sizes=(32, 64, 128))


class NoisyLabelsMLP(DatasetMLPTask):
    """Binary classification whose labels are 30% random in train *and* validation, plus up to 30% more
    flipped in training. Axis: noisy labels (memorizing the noise raises the validation loss)."""

    id, domain, n_classes, budget = "tabular.noisy_labels_mlp", "tabular", 2, 500
    dataset, d_in, n_out = "noisy_binary", 20, 2
    space = SearchSpace(widths=(64, 128, 256), depths=(2, 3), label_noise=(0.0, 0.3), batch_sizes=(16, 32))


class LargeEasyMLP(DatasetMLPTask):
    """40k well-separated points of 8 classes, batches of 64-128, the longest budget. Axis: large easy data
    (no overfitting: the best schedule is simply fast, then annealed)."""

    id, domain, n_classes, budget = "tabular.large_easy_mlp", "tabular", 8, 2000
    dataset, d_in, n_out = "large_easy", 16, 8
    space = SearchSpace(widths=(32, 64), depths=(1, 2, 3), batch_sizes=(64, 128), dropouts=(0.0,))


class SparseLogistic(DatasetMLPTask):
    """Logistic regression (no hidden layer) on 400 features for 450 training samples. Axis: linear,
    convex model in a high-dimensional, overfitting regime (weight decay matters)."""

    id, domain, n_classes, budget = "tabular.sparse_logistic", "tabular", 2, 400
    dataset, d_in, n_out = "sparse_highdim", 400, 2
    space = SearchSpace(
        depths=(0,),
        norms=("none",),
        batch_sizes=(16, 32, 64),
        dropouts=(0.0,),
        data_fraction=(0.7, 1.0),
        weight_decays=(0.0, 1e-3, 1e-2, 1e-1),
    )


class Friedman2LargeScale(DatasetMLPTask):
    """Friedman #2 with its raw target (std ~400, initial MSE ~1e5). Axis: regression at a large target
    scale (the output layer must grow by orders of magnitude)."""

    id, domain, n_classes, budget = "tabular.friedman2_large_scale", "tabular", None, 800
    dataset, d_in, n_out = "friedman2_raw", 4, 1
    space = SearchSpace(**_TAB)


class Friedman3SmallScale(DatasetMLPTask):
    """Friedman #3 scaled by 1e-2 (std ~3e-3, losses ~1e-5). Axis: regression at a tiny target scale."""

    id, domain, n_classes, budget = "tabular.friedman3_small_scale", "tabular", None, 600
    dataset, d_in, n_out = "friedman3_small", 4, 1
    space = SearchSpace(**_TAB)


class ResidualMLP(DatasetMLPTask):
    """4 or 8 pre-norm residual blocks (10 or 18 linear layers) on Friedman #1 with 10 noise features. Axis: residual, normalized,
    deep architecture."""

    id, domain, n_classes, budget = "tabular.residual_mlp", "tabular", None, 500
    dataset, d_in, n_out, architecture = "friedman1_wide", 20, 1, "residual"
    space = SearchSpace(widths=(32, 64), depths=(4, 8), norms=("layer", "batch"), batch_sizes=(32, 64))


class SparseParityMLP(SupervisedTask):
    """The (30, 3) sparse parity (``chuck.zoo.data.sparse_parity``) with a two-hidden-layer MLP. Axis: a
    plateau before learning starts: the loss sits at chance for a third to all of the budget at a tuned
    lr, with small, consistent updates, then drops to near zero (a step-size rule must not read the
    flat loss as instability and lower the lr, which only makes the plateau longer)."""

    id, domain, n_classes, budget = "tabular.sparse_parity_mlp", "tabular", 2, 600
    bits = 30
    space = SearchSpace(
        widths=(128, 256),
        depths=(2,),
        activations=("relu", "gelu"),
        norms=("none", "layer"),
        batch_sizes=(32, 64),
        data_fraction=(0.8, 1.0),
        dropouts=(0.0,),
    )

    def data(self, config: TaskConfig) -> tuple[np.ndarray, np.ndarray]:
        return data.sparse_parity(6000, bits=self.bits, k=3)

    def model(self, config: TaskConfig):
        return models.mlp(self.bits, 2, config.width, config.depth, config.activation, config.norm, config.dropout)


class SparseParitySmallMLP(SparseParityMLP):
    """The (20, 3) sparse parity with one to three hidden layers. Axis: a shorter plateau (about 100-300 steps
    at a tuned lr) than the (30, 3) one's, over more depths, widths and activations."""

    id, budget, bits = "tabular.sparse_parity_small_mlp", 500, 20
    space = SearchSpace(
        widths=(64, 128, 256),
        depths=(1, 2, 3),
        activations=("relu", "gelu", "tanh"),
        norms=("none", "layer"),
        batch_sizes=(32, 64),
        data_fraction=(0.8, 1.0),
        dropouts=(0.0,),
    )


FAMILIES = [
    BreastCancerMLP,
    WineMLP,
    DiabetesRegression,
    FriedmanRegression,
    ManyClassesMLP,
    NoisyLabelsMLP,
    LargeEasyMLP,
    SparseLogistic,
    Friedman2LargeScale,
    Friedman3SmallScale,
    ResidualMLP,
    SparseParityMLP,
    SparseParitySmallMLP,
]
