"""Defaults shared by deployment, meta-training, tuning and the commands, defined once (torch-free)."""

#: Successful optimizer steps between two decisions when neither the user nor the policy says otherwise:
#: a zoo run of 150-600 steps gets 7-30 decisions, and the monitors' windows (5 intervals) stay short.
DEFAULT_INTERVAL = 20
