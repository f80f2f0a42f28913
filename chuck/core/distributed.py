"""Data-parallel agreement: every rank of a process group makes the same decision.

Under ``DistributedDataParallel`` every rank steps its own copy of the model on its own
data. The gradients are all-reduced by DDP, but chuck's other inputs are not: each rank
sees its own loss (so its own spike verdicts and loss statistics) and its own activations
(so its own observation). Left alone, one outlier batch rolls back one rank only and a
learned policy's decisions drift apart; the parameters then differ with no error at all.

:class:`RankSync` closes that gap with two collectives on the process group:

* **every step**, one all-reduce (SUM) of seven float64 scalars -- the loss and how many
  ranks gave one, the squared gradient norm, a non-finite flag for each, and the votes of
  the overfitting rollback (how many ranks' last validation loss asks for a best-weights
  snapshot, how many for a rollback to it) -- built where chuck reads its per-step scalars
  anyway (one host read on accelerators, as before). Every rank then judges the *same*
  numbers: the mean loss, the gradient norm, "non-finite on any rank", "a rollback if any
  rank asks for one, else a snapshot if any asks" (a rank that calls ``observe`` alone
  still moves every rank). The loss monitor records the mean loss, so spike medians agree
  too. This replaces :func:`chuck.core.optimizer._read_scalars` for the run.
* **at a decision** (every ``interval`` steps), rank 0 alone asks the policy; its action,
  the source (policy or fallback) and its observation are broadcast as one small float64
  tensor and every rank applies that action through the one path
  (:meth:`chuck.core.controller.Controller.apply`). One rank deciding was chosen over reducing
  the observation because it is *exact*: a reduced observation would still have to give
  bit-identical actions from every rank's copy of the policy (and of its fallback and
  OOD check), which floating point does not promise across machines, and stateful
  policies would have to stay in lockstep too. The monitors' own statistics (activations
  above all) may differ by rank; the guardrail verdicts and the applied actions do not.

Gradient norms: under DDP the gradients are already averaged, so each rank's local norm
is the global norm (the reduction divides the summed squares by the world size). Sharded
parameters (FSDP, FSDP2/DTensor) hold only a shard of each gradient, and chuck's monitors,
clipping and rollback snapshots work on whole local tensors: until they are made
shard-aware, :func:`rank_sync` refuses sharded models with :class:`ShardedParametersError`
rather than report a per-shard norm as the global one.

Only rank 0 writes the run's history record and attaches a decision logger
(``tracking=``): the other ranks' records would be copies.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from chuck.core.controller import PolicyAnswer
from chuck.monitors.gradients import dense_values
from chuck.monitors.loss import require_scalar_loss

__all__ = ["RankSync", "ShardedParametersError", "rank_sync"]

#: Decision sources on the wire (the float in slot 0 of the decision broadcast).
_SOURCES = ("policy", "fallback")


class ShardedParametersError(NotImplementedError):
    """The model's parameters are sharded (FSDP): chuck cannot yet compute their global statistics."""


def _sharded(optimizer: torch.optim.Optimizer, model: Any) -> str | None:
    """Why the parameters look sharded (FSDP1 flat parameters, FSDP2 DTensors), else ``None``."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        FullyShardedDataParallel = ()  # type: ignore[assignment,misc]
    if model is not None and any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        return "the model is wrapped in FullyShardedDataParallel"
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        DTensor = ()  # type: ignore[assignment,misc]
    for group in optimizer.param_groups:
        for p in group["params"]:
            if getattr(p, "_is_flat_param", False) or getattr(p, "_fsdp_flattened", False):
                return "its parameters are FSDP flat parameters or views of them"
            if isinstance(p, DTensor):
                return "its parameters are DTensors (FSDP2 fully_shard or tensor parallelism)"
    return None


def rank_sync(
    process_group: Any, optimizer: torch.optim.Optimizer, model: Any = None, *, action_dims: int = 4
) -> RankSync | None:
    """The agreement for this run, or ``None`` when it runs in one process.

    Args:
        process_group: ``None`` (the default group if ``torch.distributed`` is initialized with
            more than one rank), a ``ProcessGroup``, or ``False`` (never synchronize: every rank
            calling ``step`` must then be prepared to decide on its own).

    Raises:
        ShardedParametersError: the parameters are sharded (FSDP), which chuck does not support yet.
    """
    if process_group is False:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise RuntimeError("process_group given but torch.distributed is not initialized (init_process_group first)")
        return None
    group = None if process_group is True else process_group
    if dist.get_world_size(group) < 2:
        return None
    why = _sharded(optimizer, model)
    if why is not None:
        raise ShardedParametersError(
            f"chuck does not support sharded parameters yet ({why}): its gradient norm, clipping, monitors and "
            "rollback snapshots would see one shard as the whole tensor and report wrong norms. Use "
            "DistributedDataParallel, or pass process_group=False only if every rank holds whole parameters."
        )
    return RankSync(group, action_dims=action_dims)


class RankSync:
    """One process group's agreement on scalars and decisions (see the module docstring).

    Args:
        group: the process group (``None``: the default group).
        action_dims: the action's length (the size of the decision broadcast).
        leader: the group rank that decides (0).
    """

    def __init__(self, group: Any = None, *, action_dims: int = 4, leader: int = 0) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.leader_rank = leader
        self.action_dims = int(action_dims)
        self._leader_global = dist.get_global_rank(group, leader) if group is not None else leader
        backend = dist.get_backend(group)
        # NCCL reduces CUDA tensors only; gloo and mpi CPU tensors.
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.collectives = 0  # for the overhead benchmark and the tests

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader_rank

    # -- every step --------------------------------------------------------------------
    def read_scalars(self, loss: Any, grads: list[torch.Tensor], vote: int = 0) -> tuple[float | None, float, int]:
        """The step's loss (mean over the ranks that gave one), gradient norm and validation vote,
        identical on every rank.

        One all-reduce of ``[loss, has_loss, loss_nonfinite, grad_sq, grad_nonfinite, snapshot_votes,
        restore_votes]``; a non-finite value on any rank makes that value NaN on every rank (the
        guardrails skip); the agreed vote is the largest any rank cast (``chuck.core.guardrails.ValidationVote``).
        """

        dev = self.device
        if grads:
            norms = torch._foreach_norm([dense_values(g) for g in grads])
            gsq = torch.stack([n.to(dev, torch.float64) for n in norms]).square().sum()
        else:
            gsq = torch.zeros((), dtype=torch.float64, device=dev)
        if loss is None:
            lv = torch.zeros((), dtype=torch.float64, device=dev)
            has = torch.zeros((), dtype=torch.float64, device=dev)
        else:
            require_scalar_loss(loss)
            if isinstance(loss, torch.Tensor):
                lv = loss.detach().reshape(()).to(dev, torch.float64)
            else:
                lv = torch.tensor(float(loss), dtype=torch.float64, device=dev)
            has = torch.ones((), dtype=torch.float64, device=dev)
        lbad = (~torch.isfinite(lv)).to(torch.float64)
        gbad = (~torch.isfinite(gsq)).to(torch.float64)
        # non-finite parts contribute 0 to the sums; the flags carry them
        votes = torch.tensor([float(vote == 1), float(vote == 2)], dtype=torch.float64, device=dev)
        packed = torch.cat(
            [torch.stack([torch.where(lbad > 0, 0.0, lv), has, lbad, torch.where(gbad > 0, 0.0, gsq), gbad]), votes]
        )
        self._dist.all_reduce(packed, op=self._dist.ReduceOp.SUM, group=self.group)
        self.collectives += 1
        loss_sum, n_loss, loss_bad, grad_sq, grad_bad, snaps, restores = packed.tolist()  # the one host read of the step
        gnorm = math.nan if grad_bad > 0 else math.sqrt(grad_sq / self.world_size)
        agreed = 2 if restores > 0 else 1 if snaps > 0 else 0
        if n_loss == 0:
            return None, gnorm, agreed
        return (math.nan if loss_bad > 0 else loss_sum / n_loss), gnorm, agreed

    # -- at a decision -----------------------------------------------------------------
    def agree(self, answer: PolicyAnswer | None, obs: np.ndarray) -> tuple[PolicyAnswer, np.ndarray]:
        """The leader's answer and observation, on every rank (one broadcast).

        ``answer`` is the leader's checked policy answer (``None`` on the other ranks, which do
        not ask their policy at all).
        """
        if self.is_leader:
            assert answer is not None
            action = np.asarray(answer.action, dtype=np.float64).reshape(-1)
            if action.shape != (self.action_dims,):  # Controller.ask checks it; never send a torn message
                raise ValueError(f"action of shape {action.shape}, expected ({self.action_dims},)")
            payload = np.concatenate([[float(_SOURCES.index(answer.source))], action, np.asarray(obs, dtype=np.float64)])
            buf = torch.from_numpy(payload).to(self.device)
        else:
            buf = torch.zeros(1 + self.action_dims + obs.shape[0], dtype=torch.float64, device=self.device)
        self._dist.broadcast(buf, src=self._leader_global, group=self.group)
        self.collectives += 1
        if self.is_leader:
            assert answer is not None
            return answer, obs
        vals = buf.cpu().numpy()
        n = self.action_dims
        source, action, leader_obs = _SOURCES[int(vals[0])], vals[1 : 1 + n].copy(), vals[1 + n :].astype(obs.dtype)
        return PolicyAnswer(action, source, f"decided on rank {self.leader_rank}"), leader_obs

    def barrier(self) -> None:
        self._dist.barrier(group=self.group)
