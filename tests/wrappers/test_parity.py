"""Every wrapper against torch.optim: torch's own configurations (optim_db) and ours, in fp32,
fp64 and bf16, over 0-d and non-contiguous params in two param groups, with a param whose grad
is None on some steps and one that never gets a grad; in every mode a wrapper has."""

import pytest
import torch

import optkernels._math
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


# Our modes: the wrapper options, and whether results stay bitwise where the list path's are.
MODES = {
    "list": ({}, True),
    "chunked": ({}, True),  # under a temporaries budget of a few elements: runs and slices
    "flat": (dict(flat=True), True),
    "compiled": (dict(compiled=True), False),  # fused ops round differently
    "flat-compiled": (dict(flat=True, compiled=True), False),
}
CHUNK_BYTES = 64  # 16 fp32 elements per chunk's temporaries: every param is cut into slices


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_wrapper_matches_torch(case, dtype, mode, monkeypatch):
    if dtype.is_complex and not case.parity.complex:
        pytest.skip(f"torch.optim.{case.reference.__name__} does not take complex params")
    options, bitwise = MODES[mode]
    if options and not case.ours.elementwise:
        pytest.skip(f"{case.ours.__name__} has no flat or compiled mode: its update is not elementwise")
    if mode == "chunked":
        monkeypatch.setattr(optkernels._math, "TEMPORARY_BYTES", CHUNK_BYTES)
    values = make_param_values(dtype)
    ours = _run(lambda groups, **kw: case.ours(groups, **kw, **options), values, case.kwargs)
    for torch_mode, exact in case.torch_modes(dtype).items():
        reference = _run(lambda groups, **kw: case.reference(groups, foreach=torch_mode == "foreach", **kw),
                         values, case.kwargs)
        assert_same_state(ours, reference, exact and bitwise, case.tolerance)
