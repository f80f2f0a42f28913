"""The policy card (``policy.json``): its schema, checked before anything is built from it.

A card is data from outside (a download, a colleague's directory, a registry), so
every field the loader uses is checked for presence, type and range here, and a
bad one raises :class:`chuck.PolicyLoadError` naming the field (``architecture.hidden``,
``interval``...), never a raw ``KeyError``/``TypeError`` from deep inside the loader.
Fields the loader does not use (``training``, ``evaluation``) are kept as they are; the
fields of derived artifacts it does not implement (:data:`UNSUPPORTED_FIELDS`) are refused.

The card's sizes are also compared with the tensors actually stored in ``policy.pt``
(:func:`check_weights_match`) *before* the network is allocated: otherwise a card
saying ``hidden: [20000, 20000]`` made the loader allocate 1.6 GB only to find that the
weights do not fit.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from chuck.core.loading import PolicyLoadError, is_registered
from chuck.policies.learned import ACTIVATIONS
from chuck.policies.prior import CONFIGS as PRIOR_CONFIGS

#: Activations an exported actor may use: those ActorNetwork can build.
ACTIVATION_NAMES = tuple(ACTIVATIONS)
#: Most hidden layers a card may declare; SB3 policies use 2, and the shapes must match the weights anyway.
MAX_HIDDEN_LAYERS = 16
#: Decision interval bounds. ChuckOptimizer samples updates on the two steps before a decision,
#: hence >= 2; an interval above 100k steps exceeds whole training runs of the zoo (budgets of a
#: few thousand steps), so it would silently disable decisions (a card saying 1e12 did).
MIN_INTERVAL, MAX_INTERVAL = 2, 100_000
_SHA256 = re.compile(r"[0-9a-f]{64}")


#: Built-in controllers a learned policy may be a residual on (card field ``prior``); a name given to
#: :func:`chuck.policies.register_policy` is accepted too.
KNOWN_PRIORS = tuple(f"prior@{v}" for v in PRIOR_CONFIGS)
#: Card fields of derived artifacts that this chuck does not implement (``experiments/residual_variants.py``
#: loads them): an artifact that needs one is refused rather than run without it.
UNSUPPORTED_FIELDS = ("residual_progress_gate", "residual_cooldown_cap", "residual_plateau_hold")


def _fail(where: str, field: str, problem: str) -> PolicyLoadError:
    return PolicyLoadError(f"policy artifact {where}: card field {field} {problem}")


def _section(card: dict, field: str, where: str, *, required: bool = True) -> dict:
    value = card.get(field)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise _fail(where, field, "is missing" if value is None else f"must be an object, not {type(value).__name__}")
    return value


def _number(value: Any, field: str, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, field, f"must be a finite number, not {value!r}")
    if positive and value <= 0:
        raise _fail(where, field, f"must be > 0, not {value!r}")
    return float(value)


def _integer(value: Any, field: str, where: str, lo: int, hi: int) -> int:
    # an integral float (20.0) is accepted; 2.7 is refused rather than truncated
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise _fail(where, field, f"must be an integer, not {value!r}")
    if not lo <= int(value) <= hi:
        raise _fail(where, field, f"must be in [{lo}, {hi}], not {value!r}")
    return int(value)


def _numbers(value: Any, field: str, where: str, length: int) -> list[float]:
    if not isinstance(value, list) or len(value) != length:
        raise _fail(where, field, f"must be a list of {length} numbers")
    if not all(not isinstance(v, bool) and isinstance(v, (int, float)) and not math.isnan(v) for v in value):
        raise _fail(where, field, "must hold numbers only")
    return [float(v) for v in value]


def validate_card(
    card: Any,
    where: str,
    *,
    obs_names: list[str],
    obs_version: str,
    action_dims: list[str],
    action_version: str,
    format_name: str,
    format_version: int,
) -> dict[str, Any]:
    """Check a parsed card against the schema and this chuck's specs; return it normalized.

    Normalized: ``interval`` is an ``int`` (or ``None``), ``architecture.hidden`` a list of
    ints, ``normalization`` floats, ``version`` a string. Raises PolicyLoadError naming the field.
    """
    if not isinstance(card, dict):
        raise PolicyLoadError(f"policy artifact {where}: the card must be a JSON object, not {type(card).__name__}")
    if card.get("format") != format_name:
        raise PolicyLoadError(f"policy artifact {where}: not a chuck policy card (format={card.get('format')!r})")
    if card.get("format_version") != format_version:
        raise PolicyLoadError(
            f"policy artifact {where}: format_version {card.get('format_version')!r} is not supported (expected {format_version})"
        )
    out = dict(card)
    if not isinstance(card.get("sha256"), str) or not _SHA256.fullmatch(card["sha256"]):
        raise _fail(where, "sha256", "must be the 64-digit hex checksum of policy.pt")

    obs = _section(card, "observation", where)
    features = obs.get("features")
    if not isinstance(features, list) or not all(isinstance(f, list) and f and isinstance(f[0], str) for f in features):
        raise _fail(where, "observation.features", "must be a list of [name, low, high]")
    if str(obs.get("version")) != obs_version or [f[0] for f in features] != obs_names:
        raise PolicyLoadError(
            f"policy artifact {where}: observation spec v{obs.get('version')} does not match "
            f"this chuck's v{obs_version} (features differ)"
        )
    act = _section(card, "action", where)
    if not isinstance(act.get("dims"), list):
        raise _fail(where, "action.dims", "must be a list of dimension names")
    if str(act.get("version")) != action_version or act["dims"] != action_dims:
        raise PolicyLoadError(
            f"policy artifact {where}: action spec v{act.get('version')} {act['dims']} does not "
            f"match this chuck's v{action_version} {action_dims}"
        )

    arch = dict(_section(card, "architecture", where, required=False))
    hidden = arch.get("hidden", [64, 64])
    if (
        not isinstance(hidden, list)
        or not 1 <= len(hidden) <= MAX_HIDDEN_LAYERS
        or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden)
    ):
        raise _fail(where, "architecture.hidden", f"must be a list of 1 to {MAX_HIDDEN_LAYERS} positive integers, not {hidden!r}")
    activation = arch.get("activation", "tanh")
    if activation not in ACTIVATION_NAMES:
        raise _fail(where, "architecture.activation", f"must be one of {ACTIVATION_NAMES}, not {activation!r}")
    members = arch.get("members", 1)
    if isinstance(members, bool) or members != 1:
        raise _fail(
            where,
            "architecture.members",
            f"must be 1, not {members!r} (experiments/residual_variants.py loads ensembles of actors)",
        )
    out["architecture"] = {**arch, "hidden": list(hidden), "activation": activation, "members": 1}

    norm = dict(_section(card, "normalization", where, required=False))
    out["normalization"] = {
        **norm,
        "clip_obs": _number(norm.get("clip_obs", 10.0), "normalization.clip_obs", where, positive=True),
        "epsilon": _number(norm.get("epsilon", 1e-8), "normalization.epsilon", where, positive=True),
    }
    if card.get("interval") is not None:
        out["interval"] = _integer(card["interval"], "interval", where, MIN_INTERVAL, MAX_INTERVAL)
    stats = dict(_section(card, "observation_stats", where, required=False))
    for key in ("low", "high", "mean", "std"):
        if key in stats:
            stats[key] = _numbers(stats[key], f"observation_stats.{key}", where, len(obs_names))
    out["observation_stats"] = stats
    for field in UNSUPPORTED_FIELDS:
        if card.get(field) is not None:
            raise _fail(where, field, "is not supported by this chuck (experiments/residual_variants.py loads such artifacts)")
    prior = card.get("prior")
    if prior is not None and prior not in KNOWN_PRIORS and not (isinstance(prior, str) and is_registered(prior)):
        raise _fail(where, "prior", f"must be one of {KNOWN_PRIORS}, a registered policy, or absent, not {prior!r}")
    for key in ("name", "version"):
        if key in card and not isinstance(card[key], (str, int, float)):
            raise _fail(where, key, f"must be a string, not {type(card[key]).__name__}")
    return out


def expected_shapes(obs_dim: int, act_dim: int, hidden: list[int]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of :class:`chuck.policies.learned.ActorNetwork` for these sizes."""
    shapes: dict[str, tuple[int, ...]] = {}
    d = obs_dim
    for i, h in enumerate(hidden):
        # policy_net interleaves Linear and activation modules: the Linears are at even indices
        shapes[f"policy_net.{2 * i}.weight"] = (h, d)
        shapes[f"policy_net.{2 * i}.bias"] = (h,)
        d = h
    shapes["action_net.weight"] = (act_dim, d)
    shapes["action_net.bias"] = (act_dim,)
    shapes["obs_mean"] = (obs_dim,)
    shapes["obs_var"] = (obs_dim,)
    return shapes


def check_weights_match(tensors: Any, card: dict[str, Any], where: str, obs_dim: int, act_dim: int) -> None:
    """Compare the weights' names and shapes with the card's ``architecture.hidden`` (no allocation)."""
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise PolicyLoadError(f"policy artifact {where}: policy.pt must hold a {{name: tensor}} dict")
    hidden = card["architecture"]["hidden"]
    want = expected_shapes(obs_dim, act_dim, hidden)
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        k = diff[0]
        raise PolicyLoadError(
            f"policy artifact {where}: card field architecture.hidden {hidden} does not match the weights in "
            f"policy.pt ({k}: card implies {list(want[k]) if k in want else 'no such tensor'}, "
            f"file has {list(got[k]) if k in got else 'none'}); weights do not match the card's architecture"
        )
    bad = [k for k, v in tensors.items() if not v.is_floating_point()]
    if bad:
        raise PolicyLoadError(f"policy artifact {where}: policy.pt tensor {bad[0]} is not floating point")
