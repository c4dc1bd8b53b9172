"""Adadelta (being written)."""


def adadelta_update(*args, **kwargs):
    raise NotImplementedError("adadelta_update is being written")
