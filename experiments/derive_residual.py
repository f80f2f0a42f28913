"""Derive a residual policy from PPO snapshots without training: average, shrink, or move it to another prior.

Levers for the learned part of a residual policy (action = prior + actor), each cheap enough to measure on
the validation split in minutes:

* **Average** the actors of several snapshots of one run, weights and observation normalization alike
  (stochastic weight averaging: Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
  Better Generalization"; late checkpoints of one run lie in one basin, and their average in a flatter
  part of it than any one of them).
* **Shrink** the correction toward the prior by a factor ``scale`` on the actor's output layer (the
  residual-policy analogue of weight decay on the correction; 0 would be the prior alone). The scale
  applies before the residual's [-1, 1] clip: the action is prior + clip(scale x raw output), which is
  prior + scale x residual wherever the actor does not saturate.
* **Move** the residual onto another prior.
* **Ensemble** the actors of *independent* runs on one prior: their weights do not average (each run is
  its own basin), their actions do (:class:`experiments.residual_variants.ActorEnsemble`).
* **Mask** observation features: the actor reads them at their training mean whatever the run says.
  For inputs whose meaning depends on something arbitrary, like ``ctrl.log_lr_mult`` (the lr relative to
  the user's starting value, which is wherever the user happened to start): what the actor learned from
  them is a property of the training distribution's starting lrs, not of the run.
* **Gate**, **cap** or **hold** the residual (``--progress-gate``, ``--cooldown-cap``, ``--plateau-hold``;
  experiments/residual_variants.py).

The result is an artifact whose card records how it was derived (``derived``). An average, a shrunk,
moved or masked residual is an ordinary artifact (``chuck evaluate --policies OUT``;
``install_default.py --snapshot OUT --residual keep`` ships it); an ensemble, a gate or a cap loads with
:func:`experiments.residual_variants.load_variant`. The runs under experiments/runs/ are git-ignored and
the committed ones live in git history (``git checkout b3d3e5d -- experiments/runs/default-v4``; see
docs/results/MANIFEST.md). From the repository root:

    python -m experiments.derive_residual --run-dir experiments/runs/default-v4 --last 0.25 \\
        --out experiments/runs/derived/v4-swa151k      # the average of the last quarter's snapshots
    python -m experiments.derive_residual --snapshots experiments/runs/default-v4/snapshots/00200192 \\
        --scale 0.5 --out experiments/runs/derived/v4-half
    python -m experiments.derive_residual --ensemble --snapshots RUN_A/snapshots/N RUN_B/snapshots/M \\
        --out experiments/runs/derived/NAME    # independent runs on one prior: their actions averaged
    python -m experiments.derive_residual --snapshots experiments/runs/default-v4/snapshots/00200192 \\
        --cooldown-cap --out experiments/runs/derived/v4-cooldown-cap   # no learned raise in the cooldown
    python -m experiments.derive_residual --snapshots experiments/runs/default-v4/snapshots/00200192 \\
        --mask ctrl.log_lr_mult --out experiments/runs/derived/v4-no-lr-mult   # blind to the user's starting lr
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chuck.core.loading import is_registered
from chuck.core.observation import ObservationSpec
from chuck.policies.artifact import save_artifact
from chuck.policies.card import KNOWN_PRIORS
from chuck.policies.learned import ActorNetwork, LearnedPolicy
from experiments.prior_variants import HOLDING_VERSIONS, holds_a_plateau
from experiments.residual_variants import ActorEnsemble, load_variant

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
    plateau_hold: bool = False,
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

    ``plateau_hold`` (card field ``residual_plateau_hold``): where the prior holds its lowers on a steady
    plateau (lab priors ``prior@22`` and ``prior@23``), the residual may not lower the lr either.

    ``mask``: observation feature names the actor reads at their training mean (see the module
    docstring; done in the actor's observation normalization, so the artifact loads anywhere), e.g.
    ``["ctrl.log_lr_mult"]``.

    ``sources`` names the policies in the card (e.g. their snapshot paths). Save the pair with
    :func:`save`.

    Raises:
        ValueError: ``scale`` not > 0, an unknown prior, an unknown feature to mask, or policies that do
            not average (see :func:`average_actor`).
    """
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale} (scale 0 is the prior alone)")
    if prior is not None and prior not in KNOWN_PRIORS and not is_registered(prior):
        raise ValueError(f"unknown prior {prior!r}; known: {list(KNOWN_PRIORS)} and the registered policies")
    if progress_gate is not None and not (progress_gate > 0 and np.isfinite(progress_gate)):
        raise ValueError(f"progress_gate must be a finite number > 0, got {progress_gate}")
    on_prior = prior or (policies[0].card.get("prior") if policies else None)
    if plateau_hold and not holds_a_plateau(on_prior):
        raise ValueError(
            f"plateau_hold needs a prior that holds a steady plateau ({', '.join(f'prior@{v}' for v in HOLDING_VERSIONS)}), "
            f"not {on_prior!r}: on any other it would do nothing"
        )
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
    if plateau_hold:
        card["residual_plateau_hold"] = True
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
        "plateau_hold": plateau_hold,
        "masked": sorted(mask or []),
    }
    on = str(card.get("prior") or "none").replace("@", "") + (f"-gate{progress_gate:g}" if progress_gate else "")
    on += "-capped" if cooldown_cap else ""
    on += "-plateau-hold" if plateau_hold else ""
    on += "".join(f"-masked-{m}" for m in sorted(mask or []))
    if isinstance(actor, ActorEnsemble):
        card["architecture"] = {**card.get("architecture", {}), "members": len(actor.members)}
        card["training"] = {"members": [p.card.get("training") or {} for p in policies]}  # each run's own record
        card["version"] = "+".join(p.version for p in policies) + f"-ensemble-{scale:g}-{on}"
    else:
        card["architecture"] = {**card.get("architecture", {}), "members": 1}
        card["version"] = f"{policies[0].version}-derived-{len(policies)}x{scale:g}-{on}"
    return actor, card


def save(actor: ActorNetwork | ActorEnsemble, out_dir: str | Path, card: dict[str, Any]) -> Path:
    """:func:`chuck.policies.artifact.save_artifact` for a derived actor (an ensemble included)."""
    return save_artifact(actor, out_dir, card)  # type: ignore[arg-type]  # an ensemble saves like one actor


def last_snapshots(run_dir: str, last: float) -> list[str]:
    """The snapshots of a training run (``RUN/snapshots/<decisions>``) taken in the last ``last`` share of
    its decisions, i.e. at or after ``(1 - last)`` x the decisions of its latest snapshot."""
    if not 0 < last <= 1:
        raise SystemExit(f"--last must be in (0, 1], got {last}")
    snaps = sorted((int(p.name), str(p)) for p in (Path(run_dir) / "snapshots").iterdir() if p.name.isdigit())
    if not snaps:
        raise SystemExit(f"no snapshots in {run_dir}/snapshots")
    start = (1 - last) * snaps[-1][0]
    return [path for n, path in snaps if n >= start]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--snapshots", nargs="+", help="PPO snapshot directories of one run (averaged)")
    which.add_argument("--run-dir", help="a training run's directory: average its snapshots of the --last share")
    ap.add_argument(
        "--last", type=float, default=0.25, help="with --run-dir: the share of the run to average (default: %(default)s)"
    )
    ap.add_argument(
        "--ensemble", action="store_true", help="average the snapshots' actions instead of their weights (independent runs)"
    )
    ap.add_argument(
        "--progress-gate",
        type=float,
        help="the residual may not lower the lr while log(smoothed loss / starting loss) > -GATE (e.g. 0.05)",
    )
    ap.add_argument(
        "--cooldown-cap", action="store_true", help="in the prior's cooldown the residual may lower the lr, not raise it"
    )
    ap.add_argument(
        "--plateau-hold", action="store_true", help="where the prior holds a steady plateau the residual may not lower the lr"
    )
    ap.add_argument(
        "--mask", action="append", default=[], help="an observation feature the actor reads at its training mean (repeatable)"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the residual by this (default: %(default)s)")
    ap.add_argument(
        "--prior",
        help=f"put the residual on this prior, one of {list(KNOWN_PRIORS)} or a registered one (default: the snapshots')",
    )
    ap.add_argument("--out", required=True, help="where to write the derived artifact")
    args = ap.parse_args()
    from experiments import lab_policies

    lab_policies.register()  # --prior may name a lab version of the prior (prior@16)
    snapshots = args.snapshots or last_snapshots(args.run_dir, args.last)
    try:
        actor, card = derive_residual(
            [load_variant(s) for s in snapshots],
            args.scale,
            args.prior,
            snapshots,
            ensemble=args.ensemble,
            progress_gate=args.progress_gate,
            cooldown_cap=args.cooldown_cap,
            mask=args.mask,
            plateau_hold=args.plateau_hold,
        )
    except ValueError as e:
        raise SystemExit(str(e)) from None
    out = save(actor, args.out, card)
    load_variant(out)  # refuse to leave an artifact that does not load
    print(f"derived {card['version']} from {len(snapshots)} snapshot(s) -> {out}")


if __name__ == "__main__":
    main()
