"""A tiny in-house task the meta-training tests register: milliseconds per step, its best lr declared."""

from __future__ import annotations

import math

from chuck import zoo


def local_task(task_id: str) -> type[zoo.Task]:
    """A new task class (defined here, at each call: a worker process cannot import it) with this id."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Local(zoo.Task):
        id, domain, budget = task_id, "inhouse", 400
        space = zoo.SearchSpace(widths=(16,), depths=(1,), norms=("none",), batch_sizes=(32,), dropouts=(0.0,))

        @property
        def best_lr(self) -> float:
            return 1e-2

        def build(self, config: zoo.TaskConfig) -> zoo.TaskInstance:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(128, 4, generator=g)
            y = (x[:, 0] > 0).long()
            model = nn.Sequential(nn.Linear(4, config.width), nn.Tanh(), nn.Linear(config.width, 2))
            opt = zoo.make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
            return zoo.SupervisedInstance(model, opt, config, (x[:96], y[:96]), (x[96:], y[96:]), F.cross_entropy, math.log(2))

    return Local
