"""Adamax (being written)."""


def adamax_update(*args, **kwargs):
    raise NotImplementedError("adamax_update is being written")
