"""Weight monitor: update-to-weight ratios, update direction, scale against init, non-finite values.

Updates are measured on two consecutive *sampled* steps before each decision
(the suite calls ``before_update``/``after_update`` around them), so the cost is
two parameter copies per decision interval, not per step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from chuck.core import statecheck as check
from chuck.monitors.base import (
    Indicator,
    LrAdvice,
    Monitor,
    RunPhase,
    Status,
    advise,
    as_real,
    grade,
    lowered_lr_note,
    lr_way,
    phase_of,
    sci,
)

#: CS231n (Karpathy), "Neural Networks Part 3": the ratio of update magnitude to weight magnitude
#: should be around 1e-3; much lower means a too-small lr. Tiny: warn one decade below it, bad two.
UPDATE_RATIO_TARGET_LOG10 = -3.0
UPDATE_RATIO_TINY_WARN, UPDATE_RATIO_TINY_BAD = -4.0, -5.0
#: Large: Adam-family updates are normalized, so the ratio hardly grows with the lr. At the zoo's train
#: families' best constant AdamW lr its per-decision median is 10^-2.3 and its 90th percentile 10^-1.8;
#: at 10x that lr the 99th percentile is 10^-1.1 (docs/results/stepsize_decisions.csv, written by
#: experiments/stepsize_signals.py). Warn from 10^-1 (a tenth of each weight moved per step), bad from 1.
UPDATE_RATIO_LARGE_WARN, UPDATE_RATIO_LARGE_BAD = -1.0, 0.0
#: Weight RMS this many e-folds from its He/Glorot init scale (He et al. 2015;
#: Glorot & Bengio 2010) signals runaway growth or collapse.
SCALE_WARN, SCALE_BAD = math.log(10.0), math.log(100.0)


class WeightMonitor(Monitor):
    """Watches weights and the updates the optimizer makes to them.

    The parameters (and their display names) come from the run's
    :class:`~chuck.monitors.base.MonitorContext`, read afresh at every sampled step, so
    layers unfrozen mid-run are watched from then on.
    """

    name = "weights"

    def __init__(self) -> None:
        self._params: list[torch.Tensor] = []
        self._before: list[torch.Tensor] | None = None
        self._prev_update: torch.Tensor | None = None  # flattened previous update (checkpointed)
        self._stats: dict[str, float] = {}
        self._ratios: dict[str, float] = {}
        # the last measurement's (params, ratios, ok), turned into {name: ratio} when asked for
        self._ratio_parts: tuple[list[torch.Tensor], np.ndarray, np.ndarray] | None = None

    # -- sampled steps ----------------------------------------------------
    def before_update(self) -> None:
        self._params = self.ctx.params
        with torch.no_grad():
            self._before = [p.detach().clone() for p in self._params]

    def after_update(self) -> None:
        if self._before is None:
            return
        params, before = self._params, self._before
        self._before = None
        if not params:
            return
        n = len(params)
        with torch.no_grad():
            update = torch._foreach_sub([p.detach() for p in params], before)
            both = torch.stack(torch._foreach_norm([*before, *update]))  # weight norms, then update norms
            if both.dtype not in (torch.float32, torch.float64):
                both = both.float()  # half and bfloat16 models: numpy has no bfloat16, and the ratio wants range
            if both.device.type == "cpu" and both.dtype in (torch.float32, torch.float64):
                # the same IEEE operations as the torch ones below, without dispatching four more ops
                w_np = both[:n].numpy()
                ratios = both[n:].numpy() / np.maximum(w_np, w_np.dtype.type(1e-30))
                ok = w_np > 0
            else:
                w_norms, u_norms = both[:n], both[n:]
                ratios = (u_norms / w_norms.clamp_min(1e-30)).cpu().numpy()
                ok = (w_norms > 0).cpu().numpy()
            self._ratio_parts = (params, ratios, ok)
            pos = ratios[ok & (ratios > 0)]
            self._stats["weights.update_ratio_log10"] = float(np.log10(_median(pos))) if pos.size else float("nan")
            flat = torch.cat([as_real(u).reshape(-1).float() for u in update])
            prev = self._prev_update
            if prev is not None and prev.shape == flat.shape:
                dot, denom = torch.stack([flat @ prev, flat.norm() * prev.norm()]).tolist()  # one read
                self._stats["weights.update_cosine"] = dot / denom if denom > 0 else float("nan")
            self._prev_update = flat

    def on_decision(self) -> None:
        # Updates are pairwise within one interval: forget the older one.
        self._prev_update = None
        params = self.ctx.params
        if not params:
            return
        with torch.no_grad():
            # one fused norm per tensor; a non-finite norm means a non-finite entry
            norms = torch.stack(torch._foreach_norm([p.detach() for p in params])).float().cpu().numpy()
            finite = np.isfinite(norms)
            # 1 - finite.mean(), without np.mean's overhead (the same float64 count / n)
            self._stats["weights.nonfinite_fraction"] = 1.0 - int(np.count_nonzero(finite)) / finite.size
            logs = []
            for n, p in zip(norms, params):
                init = _he_rms(p)  # expected init RMS of a matrix/conv weight (fan-in, He et al. 2015)
                rms = n / math.sqrt(p.numel())
                if init is not None and rms > 0 and math.isfinite(rms):
                    logs.append(math.log(rms / init))
            self._stats["weights.scale_log_ratio"] = float(max(logs, key=abs)) if logs else float("nan")

    def update_ratios(self) -> dict[str, float]:
        """Last measured ||update|| / ||weight|| per parameter."""
        if self._ratio_parts is not None:
            params, ratios, ok = self._ratio_parts
            self._ratio_parts = None
            names = [self.ctx.name(p, i) for i, p in enumerate(params)]
            self._ratios = {name: float(r) for name, r, k in zip(names, ratios, ok) if k}
        return dict(self._ratios)

    def stats(self) -> dict[str, float]:
        nan = float("nan")
        out = dict.fromkeys(
            ("weights.update_ratio_log10", "weights.update_cosine", "weights.scale_log_ratio", "weights.nonfinite_fraction"), nan
        )
        out.update(self._stats)
        return out

    def indicators(self) -> list[Indicator]:
        s = self.stats()
        scale = s["weights.scale_log_ratio"]
        cos = s["weights.update_cosine"]
        nf = s["weights.nonfinite_fraction"]
        flips = not math.isnan(cos) and cos < -0.5
        return [
            _update_ratio(s["weights.update_ratio_log10"], phase_of(self)),
            Indicator(
                "weights.update_direction",
                cos,
                "n/a" if math.isnan(cos) else ("warn" if flips else "ok"),
                f"cosine between consecutive updates = {cos:+.2f}" if not math.isnan(cos) else "needs two sampled updates",
                "consecutive updates point against each other: the lr is likely past the edge of stability; lower it"
                if flips
                else "",
                "Cohen et al. 2021, edge of stability (sign-flipping updates)",
                "lower" if flips else "",
            ),
            Indicator(
                "weights.scale",
                scale,
                grade(abs(scale) if not math.isnan(scale) else scale, SCALE_WARN, SCALE_BAD),
                f"weight RMS is x{math.exp(scale):.3g} its He-init scale (largest deviation)"
                if not math.isnan(scale)
                else "no decision step yet",
                advise(grade(abs(scale), SCALE_WARN, SCALE_BAD), "weights grow or collapse: adjust weight decay or the init"),
                "He et al. 2015 / Glorot & Bengio 2010 init scales",
            ),
            Indicator(
                "weights.nonfinite",
                nf,
                grade(nf, 1e-12, 1e-12),
                f"{nf:.0%} of parameter tensors hold NaN/inf" if not math.isnan(nf) else "no decision step yet",
                advise(grade(nf, 1e-12, 1e-12), "restore a checkpoint; lower lr; clip"),
                "any non-finite weight is fatal",
                lr_way(grade(nf, 1e-12, 1e-12), "lower"),
            ),
        ]

    def state_dict(self) -> dict[str, Any]:
        # The previous update is state too: a checkpoint taken between the two sampled steps
        # of an interval must resume to the same update cosine.
        prev = None if self._prev_update is None else self._prev_update.clone()
        return {"stats": dict(self._stats), "ratios": self.update_ratios(), "prev_update": prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._stats = dict(state["stats"])
        self._ratios = dict(state["ratios"])
        self._ratio_parts = None
        prev = state.get("prev_update")
        self._prev_update = None if prev is None else prev.clone()

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        prev = state.get("prev_update")
        why = check.first(
            check.stats("stats", state.get("stats"), prefix=self.name + "."),
            check.mapping("ratios", state.get("ratios"), check.number, low=0.0),
            check.optional(check.tensor, "prev_update", prev, dtype=torch.float32, ndim=1, finite=True),
        )
        ctx = getattr(self, "ctx", None)
        if why is None and prev is not None and ctx is not None:
            n = sum(as_real(p).numel() for p in ctx.params)
            if prev.numel() != n:
                return f"the saved update has {prev.numel()} entries, the model {n}: another model?"
        return why


def _update_ratio(r: float, phase: RunPhase | None) -> Indicator:
    """The update-ratio indicator. In a cooldown (or at the end) the lr was lowered on purpose and the
    ratio with it (updates scale with the lr, Adam's as SGD's), so the ratio is judged at the run's peak
    lr: tiny updates the schedule explains are OK, with a note."""
    src = (
        "CS231n (Karpathy): update/weight ratio ~1e-3 (tiny below 1e-4); large from 1e-1, above what "
        "AdamW reaches at 10x its best lr (docs/results/stepsize_decisions.csv)"
    )
    if math.isnan(r):
        return Indicator("weights.update_ratio", r, "n/a", "no sampled update yet", "", src)
    why = f"median ||update||/||weight|| = {sci(r)} (healthy: 1e-4 to 1e-1)"
    at_peak = r
    if phase is not None and phase.winding_down and phase.lr_drop_log10 < 0:
        at_peak = r - phase.lr_drop_log10  # what the ratio would be at the peak lr (inf: the lr is at 0)
    status: Status
    way: LrAdvice
    if at_peak < UPDATE_RATIO_TINY_WARN:
        status = "bad" if at_peak < UPDATE_RATIO_TINY_BAD else "warn"
        way, rec = "raise", "updates are tiny: raise the learning rate"
    elif r > UPDATE_RATIO_LARGE_WARN:
        status = "bad" if r > UPDATE_RATIO_LARGE_BAD else "warn"
        way, rec = "lower", "updates are large: lower the learning rate"
    else:
        status, way, rec = "ok", "", ""
    if phase is not None and at_peak != r and r < UPDATE_RATIO_TINY_WARN:
        why += f"; {lowered_lr_note(phase, at_peak)}" + (": expected" if status == "ok" else "")
    return Indicator("weights.update_ratio", r, status, why, rec, src, way)


def _median(a: np.ndarray) -> Any:
    """``np.median`` of a small 1-D array, without its ~50 us of overhead: the same value (the middle
    element, or the mean of the two middle ones in the array's own precision)."""
    if a.dtype not in (np.float32, np.float64):
        return np.median(a)
    s = np.sort(a)
    k = s.size // 2
    return s[k] if s.size % 2 else (s[k - 1] + s[k]) / s.dtype.type(2)


def _he_rms(p: torch.Tensor) -> float | None:
    """RMS of a He-normal initialized tensor of this shape, or None for biases and norm scales."""
    if p.dim() < 2:
        return None
    fan_in = p.numel() // p.shape[0] if p.shape[0] else p[0].numel()  # p[0].numel(), without making the view
    return math.sqrt(2.0 / fan_in)
