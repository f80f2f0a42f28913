"""Policies: the interface, the built-in rule policies and the learned-policy artifacts."""

from chuck.policies.base import Policy
from chuck.policies.constant import ConstantPolicy
from chuck.policies.heuristic import HeuristicPolicy

__all__ = ["ConstantPolicy", "HeuristicPolicy", "Policy"]
