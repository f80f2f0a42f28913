"""Checks of checkpointed values, shared by every component's ``validate_state_dict``.

Each check takes the field's name and its value, whatever its type, and returns why the value
cannot be loaded (a sentence that starts with the name) or ``None`` when it can; none of them
raises. A checkpoint is untrusted input: an odd value (a string where a count belongs, a tensor of
another shape, NaN) must be refused here, before anything of the checkpoint is loaded, not raise
later inside a monitor or the base optimizer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

#: The largest count a checkpoint may hold: what an int64 tensor (and numpy) can represent.
MAX_COUNT = 2**63 - 1


def is_real(v: Any) -> bool:
    """A real Python or numpy number; ``True``/``False`` are not numbers here."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def first(*problems: str | None) -> str | None:
    """The first problem of several checks (``None`` when all pass)."""
    return next((p for p in problems if p), None)


def missing(state: dict[str, Any], keys: Sequence[str]) -> str | None:
    """The first of ``keys`` that ``state`` lacks."""
    return next((f"{k} is missing" for k in keys if k not in state), None)


def count(name: str, v: Any) -> str | None:
    """A count: a whole number in ``[0, MAX_COUNT]``."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and 0 <= v <= MAX_COUNT:
        return None
    return f"{name} must be a non-negative integer, got {show(v)}"


def number(
    name: str, v: Any, *, nan: bool = False, inf: bool = False, low: float | None = None, high: float | None = None
) -> str | None:
    """A real number within ``[low, high]``; NaN only with ``nan``, ``+inf`` only with ``inf`` (never ``-inf``)."""
    if type(v) is float or type(v) is int or is_real(v):  # the common types first: checkpoints hold many numbers
        if v != v:
            ok = nan
        elif v == math.inf or v == -math.inf:
            ok = inf and v > 0
        else:
            ok = (low is None or v >= low) and (high is None or v <= high)
        if ok:
            return None
    what = "a finite number" if not inf else "a number or inf"
    if low is not None or high is not None:
        what += f" in [{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
    return f"{name} must be {what}{' or NaN' if nan else ''}, got {show(v)}"


def optional(fn: Callable[..., str | None], name: str, v: Any, /, **kw: Any) -> str | None:
    """The check ``fn`` on ``v`` unless ``v`` is ``None``."""
    return None if v is None else fn(name, v, **kw)


def flag(name: str, v: Any) -> str | None:
    return None if isinstance(v, (bool, np.bool_)) else f"{name} must be True or False, got {show(v)}"


def text(name: str, v: Any) -> str | None:
    return None if isinstance(v, str) else f"{name} must be a string, got {show(v)}"


def items(name: str, v: Any, check: Callable[..., str | None], max_len: int | None = None, **kw: Any) -> str | None:
    """A list (or tuple) whose every element passes ``check``."""
    if not isinstance(v, (list, tuple)):
        return f"{name} must be a list, got {show(v)}"
    if max_len is not None and len(v) > max_len:
        return f"{name} holds {len(v)} entries, at most {max_len} expected"
    for i, x in enumerate(v):
        if check("", x, **kw):  # named only when it fails: long lists are common
            return check(f"{name}[{i}]", x, **kw)
    return None


def numbers_list(name: str, v: Any, max_len: int | None = None, **kw: Any) -> str | None:
    """A list of numbers, each passing :func:`number` with ``kw``."""
    return items(name, v, number, max_len, **kw)


def mapping(name: str, v: Any, check: Callable[..., str | None], prefix: str = "", **kw: Any) -> str | None:
    """A dict with string keys (starting with ``prefix``), every value passing ``check``."""
    if not isinstance(v, dict):
        return f"{name} must be a dict, got {show(v)}"
    for k, x in v.items():
        if not isinstance(k, str) or not k.startswith(prefix):
            return f"{name} must be keyed by {'names' if not prefix else repr(prefix + '...')}, got key {show(k)}"
        if check("", x, **kw):
            return check(f"{name}[{k!r}]", x, **kw)
    return None


def stats(name: str, v: Any, prefix: str = "") -> str | None:
    """A statistics dict: ``{name: float}``, each value finite or NaN (the monitor contract)."""
    return mapping(name, v, number, prefix, nan=True)


def tensor(
    name: str,
    v: Any,
    *,
    dtype: torch.dtype | None = None,
    integer: bool = False,
    shape: Sequence[int] | None = None,
    ndim: int | None = None,
    finite: bool = False,
) -> str | None:
    """A dense tensor of this dtype (or any integer dtype with ``integer``), shape or number of dimensions;
    with ``finite``, no NaN or inf among its (floating) values."""
    if not isinstance(v, torch.Tensor) or v.is_sparse:
        return f"{name} must be a tensor, got {show(v)}"
    if dtype is not None and v.dtype != dtype:
        return f"{name} must be a {dtype} tensor, got {v.dtype}"
    if integer and (v.is_floating_point() or v.is_complex() or v.dtype == torch.bool):
        return f"{name} must be an integer tensor, got {v.dtype}"
    if shape is not None and tuple(v.shape) != tuple(shape):
        return f"{name} must have shape {tuple(shape)}, got {tuple(v.shape)}"
    if ndim is not None and v.dim() != ndim:
        return f"{name} must have {ndim} dimension(s), got shape {tuple(v.shape)}"
    if finite and (v.is_floating_point() or v.is_complex()) and v.numel() and not bool(torch.isfinite(v).all()):
        return f"{name} holds non-finite values"
    return None


def index(name: str, v: Any, size: int) -> str | None:
    """A 1-D integer tensor of positions in ``[0, size)``."""
    why = tensor(name, v, integer=True, ndim=1)
    if why:
        return why
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= size):
        return f"{name} holds positions outside [0, {size})"
    return None


def show(v: Any) -> str:
    """A short rendering of an odd value for a message (a tensor by its type and shape, not its values)."""
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
