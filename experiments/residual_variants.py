"""Derived residual policies the product does not ship: actor ensembles, a progress gate, a cooldown cap.

``experiments/derive_residual.py`` writes them; chuck's loader refuses them (``architecture.members`` > 1,
``residual_progress_gate``, ``residual_cooldown_cap``: chuck.policies.card), and :func:`load_variant` loads
them here. None of them beat the shipped default (docs/design/step-size-prior.md; git history for the runs).

* :class:`ActorEnsemble`: the actors of independently trained runs on one prior, acting as the mean of
  their clipped actions: where the runs agree the correction is kept, where they disagree it shrinks
  toward the prior.
* progress gate (card field ``residual_progress_gate``): while log(smoothed loss / starting loss) is above
  ``-gate`` the residual may not lower the lr; a learned cut before learning starts only keeps a run there.
* cooldown cap (card field ``residual_cooldown_cap``): in the prior's cooldown (warmup-stable-decay,
  Hägele et al. 2024) the residual may lower the lr but not raise it, so it cannot undo the anneal.
* plateau hold (card field ``residual_plateau_hold``): where its prior (``prior@22``, ``prior@23``) holds
  its lowers on a steady plateau, the residual may not lower the lr either.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from chuck.core.loading import PolicyLoadError
from chuck.policies.artifact import (
    CARD,
    MAX_CARD_BYTES,
    MAX_WEIGHTS_BYTES,
    WEIGHTS,
    _declared_specs,
    load_artifact,
    read_regular_file,
)
from chuck.policies.card import UNSUPPORTED_FIELDS, expected_shapes, validate_card
from chuck.policies.learned import ActorNetwork, LearnedPolicy, _unit_l1
from chuck.policies.residual import ResidualPolicy
from experiments.prior_variants import holds_a_plateau

#: Most members an ensemble artifact may hold (``architecture.members``).
MAX_MEMBERS = 16


class ActorEnsemble(nn.Module):
    """Several actors of one observation and action spec, acting as the mean of their clipped actions.

    Each member keeps its own observation normalization. State-dict keys are
    ``members.<i>.<ActorNetwork key>`` (artifact card: ``architecture.members``).
    """

    def __init__(self, members: list[ActorNetwork]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.clip_obs, self.epsilon = members[0].clip_obs, members[0].epsilon

    @property
    def networks(self) -> list[ActorNetwork]:
        """The members, typed (``members`` is the registered ModuleList)."""
        return [m for m in self.members if isinstance(m, ActorNetwork)]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(obs).clamp(-1.0, 1.0) for m in self.networks]).mean(0)

    def attributions(self, obs: torch.Tensor) -> np.ndarray:
        """The members' attributions averaged (each on its own normalized features), each output's row
        normalized to sum |.| = 1."""
        return np.stack([_unit_l1(row) for row in np.mean([m.attributions(obs) for m in self.networks], axis=0)])


class DerivedPolicy(LearnedPolicy):
    """A :class:`LearnedPolicy` with the derived features its card asks for (progress gate, cooldown cap);
    its actor may be an :class:`ActorEnsemble`."""

    def __init__(self, actor: Any, card: dict[str, Any]) -> None:
        super().__init__(actor, card)
        self.progress_gate: float | None = card.get("residual_progress_gate")
        self._progress = self._spec.names.index("loss.log_ratio_initial")
        self.cooldown_cap = bool(card.get("residual_cooldown_cap", False))
        self.plateau_hold = bool(card.get("residual_plateau_hold", False))

    @torch.no_grad()
    def correction(self, observation: np.ndarray) -> np.ndarray:
        out = super().correction(observation)
        if self._gated(observation):
            out[0] = max(out[0], 0.0)  # the run has not left its starting loss: no learned lr cut
        return out

    def act(self, observation: np.ndarray) -> np.ndarray:
        if not (self.cooldown_cap or self.plateau_hold) or self.residual is None or self.prior is None:
            return super().act(observation)
        correction = self.correction(observation)
        prior_action = self.prior.act(observation)
        if self._capped():
            correction[0] = min(correction[0], 0.0)  # the prior anneals: no learned raise against it
        if self._held():
            correction[0] = max(correction[0], 0.0)  # the prior holds a steady plateau: no learned cut either
        return ResidualPolicy.combine(prior_action, correction)

    def explain(self, observation: np.ndarray) -> dict[str, dict[str, float]]:
        out = super().explain(observation)
        obs = torch.as_tensor(self.check_observation(observation)).reshape(1, -1)
        lr_out = float(self.actor(obs).detach()[0, 0])
        if ((self._gated(observation) or self._held()) and lr_out < 0.0) or (self._capped() and lr_out > 0.0):
            # the gate dropped a learned lr cut, or the cap a learned raise: nothing to credit the actor with
            prior_only = {k: v for k, v in out.get("lr", {}).items() if k.startswith("prior: ")}
            if prior_only:
                out["lr"] = prior_only
            else:
                out.pop("lr", None)
        return out

    def _held(self) -> bool:
        """The plateau hold holds: the prior's last decision held its lowers on a steady plateau (its
        ``holds_plateau``, read after the prior acts)."""
        return self.plateau_hold and bool(getattr(self.prior, "holds_plateau", False))

    def _capped(self) -> bool:
        """The cooldown cap holds: the prior's last decision fell in its cooldown (read after the prior acts)."""
        return self.cooldown_cap and bool(getattr(self.prior, "in_cooldown", False))

    def _gated(self, observation: np.ndarray) -> bool:
        """The progress gate holds: the smoothed loss is still within ``progress_gate`` of its start."""
        gate = self.progress_gate
        return gate is not None and float(self.check_observation(observation)[self._progress]) > -gate


def load_variant(path: str | Path) -> LearnedPolicy:
    """Load an artifact, derived features included; one without them loads as chuck loads it.

    Raises:
        PolicyLoadError: as :func:`chuck.policies.artifact.load_artifact`, naming a bad derived field too.
    """
    path = Path(path)
    if path.name == CARD and not path.is_dir():
        path = path.parent
    try:
        raw = json.loads(read_regular_file(path / CARD, MAX_CARD_BYTES).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"policy artifact {path}: {CARD} is not valid JSON ({exc})") from None
    arch = raw.get("architecture") if isinstance(raw, dict) else None
    members = arch.get("members", 1) if isinstance(arch, dict) else 1
    derived = {k: raw[k] for k in UNSUPPORTED_FIELDS if isinstance(raw, dict) and raw.get(k) is not None}
    if not derived and members == 1:
        return load_artifact(path)
    _check_derived(derived, members, str(path))
    plain = {k: v for k, v in raw.items() if k not in UNSUPPORTED_FIELDS}
    plain["architecture"] = {**raw["architecture"], "members": 1}
    obs_spec, act_spec = _declared_specs(plain)
    card = validate_card(
        plain,
        str(path),
        obs_names=list(obs_spec.names),
        obs_version=str(obs_spec.version),
        action_dims=list(act_spec.dims),
        action_version=str(act_spec.version),
        format_name="chuck-policy",
        format_version=1,
    )
    data = read_regular_file(path / WEIGHTS, MAX_WEIGHTS_BYTES)
    if hashlib.sha256(data).hexdigest() != card["sha256"]:
        raise PolicyLoadError(f"policy artifact {path}: checksum mismatch for {WEIGHTS} (corrupt or truncated file)")
    tensors = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    obs_dim, act_dim, hidden = len(obs_spec.names), len(act_spec.dims), card["architecture"]["hidden"]
    one = expected_shapes(obs_dim, act_dim, hidden)
    want = {f"members.{i}.{k}": v for i in range(members) for k, v in one.items()} if members > 1 else one
    if {k: tuple(v.shape) for k, v in tensors.items()} != want:
        raise PolicyLoadError(
            f"policy artifact {path}: card field architecture.hidden {hidden} x {members} members does not match the weights"
        )
    norm = card["normalization"]
    with torch.random.fork_rng(devices=[]):
        nets = [
            ActorNetwork(obs_dim, act_dim, hidden, card["architecture"]["activation"], norm["clip_obs"], norm["epsilon"])
            for _ in range(members)
        ]
    actor: Any = nets[0] if members == 1 else ActorEnsemble(nets)
    actor.load_state_dict(tensors, strict=True)
    card.update(derived)
    card["architecture"] = {**card["architecture"], "members": members}
    policy = DerivedPolicy(actor, card)
    if policy.plateau_hold and not holds_a_plateau(card.get("prior")):
        raise PolicyLoadError(
            f"policy artifact {path}: card field residual_plateau_hold needs a prior that holds a steady plateau "
            f"(experiments/prior_variants.py HOLDING_VERSIONS), not {card.get('prior')!r}"
        )
    return policy


def _check_derived(derived: dict[str, Any], members: Any, where: str) -> None:
    if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= MAX_MEMBERS:
        raise PolicyLoadError(
            f"policy artifact {where}: card field architecture.members must be in [1, {MAX_MEMBERS}], not {members!r}"
        )
    gate = derived.get("residual_progress_gate")
    if gate is not None and (
        isinstance(gate, bool) or not isinstance(gate, (int, float)) or not math.isfinite(gate) or gate <= 0
    ):
        raise PolicyLoadError(
            f"policy artifact {where}: card field residual_progress_gate must be a finite number > 0, not {gate!r}"
        )
    for field in ("residual_cooldown_cap", "residual_plateau_hold"):
        flag = derived.get(field)
        if flag is not None and not isinstance(flag, bool):
            raise PolicyLoadError(f"policy artifact {where}: card field {field} must be true or false, not {flag!r}")
