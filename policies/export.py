"""Export a stable-baselines3 PPO policy (plus VecNormalize statistics) to a chuck artifact.

Only the actor is exported: the mean of the Gaussian policy, which is what
``model.predict(obs, deterministic=True)`` returns before clipping. SB3 is not
imported here; the objects are passed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from chuck.policies.artifact import save_artifact
from chuck.policies.learned import ActorNetwork


def actor_from_sb3(model: Any, obs_rms: Any | None, clip_obs: float = 10.0, epsilon: float = 1e-8) -> ActorNetwork:
    """Copy the SB3 ``ActorCriticPolicy`` actor (policy_net + action_net) and normalization."""
    pol = model.policy
    linears = [m for m in pol.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    acts = {type(m).__name__.lower() for m in pol.mlp_extractor.policy_net if not isinstance(m, torch.nn.Linear)}
    activation = "tanh" if acts <= {"tanh"} else "relu"
    obs_dim = linears[0].in_features if linears else pol.action_net.in_features
    actor = ActorNetwork(obs_dim, pol.action_net.out_features, [m.out_features for m in linears], activation, clip_obs, epsilon)
    src = {f"policy_net.{k}": v for k, v in pol.mlp_extractor.policy_net.state_dict().items()}
    src.update({f"action_net.{k}": v for k, v in pol.action_net.state_dict().items()})
    if obs_rms is not None:
        src["obs_mean"] = torch.as_tensor(np.asarray(obs_rms.mean), dtype=torch.float64)
        src["obs_var"] = torch.as_tensor(np.asarray(obs_rms.var), dtype=torch.float64)
    else:
        src["obs_mean"] = actor.obs_mean.clone()
        src["obs_var"] = actor.obs_var.clone()
    actor.load_state_dict({k: v.detach().cpu().clone() for k, v in src.items()})
    return actor


def actor_to_fine_tune(policy: Any, name: str) -> ActorNetwork:
    """The single actor of a learned policy that a new PPO run starts from (``--init-policy``).

    Raises:
        ValueError: a built-in rule (no network to start from), or a network that is not one actor.
    """
    actor = getattr(policy, "actor", None)
    if actor is None:
        raise ValueError(f"cannot fine-tune from {name!r}: it is a built-in rule with no network; name a learned policy")
    if not isinstance(actor, ActorNetwork):
        raise ValueError(
            f"cannot fine-tune from {name!r}: its actor is a {type(actor).__name__}, which one PPO actor cannot hold"
        )
    return actor


def load_actor_into_sb3(model: Any, actor: ActorNetwork) -> None:
    """Initialize an SB3 policy's actor from an exported one (fine-tuning from "default")."""
    pol = model.policy
    sd = actor.state_dict()
    pol.mlp_extractor.policy_net.load_state_dict(
        {k[len("policy_net.") :]: v for k, v in sd.items() if k.startswith("policy_net.")}
    )
    pol.action_net.load_state_dict({k[len("action_net.") :]: v for k, v in sd.items() if k.startswith("action_net.")})


def export_sb3(model: Any, vec_normalize: Any | None, out_dir: str | Path, card: dict[str, Any]) -> Path:
    """Write the artifact for an SB3 PPO model; ``card`` adds name, version, training and evaluation info."""
    obs_rms = getattr(vec_normalize, "obs_rms", None) if vec_normalize is not None else None
    clip = float(getattr(vec_normalize, "clip_obs", 10.0)) if vec_normalize is not None else 10.0
    eps = float(getattr(vec_normalize, "epsilon", 1e-8)) if vec_normalize is not None else 1e-8
    actor = actor_from_sb3(model, obs_rms, clip, eps)
    hidden = [m.out_features for m in actor.policy_net if isinstance(m, torch.nn.Linear)]
    act = "tanh" if any(isinstance(m, torch.nn.Tanh) for m in actor.policy_net) else "relu"
    return save_artifact(actor, out_dir, {"architecture": {"hidden": hidden, "activation": act}, **card})
