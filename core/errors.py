"""Errors whose message is the whole story, importable without torch (the command lines catch them)."""
from __future__ import annotations


class WeightsUnavailable(RuntimeError):
    """The ImageNet weights are neither cached nor downloadable."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or not one of ours."""
