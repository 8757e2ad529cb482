"""Model definitions, built from a config by name."""

from bnjax.models.registry import MODELS, make_model

__all__ = ["MODELS", "make_model"]
