"""Model families, built from a config by name; their layers in depth order."""

from bnjax.models.registry import (
    FAMILIES, MODELS, complete, defaults, describe, get_family, init_variables, make_model,
    ordered_leaves, recordings, register, unrolled, validate)

__all__ = ["FAMILIES", "MODELS", "complete", "defaults", "describe", "get_family",
           "init_variables", "make_model", "ordered_leaves", "recordings", "register",
           "unrolled", "validate"]
