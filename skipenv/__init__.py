"""SkipNet-gym: dynamic block skipping in residual networks as an RL problem."""

__version__ = "0.1.0"
