"""Errors the voice layer raises for people to read."""


class ModelNotFoundError(RuntimeError):
    """Weights that were asked for are not there. Never answered with random weights."""
