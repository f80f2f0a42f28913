"""The core step path: what runs inside ``opt.step()``.

:mod:`~chuck.core.optimizer` (the torch contract and the step pipeline), :mod:`~chuck.core.controller`
(the one decision clock), :mod:`~chuck.core.observation` and :mod:`~chuck.core.actions` (the policy's
observation and action specs), :mod:`~chuck.core.guardrails` with :mod:`~chuck.core.snapshot`,
:mod:`~chuck.core.checkpoint` (validation of chuck's checkpoint entry), :mod:`~chuck.core.distributed`
(rank agreement under data parallelism), :mod:`~chuck.core.loading` (``load_policy``) and the records
chuck hands back (:mod:`~chuck.core.report`, :mod:`~chuck.core.explain`). Needs torch, numpy and
gymnasium only.
"""
