"""Where an episode's learning rate starts: the family's best constant lr, then too low, near it, or too high.

A policy learns to fix a bad start only if it meets bad starts of every kind,
and to leave a good one alone only if it meets good ones. A log-uniform draw
over fixed decades does neither well: "good" sits at a different place for
every family, so some families start almost always too low and others too
high. Each family therefore records its best constant lr for AdamW (measured
by :mod:`chuck.zoo.calibrate`, cached in ``best_lr.json`` next to this file),
and every episode draws a *regime* first, a third each:

* ``"near"``: within +-0.5 decade of the best lr,
* ``"low"``: 0.5 to 2 decades below it,
* ``"high"``: 0.5 to 2 decades above it,

log-uniform inside the regime, then shifted by the base optimizer's offset
(:data:`OPTIMIZER_LR_OFFSET`) since SGD's good lrs are not AdamW's.

The cache entry of a family is keyed by its id and by a hash of what determines
its best lr (the step budget and the search space, see :func:`calibration_key`):
change either and the entry is stale; a missing or stale entry falls back to
:data:`FALLBACK_LR` with a warning, until ``python -m chuck.zoo.calibrate`` is rerun.
In-house tasks are measured into ``$CHUCK_HOME/best_lr.json`` (:func:`user_cache_path`), read after
the package's file; a task may also declare its own ``best_lr``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from chuck.core.home import chuck_home

#: The committed calibration results (see :mod:`chuck.zoo.calibrate`).
CACHE_PATH = Path(__file__).with_name("best_lr.json")

#: The lr a family without a fresh cache entry starts around (AdamW's usual default).
FALLBACK_LR = 1e-3

#: The base optimizer the cache is measured for; the others are shifted by their offset.
REFERENCE_OPTIMIZER = "AdamW"

#: Decades from the family's best lr, per regime: [lo, hi), drawn log-uniform.
LR_REGIMES: dict[str, tuple[float, float]] = {
    "low": (-2.0, -0.5),
    "near": (-0.5, 0.5),
    "high": (0.5, 2.0),
}

#: log10(best lr of the optimizer / best lr of AdamW), the median over 8 families (digits MLP,
#: CNN and autoencoder, breast cancer, Friedman #1, 50 classes, topics, TD value) of
#: ``python -m chuck.zoo.calibrate --optimizer X --output F`` then ``--compare F``, rounded to a
#: quarter decade. Measured: Adam +0.03 (the same update up to the decoupled decay); RMSprop
#: -0.22 (-0.40..-0.03: without bias correction its second-moment average starts near zero, so
#: the first steps are ~10x larger); SGD with momentum 0.9 +0.52, but spread from -1.0 (TD
#: value) to +1.7 (autoencoder): without per-coordinate normalization its best lr follows the
#: gradient scale of each family, so SGD episodes land in their nominal regime less reliably.
OPTIMIZER_LR_OFFSET: dict[str, float] = {
    "AdamW": 0.0,
    "Adam": 0.0,
    "RMSprop": -0.25,
    "SGD": 0.5,
    "NesterovSGD": 0.5,  # not calibrated separately: Nesterov's look-ahead leaves the usable lr range alike
    # never drawn (a held-out base), not calibrated: its lr caps a step relative to the parameter's RMS,
    # a decade above AdamW's as chuck.evaluation.bases.LR_SHIFT puts its grids
    "Adafactor": 1.0,
}


def calibration_key(budget: int, space: Any) -> str:
    """A short hash of what a family's best lr depends on: its step budget and its search space.

    ``space`` is a (frozen) dataclass, normally a :class:`~chuck.zoo.task.SearchSpace`; its
    fields are serialized in a stable order, tuples and lists alike.
    """
    is_instance = dataclasses.is_dataclass(space) and not isinstance(space, type)
    fields = dataclasses.asdict(space) if is_instance else dict(vars(space))  # type: ignore[arg-type]
    blob = json.dumps({"budget": int(budget), "space": fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache
def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        return {}
    return json.loads(p.read_text()).get("tasks", {})


def reload_cache() -> None:
    """Forget the cached file contents (after a calibration rewrote it)."""
    _load.cache_clear()


def user_cache_path() -> Path | None:
    """``$CHUCK_HOME/best_lr.json``, where ``python -m chuck.zoo.calibrate`` measures in-house tasks into;
    ``None`` when CHUCK_HOME is not usable."""

    try:
        return chuck_home() / "best_lr.json"
    except OSError:
        return None


def cache_entry(task_id: str, key: str, path: Path | str | None = None) -> dict[str, Any] | None:
    """The cache entry for ``task_id`` if present *and* measured under ``key``; else ``None``.

    ``path`` defaults to :data:`CACHE_PATH`, then :func:`user_cache_path` (read at call time).
    """
    paths = [path] if path is not None else [CACHE_PATH, user_cache_path()]
    for candidate in paths:
        if candidate is None:
            continue
        entry = _load(str(candidate)).get(task_id)
        if entry is not None and entry.get("key") == key:
            return entry
    return None


_warned: set[tuple[str, str]] = set()


def lookup_best_lr(task_id: str, key: str, path: Path | str | None = None) -> float:
    """The cached best AdamW lr of a family, or :data:`FALLBACK_LR` with a warning (once per family and key)."""
    entry = cache_entry(task_id, key, path)
    if entry is not None:
        return float(entry["best_lr"])
    if (task_id, key) not in _warned:
        _warned.add((task_id, key))
        stale = task_id in _load(str(path or CACHE_PATH))
        warnings.warn(
            f"task {task_id!r}: {'stale' if stale else 'no'} best-lr cache entry (budget or search space "
            f"changed, or never calibrated); starting lrs are drawn around {FALLBACK_LR:g}. "
            f"Run `python -m chuck.zoo.calibrate --tasks {task_id}` to measure it.",
            stacklevel=3,
        )
    return FALLBACK_LR


def count_as_said(tasks: Any) -> None:
    """Count the missing-entry warning of each of ``tasks`` as said in this process: a meta-training run
    says it once, in its main process, not again in each of its workers."""
    _warned.update((t.id, t.calibration_key) for t in tasks)


def draw_lr(rng: np.random.Generator, best_lr: float, optimizer: str) -> tuple[float, str]:
    """A starting lr and its regime (``"low"``, ``"near"`` or ``"high"``, a third each) for ``optimizer``."""
    regime = ("low", "near", "high")[int(rng.integers(3))]
    lo, hi = LR_REGIMES[regime]
    decades = rng.uniform(lo, hi) + OPTIMIZER_LR_OFFSET.get(optimizer, 0.0)
    return float(best_lr * 10.0**decades), regime


def regime_of(lr: float, best_lr: float, optimizer: str) -> str:
    """Which regime ``lr`` falls in for a family whose AdamW best lr is ``best_lr`` (outside +-2 decades too)."""
    d = math.log10(lr / best_lr) - OPTIMIZER_LR_OFFSET.get(optimizer, 0.0)
    return "low" if d < LR_REGIMES["near"][0] else "high" if d >= LR_REGIMES["near"][1] else "near"
