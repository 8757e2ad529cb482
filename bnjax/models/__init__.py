"""Model families, built from a config by name; their layers in depth order."""

from bnjax.models.registry import (
    FAMILIES, MODELS, get_family, init_variables, make_model, ordered_leaves, register, unrolled)

__all__ = ["FAMILIES", "MODELS", "get_family", "init_variables", "make_model", "ordered_leaves",
           "register", "unrolled"]
