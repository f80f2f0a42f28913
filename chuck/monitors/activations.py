"""Activation monitor: dead ReLUs, tanh/sigmoid saturation, sparsity, drift.

Forward hooks are *registered only for the sampled forward pass* (the one
that precedes a decision step) and removed right after, so ordinary steps pay
nothing, not even a Python call per module. Each hook reduces its output to a
handful of per-unit statistics over at most ``max_units`` sampled units.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from chuck.core import statecheck as check
from chuck.monitors.base import Indicator, Monitor, advise, grade, lr_way

#: Modules whose output is a rectifier: a unit that is <= 0 for every sample in
#: a batch gets no gradient (a "dead ReLU", Lu et al. 2019, "Dying ReLU and
#: Initialization"). 10% warns, 40% is bad (rule of thumb from practice).
RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.CELU, nn.SELU)
#: Squashing activations: |tanh| > 0.99 (or sigmoid outside [0.01, 0.99]) has a
#: derivative below 0.02; Glorot & Bengio (2010) show saturated top layers stall training.
SQUASHERS = (nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Softsign)
DEAD_WARN, DEAD_BAD = 0.10, 0.40
#: Share of zero activations beyond which a layer is mostly idle (the architecture advice's line).
SPARSE_WARN = 0.9
SAT_WARN, SAT_BAD = 0.10, 0.40
#: Drift of activation scale against the early baseline, |log(std/std0)|: x10 warns, x100 is bad, the lines
#: the weight monitor draws for weights against their init scale. Tighter lines misread learning itself:
#: a small ReLU MLP trained to a low loss on separable data at a tuned lr moves its activation scale by
#: about x2.8 as its margins grow.
DRIFT_WARN, DRIFT_BAD = math.log(10.0), math.log(100.0)


class ActivationMonitor(Monitor):
    """Samples activations through temporary forward hooks.

    Args:
        model: the user's model; activation modules are found by type. If it has none
            (e.g. ``F.relu`` in ``forward``), Linear and Conv outputs are watched instead and
            a unit is "dead" when its pre-activation is <= 0 for the whole batch.
        max_units: units (features or channels) sampled per module.

    The random generator choosing the sampled units is the run's (its context's).
    """

    name = "act"

    def __init__(self, model: nn.Module, max_units: int = 256) -> None:
        self.model = model
        self.max_units = max_units
        mods: list[tuple[str, nn.Module]] = [(n, m) for n, m in model.named_modules() if isinstance(m, RECTIFIERS + SQUASHERS)]
        self._preact = not mods
        if self._preact:
            mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
            mods = mods[:-1]  # the output layer is no activation
        self.modules = mods
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._units: dict[str, torch.Tensor] = {}
        self._all_units: set[str] = set()  # modules whose every unit is sampled (units = arange)
        self._unchecked: set[str] = set()  # modules whose loaded units are not yet checked against their width
        self._current: dict[str, dict[str, float]] = {}
        self._baseline_std: dict[str, float] = {}
        self._stats: dict[str, float] = {}
        self._warned_silent = False  # said once that armed hooks did not run (see on_decision)

    # -- arming -----------------------------------------------------------
    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Hook the next forward pass (idempotent)."""
        if self._handles or not self.modules:
            return
        self._current = {}
        for name, mod in self.modules:
            self._handles.append(mod.register_forward_hook(self._make_hook(name, mod)))

    def disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _make_hook(self, name: str, mod: nn.Module):
        squash = isinstance(mod, SQUASHERS)
        sigmoid = isinstance(mod, nn.Sigmoid)

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if name in self._current or not _module.training or not isinstance(output, torch.Tensor) or output.dim() < 1:
                return  # one capture per module per arming; evaluation passes (eval mode) are not sampled
            if output.is_complex():
                return  # dead units and saturation are statistics of real activations: a complex one is not sampled
            with torch.no_grad():
                x = output.detach()
                # Units: channels (dim 1) of image-like (N, C, H, W[, D]) tensors and of Conv1d
                # outputs; the last dim of feature tensors, (N, F) and (N, T, F) sequences.
                if x.dim() >= 4 or isinstance(_module, nn.Conv1d):
                    x = x.movedim(1, -1)
                x = x.reshape(-1, x.shape[-1]).float()
                units = self._units.get(name)
                if units is not None and name in self._unchecked:  # loaded for a module of unknown width
                    self._unchecked.discard(name)
                    if units.numel() and int(units.max()) >= x.shape[1]:
                        units = None  # the checkpoint sampled units this module does not have: sample afresh
                if units is None:
                    n = x.shape[1]
                    units = (
                        torch.randperm(n, generator=self.ctx.generator)[: self.max_units]
                        if n > self.max_units
                        else torch.arange(n)
                    )
                    self._units[name] = units
                    if n <= self.max_units:
                        self._all_units.add(name)
                # every unit, in order, of a contiguous x that starts its storage: x itself, no copy
                if not (
                    name in self._all_units and units.numel() == x.shape[1] and x.is_contiguous() and x.storage_offset() == 0
                ):
                    x = x.index_select(1, units.to(x.device))
                # one read of every statistic (one host sync on accelerators)
                reads = [x.std() if x.numel() > 1 else x.new_zeros(())]
                if squash:
                    sat = (x < 0.01) | (x > 0.99) if sigmoid else x.abs() > 0.99
                    reads.append(sat.float().mean())
                else:
                    off = x <= 0
                    reads += [off.all(dim=0).float().mean(), (off if self._preact else x == 0).float().mean()]
                values = torch.stack(reads).tolist()
                rec: dict[str, float] = {"std": values[0]}
                if squash:
                    rec["saturation"] = values[1]
                else:
                    rec["dead"], rec["sparsity"] = values[1], values[2]
                self._current[name] = rec

        return hook

    # -- decision ---------------------------------------------------------
    def on_decision(self) -> None:
        armed = self.armed
        self.disarm()
        cur = self._current
        if not cur:
            if armed and not self._warned_silent and any(m.training for _, m in self.modules):
                # The hooks were in place for a training forward pass and none ran: the forward did not
                # go through these modules' Python calls. torch.compile does this (dynamo does not guard
                # on hooks added after compilation, so its graph runs without them).
                self._warned_silent = True
                warnings.warn(
                    "chuck: the activation hooks did not run on the forward pass before this decision, so "
                    "activation statistics (act.*) are unavailable and read as missing. The usual cause is a "
                    "torch.compile'd model, whose compiled graph runs without hooks added after compilation; "
                    "everything else chuck watches is unaffected.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return
        dead = [r["dead"] for r in cur.values() if "dead" in r]
        sat = [r["saturation"] for r in cur.values() if "saturation" in r]
        spars = [r["sparsity"] for r in cur.values() if "sparsity" in r]
        drifts = []
        for name, r in cur.items():
            base = self._baseline_std.setdefault(name, r["std"])
            if base > 0 and r["std"] > 0:
                drifts.append(abs(math.log(r["std"] / base)))
        self._stats = {
            "act.dead_fraction": float(np.mean(dead)) if dead else 0.0,
            "act.saturation": float(np.mean(sat)) if sat else 0.0,
            "act.sparsity": float(np.mean(spars)) if spars else 0.0,
            "act.drift": float(np.max(drifts)) if drifts else 0.0,
            "act.has_data": 1.0,
        }
        self._per_module = {n: dict(r) for n, r in cur.items()}

    def per_module(self) -> dict[str, dict[str, float]]:
        """The last sampled statistics, per watched module."""
        return {n: dict(r) for n, r in getattr(self, "_per_module", {}).items()}

    def stats(self) -> dict[str, float]:
        nan = float("nan")
        base = {"act.dead_fraction": nan, "act.saturation": nan, "act.sparsity": nan, "act.drift": nan, "act.has_data": 0.0}
        base.update(self._stats)
        return base

    def indicators(self) -> list[Indicator]:
        s = self.stats()
        d, sat, sp, dr = s["act.dead_fraction"], s["act.saturation"], s["act.sparsity"], s["act.drift"]
        worst_name, worst = max(self.per_module().items(), key=lambda kv: kv[1].get("dead", -1), default=(None, {}))
        worst_name = worst_name if worst.get("dead", 0.0) > 0 else None
        return [
            Indicator(
                "act.dead_relu",
                d,
                grade(d, DEAD_WARN, DEAD_BAD),
                f"{d:.0%} of sampled rectifier units are inactive for a whole batch"
                + (f" (worst: {worst_name})" if worst_name else "")
                if not math.isnan(d)
                else "no sampled forward pass yet",
                advise(grade(d, DEAD_WARN, DEAD_BAD), "lower the learning rate, use LeakyReLU/GELU, or check the init"),
                "Lu et al. 2019, Dying ReLU and Initialization",
                lr_way(grade(d, DEAD_WARN, DEAD_BAD), "lower"),
            ),
            Indicator(
                "act.saturation",
                sat,
                grade(sat, SAT_WARN, SAT_BAD),
                f"{sat:.0%} of sampled tanh/sigmoid outputs are saturated"
                if not math.isnan(sat)
                else "no sampled forward pass yet",
                advise(grade(sat, SAT_WARN, SAT_BAD), "normalize inputs to the squashing layer or lower the learning rate"),
                "Glorot & Bengio 2010 (saturation of top hidden layers)",
                lr_way(grade(sat, SAT_WARN, SAT_BAD), "lower"),
            ),
            Indicator(
                "act.sparsity",
                sp,
                "n/a" if math.isnan(sp) else ("warn" if sp > SPARSE_WARN else "ok"),
                f"{sp:.0%} of sampled activations are zero" if not math.isnan(sp) else "no sampled forward pass yet",
                "over 90% of activations are zero: the layers could be narrower" if sp > SPARSE_WARN else "",
                "rule of thumb (the architecture advice uses the same 90%)",
            ),
            Indicator(
                "act.drift",
                dr,
                grade(dr, DRIFT_WARN, DRIFT_BAD),
                f"activation scale moved up to x{math.exp(dr):.2f} from its early baseline"
                if not math.isnan(dr)
                else "no sampled forward pass yet",
                advise(grade(dr, DRIFT_WARN, DRIFT_BAD), "normalization layers keep activation scale stable"),
                "Ioffe & Szegedy 2015 (internal covariate shift)",
            ),
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "units": {k: v.clone() for k, v in self._units.items()},
            "baseline_std": dict(self._baseline_std),
            "stats": dict(self._stats),
            "per_module": self.per_module(),
        }

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        why = check.first(
            check.missing(state, ("units", "baseline_std", "stats", "per_module")),
            check.mapping("units", state.get("units"), check.tensor, integer=True, ndim=1),
            check.mapping("baseline_std", state.get("baseline_std"), check.number, low=0.0),
            check.stats("stats", state.get("stats"), prefix=self.name + "."),
            check.mapping("per_module", state.get("per_module"), check.stats),
        )
        if why:
            return why
        widths = {n: _width(m) for n, m in self.modules}
        for name, units in state["units"].items():
            if name not in widths:
                return f"the checkpoint samples module {name!r}, which this model does not have"
            width = widths[name]
            if units.numel() and int(units.min()) < 0:
                return f"units[{name!r}] holds negative unit numbers"
            if units.numel() and width is not None and int(units.max()) >= width:
                return f"module {name!r} has {width} units, the checkpoint samples unit {int(units.max())}"
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._units = {k: v.clone() for k, v in state["units"].items()}
        self._all_units = set()  # (a loaded arange is index_select-ed as before: the same values)
        # modules whose width only their first sampled output tells: their units are checked against it there
        self._unchecked = {n for n, m in self.modules if n in self._units and _width(m) is None}
        self._baseline_std = dict(state["baseline_std"])
        self._stats = dict(state["stats"])
        self._per_module = {n: dict(r) for n, r in state["per_module"].items()}


def _width(module: nn.Module) -> int | None:
    """Units of a watched module's output when its type says (Linear/Conv), else unknown."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.out_channels
    return None
