"""Model definitions, built from a config by name."""

from bnjax.models.registry import MODELS, init_variables, make_model

__all__ = ["MODELS", "init_variables", "make_model"]
