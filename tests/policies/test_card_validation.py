"""Malformed or hostile artifacts fail with PolicyLoadError naming the field, quickly, without
allocating what the card asks for.

Every case starts from the bundled default artifact, so the weights and their checksum are
genuine and only the part under test is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import chuck
from chuck.policies.artifact import bundled_artifact_dir


@pytest.fixture
def artifact(tmp_path) -> Path:
    dst = tmp_path / "policy"
    shutil.copytree(bundled_artifact_dir("default"), dst)
    return dst


def _edit_card(path: Path, edit) -> None:
    card = json.loads((path / "policy.json").read_text())
    card = edit(card)
    (path / "policy.json").write_text(json.dumps(card))


def _set(section: str | None, key: str, value):
    def edit(card):
        (card.setdefault(section, {}) if section else card)[key] = value
        return card

    return edit


def _drop(key: str):
    def edit(card):
        del card[key]
        return card

    return edit


@pytest.mark.parametrize(
    "edit,field",
    [
        (_drop("observation"), "observation"),  # was KeyError: 'observation'
        (_drop("action"), "action"),
        (_set("architecture", "activation", "sigmoid"), "architecture.activation"),  # was KeyError: 'sigmoid'
        (lambda card: [card], "card"),  # a JSON list: was AttributeError
        (_set(None, "observation", "v1"), "observation"),  # was AttributeError
        (_set("observation", "features", 7), "observation.features"),
        (_set("architecture", "hidden", 64), "architecture.hidden"),  # was TypeError
        (_set("architecture", "hidden", ["64", "64"]), "architecture.hidden"),
        (_set("architecture", "hidden", [64, -1]), "architecture.hidden"),
        (_set("architecture", "hidden", [True]), "architecture.hidden"),
        (_set("normalization", "clip_obs", "wide"), "normalization.clip_obs"),
        (_set("normalization", "epsilon", -1.0), "normalization.epsilon"),
        (_set(None, "interval", 1e12), "interval"),  # silently disabled decisions
        (_set(None, "interval", 2.7), "interval"),  # silently truncated to 2
        (_set(None, "interval", "20"), "interval"),
        (_set(None, "interval", 1), "interval"),
        (_set("observation_stats", "low", [0.0] * 3), "observation_stats.low"),
        (_set("observation_stats", "high", ["x"] * 37), "observation_stats.high"),
        (_set(None, "sha256", 12), "sha256"),
    ],
)
def test_malformed_card_names_the_field(artifact, edit, field) -> None:
    _edit_card(artifact, edit)
    with pytest.raises(chuck.PolicyLoadError, match=rf"\b{field.replace('.', chr(92) + '.')}\b"):
        chuck.load_policy(str(artifact))


def test_valid_card_still_loads(artifact) -> None:
    _edit_card(artifact, _set(None, "interval", 20.0))  # an integral float is an integer
    policy = chuck.load_policy(str(artifact))
    assert policy.interval == 20 and isinstance(policy.interval, int)


def _load_in_child(path: Path, timeout: float = 60.0) -> tuple[str, float]:
    """Load in a fresh interpreter (a hang or a huge allocation must not take the test run with it).
    Returns (outcome line, peak RSS growth in MiB during the load)."""
    code = textwrap.dedent(f"""
        import resource, chuck
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            chuck.load_policy({str(path)!r})
            outcome = "loaded"
        except chuck.PolicyLoadError as exc:
            outcome = "PolicyLoadError: " + str(exc)
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(outcome)
        print(f"GREW {{grew:.0f}}")
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path} hung for {timeout:.0f}s")
    lines = out.strip().splitlines()
    return lines[0], float(lines[-1].split()[1])


def test_huge_hidden_sizes_are_refused_before_allocating(artifact) -> None:
    """[20000, 20000] is 400M parameters (1.6 GB) that the weights file cannot hold: refuse from the shapes."""
    _edit_card(artifact, _set("architecture", "hidden", [20000, 20000]))
    outcome, grew_mib = _load_in_child(artifact)
    assert outcome.startswith("PolicyLoadError") and "architecture.hidden" in outcome, outcome
    assert grew_mib < 200, f"the loader allocated {grew_mib:.0f} MiB for a card it then rejected"


@pytest.mark.parametrize("which", ["policy.pt", "policy.json"])
@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_non_regular_files_are_refused_not_read(artifact, which, kind) -> None:
    """A link to /dev/zero never ends and a FIFO blocks on open: both must fail at once."""
    target = artifact / which
    target.unlink()
    if kind == "dev-zero":
        target.symlink_to("/dev/zero")
    else:
        os.mkfifo(target)
    outcome, _ = _load_in_child(artifact, timeout=30)
    # a link out of the artifact directory is refused before anything is opened; a FIFO in it is no regular file
    assert outcome.startswith("PolicyLoadError") and ("not a regular file" in outcome or "outside the artifact" in outcome), (
        outcome
    )


def test_oversized_weights_are_refused(artifact) -> None:
    from chuck.policies.artifact import MAX_WEIGHTS_BYTES

    os.truncate(artifact / "policy.pt", MAX_WEIGHTS_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(chuck.PolicyLoadError, match="larger than"):
        chuck.load_policy(str(artifact))
