"""Which policy an arm's rows were measured with, so that resuming never mixes two policies.

``chuck evaluate`` resumes ``rows.csv`` by arm name (``chuck:default``), and a name can
outlive its content: a new default installed, ``prior`` moving to a new latest version, a
snapshot directory overwritten. ``arms.json`` next to ``rows.csv`` records each chuck arm's
identity when it is measured; resuming an arm whose rows were measured with another policy
is refused before any run starts, with what to do instead.

An identity names what decides the policy's behaviour, not its paperwork: for an exported
artifact its card's ``version``, weight hash and prior (the card's evaluation summaries are
written after the artifact is measured and must not make its own rows look stale); for a
built-in rule its resolved name (``prior`` -> ``prior@15``); for a name given to
:func:`chuck.policies.register_policy`, the name and, when the policy it builds has a card, that card's
identity (a name can be pointed at another artifact).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from chuck.core.loading import is_builtin, is_registered, load_policy
from chuck.evaluation.runs import CHUCK_PREFIX, NO_OBSERVE_SUFFIX
from chuck.policies.artifact import CARD, bundled_artifact_dir
from chuck.policies.prior import LATEST

MANIFEST = "arms.json"


def policy_identity(location: str) -> str:
    """A short, stable string naming the policy at ``location`` (a built-in name or a directory)."""

    if location == "default":
        return _artifact_identity(bundled_artifact_dir("default"))
    if location == "prior":
        return f"prior@{LATEST}"
    if is_registered(location):
        card = getattr(load_policy(location), "card", None)
        named = _card_identity(card) if isinstance(card, dict) else None
        return f"{location}: {named}" if named else location
    if is_builtin(location):
        return location
    return _artifact_identity(Path(location))


def _card_identity(card: dict) -> str | None:
    """An artifact card's identity (version, weight hash, prior, derived features); None without a hash."""
    if not card.get("sha256"):
        return None
    gate = f" progress gate {card['residual_progress_gate']}" if card.get("residual_progress_gate") is not None else ""
    gate += " cooldown cap" if card.get("residual_cooldown_cap") else ""
    gate += " plateau hold" if card.get("residual_plateau_hold") else ""
    return f"{card.get('version', '?')} weights {str(card['sha256'])[:12]} prior {card.get('prior') or 'none'}{gate}"


def _artifact_identity(path: Path) -> str:

    try:
        named = _card_identity(json.loads((path / CARD).read_text()))
        if named:
            return named
    except (OSError, ValueError, AttributeError):
        pass
    # no card to read the identity from: the content of every file
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return f"files {digest.hexdigest()[:12]}"


def stale_arms(out: Path, identities: dict[str, str], measured: set[str]) -> list[str]:
    """Problems with resuming in ``out``: each arm in ``measured`` (it has rows there) whose
    recorded identity differs from its identity now. Arms without a record pass (directories
    written before ``arms.json`` existed)."""
    recorded = _read(out)
    return [
        f"{arm}: its rows were measured with {recorded[arm]!r}, the policy is now {now!r}"
        for arm, now in identities.items()
        if arm in measured and arm in recorded and recorded[arm] != now
    ]


def recorded_policies(out: Path, observe: bool) -> list[str]:
    """The policy specs of every chuck arm ``out``'s manifest records in this setting (with or without
    ``observe``), in the manifest's order: what ``--policies recorded`` expands to, so that a summary of
    every arm measured over several calls is one resumed call (nothing runs again)."""

    specs = []
    for arm in _read(out):
        if not arm.startswith(CHUCK_PREFIX) or arm.endswith(NO_OBSERVE_SUFFIX) == observe:
            continue
        spec = arm[len(CHUCK_PREFIX) :]
        specs.append(spec if observe else spec[: -len(NO_OBSERVE_SUFFIX)])
    return specs


def record(out: Path, identities: dict[str, str]) -> None:
    """Add (or refresh) the arms' identities in ``out``'s manifest, keeping every other arm's."""
    merged = {**_read(out), **identities}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    tmp.replace(out / MANIFEST)


def _read(out: Path) -> dict[str, str]:
    try:
        data = json.loads((out / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ValueError(f"{out / MANIFEST} is not valid JSON ({exc}): fix or delete it") from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
