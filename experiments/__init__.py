"""Lab code beside the product (not installed): recipes, benchmark scripts and rejected variants.

Its modules import as ``experiments.<name>`` from the repository root (``python -m experiments.<name>``,
``--tasks-module experiments.lab_policies``); ``tests/experiments`` tests the ones the product's
history depends on.
"""
