"""The policy's observation: an ordered, named, versioned list of scale-free features.

This module is the *only* place where monitor statistics become a policy
input. ``ChuckOptimizer`` (deployment) and ``chuck.envs`` (meta-training) both
call :meth:`ObservationSpec.encode`, so a policy can never learn on one
encoding and run on another. Changing a feature, its order or its range is a
new ``version``: artifacts record the version they were trained on and
:func:`chuck.load_policy` refuses a mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces


@dataclass(frozen=True)
class Feature:
    """One observation feature.

    Attributes:
        name: the statistic's key in the merged monitor/controller statistics.
        low, high: the value is clipped into this range (fixed Box bounds).
        missing: value used when the statistic is ``nan`` (not yet measurable);
            each group also has a ``has_*`` flag so a policy can tell "0" from "unknown".
        doc: what the feature means, in one line.
    """

    name: str
    low: float
    high: float
    missing: float
    doc: str


_F = Feature
#: Version 1 of the observation. Ranges are wide enough to hold what the zoo
#: produces and tight enough that one outlier cannot dominate a normalizer.
FEATURES_V1: tuple[Feature, ...] = (
    # loss
    _F("loss.log_slope", -5.0, 5.0, 0.0, "slope of log(train loss) per 100 steps; < 0 is progress"),
    _F("loss.noise", 0.0, 3.0, 0.0, "std of log(train loss) around its linear trend"),
    _F("loss.noise_to_progress", 0.0, 1.0, 1.0, "noise / (noise + progress) over the window; 1 = no progress"),
    _F("loss.spike", -3.0, 5.0, 0.0, "log(latest loss / median recent loss)"),
    _F("loss.plateau", 0.0, 3.0, 0.0, "steps without 1% improvement of the smoothed loss, in windows"),
    _F("loss.log_ratio_initial", -10.0, 3.0, 0.0, "log(smoothed loss / initial loss)"),
    _F("loss.has_val", 0.0, 1.0, 0.0, "1 when a validation loss has been observed"),
    _F("loss.gen_gap", -2.0, 3.0, 0.0, "log(val loss / smoothed train loss)"),
    _F("loss.val_trend", -2.0, 2.0, 0.0, "slope of log(val loss) per evaluation over the last 5"),
    _F("loss.overfit_gl", 0.0, 2.0, 0.0, "Prechelt's generalization loss: val / best val - 1"),
    # gradients
    _F("grad.norm_log_ratio_initial", -10.0, 10.0, 0.0, "log(recent median grad norm / early median)"),
    _F("grad.norm_trend", -5.0, 5.0, 0.0, "log(median norm, late half / early half of the window)"),
    _F("grad.norm_cv", 0.0, 5.0, 0.0, "coefficient of variation of the grad norm over the window"),
    _F("grad.clip_fraction", 0.0, 1.0, 0.0, "fraction of recent steps that were clipped"),
    _F("grad.layer_spread_log10", -12.0, 0.0, 0.0, "log10(min / max per-layer gradient RMS)"),
    _F("grad.rms_floor_fraction", 0.0, 1.0, 0.0, "fraction of tensors with gradient RMS < 1e-10"),
    _F("grad.snr", 0.0, 1.0, 0.5, "sum(m^2) / sum(v): share of the gradient second moment that is signal"),
    _F("grad.log10_abs_median", -16.0, 2.0, -6.0, "median log10|g| (sampled)"),
    _F("grad.eps_sgd_fraction", 0.0, 1.0, 0.0, "fraction of |g| below the optimizer's eps (SGD-like coordinates)"),
    # activations
    _F("act.has_data", 0.0, 1.0, 0.0, "1 when activations were sampled (model given)"),
    _F("act.dead_fraction", 0.0, 1.0, 0.0, "fraction of rectifier units dead for a whole batch"),
    _F("act.saturation", 0.0, 1.0, 0.0, "fraction of saturated tanh/sigmoid outputs"),
    _F("act.sparsity", 0.0, 1.0, 0.0, "fraction of zero activations"),
    _F("act.drift", 0.0, 5.0, 0.0, "max |log(activation std / early std)| over modules"),
    # weights and updates
    _F("weights.update_ratio_log10", -10.0, 1.0, -3.0, "log10 median ||update|| / ||weight||"),
    _F("weights.update_cosine", -1.0, 1.0, 0.0, "cosine between two consecutive updates"),
    _F("weights.scale_log_ratio", -5.0, 5.0, 0.0, "largest log(weight RMS / He-init RMS)"),
    # controller state (written by ChuckOptimizer, see ActionSpec.control_stats)
    _F("ctrl.log10_lr", -8.0, 1.0, -3.0, "log10 of the effective learning rate (first group)"),
    _F("ctrl.log_lr_mult", -7.0, 5.0, 0.0, "log of chuck's lr multiplier"),
    _F("ctrl.log_wd_mult", -7.0, 5.0, 0.0, "log of chuck's weight-decay multiplier"),
    _F("ctrl.clip_on", 0.0, 1.0, 0.0, "1 when gradient clipping is active"),
    _F("ctrl.log_clip_ratio", -5.0, 5.0, 5.0, "log(clip threshold / median grad norm); 5 when off"),
    _F("ctrl.dropout", 0.0, 1.0, 0.0, "current dropout p (mean over dropout modules)"),
    _F("ctrl.has_dropout", 0.0, 1.0, 0.0, "1 when the model has dropout modules"),
    _F("ctrl.progress", 0.0, 1.0, 0.0, "step / total_steps when total_steps is known"),
    _F("ctrl.has_total", 0.0, 1.0, 0.0, "1 when total_steps is known"),
    _F("ctrl.skip_rate", 0.0, 1.0, 0.0, "fraction of steps since the last decision skipped by guardrails"),
)

#: Version 2 adds learning-rate-free step-size signals (chuck.monitors.stepsize), so that a
#: policy can tell "too high" from "too low" without knowing the task.
FEATURES_V2: tuple[Feature, ...] = FEATURES_V1 + (
    _F("step.log10_update_over_dhat", -8.0, 3.0, -1.0, "log10(mean |update| / Prodigy-style distance estimate d_hat)"),
    _F("step.hypergrad", -1.0, 1.0, 0.0, "EMA of cos(-new gradient, last step): > 0 still descending, < 0 overshooting"),
    _F("step.dhat_growth", -1.0, 3.0, 0.0, "log10 growth of d_hat since the last decision (> 0: still far from the goal)"),
)

#: Features whose value depends on which base optimizer runs, not only on how the run goes: the raw
#: learning rate (SGD's good lrs sit about a decade above Adam's, so the same value means "too high"
#: under one and "too low" under the other), the raw gradient scale (a property of the loss and the
#: parametrization) and the share of coordinates below Adam's epsilon (undefined for SGD).
BASE_DEPENDENT: frozenset[str] = frozenset({"ctrl.log10_lr", "grad.log10_abs_median", "grad.eps_sgd_fraction"})

#: Version 3 is version 2 without :data:`BASE_DEPENDENT`: a policy trained on it reads the run through
#: ratios and responses (update-to-weight ratios, loss and gradient trends, its own lr multiplier, the
#: step-size signals) that mean the same under AdamW, SGD with momentum or RMSprop.
FEATURES_V3: tuple[Feature, ...] = tuple(f for f in FEATURES_V2 if f.name not in BASE_DEPENDENT)

#: Every observation version this chuck can encode; artifacts name theirs, the newest is the default.
FEATURE_SETS: dict[str, tuple[Feature, ...]] = {"1": FEATURES_V1, "2": FEATURES_V2, "3": FEATURES_V3}
LATEST_VERSION = "3"


class ObservationSpec:
    """Fixed, named, versioned observation.

    >>> spec = ObservationSpec()
    >>> spec.space.shape == (len(spec.names),)
    True
    """

    def __init__(self, version: str | None = None) -> None:
        version = LATEST_VERSION if version is None else version
        if version not in FEATURE_SETS:
            raise ValueError(f"observation spec v{version} is unknown to this chuck (it knows {sorted(FEATURE_SETS)})")
        features = FEATURE_SETS[version]
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise ValueError("duplicate feature names in ObservationSpec")
        self.features = features
        self.version = version
        self.names = names
        self.low = np.array([f.low for f in features], dtype=np.float32)
        self.high = np.array([f.high for f in features], dtype=np.float32)
        self._missing = np.array([f.missing for f in features], dtype=np.float32)

    @property
    def space(self) -> spaces.Box:
        """The Gymnasium observation space (a fresh object: spaces carry RNG state)."""
        return spaces.Box(self.low, self.high, dtype=np.float32)

    def encode(self, stats: Mapping[str, float]) -> np.ndarray:
        """Merged statistics -> float32 vector inside :attr:`space`.

        Missing or non-finite statistics take the feature's ``missing`` value; the
        rest are clipped into the feature's range. Never raises on bad values.
        """
        out = self._missing.copy()
        for i, f in enumerate(self.features):
            v = stats.get(f.name)
            if v is not None and not math.isnan(v):
                out[i] = v  # +-inf is clipped below
        np.clip(out, self.low, self.high, out=out)
        return out

    def as_dict(self, obs: np.ndarray) -> dict[str, float]:
        """Name each entry of an encoded observation."""
        obs = np.asarray(obs, dtype=np.float32).reshape(-1)
        if obs.shape[0] != len(self.names):
            raise ValueError(f"observation has {obs.shape[0]} entries, spec v{self.version} has {len(self.names)}")
        return dict(zip(self.names, obs.tolist()))  # tolist: the values float() gives, in one call

    def card(self) -> dict:
        """JSON-serializable description, stored in policy cards."""
        return {"version": self.version, "features": [[f.name, f.low, f.high] for f in self.features]}
