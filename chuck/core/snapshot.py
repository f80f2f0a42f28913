"""One in-memory copy of parameters, their optimizer state and (optionally) the model's buffers.

The guardrails keep two: the spike rollback's (the last healthy state, every
``snapshot_every`` steps) and the overfitting rollback's (the state with the best
validation loss so far). A snapshot is preallocated on first use and then copied into,
so taking one costs a memcpy of the parameters and their optimizer state.

A snapshot belongs to the parameter objects it was taken of (their identity, not their
position): after one block is frozen and an identically shaped one unfrozen, the trainable
list has the same shapes in the same places, and restoring by position would write the first
block's weights and optimizer state into the second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Snapshot:
    """Parameters and the optimizer state that goes with them, at one step, for those parameter objects."""

    def __init__(self) -> None:
        self.params: list[torch.Tensor] | None = None
        self.ids: list[int] = []  # id() of the parameters the copies belong to, in order
        self.state: dict[int, dict[str, Any]] | None = None
        self.buffers: list[torch.Tensor] = []  # e.g. batch-norm running statistics, when given
        self.step: int | None = None

    @property
    def exists(self) -> bool:
        return self.params is not None

    @torch.no_grad()
    def take(
        self, step: int, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, buffers: Sequence[torch.Tensor] = ()
    ) -> None:
        buffers = list(buffers)
        if len(self.buffers) == len(buffers) and all(
            a.shape == b.shape and a.dtype == b.dtype for a, b in zip(self.buffers, buffers)
        ):
            for mine, b in zip(self.buffers, buffers):
                mine.copy_(b)
        else:
            self.buffers = [b.detach().clone() for b in buffers]
        params = list(params)
        self.ids = [id(p) for p in params]
        if self.params is None or len(self.params) != len(params):
            self.params = [p.detach().clone() for p in params]
        else:
            torch._foreach_copy_(self.params, [p.detach() for p in params])
        state: dict[int, dict[str, Any]] = {}
        old = self.state or {}
        for i, p in enumerate(params):
            st = optimizer.state.get(p)
            if not st:
                continue
            entry = {}
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    prev = old.get(i, {}).get(k)
                    if isinstance(prev, torch.Tensor) and prev.shape == v.shape and prev.dtype == v.dtype:
                        entry[k] = prev.copy_(v)
                    else:
                        entry[k] = v.detach().clone()
                else:
                    entry[k] = v
            state[i] = entry
        self.state = state
        self.step = step

    @torch.no_grad()
    def restore(
        self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, buffers: Sequence[torch.Tensor] = ()
    ) -> None:
        """Put parameters and optimizer state (and the buffers it holds, when given the same ones) back."""
        if self.params is None:
            raise RuntimeError("no snapshot to roll back to")
        if not self.covers(params):
            raise RuntimeError("the snapshot belongs to other parameters than these: a rollback would mix them up")
        buffers = list(buffers)
        if len(buffers) == len(self.buffers) and all(a.shape == b.shape for a, b in zip(self.buffers, buffers)):
            for b, mine in zip(buffers, self.buffers):
                b.copy_(mine)
        params = list(params)
        torch._foreach_copy_([p.data for p in params], self.params)
        for i, p in enumerate(params):
            snap = (self.state or {}).get(i)
            if snap is None:
                optimizer.state.pop(p, None)
                continue
            st = optimizer.state.setdefault(p, {})
            st.clear()
            for k, v in snap.items():
                st[k] = v.clone() if isinstance(v, torch.Tensor) else v

    def covers(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether it holds exactly these parameter objects, in this order (a layer unfrozen since: no)."""
        snap = self.params
        return (
            snap is not None
            and len(snap) == len(params)
            and self.ids == [id(p) for p in params]
            and all(s.shape == p.shape for s, p in zip(snap, params))
        )

    def drop(self) -> None:
        self.params = self.state = None
        self.ids = []
        self.buffers = []
        self.step = None

    def copies(self) -> tuple[list[torch.Tensor] | None, dict[int, dict[str, Any]] | None]:
        """Cloned parameters and state, for a checkpoint."""
        params = None if self.params is None else [t.clone() for t in self.params]
        state = (
            None
            if self.state is None
            else {i: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in e.items()} for i, e in self.state.items()}
        )
        return params, state

    def load(
        self,
        step: int | None,
        params: list[torch.Tensor] | None,
        state: dict[Any, dict[str, Any]] | None,
        owners: Sequence[torch.Tensor] = (),
    ) -> None:
        """Load saved copies; they belong to ``owners`` (the trainable parameters, in the saved order)."""
        self.step = step
        self.ids = [id(p) for p in owners] if params is not None else []
        self.params = None if params is None else [t.clone() for t in params]
        self.state = None if state is None else {int(i): dict(e) for i, e in state.items()}
