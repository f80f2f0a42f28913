"""`chuck demo` end to end with the short-budget flag: both arms, MLflow runs, the PNG."""

from __future__ import annotations

from mlflow import MlflowClient

from chuck.cli import main
from chuck.demo import DemoConfig, run_demo


def test_demo_end_to_end(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = run_demo(DemoConfig(quick=True, out=str(tmp_path / "demo.png"), tracking_uri=uri))
    out = capsys.readouterr().out
    assert "final val loss" in out and "decisions" in out and "chuck ui" in out
    assert res["png"].exists() and res["png"].stat().st_size > 10_000
    assert len(res["plain"]["history"]["step"]) == 60 == len(res["chuck"]["history"]["step"])
    client = MlflowClient(tracking_uri=uri)
    plain_id, chuck_id = res["run_ids"]
    assert len(client.get_metric_history(plain_id, "val_loss")) == 3
    assert client.get_metric_history(chuck_id, "chuck.lr")
    assert client.get_run(chuck_id).data.tags["chuck.mode"] == "policy"


def test_demo_cli_quick(tmp_path, capsys) -> None:
    assert (
        main(
            [
                "demo",
                "--quick",
                "--policy",
                "heuristic",
                "--out",
                str(tmp_path / "d.png"),
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'm.db'}",
            ]
        )
        == 0
    )
    assert (tmp_path / "d.png").exists()
    assert "heuristic" in capsys.readouterr().out
