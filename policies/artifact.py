"""Policy artifacts: ``policy.pt`` (tensors only) + ``policy.json`` (the card).

Format (``format_version`` 1)::

    policy.pt    torch.save of a flat {name: Tensor} dict: the ActorNetwork state dict
                 (policy_net.*, action_net.*, obs_mean, obs_var); loaded with
                 torch.load(weights_only=True), so loading runs no pickle code.
    policy.json  {"format": "chuck-policy", "format_version": 1, "name", "version",
                  "observation": ObservationSpec.card(), "action": ActionSpec.card(),
                  "architecture": {"hidden": [...], "activation": ..., "members": 1},
                  "normalization": {"clip_obs", "epsilon"}, "interval",
                  "observation_stats": {"low", "high", "mean", "std"}, "training": {...},
                  "evaluation": {...}, "sha256": checksum of policy.pt}
                 optional: "prior" (a residual on this built-in prior), "derived" (how a derived
                 artifact was made, experiments/derive_residual.py)

Every failure to load raises :class:`chuck.PolicyLoadError` naming what is wrong
(missing file, not a regular file, too large, bad JSON, a card field that breaks the
schema of :mod:`chuck.policies.card`, checksum mismatch = corrupt or truncated, spec
version mismatch, tensor shape mismatch).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from chuck.core.actions import ACTION_VERSIONS, ActionSpec
from chuck.core.loading import PolicyLoadError
from chuck.core.observation import FEATURE_SETS, ObservationSpec
from chuck.policies.card import check_weights_match, validate_card
from chuck.policies.learned import ActorNetwork, LearnedPolicy

FORMAT = "chuck-policy"
FORMAT_VERSION = 1
WEIGHTS, CARD = "policy.pt", "policy.json"


#: Largest ``policy.pt`` read. An exported MLP actor is kilobytes to a few MB (the default is 31 KB);
#: the bound keeps a hostile or mistaken file from being read into memory whole.
MAX_WEIGHTS_BYTES = 64 << 20
#: Largest ``policy.json`` read (the default card is 7 KB).
MAX_CARD_BYTES = 4 << 20


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else PolicyLoadError.

    Opened non-blocking and checked with ``fstat`` on the open descriptor, so the check and the
    read see the same file: a FIFO would otherwise block ``open()`` forever and a link to
    ``/dev/zero`` never reach end of file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise PolicyLoadError(f"policy artifact: cannot open {path} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyLoadError(f"policy artifact: {path} is not a regular file (device, FIFO or socket)")
        if st.st_size > limit:
            raise PolicyLoadError(f"policy artifact: {path} is larger than {limit} bytes ({st.st_size})")
        chunks, total = [], 0
        try:
            while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:  # the file grew while being read
                    raise PolicyLoadError(f"policy artifact: {path} is larger than {limit} bytes")
        except OSError as exc:  # a "regular" file of /proc or sysfs (/proc/self/mem: EIO)
            raise PolicyLoadError(f"policy artifact: cannot read {path} ({exc.strerror})") from None
        return b"".join(chunks)
    finally:
        os.close(fd)


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
    """Write ``policy.pt`` and ``policy.json`` (the card is completed with format, specs, checksum).

    A card without an ``observation`` section gets the newest spec's; an actor that reads another number
    of features is refused (ValueError) before anything is written: its card must name the spec it reads.
    """
    if "observation" not in card:
        newest, inputs = ObservationSpec(), int(actor.obs_mean.shape[0])
        if inputs != len(newest.names):
            raise ValueError(
                f"the actor reads {inputs} features, observation spec v{newest.version} has {len(newest.names)}: "
                "give the card the observation section of the spec it was trained on"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in actor.state_dict().items()}
    buf = io.BytesIO()
    torch.save(tensors, buf)
    (out / WEIGHTS).write_bytes(buf.getvalue())
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "observation": ObservationSpec().card(),
        "action": ActionSpec().card(),
        "normalization": {"clip_obs": actor.clip_obs, "epsilon": actor.epsilon},
        **card,
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
    }
    (out / CARD).write_text(json.dumps(full, indent=2, sort_keys=True, default=float))
    return out


def load_artifact(path: str | Path) -> LearnedPolicy:
    """Load and validate an exported policy directory (or the path of its policy.json).

    Order matters: the card is checked against its schema, the weights are read (bounded,
    regular files only) and checksummed, their shapes compared with the card, and only
    then is the network allocated.
    """
    path = Path(path)
    if path.name == CARD and not path.is_dir():
        path = path.parent
    card_path, weights_path = path / CARD, path / WEIGHTS
    for p in (card_path, weights_path):
        if not p.exists():
            raise PolicyLoadError(f"policy artifact {path}: missing {p.name}")
        _check_inside(path, p)
    try:
        raw_card = json.loads(read_regular_file(card_path, MAX_CARD_BYTES).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"policy artifact {path}: {CARD} is not valid JSON ({exc})") from None
    except RecursionError:  # json's decoder recurses once per level of nesting; a card is a few levels deep
        raise PolicyLoadError(f"policy artifact {path}: {CARD} is nested too deeply to be a policy card") from None
    obs_spec, act_spec = _declared_specs(raw_card)
    card = validate_card(
        raw_card,
        str(path),
        obs_names=list(obs_spec.names),
        obs_version=str(obs_spec.version),
        action_dims=list(act_spec.dims),
        action_version=str(act_spec.version),
        format_name=FORMAT,
        format_version=FORMAT_VERSION,
    )
    data = read_regular_file(weights_path, MAX_WEIGHTS_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    if digest != card["sha256"]:
        raise PolicyLoadError(
            f"policy artifact {path}: checksum mismatch for {WEIGHTS} (corrupt or truncated file): "
            f"card says {card['sha256'][:12]}..., file is {digest[:12]}..."
        )
    try:
        tensors = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt artifact
        raise PolicyLoadError(f"policy artifact {path}: cannot read {WEIGHTS} ({type(exc).__name__}: {exc})") from None
    obs_dim, act_dim = len(obs_spec.names), len(act_spec.dims)
    check_weights_match(tensors, card, str(path), obs_dim, act_dim)
    for name, tensor in tensors.items():
        # a NaN weight makes every action NaN: the policy would hold at every decision without a word
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PolicyLoadError(f"policy artifact {path}: {WEIGHTS} tensor {name!r} holds non-finite values (NaN or inf)")
    arch, norm = card["architecture"], card["normalization"]
    # the layers' random initialization is overwritten by the weights below, but drawing it would move
    # the caller's global RNG: a run would see other batches and dropout masks for having loaded chuck
    with torch.random.fork_rng(devices=[]):
        actor = ActorNetwork(
            obs_dim, act_dim, arch["hidden"], arch["activation"], clip_obs=norm["clip_obs"], epsilon=norm["epsilon"]
        )
    try:
        actor.load_state_dict(tensors, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise PolicyLoadError(f"policy artifact {path}: weights do not match the card's architecture ({exc})") from None
    return LearnedPolicy(actor, card)


def _check_inside(directory: Path, file: Path) -> None:
    """PolicyLoadError unless ``file`` resolves inside the artifact ``directory``.

    A file linked from elsewhere (``policy.pt -> /proc/self/mem``, ``policy.json -> ~/.netrc``)
    is refused before it is opened: an artifact is its directory, and an error message must never
    quote a file from outside it.
    """
    try:
        inside = file.resolve(strict=True).is_relative_to(directory.resolve(strict=True))
    except (OSError, RuntimeError) as exc:  # a dangling link, a link loop
        raise PolicyLoadError(f"policy artifact {directory}: cannot resolve {file.name} ({exc})") from None
    if not inside:
        raise PolicyLoadError(f"policy artifact {directory}: {file.name} is a link to a file outside the artifact directory")


def _declared_specs(raw_card: Any) -> tuple[ObservationSpec, ActionSpec]:
    """The specs a card declares, when this chuck knows their versions (older artifacts keep
    loading); otherwise the newest, so that the card check names the mismatch."""
    declared = raw_card if isinstance(raw_card, dict) else {}
    obs_v = str((declared.get("observation") or {}).get("version")) if isinstance(declared.get("observation"), dict) else ""
    act_v = str((declared.get("action") or {}).get("version")) if isinstance(declared.get("action"), dict) else ""
    return (
        ObservationSpec(obs_v) if obs_v in FEATURE_SETS else ObservationSpec(),
        ActionSpec(version=act_v) if act_v in ACTION_VERSIONS else ActionSpec(),
    )
