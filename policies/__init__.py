"""Policies: the interface, the built-in rule policies and the learned-policy artifacts.

:func:`register_policy` names a policy chuck does not ship, so that ``load_policy`` and the
commands (``chuck evaluate --policies NAME --tasks-module MODULE``) take it like a built-in.
"""

from chuck.core.loading import register_policy, unregister_policy
from chuck.policies.base import Policy
from chuck.policies.constant import ConstantPolicy
from chuck.policies.heuristic import HeuristicPolicy

__all__ = ["ConstantPolicy", "HeuristicPolicy", "Policy", "register_policy", "unregister_policy"]
