"""Every wrapper against torch.optim: torch's own configurations (optim_db) and ours, in fp32,
fp64 and bf16, over 0-d and non-contiguous params in two param groups, with a param whose grad
is None on some steps and one that never gets a grad."""

import pytest
import torch

from tests.configs import CASES, untouched_state
from tests.helpers import DTYPES, assert_same_state, make_grads, make_param_values, make_params

STEPS = 10  # past RAdam's switch to rectified steps (step 6 with beta2=0.999)
SKIPPED_EVERY = 3  # params[1] has no grad on every third step, so its step count lags


def _groups(params, kwargs):
    lr = kwargs.get("lr", 1e-3)
    return [{"params": params[:3]}, {"params": params[3:], "lr": lr * 0.5}]


def _run(optimizer_factory, values, kwargs):
    params = make_params(values)
    never_trained = torch.nn.Parameter(torch.ones(3, dtype=values[0].dtype))
    groups = _groups(params, kwargs)
    groups[1]["params"].append(never_trained)
    optimizer = optimizer_factory(groups, **kwargs)
    for step in range(STEPS):
        for index, (param, grad) in enumerate(zip(params, make_grads(values, step))):
            param.grad = None if index == 1 and step % SKIPPED_EVERY == 2 else grad
        optimizer.step()
    assert untouched_state(optimizer, never_trained) and torch.equal(never_trained, torch.ones(3, dtype=values[0].dtype))
    return optimizer


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_wrapper_matches_torch(case, dtype):
    if dtype.is_complex and not case.parity.complex:
        pytest.skip(f"torch.optim.{case.reference.__name__} does not take complex params")
    values = make_param_values(dtype)
    ours = _run(case.ours, values, case.kwargs)
    for mode, exact in case.torch_modes(dtype).items():
        reference = _run(lambda groups, **kw: case.reference(groups, foreach=mode == "foreach", **kw),
                         values, case.kwargs)
        assert_same_state(ours, reference, exact, case.tolerance)
