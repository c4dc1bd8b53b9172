"""SparseAdam (being written)."""


def sparse_adam_update(*args, **kwargs):
    raise NotImplementedError("sparse_adam_update is being written")
