"""Adagrad (being written)."""


def adagrad_update(*args, **kwargs):
    raise NotImplementedError("adagrad_update is being written")
