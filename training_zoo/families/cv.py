"""Computer-vision families: digits (MLP, CNN), synthetic shapes (CNN), textures (ResNet)."""

from __future__ import annotations

import numpy as np

from chuck.zoo import data, models
from chuck.zoo.families.supervised import DatasetMLPTask, SupervisedTask
from chuck.zoo.task import SearchSpace, TaskConfig


class DigitsMLP(DatasetMLPTask):
    """scikit-learn's 8x8 digits, flattened, through an MLP."""

    id, domain, n_classes, budget = "cv.digits_mlp", "cv", 10, 300
    dataset, d_in, n_out = "digits", 64, 10
    space = SearchSpace(widths=(32, 64, 128, 256), depths=(1, 2, 3, 4), label_noise=(0.0, 0.3))


class DigitsCNN(SupervisedTask):
    """Digits as 1x8x8 images through a small CNN."""

    id, domain, n_classes, budget = "cv.digits_cnn", "cv", 10, 250
    space = SearchSpace(widths=(8, 16, 32), depths=(2, 3), batch_sizes=(32, 64))

    def data(self, config: TaskConfig):
        x, y = data.sklearn_dataset("digits")
        return x.reshape(-1, 1, 8, 8), y

    def model(self, config: TaskConfig):
        return models.cnn(1, 10, config.width, config.depth, config.activation, config.norm, config.dropout)


class ShapesCNN(SupervisedTask):
    """Synthetic 16x16 shapes (circle, square, triangle, cross) with pixel noise."""

    id, domain, n_classes, budget = "cv.shapes_cnn", "cv", 4, 250
    space = SearchSpace(widths=(8, 16, 32), depths=(2, 3, 4), batch_sizes=(32, 64))

    def data(self, config: TaskConfig):
        return data.shapes_images(1200, 16, np.random.default_rng(7))

    def model(self, config: TaskConfig):
        return models.cnn(1, 4, config.width, config.depth, config.activation, config.norm, config.dropout)


class TexturesResNet(SupervisedTask):
    """Oriented noisy gratings (4 orientations), 3x16x16, through a small ResNet with BatchNorm."""

    id, domain, n_classes, budget = "cv.textures_resnet", "cv", 4, 200
    space = SearchSpace(widths=(8, 16), depths=(1, 2), activations=("relu", "gelu"), norms=("batch",), batch_sizes=(32, 64))

    def data(self, config: TaskConfig):
        return data.texture_images(1200, 16, np.random.default_rng(11))

    def model(self, config: TaskConfig):
        return models.resnet(3, 4, config.width, config.depth, config.activation)


FAMILIES = [DigitsMLP, DigitsCNN, ShapesCNN, TexturesResNet]
