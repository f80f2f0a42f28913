"""``step(loss=...)`` takes one real number and refuses anything else, saying what it was given
(``observe()`` already did): text, booleans, complex and meta tensors used to pass or fail deep inside."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import chuck
from chuck.monitors.loss import require_scalar_loss
from tests.conftest import batch, make_net


def _step_with(loss) -> chuck.ChuckOptimizer:
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), "constant", model=model, history=False)
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    opt.step(loss=loss)
    return opt


@pytest.mark.parametrize(
    ("loss", "error", "said"),
    [
        ("0.5", TypeError, "got str '0.5'"),
        (True, TypeError, "got bool True"),
        (1 + 2j, TypeError, "got complex"),
        (np.complex64(1), TypeError, "got complex64"),
        (torch.tensor(1 + 1j), TypeError, "complex64 tensor"),
        (torch.tensor(True), TypeError, "torch.bool tensor"),
        (np.array([True]), TypeError, "dtype bool"),
        (torch.tensor(0.5, device="meta"), ValueError, "meta tensor"),
        (torch.ones(3), ValueError, "shape (3,)"),
        (np.ones(3), ValueError, "shape (3,)"),
    ],
)
def test_a_loss_that_is_not_one_real_number_is_refused(loss, error, said) -> None:
    with pytest.raises(error, match="loss must be") as exc:
        _step_with(loss)
    assert said in str(exc.value)


@pytest.mark.parametrize(
    "loss",
    [
        0.5,
        2,
        np.float32(0.5),
        np.float64(0.5),
        np.int64(2),
        np.array(0.5),
        torch.tensor(0.5),
        torch.tensor([0.5]),
        torch.tensor(3),
    ],
)
def test_real_numbers_are_taken(loss) -> None:
    require_scalar_loss(loss)
    assert _step_with(loss).step_count == 1


def test_no_loss_is_taken() -> None:
    require_scalar_loss(None)
