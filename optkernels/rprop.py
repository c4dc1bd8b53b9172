"""Rprop (being written)."""


def rprop_update(*args, **kwargs):
    raise NotImplementedError("rprop_update is being written")
