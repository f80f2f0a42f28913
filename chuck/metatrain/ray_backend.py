"""The Ray backend: meta-training environments in Ray actors, evaluation runs as Ray tasks.

stable-baselines3 vectorizes environments over the processes of one machine
(``SubprocVecEnv``). :class:`RayVecEnv` is the same ``VecEnv`` with every environment in a
Ray actor, which Ray places on any node of a cluster, each with its own CPU/GPU request;
PPO itself (the learner) stays in the driver. ``chuck train-policy --backend ray`` uses it,
and ``chuck evaluate --backend ray`` sends its runs to the same cluster as Ray tasks
(:class:`RayExecutor`).

Connecting (:func:`connect`): with an address (``--ray-address HOST:PORT``, or
``RAY_ADDRESS``) chuck joins that cluster; without one it starts a local Ray runtime for
the run and shuts it down afterwards. It never attaches to some other cluster it happens to
find on the machine (Ray's own default).

Faults: an environment actor that dies (its worker killed, its node lost) is replaced by a
new actor, and the episode it was running is retried from its start: the new actor restores
the random state the lost episode began with, so it trains the same task instance. For PPO
the interrupted episode ends as a *truncation* at the last observation it produced (reward
0, bootstrapped from the value there, as SB3 does for time limits), so the transitions it
already collected stay valid. :attr:`RayVecEnv.lost_episodes` counts them; meta-training
logs the count (``ray.lost_episodes``) and returns it. An error raised *inside* the
environment is a bug, not a fault, and propagates.

Ray is optional (``pip install 'chuck[ray]'``) and imported only when this backend is used.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

INSTALL = "pip install 'chuck[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"the Ray backend (--backend ray) needs Ray, which is not installed: {INSTALL}") from exc
    return ray


def connect(address: str | None = None, *, num_cpus: float | None = None) -> bool:
    """Join the Ray cluster at ``address`` (or ``$RAY_ADDRESS``), else start a local runtime.

    Returns whether this call connected (the caller then calls :func:`disconnect` when done);
    ``False`` when Ray was already initialized in this process, e.g. by the user.

    Args:
        num_cpus: logical CPUs of a local runtime (default: this machine's cores); ignored
            when joining a cluster.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    common: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}
    if address:
        ray.init(address=address, **common)
    else:
        # "local": a fresh runtime even if a cluster started with `ray start` is running here
        cpus = max(os.cpu_count() or 1, math.ceil(num_cpus or 0))
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, **common)
    return True


def disconnect() -> None:
    ray = require_ray()
    if ray.is_initialized():
        ray.shutdown()


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors for a worker, actor or object that is gone (not an exception raised by our code)."""
    ex = ray.exceptions
    names = (
        "RayActorError",
        "ActorUnavailableError",
        "WorkerCrashedError",
        "ObjectLostError",
        "NodeDiedError",
        "OwnerDiedError",
        "LocalRayletDiedError",
    )
    return tuple(getattr(ex, n) for n in names if isinstance(getattr(ex, n, None), type))


class EnvWorker:
    """What lives in one environment actor: the env, stepped the way SB3's ``SubprocVecEnv`` steps it.

    Every reset reports where its episode starts (the seed, or the env's random state before an
    unseeded reset) so that a replacement actor can replay the episode (:meth:`replay`).
    """

    def __init__(self, env_fn: Callable[[], Any]) -> None:
        import gymnasium  # noqa: F401 - fail here, in the actor, if the env's stack is missing

        self.env = env_fn()

    def ready(self) -> tuple[Any, Any, int, str]:
        return self.env.observation_space, self.env.action_space, os.getpid(), os.uname().nodename

    def _start(self, seed: int | None, options: dict[str, Any] | None) -> dict[str, Any]:
        start: dict[str, Any] = {"seed": seed, "options": options or None}
        if seed is None:
            start["rng"] = self.env.unwrapped.np_random.bit_generator.state
        return start

    def reset(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        start = self._start(seed, options)
        obs, info = self.env.reset(seed=seed, **({"options": options} if options else {}))
        return obs, info, start

    def replay(self, start: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Begin the episode ``start`` describes again (same task instance, same seeds)."""
        if start.get("rng") is not None:
            self.env.unwrapped.np_random.bit_generator.state = start["rng"]
        options = start.get("options")
        return self.env.reset(seed=start.get("seed"), **({"options": options} if options else {}))

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated or truncated)
        info["TimeLimit.truncated"] = bool(truncated and not terminated)
        reset_info: dict[str, Any] = {}
        start = None
        if done:
            info["terminal_observation"] = obs
            start = self._start(None, None)
            obs, reset_info = self.env.reset()
        return obs, float(reward), done, info, reset_info, start

    def get_attr(self, name: str) -> Any:
        return self.env.get_wrapper_attr(name)

    def set_attr(self, name: str, value: Any) -> None:
        setattr(self.env, name, value)

    def env_method(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper_class: type) -> bool:
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(self.env, wrapper_class)

    def close(self) -> None:
        self.env.close()


def _stack(obs: Sequence[Any]) -> np.ndarray:
    return np.stack([np.asarray(o) for o in obs])


try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv as _VecEnv
except ImportError:  # pragma: no cover - chuck evaluate on Ray needs no SB3; RayVecEnv does (chuck[all])
    _VecEnv = object  # type: ignore[assignment,misc]


class RayVecEnv(_VecEnv):  # type: ignore[misc,valid-type]
    """An SB3 ``VecEnv`` whose environments live in Ray actors (see the module docstring).

    Args:
        env_fns: one picklable thunk per environment (called inside its actor).
        address: the Ray cluster to join (see :func:`connect`; ``None``: ``$RAY_ADDRESS`` or a
            local runtime, which :meth:`close` shuts down again).
        num_cpus: CPUs each actor requests from Ray (fractions allowed).
        num_gpus: GPUs each actor requests.
        max_restarts: actor replacements allowed per environment before training fails.
        start_timeout: seconds to wait for the actors to be placed; a cluster without the
            resources they request fails with a message instead of waiting forever.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], Any]],
        *,
        address: str | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        max_restarts: int = 20,
        start_timeout: float = 300.0,
    ) -> None:
        ray = self._ray = require_ray()
        self._owns = connect(address, num_cpus=len(env_fns) * num_cpus)
        self._lost = _lost_errors(ray)
        self._fns = list(env_fns)
        self._actor_cls = ray.remote(EnvWorker).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
        self.num_cpus, self.num_gpus, self.max_restarts = num_cpus, num_gpus, max_restarts
        self.lost_episodes = 0
        self.restarts = [0] * len(self._fns)
        self.actors = [self._actor_cls.remote(fn) for fn in self._fns]
        ready = [a.ready.remote() for a in self.actors]
        done, pending = ray.wait(ready, num_returns=len(ready), timeout=start_timeout)
        if pending:
            self.close()
            raise TimeoutError(
                f"{len(pending)} of {len(ready)} environment actors were not placed within {start_timeout:g} s: each "
                f"requests {num_cpus:g} CPU and {num_gpus:g} GPU; the cluster has {ray.cluster_resources()}"
            )
        spaces = ray.get(ready)
        self.placement = [(pid, node) for _, _, pid, node in spaces]
        self._starts: list[dict[str, Any] | None] = [None] * len(self._fns)
        self._last_obs: list[Any] = [None] * len(self._fns)
        self._refs: list[Any] = []
        super().__init__(len(self._fns), spaces[0][0], spaces[0][1])

    # -- faults ---------------------------------------------------------------------------
    def _replace(self, i: int, why: BaseException) -> None:
        self.restarts[i] += 1
        if self.restarts[i] > self.max_restarts:
            raise RuntimeError(f"environment {i} lost its actor {self.restarts[i]} times (last: {why}); giving up") from why
        warnings.warn(
            f"chuck: environment actor {i} died ({type(why).__name__}); replacing it and retrying its episode",
            RuntimeWarning,
            stacklevel=3,
        )
        with contextlib.suppress(Exception):  # it is gone already
            self._ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self._actor_cls.remote(self._fns[i])
        self.placement[i] = tuple(self._ray.get(self.actors[i].ready.remote())[2:])

    def _get(self, i: int, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:  # raised by the env itself: a bug, not a fault
            raise exc.as_instanceof_cause() from None

    # -- VecEnv ---------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        refs = [a.reset.remote(self._seeds[i], self._options[i] or None) for i, a in enumerate(self.actors)]
        obs = []
        for i, ref in enumerate(refs):
            while True:
                try:
                    o, info, start = self._get(i, ref)
                    break
                except self._lost as exc:
                    self._replace(i, exc)
                    ref = self.actors[i].reset.remote(self._seeds[i], self._options[i] or None)
            self.reset_infos[i], self._starts[i], self._last_obs[i] = info, start, o
            obs.append(o)
        self._reset_seeds()
        self._reset_options()
        return _stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self._refs = [a.step.remote(act) for a, act in zip(self.actors, actions)]

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        obs, rews, dones, infos = [], [], [], []
        for i, ref in enumerate(self._refs):
            try:
                o, r, d, info, reset_info, start = self._get(i, ref)
                if d:
                    self.reset_infos[i], self._starts[i] = reset_info, start
            except self._lost as exc:
                o, r, d, info = self._retry_episode(i, exc)
            self._last_obs[i] = o
            obs.append(o)
            rews.append(r)
            dones.append(d)
            infos.append(info)
        self._refs = []
        return _stack(obs), np.asarray(rews, dtype=np.float32), np.asarray(dones, dtype=bool), infos

    def _retry_episode(self, i: int, exc: BaseException) -> tuple[Any, float, bool, dict[str, Any]]:
        """A replacement actor restarts episode ``i``; the lost one ends as a truncation where it stood."""
        self.lost_episodes += 1
        start = self._starts[i]
        while True:
            self._replace(i, exc)
            try:
                o, reset_info = (
                    self._get(i, self.actors[i].replay.remote(start))
                    if start is not None
                    else self._get(i, self.actors[i].reset.remote(None, None))[:2]
                )
                break
            except self._lost as again:
                exc = again
        self.reset_infos[i] = reset_info
        info = {"terminal_observation": self._last_obs[i], "TimeLimit.truncated": True, "chuck.lost_episode": True}
        return o, 0.0, True, info

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            with contextlib.suppress(Exception):  # already gone
                self._ray.kill(a, no_restart=True)
        self.actors = []
        if getattr(self, "_owns", False):
            self._owns = False
            disconnect()

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return self._ray.get([self.actors[i].get_attr.remote(attr_name) for i in self._indices(indices)])

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        self._ray.get([self.actors[i].set_attr.remote(attr_name, value) for i in self._indices(indices)])

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        return self._ray.get(
            [self.actors[i].env_method.remote(method_name, method_args, method_kwargs) for i in self._indices(indices)]
        )

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return self._ray.get([self.actors[i].is_wrapped.remote(wrapper_class) for i in self._indices(indices)])

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs


def _in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    import torch

    torch.set_num_threads(1)  # one core per run, as in the process pool
    return fn(*args)


class RayExecutor:
    """A ``concurrent.futures``-style executor whose calls run as Ray tasks (``chuck evaluate --backend ray``).

    ``submit`` returns a ``concurrent.futures.Future``. A task whose worker dies is retried by
    Ray (``max_retries``) before its future fails; the evaluation scheduler then retries it
    once more and records it as crashed if that fails too.

    Args:
        address: the cluster (see :func:`connect`).
        num_cpus, num_gpus: resources each run requests.
        max_retries: Ray's retries of a run whose worker died.
    """

    def __init__(self, address: str | None = None, *, num_cpus: float = 1.0, num_gpus: float = 0.0, max_retries: int = 2) -> None:
        ray = self._ray = require_ray()
        self._owns = connect(address)
        self._task = ray.remote(_in_worker).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)
        self.num_cpus = num_cpus

    @property
    def capacity(self) -> int:
        """Runs the cluster can hold at once with the CPUs each requests."""
        cpus = float(self._ray.cluster_resources().get("CPU", 1.0))
        return max(1, int(cpus // self.num_cpus) if self.num_cpus > 0 else int(cpus))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._task.remote(fn, *args).future()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self._owns:
            self._owns = False
            disconnect()
