"""NAdam (being written)."""


def nadam_update(*args, **kwargs):
    raise NotImplementedError("nadam_update is being written")
