"""An in-house task for the retraining walkthrough (docs/retraining.md): a small 1-D CNN on multi-sine regression.

Each example is 64 samples of a sum of three sines (random amplitude, frequency and phase) plus
noise; the target is the three amplitudes, ordered by frequency. The model is a 1-D CNN of up to
17k parameters (two or three convolutions, global average pooling, a linear head), the kind of
small in-house model a user brings, unlike any family of the zoo. The data is generated once from
a fixed seed, so every instance trains on the same examples; an instance's own seed (drawn by
meta-training) sets the initialization, the batch order, the share of the data it keeps and its
starting learning rate.

Registered when imported, so name the module to chuck::

    chuck train-policy --tasks-module experiments.inhouse_example --init-policy default ...

``best_lr`` is declared: without it (and without a calibration entry) every episode's starting lr
would be drawn around 1e-3, and chuck says so once a run. The value is what
``python -m chuck.zoo.calibrate --tasks-module experiments.inhouse_example --tasks inhouse.sines_cnn1d``
measured (5.2e-3, in 11 s; see docs/retraining.md).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from chuck import zoo

#: Samples per signal and examples in the data set.
LENGTH, EXAMPLES = 64, 2048


@functools.cache
def multi_sine_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: ``x`` (N, 1, LENGTH) signals, ``y`` (N, 3) their amplitudes by frequency, standardized."""
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH, dtype=np.float64) / LENGTH
    freq = np.sort(rng.uniform(1.0, 12.0, size=(EXAMPLES, 3)), axis=1)
    amp = rng.uniform(0.2, 1.5, size=(EXAMPLES, 3))
    phase = rng.uniform(0.0, 2 * np.pi, size=(EXAMPLES, 3))
    x = (amp[:, :, None] * np.sin(2 * np.pi * freq[:, :, None] * t + phase[:, :, None])).sum(1)
    x += rng.normal(0.0, 0.1, size=x.shape)
    y = (amp - amp.mean(0)) / amp.std(0)
    return x[:, None, :].astype(np.float32), y.astype(np.float32)


class SinesCNN1d(zoo.Task):
    """Multi-sine amplitude regression with a 1-D CNN (MSE on standardized targets)."""

    id, domain, budget = "inhouse.sines_cnn1d", "inhouse", 200
    space = zoo.SearchSpace(
        widths=(24, 32),
        depths=(2, 3),
        activations=("relu", "gelu"),
        norms=("none",),
        batch_sizes=(16, 32),
        dropouts=(0.0,),
        optimizers=("AdamW", "Adam"),
        weight_decays=(0.0, 1e-4),
    )

    @property
    def best_lr(self) -> float:
        return 5e-3

    def build(self, config: zoo.TaskConfig) -> zoo.TaskInstance:
        x, y = multi_sine_data()
        train, val = zoo.split_train_val(x, y, config)
        act = nn.GELU if config.activation == "gelu" else nn.ReLU
        c = config.width
        layers: list[nn.Module] = [nn.Conv1d(1, c, 7, stride=2, padding=3), act()]
        for _ in range(config.depth - 1):
            layers += [nn.Conv1d(c, c, 7, stride=2, padding=3), act()]
        model = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 64), act(), nn.Linear(64, 3))
        opt = zoo.make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
        return zoo.SupervisedInstance(model, opt, config, train, val, nn.functional.mse_loss, loss_reference=1.0, accuracy=False)


zoo.register_task(SinesCNN1d, replace=True)


if __name__ == "__main__":  # the model's size and one instance trained at its best lr
    from chuck.zoo import loop

    task = zoo.get_task(SinesCNN1d.id)
    cfg = zoo.TaskConfig(width=32, depth=3, lr=task.best_lr, batch_size=32)
    torch.manual_seed(0)
    inst = task.build(cfg)
    print(f"{sum(p.numel() for p in inst.model.parameters())} parameters; val loss {loop.evaluate(inst):.3f}", end=" ")
    loop.train(inst, inst.optimizer, task.budget, eval_every=task.budget)
    print(f"-> {loop.evaluate(inst):.3f} after {task.budget} steps")
