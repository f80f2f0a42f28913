"""Computer-vision families: digits (MLPs, CNN, autoencoder), synthetic shapes (CNN, ResNet, ViT),
textures (ResNet) and many-class glyphs (CNN).

They span the architecture (plain, deep saturating, convolutional, residual, attention over
patches), the objective (4, 10 and 40 classes; reconstruction) and the data regime (a
hundred images that overfit, noisy labels).
"""

from __future__ import annotations

import functools

import numpy as np

from chuck.zoo import data, models
from chuck.zoo.families.supervised import DatasetMLPTask, SupervisedTask
from chuck.zoo.task import SearchSpace, TaskConfig

_CONV = dict(widths=(8, 16, 32), batch_sizes=(32, 64))


# generated once per process: every instance of a family sees the same images
@functools.cache
def _shapes() -> tuple[np.ndarray, np.ndarray]:
    return data.shapes_images(1200, 16, np.random.default_rng(7))


@functools.cache
def _textures() -> tuple[np.ndarray, np.ndarray]:
    return data.texture_images(1200, 16, np.random.default_rng(11))


@functools.cache
def _glyphs() -> tuple[np.ndarray, np.ndarray]:
    return data.glyph_images(6000, 40, 10, np.random.default_rng(13))


class DigitsMLP(DatasetMLPTask):
    """scikit-learn's 8x8 digits, flattened, through an MLP, with label-noise variants. Axis: baseline."""

    id, domain, n_classes, budget = "cv.digits_mlp", "cv", 10, 300
    dataset, d_in, n_out = "digits", 64, 10
    space = SearchSpace(widths=(32, 64, 128, 256), depths=(1, 2, 3, 4), label_noise=(0.0, 0.3))


class DigitsFewShotMLP(DatasetMLPTask):
    """Digits with only 4-10% of the training images (55-135) through a wide MLP for 500 steps.
    Axis: tiny data that overfits (the validation loss turns up: early stopping and decay pay)."""

    id, domain, n_classes, budget = "cv.digits_fewshot_mlp", "cv", 10, 500
    dataset, d_in, n_out = "digits", 64, 10
    space = SearchSpace(
        widths=(256, 512), depths=(1, 2, 3), data_fraction=(0.04, 0.1), batch_sizes=(16, 32), dropouts=(0.0, 0.0, 0.2)
    )


class DigitsDeepSaturating(DatasetMLPTask):
    """Digits through a plain 6-10 layer MLP with sigmoid or tanh units, no normalization.
    Axis: depth with saturating activations (vanishing gradients, long plateaus)."""

    id, domain, n_classes, budget = "cv.digits_deep_saturating", "cv", 10, 600
    dataset, d_in, n_out = "digits", 64, 10
    space = SearchSpace(widths=(32, 64), depths=(6, 8, 10), activations=("sigmoid", "tanh"), norms=("none",), dropouts=(0.0,))


class DigitsAutoencoder(SupervisedTask):
    """Digits reconstructed through an MLP autoencoder with a bottleneck of width / 8 = 8 or 16 units
    (MSE on the standardized pixels). Axis: reconstruction objective (no labels, a loss floor set by
    the code size)."""

    id, domain, n_classes, budget = "cv.digits_autoencoder", "cv", None, 500
    space = SearchSpace(
        widths=(64, 128), depths=(1, 2), activations=("relu", "tanh", "gelu"), norms=("none", "layer"), dropouts=(0.0,)
    )

    def data(self, config: TaskConfig):
        x, _ = data.sklearn_dataset("digits")
        return x, x

    def model(self, config: TaskConfig):
        return models.autoencoder(64, config.width // 8, config.width, config.depth, config.activation, config.norm)


class DigitsCNN(SupervisedTask):
    """Digits as 1x8x8 images through a small CNN. Axis: convolutional baseline."""

    id, domain, n_classes, budget = "cv.digits_cnn", "cv", 10, 250
    space = SearchSpace(depths=(2, 3), **_CONV)

    def data(self, config: TaskConfig):
        x, y = data.sklearn_dataset("digits")
        return x.reshape(-1, 1, 8, 8), y

    def model(self, config: TaskConfig):
        return models.cnn(1, 10, config.width, config.depth, config.activation, config.norm, config.dropout)


class ShapesCNN(SupervisedTask):
    """Synthetic 16x16 shapes (circle, square, triangle, cross) with pixel noise. Axis: CNN, few classes."""

    id, domain, n_classes, budget = "cv.shapes_cnn", "cv", 4, 250
    space = SearchSpace(depths=(2, 3, 4), **_CONV)

    def data(self, config: TaskConfig):
        return _shapes()

    def model(self, config: TaskConfig):
        return models.cnn(1, 4, config.width, config.depth, config.activation, config.norm, config.dropout)


class ShapesNoisyResNet(SupervisedTask):
    """Shapes through a small ResNet, with 20-50% of the training labels replaced at random.
    Axis: noisy labels with a residual, batch-normalized net (fits the noise if trained long)."""

    id, domain, n_classes, budget = "cv.shapes_noisy_resnet", "cv", 4, 300
    space = SearchSpace(
        widths=(8, 16),
        depths=(1, 2),
        activations=("relu", "gelu"),
        norms=("batch",),
        label_noise=(0.2, 0.5),
        batch_sizes=(32, 64),
    )

    def data(self, config: TaskConfig):
        return _shapes()

    def model(self, config: TaskConfig):
        return models.resnet(1, 4, config.width, config.depth, config.activation)


class ShapesViT(SupervisedTask):
    """Shapes cut into 16 patches of 4x4 pixels, classified by a tiny Vision Transformer
    (Dosovitskiy et al. 2021). Axis: attention in vision (no convolutional prior: slower, lr-sensitive)."""

    id, domain, n_classes, budget = "cv.shapes_vit", "cv", 4, 300
    space = SearchSpace(widths=(32,), depths=(1, 2), activations=("relu", "gelu"), norms=("none",), batch_sizes=(32,))

    def data(self, config: TaskConfig):
        x, y = _shapes()
        return data.patchify(x, 4), y

    def model(self, config: TaskConfig):
        return models.TinyTransformer(
            None,
            4,
            config.width,
            config.depth,
            16,
            per_position=False,
            causal=False,
            dropout=config.dropout,
            act=config.activation,
            d_in=16,
        )


class TexturesResNet(SupervisedTask):
    """Oriented noisy gratings (4 orientations), 3x16x16, through a small ResNet with BatchNorm.
    Axis: residual, batch-normalized CNN."""

    id, domain, n_classes, budget = "cv.textures_resnet", "cv", 4, 200
    space = SearchSpace(widths=(8, 16), depths=(1, 2), activations=("relu", "gelu"), norms=("batch",), batch_sizes=(32, 64))

    def data(self, config: TaskConfig):
        return _textures()

    def model(self, config: TaskConfig):
        return models.resnet(3, 4, config.width, config.depth, config.activation)


class GlyphsManyCNN(SupervisedTask):
    """40 classes of random 5x5 glyphs at random positions of a 10x10 noisy canvas, through a CNN.
    Axis: many-class classification in vision (log 40 = 3.7 nats at the start)."""

    id, domain, n_classes, budget = "cv.glyphs_many_cnn", "cv", 40, 400
    space = SearchSpace(
        widths=(16,),
        depths=(2, 3),
        norms=("none", "batch", "layer"),
        batch_sizes=(32, 64),
        data_fraction=(0.6, 1.0),
        dropouts=(0.0, 0.1),
    )

    def data(self, config: TaskConfig):
        return _glyphs()

    def model(self, config: TaskConfig):
        return models.cnn(1, 40, config.width, config.depth, config.activation, config.norm, config.dropout)


FAMILIES = [
    DigitsMLP,
    DigitsFewShotMLP,
    DigitsDeepSaturating,
    DigitsAutoencoder,
    DigitsCNN,
    ShapesCNN,
    ShapesNoisyResNet,
    ShapesViT,
    TexturesResNet,
    GlyphsManyCNN,
]
