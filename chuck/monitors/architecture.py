"""Architecture recommendations: text for the health report, never actions.

A policy can change optimizer hyperparameters mid-run; it cannot change the
model. What the monitors see about the model (dead or very sparse layers,
vanishing gradients without normalization, deep plain stacks) becomes advice
for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from chuck.core.taxonomy import DROPOUT_LAYERS, LAYER_TYPES, NORM_LAYERS, WEIGHT_LAYERS


@dataclass(frozen=True)
class ModelProfile:
    """What chuck can read off a model without running it."""

    weight_layers: int
    norm_layers: int
    max_width: int
    has_dropout: bool
    has_recurrent: bool
    has_attention: bool

    @classmethod
    def of(cls, model: nn.Module) -> ModelProfile:
        mods = list(model.modules())
        widths: list[int] = [
            int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)  # type: ignore[arg-type]
            for m in mods
            if isinstance(m, WEIGHT_LAYERS)
        ]
        return cls(
            weight_layers=sum(isinstance(m, WEIGHT_LAYERS) for m in mods),
            norm_layers=sum(isinstance(m, NORM_LAYERS) for m in mods),
            max_width=max(widths, default=0),
            has_dropout=any(isinstance(m, DROPOUT_LAYERS) for m in mods),
            has_recurrent=any(isinstance(m, LAYER_TYPES["rnn"]) for m in mods),
            has_attention=any(isinstance(m, LAYER_TYPES["attention"]) for m in mods),
        )


def recommend(profile: ModelProfile | None, stats: dict[str, float]) -> list[str]:
    """Architecture advice from the model's profile and the monitors' statistics.

    Thresholds reuse the monitors' (see their modules for sources).
    """
    if profile is None:
        return []
    out: list[str] = []
    spread = stats.get("grad.layer_spread_log10", float("nan"))
    dead = stats.get("act.dead_fraction", float("nan"))
    sparsity = stats.get("act.sparsity", float("nan"))
    drift = stats.get("act.drift", float("nan"))
    if profile.weight_layers >= 6 and profile.norm_layers == 0:
        out.append(
            f"{profile.weight_layers} weight layers and no normalization: add BatchNorm/LayerNorm after each "
            "linear/conv block (before the activation) to keep activation and gradient scales stable."
        )
    if spread < -2.0 and profile.weight_layers >= 4:
        out.append(
            "gradient RMS differs by more than two decades across layers: residual (skip) connections let "
            "gradients bypass the deep stack (He et al. 2016)."
        )
    if dead > 0.4:
        out.append("many ReLUs are dead: LeakyReLU/GELU or a lower initial lr keeps units alive.")
    if sparsity > 0.9 and profile.max_width >= 128:
        out.append(f"over 90% of activations are zero at width {profile.max_width}: the layers could be narrower.")
    if drift > 2.0 and profile.norm_layers == 0:
        out.append("activation scale drifts far from its start: normalization layers would hold it.")
    if profile.has_recurrent and stats.get("grad.norm_log_ratio_initial", 0.0) > 2.3:
        out.append("recurrent model with bursting gradients: keep gradient clipping on (Pascanu et al. 2013).")
    return out
