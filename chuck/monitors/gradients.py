"""Gradient monitor: norms, vanishing/exploding, noise, clipping threshold, |g| histogram.

Per step it receives the global gradient norm, which the optimizer computes
anyway (one fused ``torch._foreach_norm`` pass) for its guardrails and clipping.
Per-layer statistics, the signal-to-noise ratio and the magnitude histogram are
computed at decision steps only.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
import torch

from chuck.core import statecheck as check
from chuck.monitors.base import Indicator, Monitor, Status, StepRecord, advise, as_real, grade, lr_way, median, phase_of

#: Glorot & Bengio (2010), "Understanding the difficulty of training deep
#: feedforward neural networks": back-propagated gradient variance should stay
#: comparable across layers. We flag a spread of 2 (warn) and 4 (bad) decades
#: between the smallest and largest per-layer gradient RMS. The health report compares the layers'
#: weight tensors (matrices and kernels) only: a bias's gradient is a sum over the batch that can
#: cancel (the output bias of a balanced classifier), which says nothing about vanishing gradients.
VANISHING_SPREAD_WARN = -2.0
VANISHING_SPREAD_BAD = -4.0

#: A gradient norm this many times its early median is exploding (Pascanu,
#: Mikolov & Bengio 2013, "On the difficulty of training recurrent neural
#: networks", motivate norm clipping with such bursts). log(10) warns, log(100) is bad.
EXPLODING_WARN = math.log(10.0)
EXPLODING_BAD = math.log(100.0)

#: AutoClip (Seetharaman et al. 2020) clips at a percentile of the observed
#: gradient-norm history; they use the 10th percentile for source separation.
#: chuck suggests a conservative 90th percentile: it should cut bursts, not
#: rescale every step.
CLIP_PERCENTILE = 90.0

#: Decades of log10|g| covered by the magnitude histogram (one bin per decade).
HIST_LOW, HIST_HIGH = -16, 2

#: Gradient entries at most this fraction of the largest sampled one are float noise (float32
#: carries about 7 significant digits), counted with the exact zeros and left out of the
#: "where the mass lies" range: unused rows, dead units and rounding residue are no scale
#: anyone can tune epsilon to.
NEGLIGIBLE_RELATIVE = 1e-7

#: Share of the (non-negligible) gradient entries below Adam's epsilon at which the histogram
#: indicator warns: there the update is damped towards SGD-like steps instead of Adam's
#: sign-like ones (Silva & Rodriguez 2024), for most of the model.
EPS_DAMPED_WARN = 0.5

#: Share of recent steps clipped above which the clipping threshold is no burst guard but a
#: rescaling of nearly every step, i.e. a hidden learning-rate cut (AutoClip clips a
#: percentile's worth of steps, not all of them).
CLIP_MOSTLY = 0.5

#: Gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", appendix A):
#: two minibatch gradients g1, g2 taken at (nearly) the same point estimate the true gradient's squared
#: norm |G|^2 by g1.g2 and the minibatch noise tr(Sigma)/B by |g1 - g2|^2 / 2, both unbiased; their
#: ratio is B_simple / B, the noise-to-signal ratio of this run's batch (the critical batch size in
#: units of the batch). chuck takes the two sampled steps before each decision, and averages numerator
#: and denominator separately over decisions (an EMA with this factor) before dividing, as they do.
NOISE_BETA = 0.7
#: Measurements whose pooled ratio is the run's early noise level, the reference the indicator judges by;
#: also how many decisions in a row a level must hold before it is judged (one pair is noisy: when the
#: true gradient is small, g1.g2 can come out negative and the ratio infinite).
NOISE_EARLY = 3
#: By their eq. 2.6 the step-optimal lr is lr_max / (1 + B_noise / B): it falls as the noise grows,
#: which it does by an order of magnitude or more over a healthy run as the loss falls (their section
#: 3), and annealing the lr is the answer. The indicator warns when, since the early level, the
#: noise-optimal lr has fallen this many decades more than the run's lr did, outside a cooldown.
NOISE_WARN_DECADES = 1.0

#: Elements sampled per decision for the histogram: the 10th/90th percentiles of a
#: 16k sample are within about half a percentile of the truth, and the cost
#: (one sort of 16k floats) is the same for 1M or 1B parameters.
HIST_SAMPLE = 16384


class GradientMonitor(Monitor):
    """Watches gradients.

    The parameters, the optimizer (for Adam moments and epsilon) and the random generator
    for histogram sampling come from the run's :class:`~chuck.monitors.base.MonitorContext`.

    Args:
        window: steps of gradient-norm history kept.
        clip_percentile: percentile of the norm history suggested as clipping threshold.
    """

    name = "grad"

    def __init__(self, window: int = 200, clip_percentile: float = CLIP_PERCENTILE) -> None:
        self.window = window
        self.clip_percentile = clip_percentile
        self._norms: deque[float] = deque(maxlen=window)
        self._clipped: deque[bool] = deque(maxlen=window)
        self._early: list[float] = []
        self._decision: dict[str, float] = {}
        self._hist = np.zeros(HIST_HIGH - HIST_LOW, dtype=np.float64)
        # the histogram read for people (not part of stats(): the observation keeps its definition)
        self._hist_info_cache: dict[str, float] | None = {}
        self._hist_sample: tuple[torch.Tensor, float | None] | None = None
        # For optimizers without Adam moments: EMA of g and g^2 across decision steps.
        self._m: list[torch.Tensor] | None = None
        self._v: list[torch.Tensor] | None = None
        # Noise scale: the first sampled step's gradient (until the second), the EMAs of |G|^2 and of the
        # minibatch noise, how many pairs were measured, and the early sums and level.
        self._g_first: list[torch.Tensor] | None = None
        self._layers: dict[str, float] = {}  # the weight tensors' gradient RMS spread, for the report
        self._noise: dict[str, Any] = {
            "signal": 0.0,
            "noise": 0.0,
            "pairs": 0,
            "early_signal": 0.0,
            "early_noise": 0.0,
            "recent": [],  # the ratio after each of the last NOISE_EARLY pairs
        }

    # -- per step ---------------------------------------------------------
    def on_step(self, record: StepRecord) -> None:
        self._norms.append(record.grad_norm)
        self._clipped.append(record.clipped)
        if len(self._early) < 20:
            self._early.append(record.grad_norm)

    def median_norm(self) -> float:
        """Median of the recent gradient norms (the reference of chuck's clip ratio)."""
        return median(self._norms)

    def suggested_clip(self) -> float:
        """The clipping threshold suggested by the norm history (``inf`` until 8 steps are seen)."""
        if len(self._norms) < 8:
            return float("inf")
        return float(np.percentile(np.fromiter(self._norms, float), self.clip_percentile))

    # -- sampled steps ----------------------------------------------------
    def before_update(self) -> None:
        """The first sampled step keeps its gradient; the second measures the noise scale against it."""
        grads = [as_real(p.grad.detach()) for p in self.ctx.params if p.grad is not None and not p.grad.is_sparse]
        first, self._g_first = self._g_first, None
        if not grads:
            return
        with torch.no_grad():
            if first is None or [g.shape for g in first] != [g.shape for g in grads]:
                self._g_first = [g.to(torch.float32, copy=True) for g in grads]
                return
            second = [g.float() for g in grads]
            # scalars only, no gradient-sized temporaries: |g1 - g2|^2 = |g1|^2 + |g2|^2 - 2 g1.g2
            dot = torch.stack([torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(first, second)]).sum()
            sq = torch.stack([*torch._foreach_norm(first), *torch._foreach_norm(second)]).pow(2).sum()
            signal, squares = read_floats([dot, sq])
        if not (math.isfinite(signal) and math.isfinite(squares)):
            return
        self._add_noise_pair(signal, max(0.0, squares - 2.0 * signal) / 2.0)

    def _add_noise_pair(self, signal: float, noise: float) -> None:
        n = self._noise
        b = NOISE_BETA if n["pairs"] else 0.0
        n["signal"] = b * n["signal"] + (1 - b) * signal
        n["noise"] = b * n["noise"] + (1 - b) * noise
        if n["pairs"] < NOISE_EARLY:
            n["early_signal"] += signal
            n["early_noise"] += noise
        n["pairs"] += 1
        ratio = n["noise"] / n["signal"] if n["signal"] > 0 else math.inf
        n["recent"] = [*n["recent"], ratio][-NOISE_EARLY:]

    def noise_to_signal(self) -> tuple[float, float]:
        """(now, early): the minibatch noise-to-signal ratio B_simple / B, averaged over recent decisions,
        and its pooled level over the run's first ``NOISE_EARLY`` measurements (``nan`` until measured;
        ``inf`` when the signal estimate is not positive: the gradient is lost in its noise)."""
        n = self._noise

        def ratio(noise: float, signal: float) -> float:
            return noise / signal if signal > 0 else math.inf

        now = ratio(n["noise"], n["signal"]) if n["pairs"] else math.nan
        early = ratio(n["early_noise"], n["early_signal"]) if n["pairs"] >= NOISE_EARLY else math.nan
        return now, early

    # -- decision steps ---------------------------------------------------
    def on_decision(self) -> None:
        self._g_first = None  # pairs are the two sampled steps of one interval
        optimizer = self.ctx.optimizer
        # sparse gradients (nn.Embedding(sparse=True)) are read through their stored values
        with_grad = [p for p in self.ctx.params if p.grad is not None]
        grads = [dense_values(p.grad) for p in with_grad]
        out: dict[str, float] = {}
        if not grads:
            self._decision = out
            return
        with torch.no_grad():
            norms = torch.stack(torch._foreach_norm(grads)).float().cpu().numpy()
            rms_np = norms / np.sqrt([g.numel() for g in grads])
            pos = rms_np[rms_np > 0]
            out["grad.layer_spread_log10"] = float(np.log10(pos.min() / pos.max())) if pos.size else float("nan")
            layers = rms_np[[p.dim() >= 2 for p in with_grad]]
            self._layers = {
                "spread": float(np.log10(layers.min() / layers.max())) if layers.size >= 2 and layers.min() > 0 else math.nan,
                "floor": int(np.count_nonzero(layers < 1e-10)) / layers.size if layers.size else math.nan,
            }
            out["grad.rms_floor_fraction"] = int(np.count_nonzero(rms_np < 1e-10)) / rms_np.size  # np.mean's value, faster
            out["grad.snr"] = self._snr(grads, optimizer)
            self._histogram(grads, optimizer, out)
        self._decision = out

    def _snr(self, grads: list[torch.Tensor], optimizer: torch.optim.Optimizer | None) -> float:
        """Fraction of the gradient's second moment explained by its mean, sum(m^2)/sum(v), in [0, 1].

        1 means the same gradient every step (pure signal), 0 pure noise. Adam-family
        optimizers already keep bias-corrected-able moments; for others chuck keeps an
        EMA across decision steps (cheap, coarser).
        """
        if optimizer is not None:
            # Adam family: ||m||^2 / sum(v) with one fused op each (v >= 0, so its L1 norm is its sum);
            # bias correction from each group's step count.
            num = den = 0.0
            for group in optimizer.param_groups:
                beta1, beta2 = group.get("betas", (None, None))
                states = [optimizer.state.get(p, {}) for p in group["params"]]
                states = [st for st in states if "exp_avg" in st and "exp_avg_sq" in st and not st["exp_avg"].is_sparse]
                if beta1 is None or not states:
                    continue
                t = float(states[0]["step"]) if "step" in states[0] else 1.0
                m_norms = torch._foreach_norm([st["exp_avg"] for st in states])
                v_norms = torch._foreach_norm([st["exp_avg_sq"] for st in states], 1)
                read = read_floats([*m_norms, *v_norms])
                m2 = sum(n**2 for n in read[: len(states)])
                v1 = sum(read[len(states) :])
                num += m2 / (1 - beta1**t) ** 2
                den += v1 / (1 - beta2**t)
            if den > 0:
                return min(1.0, num / den)
        beta = 0.7
        gf = [as_real(g.detach()).float() for g in grads]
        if self._m is None or self._v is None or [m.shape for m in self._m] != [g.shape for g in gf]:
            # first decision, or the set of parameters with a gradient changed (a layer was unfrozen)
            self._m = [g.clone() for g in gf]
            self._v = [g.pow(2) for g in gf]
            return float("nan")
        torch._foreach_lerp_(self._m, gf, 1 - beta)
        torch._foreach_mul_(self._v, beta)
        torch._foreach_addcmul_(self._v, gf, gf, value=1 - beta)
        num = torch.stack([m.pow(2).sum() for m in self._m]).sum().item()
        den = torch.stack([v.sum() for v in self._v]).sum().item()
        return min(1.0, num / den) if den > 0 else float("nan")

    def _histogram(self, grads: list[torch.Tensor], optimizer: torch.optim.Optimizer | None, out: dict[str, float]) -> None:
        flat = torch.cat([as_real(g.detach()).reshape(-1).float() for g in grads])
        if flat.numel() > HIST_SAMPLE:
            idx = torch.randint(flat.numel(), (HIST_SAMPLE,), generator=self.ctx.generator, device="cpu")
            flat = flat.index_select(0, idx.to(flat.device))  # flat[idx]'s values, ~3x faster
        logs = flat.abs().clamp_min_(10.0**HIST_LOW).log10_()  # in place: no more buffers than needed
        # Ten bins per decade: quantiles to 0.1 decade (sorting for exact ones costs ~10x more),
        # summed to one bin per decade for the reported histogram.
        fine = torch.histc(logs, bins=(HIST_HIGH - HIST_LOW) * 10, min=HIST_LOW, max=HIST_HIGH).cpu().numpy()
        hist = fine.reshape(HIST_HIGH - HIST_LOW, 10).sum(1)
        self._hist = hist / max(hist.sum(), 1.0)
        cdf = np.cumsum(fine) / max(fine.sum(), 1.0)
        for key, q in (("p10", 0.1), ("median", 0.5), ("p90", 0.9)):
            out[f"grad.log10_abs_{key}"] = HIST_LOW + (int(np.searchsorted(cdf, q)) + 0.5) / 10.0
        eps = _optimizer_eps(optimizer)
        if eps and logs.numel():
            # float32 mean of the 0/1 indicator, i.e. float32(count) / float32(n): that value, without
            # converting the sample to float for it
            below = int((logs < math.log10(eps)).sum())
            out["grad.eps_sgd_fraction"] = float(np.float32(below) / np.float32(logs.numel()))
        else:
            out["grad.eps_sgd_fraction"] = float("nan")
        # what the health report needs from the same sample, computed only when it asks (a second
        # log10 and histogram over the sample cost as much as the observation's own, every decision)
        self._hist_sample, self._hist_info_cache = (flat, eps), None

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """The last gradient-magnitude histogram: (decade edges of log10|g|, mass per decade)."""
        return np.arange(HIST_LOW, HIST_HIGH + 1, dtype=float), self._hist.copy()

    def suggested_eps_range(self) -> tuple[float, float]:
        """Adam epsilon range suggested by the |g| histogram (Silva & Rodriguez 2024).

        epsilon sits in the denominator next to sqrt(v) ~ |g|: coordinates with
        |g| >> eps get sign-like updates, those with |g| << eps SGD-like ones. The
        range where epsilon changes the optimizer's behaviour is therefore the
        decades where the |g| mass lies: chuck returns [10^p10, 10^p90] of log10|g|.
        """
        lo, hi = self._decision.get("grad.log10_abs_p10"), self._decision.get("grad.log10_abs_p90")
        if lo is None or hi is None or math.isnan(lo):
            return (float("nan"), float("nan"))
        return (10.0**lo, 10.0**hi)

    # -- statistics -------------------------------------------------------
    def stats(self) -> dict[str, float]:
        nan = float("nan")
        out = dict.fromkeys(
            (
                "grad.norm_log_ratio_initial",
                "grad.norm_trend",
                "grad.norm_cv",
                "grad.clip_fraction",
                "grad.layer_spread_log10",
                "grad.rms_floor_fraction",
                "grad.snr",
                "grad.log10_abs_p10",
                "grad.log10_abs_median",
                "grad.log10_abs_p90",
                "grad.eps_sgd_fraction",
            ),
            nan,
        )
        n = len(self._norms)
        if n >= 8:
            norms = np.fromiter(self._norms, float)
            early = median(self._early)
            recent = median(norms[-min(10, n) :].tolist())
            if early > 0 and recent > 0:
                out["grad.norm_log_ratio_initial"] = math.log(recent / early)
            half = n // 2
            a, b = median(norms[:half].tolist()), median(norms[half:].tolist())
            if a > 0 and b > 0:
                out["grad.norm_trend"] = math.log(b / a)
            out["grad.norm_cv"] = float(norms.std() / (norms.mean() + 1e-30))
            out["grad.clip_fraction"] = sum(self._clipped) / len(self._clipped)  # np.mean's value, faster
        out.update(self._decision)
        return out

    def indicators(self) -> list[Indicator]:
        s = self.stats()
        explode = s["grad.norm_log_ratio_initial"]
        st_exp = grade(explode, EXPLODING_WARN, EXPLODING_BAD)
        # the layers' weight tensors when there are two or more, else every tensor (see VANISHING_SPREAD_WARN)
        spread, floor = self._layers.get("spread", math.nan), self._layers.get("floor", math.nan)
        if math.isnan(spread):
            spread, floor = s["grad.layer_spread_log10"], s["grad.rms_floor_fraction"]
        st_van = grade(spread, VANISHING_SPREAD_WARN, VANISHING_SPREAD_BAD, higher_is_worse=False)
        if floor > 0 and st_van == "ok":
            st_van = "warn"
        clip = self.suggested_clip()
        return [
            Indicator(
                "grad.exploding",
                explode,
                st_exp,
                f"gradient norm is x{math.exp(explode):.3g} its early median"
                if not math.isnan(explode)
                else "fewer than 8 steps",
                advise(
                    st_exp, f"clip gradients (clip_grad_norm_ at {clip:.3g}, the suggestion below) and lower the learning rate"
                ),
                "Pascanu et al. 2013 (norm clipping against exploding gradients)",
                lr_way(st_exp, "lower"),
            ),
            Indicator(
                "grad.vanishing",
                spread,
                st_van,
                (f"per-layer gradient RMS spans {-spread:.1f} decades; {floor:.0%} of tensors have RMS < 1e-10")
                if not math.isnan(spread)
                else "no decision step yet",
                advise(st_van, "add normalization or residual connections; check the init"),
                "Glorot & Bengio 2010 (keep gradient variance comparable across layers)",
            ),
            self._noise_indicator(),
            self._clip_indicator(clip),
            self._histogram_indicator(),
        ]

    def _noise_indicator(self) -> Indicator:
        """Gradient noise judged against the run's own early level and its lr (see ``NOISE_WARN_DECADES``)."""
        now, early = self.noise_to_signal()
        src = (
            "McCandlish et al. 2018, gradient noise scale from two minibatch gradients; their step-optimal "
            "lr_max / (1 + B_noise/B) falls as the noise grows"
        )
        if math.isnan(early):
            pairs = self._noise["pairs"]
            return Indicator(
                "grad.noise",
                now,
                "n/a",
                f"measuring the run's early noise level ({pairs} of {NOISE_EARLY} gradient pairs)",
                "",
                src,
            )
        level = "the gradient is lost in its noise" if math.isinf(now) else f"noise is {now:.2g}x the gradient signal"
        start = "no signal above the noise" if math.isinf(early) else f"{early:.2g}x"
        why = f"{level} (B_noise/B: the critical batch in units of this one); early in the run {start}"
        if math.isinf(early):
            # noise-dominated from the start: each step could use a larger batch, but nothing grew
            return Indicator("grad.noise", now, "ok", why + ": a larger batch would make each step count more", "", src)
        phase = phase_of(self)
        if phase is not None and phase.winding_down:
            why += f"; noise outgrows the signal as a run converges, and the lr is decaying {phase.where}: expected"
            return Indicator("grad.noise", now, "ok", why, "", src)
        held = min(self._noise["recent"])  # the level every one of the last decisions reached
        grown = math.log10((1.0 + held) / (1.0 + early))
        lowered = -phase.lr_drop_log10 if phase is not None else 0.0
        status: Status = "warn" if grown - lowered >= NOISE_WARN_DECADES else "ok"
        if math.isfinite(grown):
            why += f"; the noise-optimal lr fell {10.0**grown:.2g}x since" + (
                f", the lr {10.0**lowered:.2g}x" if lowered > 0 else ""
            )
        return Indicator(
            "grad.noise",
            now,
            status,
            why,
            advise(status, "the noise has outgrown the lr: decay the learning rate (or raise the batch size)"),
            src,
            lr_way(status, "lower"),
        )

    def _clip_indicator(self, clip: float) -> Indicator:
        src = "AutoClip, Seetharaman et al. 2020 (clip at a percentile of the norm history)"
        if not math.isfinite(clip):
            return Indicator(
                "grad.clip_suggestion", clip, "n/a", f"fewer than 8 gradient norms seen ({len(self._norms)})", "", src
            )
        n = len(self._norms)
        clipped = float(np.mean(self._clipped)) if self._clipped else 0.0
        pct = f"the {self.clip_percentile:.0f}th percentile of the last {n} gradient norms is {clip:.3g}"
        if clipped > CLIP_MOSTLY:
            return Indicator(
                "grad.clip_suggestion",
                clip,
                "warn",
                f"clipping cut {clipped:.0%} of the last {n} steps: the threshold sits below typical gradient norms "
                f"({pct}), so it rescales nearly every step like a lower learning rate",
                f"unless the run was unstable, raise the clip threshold towards {clip:.3g} (or turn clipping off)",
                src,
            )
        if clipped > 0:
            why = f"clipping cut {clipped:.0%} of the last {n} steps (bursts only); {pct}"
        else:
            why = f"no step clipped; {pct}, a threshold that would cut bursts only"
        return Indicator("grad.clip_suggestion", clip, "ok", why, "", src)

    @property
    def _hist_info(self) -> dict[str, float]:
        if self._hist_info_cache is None:
            self._hist_info_cache = _meaningful_range(*self._hist_sample) if self._hist_sample is not None else {}
        return self._hist_info_cache

    def _histogram_indicator(self) -> Indicator:
        info = self._hist_info
        src = "Silva & Rodriguez 2024: epsilon separates sign-like from SGD-like updates"
        if not info:
            return Indicator("grad.magnitude_histogram", float("nan"), "n/a", "no decision step yet", "", src)
        zeros = info["negligible_fraction"]
        if math.isnan(info["p10"]):
            return Indicator(
                "grad.magnitude_histogram",
                float("nan"),
                "n/a",
                f"all {zeros:.0%} of the sampled gradient entries are zero or float noise",
                "",
                src,
            )
        lo, hi, median_ = 10.0 ** info["p10"], 10.0 ** info["p90"], info["median"]
        why = f"nonzero |g| lie in [{lo:.1e}, {hi:.1e}] (10th-90th percentile)"
        if zeros > 0:
            why += f"; {zeros:.0%} of entries are exactly zero or float noise (left out)"
        eps, damped = info.get("eps", math.nan), info.get("below_eps", math.nan)
        if math.isnan(eps):
            return Indicator("grad.magnitude_histogram", median_, "ok", why, "", src)
        if damped >= EPS_DAMPED_WARN:
            return Indicator(
                "grad.magnitude_histogram",
                median_,
                "warn",
                why
                + f"; {damped:.0%} of them are below the optimizer's eps={eps:.0e}, where its updates shrink to SGD-like steps",
                f"lower eps below {lo:.0e} (unless SGD-like updates are intended)",
                src,
            )
        where = "below this range" if eps < lo else f"inside it ({damped:.0%} of entries below)"
        return Indicator("grad.magnitude_histogram", median_, "ok", why + f"; eps={eps:.0e} is {where}", "", src)

    # -- checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "norms": list(self._norms),
            "clipped": [bool(c) for c in self._clipped],
            "early": list(self._early),
            "decision": dict(self._decision),
            "hist": self._hist.tolist(),
            "hist_info": dict(self._hist_info),
            "m": None if self._m is None else [t.clone() for t in self._m],
            "v": None if self._v is None else [t.clone() for t in self._v],
            "layers": dict(self._layers),
            "noise": {k: list(v) if isinstance(v, list) else v for k, v in self._noise.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._norms = deque(state["norms"], maxlen=self.window)
        self._clipped = deque(state["clipped"], maxlen=self.window)
        self._early = list(state["early"])
        self._decision = dict(state["decision"])
        self._hist = np.asarray(state["hist"], dtype=np.float64)
        self._hist_info_cache, self._hist_sample = dict(state.get("hist_info") or {}), None
        self._m = None if state["m"] is None else [t.clone() for t in state["m"]]
        self._v = None if state["v"] is None else [t.clone() for t in state["v"]]
        # absent in older checkpoints: the report's layer spread and noise level are measured afresh
        self._layers = dict(state.get("layers") or {})
        noise = state.get("noise")
        if noise:
            self._noise = {**noise, "recent": list(noise["recent"])}
        self._g_first = None  # a pair is measured within one interval: the next one starts it

    def validate_state_dict(self, state: dict[str, Any]) -> str | None:
        why = check.first(
            check.numbers_list("norms", state.get("norms"), low=0.0),
            check.items("clipped", state.get("clipped"), check.flag),
            check.numbers_list("early", state.get("early"), max_len=20, low=0.0),
            check.stats("decision", state.get("decision"), prefix=self.name + "."),
            check.numbers_list("hist", state.get("hist"), low=0.0),
            check.stats("hist_info", state.get("hist_info") or {}),
            check.stats("layers", state.get("layers") or {}),
            _noise_problem(state.get("noise")),
        )
        if why:
            return why
        if len(state["hist"]) != HIST_HIGH - HIST_LOW:
            return f"hist must hold one share per decade ({HIST_HIGH - HIST_LOW}), got {len(state['hist'])}"
        if state.get("hist_info") and set(state["hist_info"]) != HIST_INFO_KEYS:
            return f"hist_info must hold {sorted(HIST_INFO_KEYS)}, got {sorted(state['hist_info'])}"
        m, v = state.get("m"), state.get("v")
        if (m is None) != (v is None):
            return "the gradient moments m and v must both be saved or both be absent"
        if m is None or v is None:
            return None
        why = check.first(
            check.items("m", m, check.tensor, dtype=torch.float32, finite=True),
            check.items("v", v, check.tensor, dtype=torch.float32, finite=True),
        )
        if why:
            return why
        if [t.shape for t in m] != [t.shape for t in v]:
            return "the gradient moments m and v must have the same shapes"
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            shapes = sorted(tuple(as_real(p).shape) for p in ctx.params)
            ms = sorted(tuple(t.shape) for t in m)
            if any(s not in shapes for s in ms):
                return f"gradient moments have shapes {ms[:4]}..., the model's parameters {shapes[:4]}...: another model?"
        return None


def _noise_problem(noise: Any) -> str | None:
    """Why a saved noise-scale state cannot be loaded (``None`` when it can, or is absent: older checkpoints)."""
    if noise is None:
        return None
    if not isinstance(noise, dict):
        return f"noise must be a dict, got {check.show(noise)}"
    return check.first(
        check.missing(noise, ("signal", "noise", "pairs", "early_signal", "early_noise", "recent")),
        check.number("noise.signal", noise.get("signal")),
        check.number("noise.noise", noise.get("noise"), low=0.0),
        check.count("noise.pairs", noise.get("pairs")),
        check.number("noise.early_signal", noise.get("early_signal")),
        check.number("noise.early_noise", noise.get("early_noise"), low=0.0),
        check.numbers_list("noise.recent", noise.get("recent"), max_len=NOISE_EARLY, low=0.0, inf=True),
    )


#: What :func:`_meaningful_range` reports (the health report's histogram indicator reads each).
HIST_INFO_KEYS = frozenset({"negligible_fraction", "p10", "median", "p90", "eps", "below_eps"})


def _meaningful_range(flat: torch.Tensor, eps: float | None) -> dict[str, float]:
    """Where the non-negligible gradient mass lies (log10 10th/50th/90th percentiles), the share of
    exact zeros and float noise, and the share of the rest below ``eps``."""
    a = flat.abs().float()
    top = float(a.max()) if a.numel() else 0.0
    keep = a > top * NEGLIGIBLE_RELATIVE if top > 0 else torch.zeros_like(a, dtype=torch.bool)
    out = {
        "negligible_fraction": float(1.0 - keep.float().mean()) if a.numel() else 1.0,
        "p10": math.nan,
        "median": math.nan,
        "p90": math.nan,
        "eps": float(eps) if eps else math.nan,
        "below_eps": math.nan,
    }
    if int(keep.sum()) == 0:
        return out
    kept = a[keep]
    # 0.1-decade bins, as for the observation's percentiles (a histogram is cheaper than a sort)
    fine = (
        torch.histc(torch.log10(kept.clamp_min(10.0**HIST_LOW)), bins=(HIST_HIGH - HIST_LOW) * 10, min=HIST_LOW, max=HIST_HIGH)
        .cpu()
        .numpy()
    )
    cdf = np.cumsum(fine) / max(fine.sum(), 1.0)
    for key, q in (("p10", 0.1), ("median", 0.5), ("p90", 0.9)):
        out[key] = HIST_LOW + (int(np.searchsorted(cdf, q)) + 0.5) / 10.0
    if eps:
        out["below_eps"] = float((kept < eps).float().mean())
    return out


def read_floats(tensors: list[torch.Tensor]) -> list[float]:
    """Scalar tensors as Python floats (the values ``float()`` gives), in one read when they share a
    device (one host sync on accelerators instead of one per tensor)."""
    if tensors and all(t.device == tensors[0].device for t in tensors):
        return torch.stack(tensors).tolist()
    return [float(t) for t in tensors]


def dense_values(g: torch.Tensor) -> torch.Tensor:
    """A gradient as a dense tensor of its stored values (sparse ones: their non-zeros)."""
    return g.coalesce().values() if g.is_sparse else g


def _optimizer_eps(optimizer: torch.optim.Optimizer | None) -> float | None:
    if optimizer is None:
        return None
    for group in optimizer.param_groups:
        eps = group.get("eps")
        # a number (Adam's family, RMSprop, Adagrad); Adafactor's is a pair for other purposes (a floor
        # on the second moment and on the parameter scale), with no threshold on |g| to read
        if isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps:
            return float(eps)
    return None
