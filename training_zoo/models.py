"""Model factories for the zoo: MLP (plain, residual, autoencoder), CNN, small ResNet, recurrent
nets (GRU, LSTM, Elman RNN) and a tiny Transformer (over tokens or over image patches).

Each takes the sampled width/depth/activation/normalization so that one family
covers a spread of architectures (some of them badly conditioned on purpose).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


def _norm1d(kind: str, width: int) -> nn.Module:
    makers: dict[str, Callable[[], nn.Module]] = {
        "none": nn.Identity,
        "batch": lambda: nn.BatchNorm1d(width),
        "layer": lambda: nn.LayerNorm(width),
    }
    return makers[kind]()


def _norm2d(kind: str, ch: int) -> nn.Module:
    makers: dict[str, Callable[[], nn.Module]] = {
        "none": nn.Identity,
        "batch": lambda: nn.BatchNorm2d(ch),
        "layer": lambda: nn.GroupNorm(1, ch),
    }
    return makers[kind]()


def mlp(
    d_in: int, d_out: int, width: int, depth: int, act: str = "relu", norm: str = "none", dropout: float = 0.0
) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), _norm1d(norm, width), activation(act)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def residual_mlp(
    d_in: int, d_out: int, width: int, blocks: int, act: str = "relu", norm: str = "layer", dropout: float = 0.0
) -> nn.Sequential:
    """Stem, ``blocks`` pre-norm residual blocks ``x + W2 act(W1 norm(x))``, norm, head.

    Pre-norm keeps the residual stream's scale growing slowly with depth (Xiong et al. 2020),
    so deep stacks train at higher lrs than the plain :func:`mlp` of the same depth.
    """
    return nn.Sequential(
        nn.Linear(d_in, width),
        *[ResidualMLPBlock(width, act, norm, dropout) for _ in range(blocks)],
        _norm1d(norm, width),
        nn.Linear(width, d_out),
    )


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int, act: str, norm: str, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm1d(norm, width), nn.Linear(width, 2 * width), activation(act), nn.Dropout(dropout), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def autoencoder(d_in: int, code: int, width: int, depth: int, act: str = "relu", norm: str = "none") -> nn.Sequential:
    """MLP encoder to a ``code``-wide bottleneck and a mirrored MLP decoder back to ``d_in``."""
    return nn.Sequential(mlp(d_in, code, width, depth, act, norm), activation(act), mlp(code, d_in, width, depth, act, norm))


def cnn(
    in_ch: int, n_classes: int, width: int, depth: int, act: str = "relu", norm: str = "none", dropout: float = 0.0
) -> nn.Sequential:
    """Conv blocks (conv, norm, act, pool every other block), global average pool, linear head."""
    layers: list[nn.Module] = []
    ch = in_ch
    for i in range(depth):
        layers += [nn.Conv2d(ch, width, 3, padding=1), _norm2d(norm, width), activation(act)]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        ch = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(ch, n_classes))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, ch: int, act: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.conv2, self.bn2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.act1, self.act2 = activation(act), activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.conv1(x)))
        return self.act2(x + self.bn2(self.conv2(h)))


def resnet(in_ch: int, n_classes: int, width: int, blocks: int, act: str = "relu") -> nn.Sequential:
    """A small residual network with BatchNorm (He et al. 2016), stem + ``blocks`` blocks."""
    return nn.Sequential(
        nn.Conv2d(in_ch, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        activation(act),
        nn.MaxPool2d(2),
        *[ResidualBlock(width, act) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, n_classes),
    )


RNN_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class RecurrentModel(nn.Module):
    """Embedding -> recurrent net -> linear; per position (language model) or from the last state (classifier).

    ``cell``: ``"gru"``, ``"lstm"`` or ``"rnn"`` (Elman, tanh: saturating, with exploding and
    vanishing gradients through time, Pascanu et al. 2013).
    """

    def __init__(
        self, vocab: int, n_out: int, width: int, depth: int, per_position: bool, dropout: float = 0.0, cell: str = "gru"
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = RNN_CELLS[cell](width, width, num_layers=depth, batch_first=True, dropout=dropout if depth > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_out)
        self.per_position = per_position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(x))
        h = self.drop(h)
        return self.head(h if self.per_position else h[:, -1])


class TinyTransformer(nn.Module):
    """A pre-norm Transformer encoder with learned positions; causal for language modelling.

    Classification (and regression) pools the mean over positions; per-position tasks predict
    every token. Inputs are token ids (``vocab``), or feature vectors of size ``d_in`` (image
    patches, as in ViT, Dosovitskiy et al. 2021) embedded by a linear map when ``vocab`` is None.
    """

    def __init__(
        self,
        vocab: int | None,
        n_out: int,
        width: int,
        depth: int,
        max_len: int,
        *,
        per_position: bool,
        causal: bool,
        heads: int = 4,
        dropout: float = 0.0,
        act: str = "gelu",
        d_in: int | None = None,
    ) -> None:
        super().__init__()
        if (vocab is None) == (d_in is None):
            raise ValueError("give exactly one of vocab (token inputs) and d_in (vector inputs)")
        self.embed = nn.Embedding(vocab, width) if vocab is not None else nn.Linear(int(d_in or 0), width)
        self.pos = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=2 * width,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
            activation="gelu" if act == "gelu" else "relu",
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_out)
        self.per_position, self.causal = per_position, causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.embed(x) + self.pos[:, :t]
        mask = nn.Transformer.generate_square_subsequent_mask(t) if self.causal else None
        h = self.norm(self.encoder(h, mask=mask, is_causal=self.causal))
        return self.head(h if self.per_position else h.mean(1))
