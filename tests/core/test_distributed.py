"""Data parallelism: two real gloo ranks on loopback agree on every guardrail verdict and decision.

Each rank trains its own DDP replica on its *own* data; rank 1 alone gets one x50 outlier
batch and, later, one batch with a NaN and one overfitting validation loss (the overfitting
rollback must move both ranks). After every step the parameters must be bit-identical
across ranks, and the decision trails (guardrail records included) identical. A control run
with ``process_group=False`` shows the same setting diverges without chuck's agreement (so the
checks can fail). A checkpoint saved on rank 0 resumes on both ranks.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from tests.conftest import batch

WORLD = 2
STEPS = 400
OUTLIER_STEP, NAN_STEP, OVERFIT_STEP = 150, 250, 330  # on rank 1 only
POLICIES = ("constant", "heuristic", "default")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _build(policy: str, sync: bool, tracking=None, history=False):
    from torch.nn.parallel import DistributedDataParallel as DDP

    import chuck

    model = DDP(_model())
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=3e-3),
        policy,
        model=model,
        guardrails=True,  # under "constant" too: the guardrails' verdicts are what the ranks must agree on
        interval=10,
        total_steps=STEPS,
        history=history,
        tracking=tracking,
        seed=0,
        process_group=None if sync else False,
    )
    return model, opt


def _train(model, opt, start: int, stop: int, rank: int, digests: list[str]) -> None:
    for step in range(start, stop):
        x, y = batch(step * WORLD + rank)  # every rank its own data
        scale = 1.0
        if rank == 1 and step in (OUTLIER_STEP, OUTLIER_STEP + 1):
            # far above any loss of the run, twice in a row: the first is skipped, the second rolls back
            # (a spike must also reach a tenth of the initial loss, GuardrailConfig.min_spike_fraction)
            scale = 1000.0
        if rank == 1 and step == NAN_STEP:
            x[0, 0] = float("nan")
        loss = F.cross_entropy(model(x), y) * scale
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        digests.append(_digest(model))
        if step % 20 == 19:
            with torch.no_grad():
                xv, yv = batch(100_000 + step * WORLD + rank)  # every rank its own validation data too
                opt.observe(val_loss=F.cross_entropy(model(xv), yv))
        if rank == 1 and step == OVERFIT_STEP:
            opt.observe(val_loss=100.0)  # far above the best: rank 1 alone asks for the best weights back


def _trail(opt) -> list[list]:
    return [[d.step, d.source, [round(a, 12) for a in d.action], sorted(d.hyperparameters.items())] for d in opt.decisions]


def _rank_main(rank: int, port: int, out: str, mlflow_uri: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CHUCK_HOME=str(Path(out) / f"home{rank}"))
    torch.set_num_threads(1)
    # a collective that one rank never joins (ranks that disagree) fails after the timeout instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=90))
    res: dict = {}
    try:
        for policy in POLICIES:  # agreement under every shipped policy
            model, opt = _build(policy, sync=True)
            digests: list[str] = []
            _train(model, opt, 0, STEPS, rank, digests)
            g = opt.guardrails
            res[policy] = {
                "digests": digests,
                "trail": _trail(opt),
                "skips": g.skips,
                "rollbacks": g.rollbacks,
                "overfit_rollbacks": g.overfit_rollbacks,
                "collectives": opt._ranks.collectives,
            }
            opt.close()

        # control: the same run without agreement diverges (the checks above can fail)
        model, opt = _build("heuristic", sync=False)
        digests = []
        _train(model, opt, 0, STEPS, rank, digests)
        res["unsynced"] = {"digests": digests, "trail": _trail(opt), "rollbacks": opt.guardrails.rollbacks}
        opt.close()

        # one rank logs decisions and writes history, whoever is handed a logger
        import chuck

        logger = chuck.MLflowDecisionLogger(experiment="ddp", run_name=f"rank{rank}", tracking_uri=mlflow_uri, flush_every=0.2)
        hist = Path(out) / "history"
        model, opt = _build("heuristic", sync=True, tracking=logger, history=str(hist))
        _train(model, opt, 0, 60, rank, [])
        opt.close()
        res["logging"] = {"run_id": logger.run_id, "decisions": len(opt.decisions)}

        # a checkpoint saved on rank 0 resumes on both ranks
        ckpt = Path(out) / "ckpt.pt"
        model, opt = _build("heuristic", sync=True)
        _train(model, opt, 0, 100, rank, [])
        if rank == 0:
            torch.save({"model": model.module.state_dict(), "opt": opt.state_dict()}, ckpt)
        continued: list[str] = []
        _train(model, opt, 100, 200, rank, continued)
        opt.close()
        dist.barrier()
        state = torch.load(ckpt, weights_only=True)
        model, opt = _build("heuristic", sync=True)
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        resumed: list[str] = []
        _train(model, opt, 100, 200, rank, resumed)
        res["resume"] = {"digests": resumed, "continued": continued, "trail": _trail(opt), "step": opt.step_count}
        opt.close()

        # sharded parameters (FSDP, FSDP with original parameters, FSDP2): a clear error instead of wrong norms
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import fully_shard

        res["sharded_errors"] = []
        for wrap, give_model in (
            (lambda m: FSDP(m, device_id=torch.device("cpu")), True),
            (lambda m: FSDP(m, device_id=torch.device("cpu"), use_orig_params=True), False),
            (lambda m: fully_shard(m), True),
        ):
            sharded = wrap(_model())
            try:
                chuck.ChuckOptimizer(
                    torch.optim.AdamW(sharded.parameters()), "constant", model=sharded if give_model else None, history=False
                )
                res["sharded_errors"].append("")
            except chuck.core.distributed.ShardedParametersError as exc:
                res["sharded_errors"].append(str(exc))
    finally:
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(res))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run every scenario once on two spawned gloo ranks; the results of rank 0 and rank 1."""
    out = tmp_path_factory.mktemp("ddp")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    from chuck import tracking

    tracking.setup(uri, "ddp")  # the store exists before two processes open it
    mp.start_processes(_rank_main, args=(_free_port(), str(out), uri), nprocs=WORLD, start_method="spawn", join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)], out, uri


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("policy", POLICIES)
def test_ranks_bit_identical_after_every_step(ranks, policy) -> None:
    (r0, r1), _, _ = ranks
    a, b = r0[policy], r1[policy]
    assert len(a["digests"]) == STEPS
    first_diff = next((i for i, (x, y) in enumerate(zip(a["digests"], b["digests"])) if x != y), None)
    assert first_diff is None, f"parameters differ from step {first_diff}"
    assert a["trail"] == b["trail"]  # decisions and guardrail records, step by step
    # the outliers on rank 1 skipped, then rolled back, both ranks; the NaN on rank 1 skipped both
    guardrail_steps = {d[0] for d in a["trail"] if d[1] == "guardrail"}
    assert a["rollbacks"] >= 1 and a["skips"] >= 1 and guardrail_steps
    # rank 1's overfitting reading rolled both back to the best validation loss's weights
    assert a["overfit_rollbacks"] >= 1 and a["overfit_rollbacks"] == b["overfit_rollbacks"]
    # one all-reduce per step() call, one broadcast per policy decision
    decisions = sum(d[1] != "guardrail" for d in a["trail"])
    assert a["collectives"] == STEPS + decisions
    if policy != "constant":
        assert len({tuple(d[2]) for d in a["trail"] if d[1] != "guardrail"}) > 1  # the policy really acted


@pytest.mark.slow
def test_without_agreement_the_ranks_diverge(ranks) -> None:
    (r0, r1), _, _ = ranks
    a, b = r0["unsynced"], r1["unsynced"]
    first_diff = next(i for i, (x, y) in enumerate(zip(a["digests"], b["digests"])) if x != y)
    assert first_diff == OUTLIER_STEP  # the outlier was skipped on rank 1 only
    assert a["digests"][-1] != b["digests"][-1]
    guardrail_steps = [[d[0] for d in r["trail"] if d[1] == "guardrail"] for r in (a, b)]
    assert guardrail_steps[0] != guardrail_steps[1]


@pytest.mark.slow
def test_one_rank_logs_and_writes_history(ranks) -> None:
    (r0, r1), out, uri = ranks
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    lead, other = (client.get_run(r["logging"]["run_id"]).data for r in (r0, r1))
    assert r0["logging"]["decisions"] > 0 and lead.metrics  # rank 0's decisions reached MLflow
    assert not other.metrics and not client.list_artifacts(r1["logging"]["run_id"])  # rank 1 logged nothing
    records = [p for p in (out / "history").rglob("*") if p.is_file()]
    assert len(records) == 1, records


@pytest.mark.slow
def test_checkpoint_from_rank_0_resumes_on_both(ranks) -> None:
    (r0, r1), _, _ = ranks
    a, b = r0["resume"], r1["resume"]
    assert a["step"] == b["step"] and len(a["digests"]) == 100
    assert a["digests"] == b["digests"] and a["trail"] == b["trail"]
    assert a["digests"] == a["continued"]  # resuming is the uninterrupted run, step for step


@pytest.mark.slow
def test_sharded_parameters_raise_a_clear_error(ranks) -> None:
    (r0, r1), _, _ = ranks
    for r in (r0, r1):
        fsdp, fsdp_orig, fsdp2 = r["sharded_errors"]
        assert all("does not support sharded parameters" in e for e in (fsdp, fsdp_orig, fsdp2))
        assert "FullyShardedDataParallel" in fsdp and "flat parameters" in fsdp_orig and "DTensor" in fsdp2
