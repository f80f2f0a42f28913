"""The fingerprint of a run's task: what it looks like without running it.

Sizes, layer and activation mix, normalization, base optimizer, batch and data size;
:func:`fingerprint_vector` turns one into a vector for nearest-neighbour search over
the history (the warm starts of :mod:`chuck.history.warm_start`). The kinds counted
come from :mod:`chuck.core.taxonomy`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import nn

from chuck.core.taxonomy import ACTIVATION_TYPES, LAYER_TYPES, NORM_TYPES, OPTIMIZER_NAMES, count_kinds

#: Kept under its old name for callers of chuck.history.
OPTIMIZER_CLASSES = OPTIMIZER_NAMES


def fingerprint(
    model: nn.Module | None,
    optimizer: Any = None,
    *,
    batch_size: int | None = None,
    data_size: int | None = None,
    loss_kind: str | None = None,
) -> dict[str, Any]:
    """What a run's task looks like, without running it: sizes, layer and activation mix, optimizer."""
    fp: dict[str, Any] = {
        "param_count": 0,
        "depth": 0,
        "normalization": "none",
        "optimizer": None,
        "batch_size": batch_size,
        "data_size": data_size,
        "loss_kind": loss_kind,
    }
    fp.update({f"n_{k}": 0 for k in LAYER_TYPES})
    fp.update({f"act_{k}": 0 for k in ACTIVATION_TYPES})
    if model is not None:
        if not callable(getattr(model, "modules", None)):
            raise TypeError(f"model must be the torch.nn.Module being trained (or None), got {type(model).__name__}")
        mods = list(model.modules())
        fp["param_count"] = int(sum(p.numel() for p in model.parameters()))
        fp.update({f"n_{k}": n for k, n in count_kinds(mods, LAYER_TYPES).items()})
        fp.update({f"act_{k}": n for k, n in count_kinds(mods, ACTIVATION_TYPES).items()})
        fp["depth"] = fp["n_linear"] + fp["n_conv"] + fp["n_rnn"] + fp["n_attention"]
        norms = [k for k, n in count_kinds(mods, NORM_TYPES).items() if n]
        fp["normalization"] = "+".join(norms) if norms else "none"
    if optimizer is not None:
        base = getattr(optimizer, "optimizer", optimizer)  # unwrap a ChuckOptimizer
        fp["optimizer"] = type(base).__name__
    return fp


def _count(v: Any) -> float:
    # records from other versions may hold None (or NaN) where a count is unknown
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else 0.0


def fingerprint_vector(fp: dict[str, Any]) -> np.ndarray:
    """Fingerprint -> feature vector for nearest-neighbour search (scales chosen so one unit is 'a lot')."""
    depth = max(_count(fp.get("depth")), 1.0)
    layer_mix = [_count(fp.get(f"n_{k}")) / depth for k in LAYER_TYPES]
    acts = [_count(fp.get(f"act_{k}")) for k in ACTIVATION_TYPES]
    act_total = max(sum(acts), 1.0)
    opt = fp.get("optimizer")
    batch, data = _count(fp.get("batch_size")), _count(fp.get("data_size"))
    return np.array(
        [
            math.log10(max(_count(fp.get("param_count")), 1.0)),  # one decade of parameters = 1
            math.log2(depth) / 2,  # 4x deeper = 1
            *layer_mix,
            *[a / act_total for a in acts],
            0.0 if (fp.get("normalization") or "none") == "none" else 1.0,
            *[1.0 if opt == o else 0.0 for o in OPTIMIZER_NAMES],
            math.log2(batch) / 3 if batch >= 1 else 0.0,  # 8x the batch = 1
            math.log10(data) if data >= 1 else 0.0,
        ],
        dtype=np.float64,
    )
