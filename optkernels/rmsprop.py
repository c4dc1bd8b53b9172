"""RMSprop (being written)."""


def rmsprop_update(*args, **kwargs):
    raise NotImplementedError("rmsprop_update is being written")
