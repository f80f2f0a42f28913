"""`chuck demo` end to end with the short-budget flag: both arms, MLflow runs, the words, the PNG."""

from __future__ import annotations

from mlflow import MlflowClient

from chuck.cli.demo import DemoConfig, run_demo
from chuck.cli.main import main


def test_demo_end_to_end(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made_elsewhere = MlflowClient(tracking_uri=uri).create_experiment("chuck-demo")  # without chuck's kind tag
    res = run_demo(DemoConfig(quick=True, out=str(tmp_path / "demo.png"), tracking_uri=uri))
    out = capsys.readouterr().out
    assert "final val loss" in out and "decisions" in out and "chuck ui" in out
    assert "time s" not in out  # no wall-time column that load on a shared machine can turn upside down
    assert "What it did and why:" in out
    decisions = res["chuck"]["opt"].decisions
    moved = [d for d in decisions if d.reason and d.reason != "hold" and d.source != "guardrail"]
    if moved:  # what the policy did is told in words, with the measurement behind it
        assert "raised the lr" in out or "lowered the lr" in out or "switched" in out, out
    if any(d.source == "fallback" for d in decisions):
        assert "'fallback': a decision the policy did not make" in out
    assert res["png"].exists() and res["png"].stat().st_size > 10_000
    assert len(res["plain"]["history"]["step"]) == 60 == len(res["chuck"]["history"]["step"])
    client = MlflowClient(tracking_uri=uri)
    plain_id, chuck_id = res["run_ids"]
    for run_id in (plain_id, chuck_id):  # both arms under the same names: comparable in the UI
        assert len(client.get_metric_history(run_id, "Training/val_loss")) == 3
        assert len(client.get_metric_history(run_id, "Training/train_loss")) == 6
        assert client.get_metric_history(run_id, "Training/lr")
        assert client.get_run(run_id).data.params["task"] == "cv.digits_mlp"
    assert client.get_run(chuck_id).data.tags["chuck.mode"] == "policy"
    assert {client.get_run(r).info.experiment_id for r in res["run_ids"]} == {made_elsewhere}
    assert client.get_experiment(made_elsewhere).tags["mlflow.experimentKind"] == "custom_model_development"


def test_demo_plot_explains_itself(tmp_path) -> None:
    """The PNG has a legend for its markers, the AdamW baseline in every panel, clipping shown as "off"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chuck import demo

    res = run_demo(
        DemoConfig(quick=True, policy="heuristic", out=str(tmp_path / "d.png"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    )
    drawn = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, *a, **k):
        drawn["fig"] = fig
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = keep
    try:
        demo._plot(tmp_path / "again.png", res["plain"], res["chuck"], "title")
    finally:
        plt.Figure.savefig = real_savefig
    fig = drawn["fig"]
    loss, lr, wd, clip = fig.axes[:4]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(label.endswith("decision") for label in labels)  # markers explained
    for ax in (loss, lr, wd):  # plain AdamW in every panel (grey)
        assert any(line.get_color() == "#8c8c8c" for line in ax.get_lines()), ax.get_ylabel()
    clip_off = all(d.hyperparameters["clip"] == float("inf") for d in res["chuck"]["opt"].decisions)
    if clip_off:
        assert "clipping off throughout" in " ".join(t.get_text() for t in clip.texts)  # "off", not a missing line


def test_demo_cli_quick(tmp_path, capsys) -> None:
    args = ["demo", "--quick", "--policy", "heuristic", "--out", str(tmp_path / "d.png")]
    assert main([*args, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    assert (tmp_path / "d.png").exists()
    assert "heuristic" in capsys.readouterr().out
