"""Policy artifacts: ``policy.pt`` (tensors only) + ``policy.json`` (the card).

Format (``format_version`` 1)::

    policy.pt    torch.save of a flat {name: Tensor} dict: the ActorNetwork state dict
                 (policy_net.*, action_net.*, obs_mean, obs_var); loaded with
                 torch.load(weights_only=True), so loading runs no pickle code.
    policy.json  {"format": "chuck-policy", "format_version": 1, "name", "version",
                  "observation": ObservationSpec.card(), "action": ActionSpec.card(),
                  "architecture": {"hidden": [...], "activation": ...},
                  "normalization": {"clip_obs", "epsilon"}, "interval",
                  "observation_stats": {"low", "high", "mean", "std"}, "training": {...},
                  "evaluation": {...}, "sha256": checksum of policy.pt}

Every failure to load raises :class:`chuck.PolicyLoadError` naming what is wrong
(missing file, bad JSON, checksum mismatch = corrupt or truncated, spec version
mismatch, tensor shape mismatch).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from chuck.actions import ActionSpec
from chuck.loading import PolicyLoadError
from chuck.observation import ObservationSpec
from chuck.policies.learned import ActorNetwork, LearnedPolicy

FORMAT = "chuck-policy"
FORMAT_VERSION = 1
WEIGHTS, CARD = "policy.pt", "policy.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_artifact_dir(name: str) -> Path:
    """Directory of a policy shipped as package data (chuck/policies/artifacts/<name>)."""
    path = Path(str(resources.files("chuck.policies"))) / "artifacts" / name
    if not (path / CARD).exists():
        raise PolicyLoadError(
            f"no bundled policy {name!r} in {path}: this installation ships without it "
            "(train one with `chuck train-policy` and load it by path)"
        )
    return path


def save_artifact(actor: ActorNetwork, out_dir: str | Path, card: dict[str, Any]) -> Path:
    """Write ``policy.pt`` and ``policy.json`` (the card is completed with format, specs, checksum)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in actor.state_dict().items()}
    torch.save(tensors, out / WEIGHTS)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "observation": ObservationSpec().card(),
        "action": ActionSpec().card(),
        "normalization": {"clip_obs": actor.clip_obs, "epsilon": actor.epsilon},
        **card,
        "sha256": sha256(out / WEIGHTS),
    }
    (out / CARD).write_text(json.dumps(full, indent=2, sort_keys=True, default=float))
    return out


def load_artifact(path: str | Path) -> LearnedPolicy:
    """Load and validate an exported policy directory (or the path of its policy.json)."""
    path = Path(path)
    if path.is_file() and path.name == CARD:
        path = path.parent
    card_path, weights_path = path / CARD, path / WEIGHTS
    for p in (card_path, weights_path):
        if not p.exists():
            raise PolicyLoadError(f"policy artifact {path}: missing {p.name}")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"policy artifact {path}: {CARD} is not valid JSON ({exc})") from None
    if card.get("format") != FORMAT:
        raise PolicyLoadError(f"policy artifact {path}: not a chuck policy card (format={card.get('format')!r})")
    if card.get("format_version") != FORMAT_VERSION:
        raise PolicyLoadError(
            f"policy artifact {path}: format_version {card.get('format_version')} is not supported (expected {FORMAT_VERSION})"
        )
    digest = sha256(weights_path)
    if digest != card.get("sha256"):
        raise PolicyLoadError(
            f"policy artifact {path}: checksum mismatch for {WEIGHTS} (corrupt or truncated file): "
            f"card says {str(card.get('sha256'))[:12]}..., file is {digest[:12]}..."
        )
    obs_spec, act_spec = ObservationSpec(), ActionSpec()
    if str(card["observation"].get("version")) != obs_spec.version or [f[0] for f in card["observation"]["features"]] != obs_spec.names:
        raise PolicyLoadError(
            f"policy artifact {path}: observation spec v{card['observation'].get('version')} does not match "
            f"this chuck's v{obs_spec.version} (features differ)"
        )
    if str(card["action"].get("version")) != act_spec.version or list(card["action"]["dims"]) != list(act_spec.dims):
        raise PolicyLoadError(
            f"policy artifact {path}: action spec v{card['action'].get('version')} {card['action'].get('dims')} does not "
            f"match this chuck's v{act_spec.version} {list(act_spec.dims)}"
        )
    try:
        tensors = torch.load(weights_path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt artifact
        raise PolicyLoadError(f"policy artifact {path}: cannot read {WEIGHTS} ({type(exc).__name__}: {exc})") from None
    arch = card.get("architecture", {})
    norm = card.get("normalization", {})
    actor = ActorNetwork(
        len(obs_spec.names), len(act_spec.dims), list(arch.get("hidden", [64, 64])), arch.get("activation", "tanh"),
        clip_obs=float(norm.get("clip_obs", 10.0)), epsilon=float(norm.get("epsilon", 1e-8)),
    )
    try:
        actor.load_state_dict(tensors, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise PolicyLoadError(f"policy artifact {path}: weights do not match the card's architecture ({exc})") from None
    return LearnedPolicy(actor, card)
