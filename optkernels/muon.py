"""Muon (being written)."""


def muon_update(*args, **kwargs):
    raise NotImplementedError("muon_update is being written")
