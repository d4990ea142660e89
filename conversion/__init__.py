"""Conversion of the original released checkpoints into vistok models (``vistok-convert``).

The framework is `vistok.conversion.utils`; each architecture has a ``convert_<arch>.py`` module."""
