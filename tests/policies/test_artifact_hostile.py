"""Hostile or broken policy artifacts are refused with PolicyLoadError: deep JSON, links out of the
artifact directory, non-finite weights; an error never quotes a file from outside the artifact."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from chuck.core.loading import PolicyLoadError
from chuck.policies.artifact import bundled_artifact_dir, load_artifact


@pytest.fixture
def artifact(tmp_path) -> Path:
    out = tmp_path / "artifact"
    shutil.copytree(bundled_artifact_dir("default"), out)
    return out


def test_a_card_nested_a_thousand_deep(artifact) -> None:
    (artifact / "policy.json").write_text("[" * 1000 + "]" * 1000)
    with pytest.raises(PolicyLoadError, match="nested too deeply"):
        load_artifact(artifact)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux /proc")
def test_weights_linked_to_proc_self_mem(artifact) -> None:
    (artifact / "policy.pt").unlink()
    os.symlink("/proc/self/mem", artifact / "policy.pt")
    with pytest.raises(PolicyLoadError, match="outside the artifact directory"):
        load_artifact(artifact)


def test_a_card_linked_to_an_outside_file_is_never_quoted(artifact, tmp_path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"format": "SECRET-TOKEN-123"}))
    (artifact / "policy.json").unlink()
    os.symlink(secret, artifact / "policy.json")
    with pytest.raises(PolicyLoadError, match="outside the artifact directory") as exc:
        load_artifact(artifact)
    assert "SECRET" not in str(exc.value)


def test_links_inside_the_artifact_directory_still_load(artifact, tmp_path) -> None:
    (artifact / "policy.pt").rename(artifact / "weights-v1.pt")
    os.symlink("weights-v1.pt", artifact / "policy.pt")
    os.symlink(artifact, tmp_path / "current")  # the directory itself may be a link
    assert load_artifact(tmp_path / "current").act is not None


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(artifact, bad) -> None:
    tensors = torch.load(artifact / "policy.pt", weights_only=True)
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name].view(-1)[0] = bad
    buf = io.BytesIO()
    torch.save(tensors, buf)
    (artifact / "policy.pt").write_bytes(buf.getvalue())
    card = json.loads((artifact / "policy.json").read_text())
    card["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()  # a consistent artifact, not a corrupt one
    (artifact / "policy.json").write_text(json.dumps(card))
    with pytest.raises(PolicyLoadError, match=f"{name!r} holds non-finite values"):
        load_artifact(artifact)
