"""edgekd: cross-modal distillation carried to a measured, deployed int8 model."""

__version__ = "0.1.0"
