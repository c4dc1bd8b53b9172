"""Properties every kernel keeps, over random lists of tensors (Hypothesis)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.configs import KERNELS

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64])


@st.composite
def problems(draw):
    """Params, a stream of grads for them, and a number of steps."""
    dtype = draw(dtypes)
    count = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    param_shapes = [draw(shapes) for _ in range(count)]
    params = [torch.randn(s, generator=generator, dtype=dtype) for s in param_shapes]
    grads = [[torch.randn(s, generator=generator, dtype=dtype) for s in param_shapes] for _ in range(steps)]
    return params, grads


def _states(kernel, params):
    if kernel.zero_state:
        return [[torch.zeros_like(p) for p in params] for _ in range(kernel.state_count)]
    return [[None] * len(params) for _ in range(kernel.state_count)]


def _run(kernel, params, grad_stream, lr=1e-2):
    params = [p.clone() for p in params]
    states = _states(kernel, params)
    for step, grads in enumerate(grad_stream, start=1):
        kernel.call(params, grads, states, step, lr)
    return params, states


kernel_param = pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)


@kernel_param
@given(problem=problems())
def test_a_list_gives_what_each_tensor_gives_alone(kernel, problem):
    params, grad_stream = problem
    together, together_states = _run(kernel, params, grad_stream)
    for index, param in enumerate(params):
        alone, alone_states = _run(kernel, [param], [[grads[index]] for grads in grad_stream])
        assert torch.equal(together[index], alone[0])
        for state, state_alone in zip(together_states, alone_states):
            assert torch.equal(state[index], state_alone[0])


@kernel_param
@given(problem=problems())
def test_zero_lr_changes_no_param(kernel, problem):
    params, grad_stream = problem
    updated, _ = _run(kernel, params, grad_stream, lr=0.0)
    for before, after in zip(params, updated):
        assert torch.equal(before, after)


@kernel_param
@given(problem=problems())
def test_grads_are_never_mutated_and_dtypes_are_kept(kernel, problem):
    params, grad_stream = problem
    snapshot = [[g.clone() for g in grads] for grads in grad_stream]
    updated, states = _run(kernel, params, grad_stream)
    for grads, copies in zip(grad_stream, snapshot):
        assert all(torch.equal(g, c) for g, c in zip(grads, copies))
    for before, after, *state in zip(params, updated, *states):
        assert after.dtype == before.dtype and after.shape == before.shape and after.device == before.device
        assert all(s.dtype == before.dtype and s.shape == before.shape for s in state)
        assert torch.isfinite(after).all()


@kernel_param
@given(problem=problems())
def test_a_positive_lr_moves_params_against_the_first_gradient(kernel, problem):
    """One step from zero state is a descent step for every rule here: sign(update) = -sign(g)."""
    params, grad_stream = problem
    updated, _ = _run(kernel, params, grad_stream[:1])
    grads = grad_stream[0]
    for before, after, grad in zip(params, updated, grads):
        moved = (after - before) * grad
        assert (moved <= 0).all()
