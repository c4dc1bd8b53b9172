"""An empty optional list means "off", as torch.optim's functional API passes it."""

import torch

from optkernels import adabelief_update, adam_update, sgd_update


def _lists(count=3):
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(4, generator=generator) for _ in range(count)]
    grads = [torch.randn(4, generator=generator) for _ in range(count)]
    return params, grads, [torch.zeros(4) for _ in range(count)], [torch.zeros(4) for _ in range(count)]


def test_empty_max_list_is_plain_adam():
    with_none, with_empty = _lists(), _lists()
    adam_update(*with_none, None, step=1, lr=0.1)
    adam_update(*with_empty, [], step=1, lr=0.1)
    assert all(torch.equal(a, b) for lists in zip(with_none, with_empty) for a, b in zip(*lists))


def test_empty_max_list_is_plain_adabelief():
    with_none, with_empty = _lists(), _lists()
    adabelief_update(*with_none, None, step=1, lr=0.1)
    adabelief_update(*with_empty, [], step=1, lr=0.1)
    assert all(torch.equal(a, b) for lists in zip(with_none, with_empty) for a, b in zip(*lists))


def test_empty_momentum_buffers_without_momentum():
    params, grads, _, _ = _lists()
    expected = [p - 0.1 * g for p, g in zip(params, grads)]
    sgd_update(params, grads, [], lr=0.1)
    for param, value in zip(params, expected):
        torch.testing.assert_close(param, value)  # the kernel's multiply-add rounds once
