"""Derive a residual policy from trained ones without training: average, shrink, or move to another prior.

Three generalization levers for the learned part of a residual policy (action = prior + actor; the
policy issue's "the learned part's generalization"), each cheap enough to measure on the validation
split in minutes (``experiments/derive_residual.py`` is the command):

* **Average** the actors of several snapshots of one run, weights and observation normalization alike
  (stochastic weight averaging: Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
  Better Generalization"; late checkpoints of one run lie in one basin, and their average in a flatter
  part of it than any one of them).
* **Shrink** the correction toward the prior by a factor ``scale`` on the actor's output layer (the
  residual-policy analogue of weight decay on the correction; 0 would be the prior alone).
* **Move** the residual onto another version of the built-in prior.

The result is an ordinary artifact whose card records how it was derived (``derived``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from chuck.policies.card import KNOWN_PRIORS
from chuck.policies.learned import ActorNetwork, LearnedPolicy

#: Card fields of the first policy that a derived artifact keeps (the rest is rebuilt or dropped: the
#: in-training evaluation and checksum describe the originals, not the derived policy).
KEEP = ("name", "interval", "prior", "architecture", "training", "observation_stats")


def average_actor(policies: list[LearnedPolicy]) -> ActorNetwork:
    """A copy of the first policy's actor holding the mean of all the actors' state dicts.

    Raises:
        ValueError: no policies, or policies of different architectures or priors (not one run).
    """
    if not policies:
        raise ValueError("no policies to average")
    first = policies[0]
    for p in policies[1:]:
        if p.card.get("architecture") != first.card.get("architecture") or p.card.get("prior") != first.card.get("prior"):
            raise ValueError(
                f"policies to average must share architecture and prior (snapshots of one run): {first.id} and {p.id} do not"
            )
    states = [p.actor.state_dict() for p in policies]
    mean = {k: torch.stack([s[k].double() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}
    actor = ActorNetwork(
        int(first.actor.obs_mean.numel()),
        first.actor.action_net.out_features,
        [m.out_features for m in first.actor.policy_net if isinstance(m, torch.nn.Linear)],
        str((first.card.get("architecture") or {}).get("activation", "tanh")),
        first.actor.clip_obs,
        first.actor.epsilon,
    )
    actor.load_state_dict(mean)
    return actor.eval()


def observation_range(policies: list[LearnedPolicy]) -> dict[str, list[float]] | None:
    """The union of the policies' training observation ranges (what the out-of-distribution check reads);
    None when any of them has none."""
    if any(p.obs_low is None or p.obs_high is None for p in policies):
        return None
    return {
        "low": np.min([p.obs_low for p in policies], axis=0).tolist(),
        "high": np.max([p.obs_high for p in policies], axis=0).tolist(),
    }


def derive_residual(
    policies: list[LearnedPolicy], scale: float = 1.0, prior: str | None = None, sources: list[str] | None = None
) -> tuple[ActorNetwork, dict[str, Any]]:
    """The averaged, shrunk (``scale``) actor and its card, on ``prior`` (default: the policies' own).

    ``sources`` names the policies in the card (e.g. their snapshot paths). Save the pair with
    :func:`chuck.policies.artifact.save_artifact`.

    Raises:
        ValueError: ``scale`` not > 0, an unknown prior, or policies that do not average (see
            :func:`average_actor`).
    """
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale} (scale 0 is the prior alone)")
    if prior is not None and prior not in KNOWN_PRIORS:
        raise ValueError(f"unknown prior {prior!r}; known: {list(KNOWN_PRIORS)}")
    actor = average_actor(policies)
    with torch.no_grad():
        actor.action_net.weight.mul_(scale)
        actor.action_net.bias.mul_(scale)
    card = {k: v for k, v in policies[0].card.items() if k in KEEP}
    card.pop("observation_stats", None)
    if (stats := observation_range(policies)) is not None:
        card["observation_stats"] = stats
    if prior is not None:
        card["prior"] = prior
    card["derived"] = {
        "from": list(sources) if sources is not None else [p.id for p in policies],
        "scale": float(scale),
        "prior": card.get("prior"),
    }
    on = str(card.get("prior") or "none").replace("@", "")
    card["version"] = f"{policies[0].version}-derived-{len(policies)}x{scale:g}-{on}"
    return actor, card
