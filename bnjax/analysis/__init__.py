"""Analysis functions: pure functions of (model, variables, batch[, key]).

One module per question; each returns pytrees of arrays, is jittable, and
works on one member or vmapped across the members of a sweep.
"""
