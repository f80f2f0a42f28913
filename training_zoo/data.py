"""Data for the zoo: bundled with packages or generated; nothing is fetched at run time.

* scikit-learn's bundled sets (digits, breast cancer, wine, diabetes) ship inside
  the wheel (``sklearn/datasets/data``); its generators (``make_classification``,
  ``make_friedman2`` ...) make the synthetic tabular sets of :data:`GENERATED_TABULAR`.
* Synthetic images (shapes, oriented textures, glyphs), sequences (copy, reverse, parity,
  brackets, digit sums, Markov chains) and text classification are generated from a seed.
* Character-level text comes from the docstrings of Python's standard library,
  which every Python installation carries.

Every loader is cached per process and returns float32/int64 tensors.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings

import numpy as np
import torch

_STDLIB_MODULES = (
    "collections",
    "functools",
    "itertools",
    "json",
    "argparse",
    "logging",
    "unittest",
    "pathlib",
    "subprocess",
    "threading",
    "asyncio",
    "email",
    "http",
    "csv",
    "re",
    "string",
    "textwrap",
    "difflib",
    "inspect",
    "dataclasses",
    "contextlib",
    "abc",
    "enum",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "os",
    "shutil",
    "tempfile",
    "zipfile",
    "tarfile",
    "pickle",
    "copy",
    "pprint",
    "heapq",
    "bisect",
    "codecs",
    "io",
    "datetime",
    "calendar",
    "socket",
    "sqlite3",
    "hashlib",
    "uuid",
    "base64",
    "gzip",
    "configparser",
    "optparse",
    "traceback",
    "warnings",
    "weakref",
    "types",
    "operator",
    "numbers",
    "locale",
    "gettext",
    "platform",
    "doctest",
    "pdb",
    "timeit",
    "tokenize",
    "ast",
    "dis",
)


@functools.cache
def sklearn_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled scikit-learn data set as (X, y); X standardized per feature."""
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover - sklearn is in chuck[all]
        raise ImportError("the zoo's tabular and digits tasks need scikit-learn: pip install 'chuck[all]'") from exc
    loader = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "diabetes": datasets.load_diabetes,
    }[name]
    bunch = loader()
    x = bunch.data.astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = bunch.target
    if name == "diabetes":
        y = ((y - y.mean()) / y.std()).astype(np.float32)
    return x, y


#: Generated tabular sets: name -> (scikit-learn generator, its arguments, target handling).
#: Target handling: "classes" (integer labels), "standardize", or a float: the raw target
#: times that factor, so regression families span target scales from 1e-2 to 1e3.
GENERATED_TABULAR: dict[str, tuple[str, dict, str | float]] = {
    # 50 classes, one cluster each: many-class classification
    "many_classes": (
        "make_classification",
        dict(n_samples=6000, n_features=24, n_informative=14, n_redundant=4, n_classes=50, n_clusters_per_class=1, class_sep=1.5),
        "classes",
    ),
    # 30% of labels (train and validation) flipped at random: noisy labels, irreducible loss
    "noisy_binary": (
        "make_classification",
        dict(n_samples=1200, n_features=20, n_informative=6, flip_y=0.3, class_sep=1.0),
        "classes",
    ),
    # 40k well-separated points: large, easy data (nothing to overfit)
    "large_easy": (
        "make_classification",
        dict(n_samples=40_000, n_features=16, n_informative=10, n_classes=8, n_clusters_per_class=2, class_sep=2.5),
        "classes",
    ),
    # 400 features for 600 samples, 10 informative: high-dimensional, overfits without decay
    "sparse_highdim": (
        "make_classification",
        dict(n_samples=600, n_features=400, n_informative=10, n_redundant=0, n_clusters_per_class=1, class_sep=1.5),
        "classes",
    ),
    # Friedman #2 (an electrical impedance): raw targets, mean ~500, std ~400
    "friedman2_raw": ("make_friedman2", dict(n_samples=2000, noise=20.0), 1.0),
    # Friedman #3 (a phase angle) scaled by 1e-2: targets ~0.01, squared errors ~1e-5
    "friedman3_small": ("make_friedman3", dict(n_samples=2000, noise=0.05), 0.01),
    # Friedman #1 with 10 extra noise features, for the deep residual MLPs
    "friedman1_wide": ("make_friedman1", dict(n_samples=4000, n_features=20, noise=1.0), "standardize"),
}


@functools.cache
def generated_tabular(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A set of :data:`GENERATED_TABULAR` as (X, y); X standardized per feature."""
    from sklearn import datasets

    gen, kwargs, target = GENERATED_TABULAR[name]
    x, y = getattr(datasets, gen)(random_state=seed, **kwargs)
    x = x.astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    if target == "classes":
        return x, y.astype(np.int64)
    if target == "standardize":
        return x, ((y - y.mean()) / y.std()).astype(np.float32)
    return x, (y * float(target)).astype(np.float32)


@functools.cache
def stdlib_text(max_chars: int = 300_000) -> str:
    """Printable-ASCII text from the docstrings of standard-library modules (deterministic per Python)."""
    parts: list[str] = []
    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modname in _STDLIB_MODULES:
            try:
                mod = importlib.import_module(modname)
            except Exception:  # noqa: BLE001 - a missing optional module just contributes nothing
                continue
            for attr in sorted(dir(mod)):
                doc = getattr(getattr(mod, attr, None), "__doc__", None)
                if isinstance(doc, str) and len(doc) > 80:
                    clean = "".join(c if 32 <= ord(c) < 127 else " " for c in doc.replace("\n", " "))
                    clean = " ".join(clean.split())
                    parts.append(clean)
                    total += len(clean)
            if total >= max_chars:
                break
    return "\n".join(parts)[:max_chars]


def char_corpus(seq_len: int, n_seqs: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    """``n_seqs`` windows of ``seq_len + 1`` characters, encoded over a fixed vocabulary of printable ASCII."""
    text = stdlib_text()
    codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)
    codes = np.clip(codes - 31, 0, 95)  # '\n' (10) -> 0; ' '..'~' -> 1..95
    vocab = 96
    starts = rng.integers(0, len(codes) - seq_len - 1, size=n_seqs)
    windows = np.stack([codes[s : s + seq_len + 1] for s in starts])
    return torch.from_numpy(windows), vocab


def shapes_images(n: int, size: int, rng: np.random.Generator, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale images of a circle, a square, a triangle or a cross at random position and scale."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    imgs = np.zeros((n, 1, size, size), dtype=np.float32)
    labels = rng.integers(0, 4, size=n)
    for i, lab in enumerate(labels):
        r = rng.uniform(size * 0.15, size * 0.35)
        cx, cy = rng.uniform(r, size - r, size=2)
        dx, dy = xx - cx, yy - cy
        if lab == 0:
            m = dx**2 + dy**2 <= r**2
        elif lab == 1:
            m = (np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8)
        elif lab == 2:
            m = (dy <= r * 0.7) & (dy >= -r * 0.7) & (np.abs(dx) <= (dy + r * 0.7) * 0.6)
        else:
            m = (np.abs(dx) <= r * 0.25) | (np.abs(dy) <= r * 0.25)
            m &= (np.abs(dx) <= r) & (np.abs(dy) <= r)
        imgs[i, 0] = m.astype(np.float32)
    imgs += rng.normal(0, noise, imgs.shape).astype(np.float32)
    return imgs, labels


def texture_images(n: int, size: int, rng: np.random.Generator, n_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Oriented sinusoidal gratings with random phase and frequency; the class is the orientation."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    labels = rng.integers(0, n_classes, size=n)
    theta = labels * math.pi / n_classes + rng.normal(0, 0.08, n)
    freq = rng.uniform(3, 6, n)
    phase = rng.uniform(0, 2 * math.pi, n)
    proj = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy
    imgs = np.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])
    imgs = imgs + rng.normal(0, 0.5, imgs.shape)
    # three channels with different contrast, so the net sees colour-like inputs
    imgs = np.stack([imgs, 0.5 * imgs, -imgs], axis=1).astype(np.float32)
    return imgs, labels


def sparse_parity(n: int, bits: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` strings of ``bits`` random signs (+-1), labelled with the parity of their first ``k``.

    The (n, k) sparse parity of Barak et al. 2022 ("Hidden progress in deep learning: SGD learns parities
    near the computational limit"): a network trained on it sits at chance loss for a stretch whose length
    grows like bits^k before the loss drops, with no visible progress on the plateau.
    """
    x = np.random.default_rng(seed).integers(0, 2, size=(n, bits)) * 2 - 1
    return x.astype(np.float32), (x[:, :k] < 0).sum(1).astype(np.int64) % 2


def first_token_memory(n: int, length: int, vocab: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` strings of ``length`` random tokens 1..``vocab``, labelled with their first token (0-based).

    A recurrent net must carry one token through ``length`` steps of distractors to its last state: a
    long-range memory task whose loss sits at chance (log ``vocab``) until the gradient through time is
    large enough to find the dependency, then drops (Hochreiter & Schmidhuber 1997; Bengio et al. 1994).
    """
    x = np.random.default_rng(seed).integers(1, vocab + 1, size=(n, length))
    return x, (x[:, 0] - 1).astype(np.int64)


def sequence_task(kind: str, n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic sequence tasks over small vocabularies.

    * ``copy``/``reverse``: tokens 1..8, target per position (the sequence, or its reverse).
    * ``parity``: bits, target the parity of the whole string (binary classification).
    * ``brackets``: '(' = 1, ')' = 2, target whether the string is balanced; half are made balanced.
    * ``digit_sum``: digits 0..9 as tokens 1..10, target their sum as a float (raw scale:
      mean 4.5 x length).
    """
    if kind == "digit_sum":
        x = rng.integers(0, 10, size=(n, length))
        return x + 1, x.sum(1).astype(np.float32)
    if kind in ("copy", "reverse"):
        x = rng.integers(1, 9, size=(n, length))
        y = x.copy() if kind == "copy" else x[:, ::-1].copy()
        return x, y
    if kind == "parity":
        x = rng.integers(0, 2, size=(n, length))
        return x + 1, x.sum(1) % 2
    if kind == "brackets":
        x = np.zeros((n, length), dtype=np.int64)
        y = np.zeros(n, dtype=np.int64)
        for i in range(n):
            if rng.random() < 0.5:
                s = _balanced(length, rng)
                y[i] = 1
            else:
                s = rng.integers(1, 3, size=length)
                depth, ok = 0, True
                for t in s:
                    depth += 1 if t == 1 else -1
                    ok &= depth >= 0
                y[i] = int(ok and depth == 0)
            x[i] = s
        return x, y
    raise ValueError(f"unknown sequence task {kind!r}")


@functools.cache
def markov_sequences(n: int, length: int, vocab: int, seed: int) -> np.ndarray:
    """``n`` sequences of ``length`` + 1 tokens from a random second-order Markov chain over ``vocab`` tokens.

    Each (previous, current) pair has a peaked next-token distribution (Dirichlet(0.1)),
    so a model can get well below log(vocab) but never below the chain's entropy rate.
    """
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(vocab, 0.1), size=(vocab, vocab))
    cdf = probs.cumsum(-1)
    seq = np.zeros((n, length + 1), dtype=np.int64)
    seq[:, :2] = rng.integers(0, vocab, size=(n, 2))
    for t in range(2, length + 1):
        u = rng.random(n)[:, None]
        seq[:, t] = np.minimum((cdf[seq[:, t - 2], seq[:, t - 1]] < u).sum(-1), vocab - 1)
    return seq


def glyph_images(
    n: int, n_classes: int, size: int, rng: np.random.Generator, glyph: int = 5, template_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Many-class images: one random ``glyph`` x ``glyph`` binary template per class (fixed by
    ``template_seed``), drawn at a random position of a ``size`` x ``size`` canvas with random
    contrast and pixel noise."""
    templates = np.random.default_rng(template_seed).random((n_classes, glyph, glyph)) < 0.45
    labels = rng.integers(0, n_classes, size=n)
    imgs = rng.normal(0, 0.25, (n, 1, size, size)).astype(np.float32)
    pos = rng.integers(0, size - glyph + 1, size=(n, 2))
    contrast = rng.uniform(0.7, 1.3, n)
    for i, lab in enumerate(labels):
        r, c = pos[i]
        imgs[i, 0, r : r + glyph, c : c + glyph] += contrast[i] * templates[lab]
    return imgs, labels


def patchify(imgs: np.ndarray, patch: int) -> np.ndarray:
    """(N, C, H, W) images -> (N, H/patch * W/patch, C * patch^2) patch vectors, row-major (ViT's tokens)."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def _balanced(length: int, rng: np.random.Generator) -> np.ndarray:
    out, depth, opens = [], 0, length // 2
    for pos in range(length):
        remaining = length - pos
        if opens > 0 and (depth == 0 or rng.random() < 0.5) and depth + 1 <= remaining - 1:
            out.append(1)
            depth += 1
            opens -= 1
        else:
            out.append(2)
            depth -= 1
    return np.array(out, dtype=np.int64)


_TOPICS = {
    0: ("goal", "match", "team", "score", "coach", "league", "season", "player"),
    1: ("market", "stock", "price", "bank", "trade", "profit", "share", "rate"),
    2: ("cell", "gene", "protein", "virus", "brain", "drug", "trial", "patient"),
    3: ("code", "server", "python", "compile", "memory", "kernel", "thread", "bug"),
}
_FILLER = ("the", "a", "of", "and", "to", "in", "is", "was", "for", "on", "with", "as", "it", "at", "by", "this")


#: Vocabulary size of :func:`topic_sentences` (filler + topic words + padding id 0).
TOPIC_VOCAB = len(_FILLER) + sum(len(ws) for ws in _TOPICS.values()) + 1


def topic_sentences(n: int, length: int, rng: np.random.Generator, signal: float = 0.25) -> tuple[np.ndarray, np.ndarray, int]:
    """Synthetic text classification: filler words with a fraction ``signal`` of topic words.

    Returns token ids (n, length), labels (n,) and the vocabulary size. Some topic
    words are shared across topics at random, so the task is not trivially separable.
    """
    vocab = list(_FILLER) + [w for ws in _TOPICS.values() for w in ws]
    index = {w: i + 1 for i, w in enumerate(vocab)}
    x = np.zeros((n, length), dtype=np.int64)
    y = rng.integers(0, len(_TOPICS), size=n)
    for i in range(n):
        for j in range(length):
            if rng.random() < signal:
                topic = y[i] if rng.random() < 0.7 else rng.integers(0, len(_TOPICS))
                w = _TOPICS[int(topic)][rng.integers(0, 8)]
            else:
                w = _FILLER[rng.integers(0, len(_FILLER))]
            x[i, j] = index[w]
    return x, y, len(vocab) + 1
