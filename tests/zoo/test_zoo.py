"""The zoo: registry and splits, and that every family trains under a reasonable lr and
visibly struggles under bad ones (the signal the policy must learn from)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import chuck
from chuck import zoo

DOMAINS = {"cv", "nlp", "rl", "tabular"}

#: A reasonable and a bad learning rate per base optimizer.
GOOD = {"AdamW": 3e-3, "Adam": 3e-3, "RMSprop": 1e-3, "SGD": 0.05}
TOO_LOW = {"AdamW": 1e-6, "Adam": 1e-6, "RMSprop": 1e-6, "SGD": 1e-5}
TOO_HIGH = {"AdamW": 3.0, "Adam": 3.0, "RMSprop": 3.0, "SGD": 30.0}


def test_at_least_twelve_families_over_four_domains() -> None:
    ids = zoo.list_tasks("train") + zoo.list_tasks("heldout")
    assert len(ids) >= 12
    assert {zoo.get_task(i).domain for i in ids} == DOMAINS


def test_splits_are_by_family_and_disjoint() -> None:
    train, held = set(zoo.list_tasks("train")), set(zoo.list_tasks("heldout"))
    assert train and held and not train & held
    assert held == set(zoo.HELDOUT)
    assert {zoo.get_task(i).domain for i in held} == DOMAINS  # one held-out family per domain


def test_sampled_instances_are_randomized() -> None:
    task = zoo.get_task("cv.digits_mlp")
    rng = np.random.default_rng(0)
    cfgs = [task.sample_config(rng) for _ in range(200)]
    lrs = np.array([c.lr for c in cfgs])
    assert math.log10(lrs.max() / lrs.min()) > 3.5  # four decades, log-uniform
    for field in ("width", "depth", "activation", "norm", "batch_size", "optimizer"):
        assert len({getattr(c, field) for c in cfgs}) > 1, field
    assert any(c.label_noise > 0 for c in cfgs)


def _train(task_id: str, lr_table: dict[str, float], seed: int = 0, steps: int | None = None):
    task = zoo.get_task(task_id)
    cfg = task.sample_config(np.random.default_rng(seed))
    cfg.optimizer, cfg.label_noise, cfg.dropout = "Adam", 0.0, 0.0
    cfg.lr = lr_table[cfg.optimizer]
    inst = task.build(cfg)
    opt = chuck.ChuckOptimizer(inst.optimizer, "constant", model=inst.model, guardrails=False)
    l0 = inst.evaluate()
    for _ in range(steps or task.budget):
        loss = inst.train_step()
        opt.step(loss=loss)
        opt.zero_grad()
    lt = inst.evaluate()
    return l0, lt if math.isfinite(lt) else math.inf


@pytest.mark.slow
@pytest.mark.parametrize("task_id", zoo.list_tasks("train") + zoo.list_tasks("heldout"))
def test_family_trains_and_struggles(task_id: str) -> None:
    l0, good = _train(task_id, GOOD)
    _, low = _train(task_id, TOO_LOW)
    _, high = _train(task_id, TOO_HIGH)
    assert good < 0.9 * l0, f"{task_id}: a reasonable lr should make progress ({l0:.3f} -> {good:.3f})"
    assert low > good * 1.1 and high > good * 1.1, (
        f"{task_id}: bad lrs should visibly struggle (good {good:.3f}, too low {low:.3f}, too high {high:.3f})"
    )


def test_register_task_validates() -> None:
    class NoId(zoo.Task):
        def build(self, config):  # pragma: no cover - never built
            raise NotImplementedError

    with pytest.raises(ValueError, match="domain"):
        zoo.register_task(NoId)
    with pytest.raises(ValueError, match="already registered"):
        zoo.register_task(type(zoo.get_task("cv.digits_mlp")), split="train")
    with pytest.raises(TypeError):
        zoo.register_task(object())
    with pytest.raises(KeyError, match="no task"):
        zoo.get_task("cv.nope")
    with pytest.raises(ValueError, match="selects no task"):
        zoo.resolve_tasks(" , ")


def test_nothing_is_fetched() -> None:
    """Data comes from package files or generators: loading every family opens no socket."""
    import socket

    real = socket.socket.connect

    def refuse(*a, **k):
        raise AssertionError("the zoo tried to open a network connection")

    socket.socket.connect = refuse
    try:
        for tid in zoo.list_tasks():
            task = zoo.get_task(tid)
            inst = task.build(task.sample_config(np.random.default_rng(0)))
            inst.train_step()
            assert torch.isfinite(torch.as_tensor(inst.evaluate()))
    finally:
        socket.socket.connect = real
