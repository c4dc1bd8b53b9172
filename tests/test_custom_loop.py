"""Training a small MLP with nothing but optkernels functions, in a hand-written loop,
gives torch.optim's loss trajectory step for step."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from optkernels import adam_update, radam_update, sgd_update, weight_decay_l2

STEPS = 25


def _data():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 8, generator=generator)
    targets = torch.sin(inputs.sum(dim=1, keepdim=True))
    return inputs, targets


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


def _train(update) -> list[float]:
    """Train with ``update(params, grads, step)`` called after each backward; return the losses."""
    model, (inputs, targets) = _model(), _data()
    params = list(model.parameters())
    losses = []
    for step in range(1, STEPS + 1):
        model.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            update(params, [p.grad for p in params], step)
    return losses


def _train_torch(optimizer_class, **kwargs) -> list[float]:
    model, (inputs, targets) = _model(), _data()
    optimizer = optimizer_class(model.parameters(), **kwargs)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    return losses


def _zeros_like(params):
    return [torch.zeros_like(p) for p in params]


def adam_loop(amsgrad=False):
    state = {}

    def update(params, grads, step):
        if not state:  # the user owns the state: created once, passed every step
            state.update(exp_avgs=_zeros_like(params), exp_avg_sqs=_zeros_like(params),
                         max_exp_avg_sqs=_zeros_like(params) if amsgrad else None)
        adam_update(params, grads, state["exp_avgs"], state["exp_avg_sqs"], state["max_exp_avg_sqs"],
                    step=step, lr=0.01)
    return update


def adamw_loop():
    exp_avgs, exp_avg_sqs = [], []

    def update(params, grads, step):
        if not exp_avgs:
            exp_avgs.extend(_zeros_like(params))
            exp_avg_sqs.extend(_zeros_like(params))
        grads = weight_decay_l2(params, grads, weight_decay=0.1, lr=0.01, decoupled=True)
        adam_update(params, grads, exp_avgs, exp_avg_sqs, step=step, lr=0.01)
    return update


def radam_loop():
    exp_avgs, exp_avg_sqs = [], []

    def update(params, grads, step):
        if not exp_avgs:
            exp_avgs.extend(_zeros_like(params))
            exp_avg_sqs.extend(_zeros_like(params))
        grads = weight_decay_l2(params, grads, weight_decay=0.01)
        radam_update(params, grads, exp_avgs, exp_avg_sqs, step=step, lr=0.01)
    return update


def sgd_loop():
    momentum_buffers = None

    def update(params, grads, step):
        nonlocal momentum_buffers
        if momentum_buffers is None:
            momentum_buffers = [None] * len(params)  # filled with the first gradients
        grads = weight_decay_l2(params, grads, weight_decay=1e-3)
        sgd_update(params, grads, momentum_buffers, lr=0.05, momentum=0.9, nesterov=True)
    return update


LOOPS = {
    "adam": (adam_loop, torch.optim.Adam, dict(lr=0.01)),
    "amsgrad": (lambda: adam_loop(amsgrad=True), torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    "adamw": (adamw_loop, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    "radam": (radam_loop, torch.optim.RAdam, dict(lr=0.01, weight_decay=0.01)),
    "sgd-nesterov": (sgd_loop, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
}


@pytest.mark.parametrize("foreach", [False, True], ids=["torch-forloop", "torch-foreach"])
@pytest.mark.parametrize("name", LOOPS)
def test_custom_loop_matches_torch_loss_trajectory(name, foreach):
    make_update, torch_class, kwargs = LOOPS[name]
    ours = _train(make_update())
    reference = _train_torch(torch_class, foreach=foreach, **kwargs)
    if name == "radam" and not foreach:
        # torch's for-loop RAdam orders the rectified step's ops differently: equal to fp32 rounding
        assert_close(ours, reference, rtol=1e-6, atol=1e-7)
    else:
        assert ours == reference  # bitwise: the same op order as torch
    assert ours[-1] < ours[0]  # and it trains
