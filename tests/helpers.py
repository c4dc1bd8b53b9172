"""Building blocks the tests share: parameter sets with awkward layouts, gradient streams,
and comparing two optimizers' params and state."""

import torch
from torch.testing import assert_close

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]

# Where op order differs from the reference, results agree to rounding: a few ulps of the
# dtype, accumulated over the steps run. Cases whose op order matches are compared exactly.
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.complex64: dict(rtol=1e-6, atol=1e-6),
}
# bf16 keeps 8 significant bits: one rounding apart per step drifts by a few ulps *of the
# tensor's scale* (momentum buffers reach ~8, where an ulp is 0.06), so atol scales with it.
LOW_PRECISION_ULPS = 4
EXACT = dict(rtol=0, atol=0)


def tolerance(dtype: torch.dtype, exact: bool, reference: torch.Tensor | None = None) -> dict:
    if exact:
        return EXACT
    if dtype in TOLERANCES:
        return TOLERANCES[dtype]
    scale = 1.0 if reference is None else max(1.0, reference.abs().max().item())
    return dict(rtol=1.6e-2, atol=LOW_PRECISION_ULPS * torch.finfo(dtype).eps * scale)

# (shape, layout): what models have, plus 0-d and non-contiguous params.
LAYOUTS = [((4, 5), "contiguous"), ((7,), "contiguous"), ((), "contiguous"), ((6, 3), "transposed"),
           ((5,), "strided")]


def laid_out(values: torch.Tensor, layout: str) -> torch.Tensor:
    """A fresh tensor equal to ``values`` laid out as asked (clone would make it contiguous)."""
    if layout == "transposed":
        out = torch.empty(values.shape[::-1], dtype=values.dtype).t()
    elif layout == "strided":
        out = torch.empty(values.shape[0] * 2, dtype=values.dtype)[::2]
    else:
        out = torch.empty(values.shape, dtype=values.dtype)
    return out.copy_(values)


def same_layout_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy with the same strides (``clone`` makes non-dense tensors contiguous), so that
    every run does its elementwise ops over the same memory layout."""
    return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype).copy_(tensor)


def _randn(shape, generator, dtype: torch.dtype) -> torch.Tensor:
    """Drawn in double precision, then rounded: every dtype sees the same numbers."""
    wide = torch.complex128 if dtype.is_complex else torch.float64
    return torch.randn(shape, generator=generator, dtype=wide).to(dtype)


def random_tensors(dtype: torch.dtype, seed: int, layouts=LAYOUTS) -> list[torch.Tensor]:
    """Fresh random tensors, one per ``(shape, layout)``, the same numbers for every dtype."""
    generator = torch.Generator().manual_seed(seed)
    return [laid_out(_randn(shape, generator, dtype), layout) for shape, layout in layouts]


def copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [same_layout_copy(t) for t in tensors]


def make_param_values(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [_randn(shape, generator, dtype) for shape, _ in LAYOUTS]


def make_params(values: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    """Independent parameters equal to ``values``, each in its layout from LAYOUTS."""
    params = [torch.nn.Parameter(laid_out(v, layout)) for v, (_, layout) in zip(values, LAYOUTS)]
    assert not params[3].is_contiguous() and not params[4].is_contiguous()
    return params


def make_grads(values: list[torch.Tensor], step: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed * 10_000 + step)
    return [_randn(v.shape, generator, v.dtype) for v in values]


def assert_same_state(ours: torch.optim.Optimizer, reference: torch.optim.Optimizer, exact: bool,
                      override: dict | None = None) -> None:
    """Params, state keys and every state tensor of two optimizers over the same params, in order.

    Bitwise equal when ``exact``; else within ``override`` or the dtype's rounding tolerance.
    """
    ours_params = [p for g in ours.param_groups for p in g["params"]]
    reference_params = [p for g in reference.param_groups for p in g["params"]]

    def check(mine, theirs, what):
        tol = override if override and not exact else tolerance(theirs.dtype, exact, theirs)
        assert_close(mine, theirs, **tol, msg=lambda m: f"{what}: {m}")

    for index, (mine, theirs) in enumerate(zip(ours_params, reference_params, strict=True)):
        check(mine, theirs, f"param {index}")
        mine_state, their_state = ours.state.get(mine, {}), reference.state.get(theirs, {})
        assert mine_state.keys() == their_state.keys(), f"param {index}: state keys differ"
        for key, value in their_state.items():
            if key == "step":  # a count: always exact
                assert_close(mine_state[key], value, **EXACT, msg=lambda m: f"param {index} step: {m}")
            else:
                check(mine_state[key], value, f"param {index} {key}")


def assert_low_precision_close(mine, theirs, what, *, param=False):
    """Low-precision state or params of two paths of the same rule (eager and compiled): equal,
    but where the eager ``sqrt`` (MKL's, not correctly rounded) moved a value across a
    rounding boundary, in under 1 % of places: there bf16 params differ by an ulp or two (the
    steps compound; compared as values, as near 0 that is many ulps) or by the change of an
    update a changed code makes, codes and bf16 moments by a step or two of their format."""
    if mine.dtype == torch.float32:
        assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=what)
        return
    as_int = torch.int16 if mine.dtype == torch.bfloat16 else torch.uint8
    differ = mine.view(as_int) != theirs.view(as_int)
    assert differ.float().mean() < 0.01, what
    if param:
        # 2 ulps; or, after a code that took the next step of e4m3 (1/8 relative, 1/4 in v), an
        # update off by as much as a tenth of itself: here under the lr (1e-2)
        assert_close(mine.float(), theirs.float(), rtol=2**-6, atol=1e-2, msg=what)
    else:
        assert ((mine.view(as_int).int() - theirs.view(as_int).int()).abs()[differ] <= 2).all(), what


# How far low-precision params may end from fp32's after a few steps, as a share of the distance
# they move: a code rounded stochastically is within one step of e4m3 of its value (1/8 relative)
# in m and in sqrt(v), so an update is off by at most ~28 %; bf16 state by 2^-8 relative.
LOW_PRECISION_TRACKING = {"bf16": 0.1, "8bit": 0.25}
# The first moment, as a share of its largest value. 8-bit: each step's code is within one e4m3
# step of its value, at most 32/448 = 1/14 of the block's largest; rounded stochastically, the
# errors of successive steps add as a random walk that decays by beta1 (0.9: sqrt(sum 0.81^k) =
# 2.3 of them), about 0.16.
FIRST_MOMENT_TRACKING = {"bf16": 0.1, "8bit": 0.2}


# Wrapper cases of the low-precision options: bf16 moments, 8-bit, bf16 params rounded stochastically
LOW_PRECISION_WRAPPER_CASES = {"bf16": dict(state_precision="bf16"), "8bit": dict(state_precision="8bit"),
                               "bf16-params-8bit": dict(state_precision="8bit", stochastic_rounding=True,
                                                        dtype=torch.bfloat16)}


def low_precision_stepped(steps=8, *, cls, dtype=torch.float32, **options):
    """A quantised (64x80) and a small param (kept float in 8-bit) of ``dtype``, ``steps`` steps
    of ``cls`` at lr 0.01 on the same grads whatever the options: (params, optimizer)."""
    params = [torch.nn.Parameter(torch.randn(64, 80, generator=torch.Generator().manual_seed(0)).to(dtype)),
              torch.nn.Parameter(torch.randn(10, generator=torch.Generator().manual_seed(1)).to(dtype))]
    optimizer = cls(params, lr=1e-2, **options)
    for step in range(steps):
        generator = torch.Generator().manual_seed(10 + step)
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator).to(dtype)
        optimizer.step()
    return params, optimizer
