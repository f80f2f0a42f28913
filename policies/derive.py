"""Derive a residual policy from trained ones without training: average, shrink, or move to another prior.

Three generalization levers for the learned part of a residual policy (action = prior + actor; the
policy issue's "the learned part's generalization"), each cheap enough to measure on the validation
split in minutes (``experiments/derive_residual.py`` is the command):

* **Average** the actors of several snapshots of one run, weights and observation normalization alike
  (stochastic weight averaging: Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
  Better Generalization"; late checkpoints of one run lie in one basin, and their average in a flatter
  part of it than any one of them).
* **Shrink** the correction toward the prior by a factor ``scale`` on the actor's output layer (the
  residual-policy analogue of weight decay on the correction; 0 would be the prior alone). The scale
  applies before the residual's [-1, 1] clip: the action is prior + clip(scale x raw output), which is
  prior + scale x residual wherever the actor does not saturate.
* **Move** the residual onto another version of the built-in prior.
* **Ensemble** the actors of *independent* runs on one prior (the policy issue's "several training
  seeds"): their weights do not average (each run is its own basin), their actions do
  (:class:`~chuck.policies.learned.ActorEnsemble`: the mean of the members' clipped actions).
* **Mask** observation features: the actor reads them at their training mean whatever the run says.
  For inputs whose meaning depends on something arbitrary, like ``ctrl.log_lr_mult`` (the lr relative to
  the user's starting value, which is wherever the user happened to start): what the actor learned from
  them is a property of the training distribution's starting lrs, not of the run.

The result is an ordinary artifact whose card records how it was derived (``derived``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from chuck.core.observation import ObservationSpec
from chuck.policies.card import KNOWN_PRIORS
from chuck.policies.learned import ActorEnsemble, ActorNetwork, LearnedPolicy

#: A masked feature's normalization variance: its normalized value (x - mean) / sqrt(var) is 0, the
#: training mean, to float32 precision for any x chuck's observation clip allows (|x| <= 1e3 there).
MASKED_VAR = 1e300

#: Card fields of the first policy that a derived artifact keeps (the rest is rebuilt or dropped: the
#: in-training evaluation and checksum describe the originals, not the derived policy).
KEEP = ("name", "interval", "prior", "architecture", "training", "observation_stats", "observation", "action", "normalization")


def _check_compatible(policies: list[LearnedPolicy], what: str) -> None:
    """Refuse policies that do not combine: none, or residuals of other architectures or priors."""
    if not policies:
        raise ValueError(f"no policies to {what}")
    first = policies[0]
    for p in policies[1:]:
        for field in ("hidden", "activation"):
            if _architecture(p).get(field) != _architecture(first).get(field):
                raise ValueError(f"policies to {what} must share their architecture ({field}): {first.id} and {p.id} do not")
        for spec in ("observation", "action"):
            if (p.card.get(spec) or {}).get("version") != (first.card.get(spec) or {}).get("version"):
                raise ValueError(f"policies to {what} must share their {spec} spec version: {first.id} and {p.id} do not")
        if p.card.get("normalization") != first.card.get("normalization"):
            raise ValueError(f"policies to {what} must share their observation clipping: {first.id} and {p.id} do not")
        if p.card.get("prior") != first.card.get("prior"):
            raise ValueError(f"policies to {what} must be residuals on one prior: {first.id} and {p.id} are not")


def _architecture(policy: LearnedPolicy) -> dict[str, Any]:
    return dict(policy.card.get("architecture") or {})


def _networks(policy: LearnedPolicy) -> list[ActorNetwork]:
    actor = policy.actor
    return actor.networks if isinstance(actor, ActorEnsemble) else [actor]


def _copy(policy: LearnedPolicy, net: ActorNetwork, state: dict[str, torch.Tensor] | None = None) -> ActorNetwork:
    """A new actor of ``net``'s shape (one of ``policy``'s networks) holding ``state`` (default: ``net``'s own)."""
    actor = ActorNetwork(
        int(net.obs_mean.numel()),
        net.action_net.out_features,
        list(_architecture(policy)["hidden"]),
        str(_architecture(policy)["activation"]),
        net.clip_obs,
        net.epsilon,
    )
    actor.load_state_dict(state if state is not None else net.state_dict())
    return actor.eval()


def average_actor(policies: list[LearnedPolicy]) -> ActorNetwork:
    """A new actor holding the mean of the policies' actor state dicts (snapshots of one run).

    Raises:
        ValueError: no policies, an ensemble among them, or policies of different architectures or
            priors (not one run).
    """
    _check_compatible(policies, "average")
    if any(isinstance(p.actor, ActorEnsemble) for p in policies):
        raise ValueError("an ensemble's weights do not average (its members are separate runs); average snapshots of one run")
    states = [p.actor.state_dict() for p in policies]
    mean = {k: torch.stack([s[k].double() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}
    return _copy(policies[0], _networks(policies[0])[0], mean)


def ensemble_actor(policies: list[LearnedPolicy]) -> ActorEnsemble:
    """An ensemble of every network of ``policies`` (an ensemble among them contributes its members).

    Raises:
        ValueError: fewer than two networks in all, or policies of different architectures or priors.
    """
    _check_compatible(policies, "ensemble")
    nets = [_copy(p, n) for p in policies for n in _networks(p)]
    if len(nets) < 2:
        raise ValueError("an ensemble needs at least two actors")
    return ActorEnsemble(nets).eval()


def observation_stats(policies: list[LearnedPolicy]) -> dict[str, list[float]] | None:
    """The policies' training observation statistics combined: the union of their ranges (what the
    out-of-distribution check reads) and, where all have them, the equal-weight pooled mean and std
    (what explanations compare a feature with); None when any of them has no range."""
    if any(p.obs_low is None or p.obs_high is None for p in policies):
        return None
    out = {
        "low": np.min([p.obs_low for p in policies], axis=0).tolist(),
        "high": np.max([p.obs_high for p in policies], axis=0).tolist(),
    }
    stats = [p.card.get("observation_stats") or {} for p in policies]
    if all("mean" in st and "std" in st for st in stats):
        means = np.array([st["mean"] for st in stats], dtype=np.float64)
        stds = np.array([st["std"] for st in stats], dtype=np.float64)
        mean = means.mean(0)
        out["mean"] = mean.tolist()
        out["std"] = np.sqrt(np.maximum((stds**2 + means**2).mean(0) - mean**2, 0.0)).tolist()
    return out


def derive_residual(
    policies: list[LearnedPolicy],
    scale: float = 1.0,
    prior: str | None = None,
    sources: list[str] | None = None,
    ensemble: bool = False,
    progress_gate: float | None = None,
    cooldown_cap: bool = False,
    mask: list[str] | None = None,
) -> tuple[ActorNetwork | ActorEnsemble, dict[str, Any]]:
    """The averaged (or, with ``ensemble``, ensembled), shrunk (``scale``) actor and its card, on
    ``prior`` (default: the policies' own).

    ``progress_gate`` (card field ``residual_progress_gate``): while log(smoothed loss / starting loss)
    is above ``-progress_gate`` the residual may not lower the lr; a learned correction that lowers a
    run still at its starting loss (a plateau before learning starts) only keeps it there.

    ``cooldown_cap`` (card field ``residual_cooldown_cap``): in the prior's cooldown (the last part of a
    known budget, where the prior anneals the lr: warmup-stable-decay, Hagele et al. 2024) the residual
    may lower the lr but not raise it. A residual that raises there undoes the anneal the oracle's
    cosine arm gets and ends the run at its peak lr, where the final loss is noisiest.

    ``mask``: observation feature names the actor reads at their training mean (see the module
    docstring; done in the actor's observation normalization, so the artifact loads anywhere), e.g.
    ``["ctrl.log_lr_mult"]``.

    ``sources`` names the policies in the card (e.g. their snapshot paths). Save the pair with
    :func:`chuck.policies.artifact.save_artifact`.

    Raises:
        ValueError: ``scale`` not > 0, an unknown prior, an unknown feature to mask, or policies that do
            not average (see :func:`average_actor`).
    """
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale} (scale 0 is the prior alone)")
    if prior is not None and prior not in KNOWN_PRIORS:
        raise ValueError(f"unknown prior {prior!r}; known: {list(KNOWN_PRIORS)}")
    if progress_gate is not None and not (progress_gate > 0 and np.isfinite(progress_gate)):
        raise ValueError(f"progress_gate must be a finite number > 0, got {progress_gate}")
    actor: ActorNetwork | ActorEnsemble = ensemble_actor(policies) if ensemble else average_actor(policies)
    spec = ObservationSpec(policies[0].observation_version)
    unknown = [m for m in mask or [] if m not in spec.names]
    if unknown:
        raise ValueError(f"cannot mask {unknown}: not features of observation spec v{spec.version}")
    names = list(spec.names)
    with torch.no_grad():
        for net in actor.networks if isinstance(actor, ActorEnsemble) else [actor]:
            net.action_net.weight.mul_(scale)
            net.action_net.bias.mul_(scale)
            for m in mask or []:
                net.obs_var[names.index(m)] = MASKED_VAR
    card = {k: v for k, v in policies[0].card.items() if k in KEEP}
    if progress_gate is not None:
        card["residual_progress_gate"] = float(progress_gate)
    if cooldown_cap:
        card["residual_cooldown_cap"] = True
    card.pop("observation_stats", None)
    if (stats := observation_stats(policies)) is not None:
        card["observation_stats"] = stats
    if prior is not None:
        card["prior"] = prior
    card["derived"] = {
        "from": list(sources) if sources is not None else [p.id for p in policies],
        "combined": "ensemble" if ensemble else "average",
        "scale": float(scale),
        "prior": card.get("prior"),
        "progress_gate": progress_gate,
        "cooldown_cap": cooldown_cap,
        "masked": sorted(mask or []),
    }
    on = str(card.get("prior") or "none").replace("@", "") + (f"-gate{progress_gate:g}" if progress_gate else "")
    on += "-capped" if cooldown_cap else ""
    on += "".join(f"-masked-{m}" for m in sorted(mask or []))
    if isinstance(actor, ActorEnsemble):
        card["architecture"] = {**card.get("architecture", {}), "members": len(actor.members)}
        card["training"] = {"members": [p.card.get("training") or {} for p in policies]}  # each run's own record
        card["version"] = "+".join(p.version for p in policies) + f"-ensemble-{scale:g}-{on}"
    else:
        card["architecture"] = {**card.get("architecture", {}), "members": 1}
        card["version"] = f"{policies[0].version}-derived-{len(policies)}x{scale:g}-{on}"
    return actor, card
