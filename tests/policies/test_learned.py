"""The deployed actor's explanation: gradient x input of every output, in one backward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chuck.policies.learned import ActorNetwork


def _one_pass_per_output(actor: ActorNetwork, obs: torch.Tensor, dim: int) -> np.ndarray:
    z = actor.normalize(obs).requires_grad_(True)
    actor.action_net(actor.policy_net(z))[0, dim].backward()
    assert z.grad is not None
    one = (z.grad * z).detach().reshape(-1).numpy()
    total = np.abs(one).sum()
    return one / total if total > 0 else np.zeros_like(one)


@pytest.mark.parametrize(
    ("hidden", "activation", "outputs"), [([], "tanh", 4), ([8], "relu", 1), ([16, 16], "tanh", 6), ([32, 32], "relu", 4)]
)
def test_attributions_of_all_outputs_at_once_match_one_backward_pass_each(hidden, activation, outputs) -> None:
    """Row d of the batched pass is output d's own gradient x input (rows of a batch do not interact)."""
    torch.manual_seed(0)
    actor = ActorNetwork(12, outputs, hidden, activation)
    actor.obs_mean.copy_(torch.randn(12, dtype=torch.float64))
    actor.obs_var.copy_(torch.rand(12, dtype=torch.float64) + 0.1)
    for _ in range(8):
        obs = torch.randn(1, 12)
        rows = actor.attributions(obs)
        assert rows.shape == (outputs, 12)
        for d, row in enumerate(rows):
            np.testing.assert_allclose(row, _one_pass_per_output(actor, obs, d), rtol=1e-4, atol=1e-6)


def test_attributions_leave_the_actor_without_gradients_and_work_under_no_grad() -> None:
    actor = ActorNetwork(5, 4, [8], "tanh")
    with torch.no_grad():
        rows = actor.attributions(torch.randn(1, 5))
    assert np.allclose(np.abs(rows).sum(1), 1.0)
    assert all(p.grad is None for p in actor.parameters())


def test_attributions_refuse_a_batch() -> None:
    with pytest.raises(ValueError, match="one observation at a time"):
        ActorNetwork(5, 4, [8]).attributions(torch.randn(3, 5))
