"""The ``chuck`` command line. ``chuck --help`` imports no torch: see :mod:`chuck.cli.main`."""

from chuck.cli.main import main

__all__ = ["main"]
