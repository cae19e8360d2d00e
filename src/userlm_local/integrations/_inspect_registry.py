"""What the ``inspect_ai`` entry point loads: importing the solver registers it with Inspect."""

from .inspect import simulated_user  # noqa: F401
