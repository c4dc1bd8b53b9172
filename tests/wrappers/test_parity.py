"""Every wrapper against its reference (torch.optim, or the package of an algorithm torch lacks):
torch's own configurations (optim_db) and the registry's, in fp32,
fp64 and bf16, over 0-d and non-contiguous params in two param groups, with a param whose grad
is None on some steps and one that never gets a grad; in every mode a wrapper has."""

import pytest
import torch

import optkernels._math
from tests.configs import CASES, untouched_state
from tests.helpers import (DTYPES, TOLERANCES, assert_same_state, make_grads, make_param_values, make_params,
                           tolerance)

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
    if hasattr(optimizer, "train"):  # schedule-free: steps in train mode only
        optimizer.train()
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


# The classes whose compiled rules run in every dtype (their first case): Adam's and SGD's rules,
# the two families the others follow (moments with a square root; a buffer or none). A compiled
# graph is per rule, branch and dtype (values never recompile), and cold compiling is most of this
# module's time: every other case runs the compiled modes in fp32, which covers every branch, and
# run_compiled's dtype handling, which all rules share, is covered by these two.
EVERY_DTYPE_COMPILED = (torch.optim.Adam, torch.optim.SGD)


def _compiled_once(case) -> bool:
    """The case that runs the compiled modes in every dtype: the first of its class, for the
    classes of EVERY_DTYPE_COMPILED."""
    return (case.reference in EVERY_DTYPE_COMPILED
            and case is next(other for other in CASES if other.reference is case.reference))


def _first_of_class(case) -> bool:
    return case is next(other for other in CASES if other.reference is case.reference)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_wrapper_matches_torch(case, dtype, mode, monkeypatch):
    if dtype.is_complex and not case.parity.complex:
        pytest.skip(f"{case.reference.__name__} does not take complex params")
    options, bitwise = MODES[mode]
    if options and not case.ours.elementwise:
        pytest.skip(f"{case.ours.__name__} has no flat or compiled mode: its update is not elementwise")
    if not bitwise and dtype != torch.float32 and not _compiled_once(case):
        pytest.skip("compiled modes run every case in fp32, every dtype in Adam's and SGD's first case")
    if not bitwise and case.entry.torch_class is None and not (dtype == torch.float32 and _first_of_class(case)):
        # compiling is what takes time here; their own test modules run the rest with a light backend
        pytest.skip("an algorithm torch lacks runs its compiled modes in its first case, in fp32")
    if mode == "chunked":
        monkeypatch.setattr(optkernels._math, "TEMPORARY_BYTES", CHUNK_BYTES)
    values = make_param_values(dtype)
    ours = _run(lambda groups, **kw: case.ours(groups, **kw, **options), values, case.kwargs)
    for reference_options, exact in case.reference_modes(dtype).values():
        reference = _run(lambda groups, **kw: case.reference(groups, **reference_options, **kw), values, case.kwargs)
        # compiled: the case's tolerance or the dtype's rounding, whichever is looser
        tolerance = case.tolerance if bitwise or case.tolerance is None else _looser(case.tolerance, dtype)
        assert_same_state(ours, reference, exact and bitwise, tolerance)


def _looser(case_tolerance: dict, dtype: torch.dtype) -> dict | None:
    dtype_tolerance = tolerance(dtype, exact=False)
    if dtype not in TOLERANCES:  # bf16: scaled per tensor by assert_same_state
        return None
    return {key: max(value, dtype_tolerance[key]) for key, value in case_tolerance.items()}
