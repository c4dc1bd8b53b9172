"""ASGD (being written)."""


def asgd_update(*args, **kwargs):
    raise NotImplementedError("asgd_update is being written")
