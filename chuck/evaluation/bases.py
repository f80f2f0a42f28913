"""The base optimizers an evaluation runs on, and the learning-rate grids each one starts from.

``evaluate(base_optimizers="AdamW,SGD")`` repeats the evaluation once per base optimizer: every
(task, seed) becomes one instance per base, ``(task, seed, base)``, with the sampled config's
optimizer forced to that base (:func:`chuck.evaluation.runs.instance_config`). On each instance:

* the arms ``adamw`` (constant lr), ``cosine``, ``plateau`` and every ``chuck:`` arm train the
  base optimizer (the arm names stay; ``adamw`` is "the base at a constant lr");
* the oracle sweep's constant and cosine runs are the base's too, so an instance's oracle is the
  best of a sweep of *its* base (plus Prodigy once), its harm reference the base at its best
  constant lr, and its oracle cache a file of its own;
* ``schedulefree``, ``prodigy``, ``prodigy-sf`` and ``ldog`` bring their own optimizer and ignore
  the base; they still run on every instance (the same data and model), so each base's figures
  are complete on their own.

Learning-rate grids. The default starting lrs (:data:`DEFAULT_LRS`) and oracle sweep
(:data:`chuck.evaluation.oracle.ORACLE_LRS`) are AdamW's. A base whose usable lrs sit elsewhere
has both default grids multiplied by its :data:`LR_SHIFT`: SGD with momentum (plain and Nesterov)
and Adafactor by 10. SGD's best lr is half a decade above AdamW's on the zoo's median family, but spreads from one
decade below to 1.7 above across families (``chuck.zoo.starting_lr.OPTIMIZER_LR_OFFSET``); a whole
decade leans the grids towards the families far above, and is the step external optimizer benchmarks
put between SGD's lr grid and Adam's. Lrs given explicitly (``lrs=``, ``oracle_lrs=``, ``--lrs``, ``--oracle-lrs``) are used as given
for every base: only the defaults shift.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from chuck.evaluation.oracle import ORACLE_LRS
from chuck.zoo.task import BASE_OPTIMIZERS

#: The base optimizer when none is named (every figure before per-base evaluation was AdamW's).
DEFAULT_BASE = "AdamW"
#: The default starting lrs (AdamW's; other bases get them times :func:`lr_shift`).
DEFAULT_LRS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
#: Multiplier of the default lr grids per base optimizer; a base not listed keeps AdamW's (1.0).
#: Adafactor's lr caps a step relative to the parameter's RMS (typically 0.03-0.1 at init), so its usable
#: lrs sit about a decade above AdamW's (torch's defaults: 1e-2 against 1e-3).
LR_SHIFT: dict[str, float] = {"SGD": 10.0, "NesterovSGD": 10.0, "Adafactor": 10.0}


def lr_shift(base: str) -> float:
    """The factor the default starting lrs and oracle sweep are multiplied by for ``base``."""
    return LR_SHIFT.get(base, 1.0)


def shifted(lrs: Iterable[float], base: str) -> tuple[float, ...]:
    """``lrs`` times :func:`lr_shift` of ``base``, rounded to 3 significant digits as ``ORACLE_LRS`` is."""
    factor = lr_shift(base)
    return tuple(float(f"{float(lr) * factor:.3g}") if factor != 1.0 else float(lr) for lr in lrs)


def default_grids(base: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(starting lrs, oracle lrs)`` of ``base`` when none are given: AdamW's, shifted (:data:`LR_SHIFT`)."""
    return shifted(DEFAULT_LRS, base), shifted(ORACLE_LRS, base)


def parse_bases(names: Sequence[str]) -> list[str]:
    """The canonical base optimizer names of ``names`` (already split), in order, without repeats.

    Names match :data:`chuck.zoo.task.BASE_OPTIMIZERS` case-insensitively (``sgd`` is ``SGD``).

    Raises:
        ValueError: an unknown name, or none at all.
    """
    canonical = {b.lower(): b for b in BASE_OPTIMIZERS}
    unknown = [n for n in names if n.lower() not in canonical]
    if unknown:
        raise ValueError(f"unknown base optimizer(s) {unknown}; choose from {list(BASE_OPTIMIZERS)}")
    if not names:
        raise ValueError(f"no base optimizer given; choose from {list(BASE_OPTIMIZERS)}")
    return list(dict.fromkeys(canonical[n.lower()] for n in names))
