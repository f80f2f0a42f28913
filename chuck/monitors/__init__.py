"""Training-health monitors. Each is a :class:`Monitor` with cited thresholds.

Monitors share one lifecycle (:class:`Monitor`) and are held in a
:class:`MonitorSuite`; the controller's state is a monitor too
(:class:`ControlMonitor`). Add your own with ``ChuckOptimizer(monitors=[...])``.
"""

from chuck.monitors.activations import ActivationMonitor
from chuck.monitors.architecture import ModelProfile, recommend
from chuck.monitors.base import Indicator, Monitor, MonitorContext, Status, StepRecord, grade
from chuck.monitors.control import ControlMonitor
from chuck.monitors.gradients import GradientMonitor
from chuck.monitors.loss import LossMonitor
from chuck.monitors.suite import MonitorSuite
from chuck.monitors.weights import WeightMonitor

__all__ = [
    "ActivationMonitor",
    "ControlMonitor",
    "GradientMonitor",
    "Indicator",
    "LossMonitor",
    "ModelProfile",
    "Monitor",
    "MonitorContext",
    "MonitorSuite",
    "Status",
    "StepRecord",
    "WeightMonitor",
    "grade",
    "recommend",
]
