"""Training-health monitors. Each is a :class:`Monitor` with cited thresholds."""

from chuck.monitors.activations import ActivationMonitor
from chuck.monitors.architecture import ModelProfile, recommend
from chuck.monitors.base import Indicator, Monitor, Status, grade
from chuck.monitors.gradients import GradientMonitor
from chuck.monitors.loss import LossMonitor
from chuck.monitors.weights import WeightMonitor

__all__ = [
    "ActivationMonitor",
    "GradientMonitor",
    "Indicator",
    "LossMonitor",
    "ModelProfile",
    "Monitor",
    "Status",
    "WeightMonitor",
    "grade",
    "recommend",
]
