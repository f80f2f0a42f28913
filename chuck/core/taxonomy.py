"""What kinds of layers, activations, normalizations and base optimizers chuck tells apart.

One home for these lists: the history fingerprint (:mod:`chuck.history.fingerprints`),
the architecture advice (:mod:`chuck.monitors.architecture`) and the zoo's optimizer
choices (:mod:`chuck.zoo.task`) must agree, or a run recorded under one name would be
matched, advised or sampled under another.
"""

from __future__ import annotations

from torch import nn

#: Layers with weights, by kind (counted in a fingerprint's layer mix).
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "rnn": (nn.RNNBase,),
    "attention": (nn.MultiheadAttention,),
    "embedding": (nn.Embedding,),
}

#: Activation modules by family (SiLU and Mish grouped with GELU: smooth, non-monotone near 0).
ACTIVATION_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "relu": (nn.ReLU, nn.ReLU6, nn.LeakyReLU),
    "gelu": (nn.GELU, nn.SiLU, nn.Mish),
    "tanh": (nn.Tanh,),
    "sigmoid": (nn.Sigmoid,),
}

#: Normalization layers by kind.
NORM_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "batch": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
    "layer": (nn.LayerNorm, nn.RMSNorm),
    "group": (nn.GroupNorm,),
    "instance": (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
}

#: Every normalization layer, flattened (for "has any normalization" checks).
NORM_LAYERS: tuple[type[nn.Module], ...] = tuple(t for types in NORM_TYPES.values() for t in types)

#: Layers whose width is their output size: the dense and convolutional layers.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = LAYER_TYPES["linear"] + LAYER_TYPES["conv"]

#: Dropout of every dimensionality (torch's common base class).
DROPOUT_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd,)

#: Base optimizers chuck knows by name: the zoo samples them, fingerprints one-hot encode them.
OPTIMIZER_NAMES: tuple[str, ...] = ("AdamW", "Adam", "SGD", "RMSprop")


def count_kinds(modules: list[nn.Module], kinds: dict[str, tuple[type[nn.Module], ...]]) -> dict[str, int]:
    """How many of ``modules`` fall in each kind of ``kinds``."""
    return {k: sum(isinstance(m, types) for m in modules) for k, types in kinds.items()}
