"""Step-size monitor: is the learning rate too high or too low, without knowing the task?

Two learning-rate-free signals, measured on the two sampled steps before each
decision and on a fixed random subset of coordinates (at most ``SUBSET``), so
that memory and time stay small whatever the model's size:

* **Distance estimate** (D-Adaptation, Defazio & Mishchenko 2023; Prodigy,
  Mishchenko & Defazio 2023). For convex losses and *any* trajectory x_i with
  gradients g_i, ``d_hat = sum_i <g_i, x_0 - x_i> / ||sum_i g_i||_1`` is a lower
  bound on ``||x_0 - x*||_inf``; Prodigy runs Adam with lr = max d_hat. chuck
  reports ``log10(mean |update| / d_hat)``: far below the Prodigy operating point
  (about -1) the steps are tiny next to the distance still to travel; around or
  above it they are as large as Prodigy would take.
* **Hypergradient** (Baydin et al. 2018, "Online learning rate adaptation with
  hypergradient descent"): the cosine between the new gradient and the previous
  update's descent direction, ``cos(-g_t, -u_{t-1}) = -cos(g_t, u_{t-1})`` with
  ``u`` the step taken. Positive: the loss still falls along the last step (the
  lr could grow); negative: the last step overshot (the lr is too high). Averaged
  over decisions with an EMA, since one minibatch gradient is noisy.

``step.dhat_growth`` says whether the estimate is still growing (log10 per
decision): it grows while gradients keep pointing the same way, i.e. while the run
is far from where it is going.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from chuck.core import statecheck as check
from chuck.monitors.base import Indicator, Monitor, Status, advise, as_real, grade, lowered_lr_note, lr_way, phase_of, sci

#: Coordinates sampled for both estimates; enough for stable sums, constant cost.
SUBSET = 4096
#: log10(mean |update| / d_hat) below which steps are tiny next to the distance estimate: warn, bad. At the
#: zoo's train families' best constant AdamW lr no decision of a supervised task falls below 10^-3 (its
#: 10th percentile is 10^-2.3), at a tenth of that lr 15% of them do (docs/results/stepsize_decisions.csv,
#: written by experiments/stepsize_signals.py). d_hat bounds the distance from the start, not the
#: distance left, so the ratio also falls as a run converges: the lines sit well below a tuned run's steps.
SMALL_STEP_WARN, SMALL_STEP_BAD = -3.0, -4.0
#: Hypergradient cosine (EMA) below which the last steps overshot: warn, bad (Baydin et al. 2018; at 10x
#: the best lr its 10th percentile is -0.19 in the same measurement).
OVERSHOOT_WARN, OVERSHOOT_BAD = -0.2, -0.5
#: EMA factor of the hypergradient cosine across decisions.
HYPERGRAD_BETA = 0.7
#: Gathers read the whole of every tensor once (one ``cat``, then one ``index_select`` with a flat
#: index) when the tensors average at most this many elements; larger ones are gathered tensor by
#: tensor (a copy of a large model would cost more than the per-tensor dispatches it saves).
FLAT_GATHER_MAX_MEAN_NUMEL = 8192


class StepSizeMonitor(Monitor):
    """Learning-rate-free step-size signals (see the module docstring)."""

    name = "step"

    def __init__(self, subset: int = SUBSET) -> None:
        self.subset = subset
        self._idx: list[torch.Tensor] | None = None
        self._flat_idx: dict[tuple[int, torch.device], torch.Tensor | None] = {}  # (tensors, device) -> flat index
        self._shapes: list[torch.Size] = []
        self._x0: torch.Tensor | None = None
        self._num = 0.0  # sum_i <g_i, x0 - x_i>
        self._gsum: torch.Tensor | None = None  # sum_i g_i (subset)
        self._dhat = 0.0  # running max of the bound
        self._dhat_prev = 0.0  # at the previous decision
        self._x_before: torch.Tensor | None = None
        self._u_prev: torch.Tensor | None = None  # the previous sampled step's update (subset)
        self._hyper = math.nan
        self._update_abs = math.nan
        self._growth = math.nan

    # -- subset -----------------------------------------------------------------
    def _choose(self, params: list[torch.Tensor]) -> None:
        numels = [as_real(p).numel() for p in params]
        total = sum(numels)
        gen = self.ctx.generator
        self._idx = []
        for p, n in zip(params, numels):
            k = max(1, round(self.subset * n / max(total, 1))) if total > self.subset else n
            k = min(k, n)
            idx = torch.randperm(n, generator=gen)[:k] if k < n else torch.arange(n)
            self._idx.append(idx.to(p.device))
        self._shapes = [p.shape for p in params]
        self._flat_idx = {}
        self._x0 = self._gather([p.detach() for p in params])
        self._num, self._gsum, self._dhat, self._dhat_prev = 0.0, None, 0.0, 0.0
        self._u_prev = None

    def _gather(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The sampled coordinates of ``tensors``, concatenated, as float32 on the CPU.

        A complex tensor counts as its real and imaginary parts (two real coordinates per entry), so the
        estimates are those of the real parameter space the optimizer descends in.

        ``tensors`` holds tensors shaped like the parameters, in their order, once or several times
        over (gradients, then weights: one gather, one copy to the CPU).
        """
        assert self._idx is not None
        tensors = [as_real(t) for t in tensors]
        flat = self._flat_index(tensors)
        if flat is not None:
            # one flat index into the concatenation: the same elements, in the same order
            return torch.cat([t.reshape(-1) for t in tensors]).index_select(0, flat).float().cpu()
        idx = self._idx * (len(tensors) // len(self._idx))
        return torch.cat([t.reshape(-1).index_select(0, i).float().cpu() for t, i in zip(tensors, idx)])

    def _flat_index(self, tensors: list[torch.Tensor]) -> torch.Tensor | None:
        """The coordinates' indices into ``torch.cat`` of ``tensors`` (cached), or ``None`` when the
        tensors are too large to copy whole or do not share one device."""
        assert self._idx is not None
        device = tensors[0].device
        key = (len(tensors), device)
        if key not in self._flat_idx:
            numels = [t.numel() for t in tensors]
            flat = None
            if sum(numels) <= FLAT_GATHER_MAX_MEAN_NUMEL * len(tensors) and all(t.device == device for t in tensors):
                offsets = [0]
                for n in numels[:-1]:
                    offsets.append(offsets[-1] + n)
                idx = self._idx * (len(tensors) // len(self._idx))
                flat = torch.cat([i.to(device) + off for i, off in zip(idx, offsets)])
            self._flat_idx[key] = flat
        return self._flat_idx[key]

    # -- sampled steps ----------------------------------------------------------
    def before_update(self) -> None:
        params = [p for p in self.ctx.params if not (p.grad is not None and p.grad.is_sparse)]
        if not params:
            return
        if self._idx is None or [p.shape for p in params] != self._shapes:
            self._choose(params)  # first sample, or the trainable set changed: start over
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            # gradients first: g starts the buffer, as a tensor of its own would (the dot products
            # below read it); x is only used elementwise
            gx = self._gather([*grads, *(p.detach() for p in params)])
        k = gx.numel() // 2
        g, x = gx[:k], gx[k:]
        assert self._x0 is not None
        gsum = g.clone() if self._gsum is None else self._gsum + g
        # one read of every scalar (one device sync where that matters); the first says whether
        # every gathered entry is finite (x * 0 is 0 for finite x, nan for inf and nan; torch.isfinite
        # costs several ops)
        reads = [gx.mul(0).sum(), g @ (self._x0 - x), gsum.abs().sum()]
        if self._u_prev is not None:
            reads += [self._u_prev.norm(), g.norm(), g @ self._u_prev]
        values = torch.stack(reads).tolist()
        if values[0] != 0:
            self._x_before = None
            return
        self._gsum = gsum
        self._num += values[1]
        den = values[2]
        if den > 0:
            self._dhat = max(self._dhat, self._num / den)
        if self._u_prev is not None:
            nu, ng, gu = values[3:]
            if nu > 0 and ng > 0:
                cos = -gu / (nu * ng)  # > 0: still descending along the last step
                self._hyper = cos if math.isnan(self._hyper) else HYPERGRAD_BETA * self._hyper + (1 - HYPERGRAD_BETA) * cos
        self._x_before = x
        self._params = params

    def after_update(self) -> None:
        if self._x_before is None:
            return
        with torch.no_grad():
            x = self._gather([p.detach() for p in self._params])
        u = x - self._x_before
        self._x_before = None
        nonfinite, update_abs = torch.stack([u.mul(0).sum(), u.abs().mean()]).tolist()  # see before_update
        if nonfinite == 0:
            self._u_prev = u
            self._update_abs = update_abs

    def on_decision(self) -> None:
        self._u_prev = None  # the next sampled pair starts fresh: updates are compared within a pair
        if self._dhat > 0 and self._dhat_prev > 0:
            self._growth = math.log10(self._dhat / self._dhat_prev)
        self._dhat_prev = self._dhat

    # -- read-outs ----------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        ratio = math.nan
        if self._update_abs > 0:
            # no positive distance bound yet although steps are taken: the trajectory does not follow
            # the gradients at all, i.e. the steps are infinitely large next to the estimate
            ratio = math.log10(self._update_abs / self._dhat) if self._dhat > 0 else math.inf
        return {
            "step.log10_update_over_dhat": ratio,
            "step.hypergrad": self._hyper,
            "step.dhat_growth": self._growth,
        }

    def indicators(self) -> list[Indicator]:
        s = self.stats()
        r, h = s["step.log10_update_over_dhat"], s["step.hypergrad"]
        low: Status
        if math.isinf(r):  # the run has not moved from its start along the sampled coordinates: no bound yet
            low, why = "n/a", "no distance estimate yet (the sampled coordinates have not moved)"
        elif math.isnan(r):
            low, why = "n/a", "no sampled update yet"
        else:
            why = f"mean step is {sci(r)} of the distance estimate d_hat (tuned runs: above 1e-3)"
            at_peak, phase = r, phase_of(self)
            if phase is not None and phase.winding_down and phase.lr_drop_log10 < 0:
                at_peak = r - phase.lr_drop_log10  # steps scale with the lr: judged at the run's peak lr
            low = "ok" if math.isinf(at_peak) else grade(at_peak, SMALL_STEP_WARN, SMALL_STEP_BAD, higher_is_worse=False)
            if phase is not None and at_peak != r and r < SMALL_STEP_WARN:
                why += f"; {lowered_lr_note(phase, at_peak)}" + (": expected" if low == "ok" else "")
        over = grade(h, OVERSHOOT_WARN, OVERSHOOT_BAD, higher_is_worse=False)
        return [
            Indicator(
                "step.size_vs_distance",
                r,
                low,
                why,
                advise(low, "steps are tiny next to the distance estimate: raise the learning rate"),
                "D-Adaptation / Prodigy distance bound (Defazio & Mishchenko 2023; Mishchenko & Defazio 2023); "
                "lines from docs/results/stepsize_decisions.csv",
                lr_way(low, "raise"),
            ),
            Indicator(
                "step.hypergradient",
                h,
                over,
                f"new gradients point {'along' if h >= 0 else 'against'} the last step (cosine {h:+.2f})"
                if not math.isnan(h)
                else "needs two consecutive sampled steps",
                advise(over, "the last steps overshot: lower the learning rate"),
                "hypergradient descent, Baydin et al. 2018",
                lr_way(over, "lower"),
            ),
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "idx": None if self._idx is None else [i.cpu().clone() for i in self._idx],
            "shapes": [list(s) for s in self._shapes],
            "x0": None if self._x0 is None else self._x0.clone(),
            "num": self._num,
            "gsum": None if self._gsum is None else self._gsum.clone(),
            "dhat": self._dhat,
            "dhat_prev": self._dhat_prev,
            "u_prev": None if self._u_prev is None else self._u_prev.clone(),
            "hyper": self._hyper,
            "update_abs": self._update_abs,
            "growth": self._growth,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = self.ctx.params
        self._idx = None if state["idx"] is None else [i.clone().to(p.device) for i, p in zip(state["idx"], params)]
        self._flat_idx = {}
        self._shapes = [torch.Size(s) for s in state["shapes"]]
        self._x0 = None if state["x0"] is None else state["x0"].clone()
        self._num = float(state["num"])
        self._gsum = None if state["gsum"] is None else state["gsum"].clone()
        self._dhat, self._dhat_prev = float(state["dhat"]), float(state["dhat_prev"])
        self._u_prev = None if state["u_prev"] is None else state["u_prev"].clone()
        self._hyper, self._update_abs, self._growth = state["hyper"], state["update_abs"], state["growth"]

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        why = check.first(
            check.missing(
                state, ("idx", "shapes", "x0", "num", "gsum", "dhat", "dhat_prev", "u_prev", "hyper", "update_abs", "growth")
            ),
            check.number("num", state.get("num")),
            check.number("dhat", state.get("dhat"), low=0.0),
            check.number("dhat_prev", state.get("dhat_prev"), low=0.0),
            check.number("hyper", state.get("hyper"), nan=True),
            check.number("update_abs", state.get("update_abs"), nan=True, low=0.0),
            check.number("growth", state.get("growth"), nan=True),
            check.items("shapes", state.get("shapes"), lambda name, shape: check.items(name, shape, check.count)),
        )
        if why:
            return why
        idx, shapes = state.get("idx"), state["shapes"]
        ctx = getattr(self, "ctx", None)
        live = [p for p in ctx.params if not p.is_sparse] if ctx is not None else None
        if live is not None and [list(p.shape) for p in live][: len(shapes)] != shapes:
            return "the sampled coordinates belong to parameters of other shapes: another model?"
        k: int | None = None  # the sampled coordinates: each vector below holds one value per coordinate
        if idx is not None:
            if not isinstance(idx, list) or len(idx) != len(shapes):
                return f"idx must be a list of one index per sampled parameter ({len(shapes)}), got {check.show(idx)}"
            for i, (positions, shape) in enumerate(zip(idx, shapes)):
                # a complex parameter is sampled as its real and imaginary parts (as_real): two coordinates an entry
                complex_ = live[i].is_complex() if live is not None else True
                why = check.index(f"idx[{i}]", positions, math.prod(shape) * (2 if complex_ else 1))
                if why:
                    return why
            k = sum(t.numel() for t in idx)
            if state["x0"] is None:
                return "x0 is missing: the sampled coordinates' starting point"
        # without idx (nothing sampled yet) the first sampled step chooses the coordinates and these afresh
        vector = {"dtype": torch.float32, "ndim": 1, "shape": None if k is None else (k,), "finite": True}
        return check.first(*(check.optional(check.tensor, key, state[key], **vector) for key in ("x0", "gsum", "u_prev")))
