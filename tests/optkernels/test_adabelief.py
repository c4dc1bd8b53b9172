"""``optkernels.adabelief_update`` (with ``weight_decay_l2`` in front) against the per-tensor
reference of the paper, ``tests.reference.adabelief_reference``, for every combination of options.

Where the kernel and the reference run the same ops in the same order, results must be equal
bit for bit: that is every unrectified update. The rectified rule computes its step size from
RAdam's formula for r_t in the reference and from the official code's expression in the kernel;
the two round differently in the last bits of a Python float, so rectified runs are compared
with a tolerance of a few ulps of the dtype (written below), never looser.
"""

import pytest
import torch
from torch.testing import assert_close

import optkernels.adam
from optkernels import UnsupportedOptionError, adabelief_update, weight_decay_l2
from optkernels.quantization import MIN_QUANTIZED_NUMEL, load_state, new_scales, new_state
from tests.helpers import FIRST_MOMENT_TRACKING, LOW_PRECISION_TRACKING, laid_out, same_layout_copy
from tests.reference import ADABELIEF_DECAY_MODES, adabelief_reference

TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float32: dict(rtol=1e-6, atol=1e-7),
}
EXACT = dict(rtol=0, atol=0)

# Tensors passed in one call: a matrix, a vector, a 0-d tensor, a transposed matrix, a strided
# view and an empty tensor. State tensors get the same layout as their param.
LAYOUTS = [((4, 5), "contiguous"), ((7,), "contiguous"), ((), "contiguous"), ((6, 3), "transposed"),
           ((5,), "strided"), ((0,), "contiguous")]
# Steps already taken by each tensor before the first call when `step` is given per tensor: in
# one call some tensors are still in the SGD warm-up (rho_t < 5: steps 1-5 for beta2 = 0.999 and
# for 0.9) while others are rectified (step >= 6).
STEP_OFFSETS = [0, 3, 5, 9, 1, 2]
STEPS = 12  # crosses the rectification threshold
# beta2=0.999 (the default) makes s_t almost a running sum, so within 12 steps it hardly ever
# decreases and the AMSGrad maximum equals s_t; with beta2=0.9 it often decreases, so reading
# s_t where the maximum belongs (or the reverse) shows.
BETA2S = {"beta2=0.999": 0.999, "beta2=0.9": 0.9}
LR = 1e-2
# eps comparable to s_t (about (1 - beta2) g^2), so where eps goes and its accumulation in s_t
# change the numbers far beyond the tolerances.
EPS = 1e-4
DECAY_MODES = ADABELIEF_DECAY_MODES




def random_tensors(dtypes, seed: int, layouts=LAYOUTS) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout)
            for (shape, layout), dtype in zip(layouts, dtypes)]


class Run:
    """The kernel's tensors and, beside them, the reference's copies of the same tensors."""

    def __init__(self, dtypes, *, amsgrad, step_offsets, layouts=LAYOUTS):
        self.dtypes, self.layouts, self.amsgrad = dtypes, layouts, amsgrad
        self.params = random_tensors(dtypes, seed=0, layouts=layouts)
        self.initial = [same_layout_copy(p) for p in self.params]
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_vars = [torch.zeros_like(p) for p in self.params]
        self.max_exp_avg_vars = [torch.zeros_like(p) for p in self.params] if amsgrad else None
        self.ref_params = [same_layout_copy(p) for p in self.params]
        self.ref_states = []
        for index, param in enumerate(self.params):
            state = {"step": step_offsets[index], "exp_avg": same_layout_copy(self.exp_avgs[index]),
                     "exp_avg_var": same_layout_copy(self.exp_avg_vars[index])}
            if amsgrad:
                state["max_exp_avg_var"] = same_layout_copy(self.max_exp_avg_vars[index])
            self.ref_states.append(state)

    def grads(self, call: int) -> list[torch.Tensor]:
        return random_tensors(self.dtypes, seed=1000 + call, layouts=self.layouts)

    def step(self, call: int, step, *, lr, beta1, beta2, eps, rectify, degenerated_to_sgd, weight_decay,
             decoupled_weight_decay, fixed_decay) -> None:
        """One kernel call and one reference step per tensor, on the same gradients; checks that
        neither changed the gradients."""
        grads = self.grads(call)
        grads_before = [same_layout_copy(g) for g in grads]
        kernel_grads = weight_decay_l2(self.params, grads, weight_decay=weight_decay, lr=lr,
                                       decoupled=decoupled_weight_decay, fixed=decoupled_weight_decay and fixed_decay)
        adabelief_update(self.params, kernel_grads, self.exp_avgs, self.exp_avg_vars, self.max_exp_avg_vars,
                         step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, rectify=rectify,
                         degenerated_to_sgd=degenerated_to_sgd)
        for grad, before in zip(grads, grads_before):
            assert torch.equal(grad, before) and grad.stride() == before.stride(), "the kernel changed a grad"
        for param, grad, state in zip(self.ref_params, grads, self.ref_states):
            adabelief_reference(param, grad, state, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                                amsgrad=self.amsgrad, decoupled_weight_decay=decoupled_weight_decay,
                                fixed_decay=fixed_decay, rectify=rectify, degenerated_to_sgd=degenerated_to_sgd)
        for grad, before in zip(grads, grads_before):
            assert torch.equal(grad, before), "the reference changed a grad"

    def assert_matches_reference(self, *, exact: bool, where: str) -> None:
        """Params and state equal the reference's: bit for bit if ``exact``, else within TOLERANCES."""
        mine, theirs, names = [], [], []
        for index, (param, state) in enumerate(zip(self.params, self.ref_states)):
            mine += [param, self.exp_avgs[index], self.exp_avg_vars[index]]
            theirs += [self.ref_params[index], state["exp_avg"], state["exp_avg_var"]]
            names += [f"tensor {index} {self.layouts[index]}, {name}" for name in ("param", "exp_avg", "exp_avg_var")]
            if self.amsgrad:
                mine.append(self.max_exp_avg_vars[index])
                theirs.append(state["max_exp_avg_var"])
                names.append(f"tensor {index} {self.layouts[index]}, max_exp_avg_var")
        assert_all_close(mine, theirs, names, exact=exact, where=where)


def assert_all_close(mine, theirs, names, *, exact: bool, where: str) -> None:
    """``assert_close`` on each pair, with a fast first pass (``torch.equal``/``torch.allclose``,
    the same test as ``assert_close`` makes) that keeps the grid quick when everything agrees."""
    def tolerance(dtype):
        return EXACT if exact else TOLERANCES[dtype]

    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
    if all(torch.equal(a, b) or not exact and torch.allclose(a, b, **tolerance(a.dtype))
           for a, b in zip(mine, theirs)):
        return
    for a, b, name in zip(mine, theirs, names):
        assert_close(a, b, **tolerance(a.dtype), msg=lambda m: f"{where}, {name}: {m}")
    raise AssertionError(f"{where}: torch.equal/allclose and assert_close disagree")


def step_argument(kind: str, call: int, offsets: list[int]):
    """`step` as the kernel takes it: one int, or one value per tensor (0-d float32 tensors as
    torch.optim keeps them, or ints)."""
    if kind == "int":
        return call
    if kind == "tensors":
        return [torch.tensor(float(call + offset)) for offset in offsets]
    return [call + offset for offset in offsets]


def run_against_reference(*, amsgrad, rectify, degenerated_to_sgd, decay, beta2, step_kind, dtype) -> Run:
    """STEPS calls of the kernel, each checked against the reference; returns the run."""
    offsets = STEP_OFFSETS if step_kind == "tensors" else [0] * len(LAYOUTS)
    run = Run([dtype] * len(LAYOUTS), amsgrad=amsgrad, step_offsets=offsets)
    max_was_active = False
    for call in range(1, STEPS + 1):
        run.step(call, step_argument(step_kind, call, offsets), lr=LR, beta1=0.9, beta2=beta2, eps=EPS,
                 rectify=rectify, degenerated_to_sgd=degenerated_to_sgd, **DECAY_MODES[decay])
        run.assert_matches_reference(exact=not rectify, where=f"call {call}")
        if amsgrad:
            max_was_active |= any(not torch.equal(state["max_exp_avg_var"], state["exp_avg_var"])
                                  for state in run.ref_states)
    if amsgrad and beta2 == BETA2S["beta2=0.9"]:
        assert max_was_active, "the AMSGrad maximum never differed from s_t: the case tests nothing"
    return run


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("beta2", list(BETA2S.values()), ids=list(BETA2S))
@pytest.mark.parametrize("decay", list(DECAY_MODES))
@pytest.mark.parametrize("degenerated_to_sgd", [True, False], ids=["sgd-warmup", "no-sgd-warmup"])
@pytest.mark.parametrize("rectify", [True, False], ids=["rectified", "unrectified"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adabelief", "amsgrad"])
def test_matches_reference(amsgrad, rectify, degenerated_to_sgd, decay, beta2, dtype):
    """Every option, with `step` one 0-d tensor per tensor, different in one call: some tensors
    are in the warm-up (rho_t < 5) while others are rectified."""
    run = run_against_reference(amsgrad=amsgrad, rectify=rectify, degenerated_to_sgd=degenerated_to_sgd,
                                decay=decay, beta2=beta2, step_kind="tensors", dtype=dtype)
    for param, initial in zip(run.params, run.initial):
        assert param.numel() == 0 or not torch.equal(param, initial), "a param never moved"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("decay", ["no-decay", "coupled", "decoupled"])
@pytest.mark.parametrize("rectify", [True, False], ids=["rectified", "unrectified"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adabelief", "amsgrad"])
def test_int_step_matches_reference(amsgrad, rectify, decay, dtype):
    """`step` as one int shared by every tensor (all cross the threshold in the same call)."""
    run_against_reference(amsgrad=amsgrad, rectify=rectify, degenerated_to_sgd=True, decay=decay, beta2=0.9,
                          step_kind="int", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("decay", list(DECAY_MODES))
@pytest.mark.parametrize("degenerated_to_sgd", [True, False], ids=["sgd-warmup", "no-sgd-warmup"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adabelief", "amsgrad"])
def test_never_rectified_matches_reference(amsgrad, degenerated_to_sgd, decay, dtype):
    """beta2=0.5: rho_t < rho_inf = 3 never reaches 5, so rectify=True runs the SGD warm-up all
    along, or, without it, never moves a param other than by weight decay."""
    run = run_against_reference(amsgrad=amsgrad, rectify=True, degenerated_to_sgd=degenerated_to_sgd,
                                decay=decay, beta2=0.5, step_kind="tensors", dtype=dtype)
    frozen = not degenerated_to_sgd and decay in ("no-decay", "coupled")  # nothing can move a param
    for param, initial in zip(run.params, run.initial):
        assert param.numel() == 0 or torch.equal(param, initial) == frozen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("rectify", [True, False], ids=["rectified", "unrectified"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adabelief", "amsgrad"])
def test_default_hyperparameters_match_reference(amsgrad, rectify, dtype):
    """The package defaults (lr=1e-3, eps=1e-16, no weight decay), where eps is negligible."""
    run = Run([dtype] * len(LAYOUTS), amsgrad=amsgrad, step_offsets=STEP_OFFSETS)
    for call in range(1, STEPS + 1):
        run.step(call, step_argument("tensors", call, STEP_OFFSETS), lr=1e-3, beta1=0.9, beta2=0.999,
                 eps=1e-16, rectify=rectify, degenerated_to_sgd=True, **DECAY_MODES["no-decay"])
        run.assert_matches_reference(exact=not rectify, where=f"call {call}")


@pytest.mark.parametrize("rectify", [True, False], ids=["rectified", "unrectified"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adabelief", "amsgrad"])
def test_mixed_dtypes_in_one_call(amsgrad, rectify):
    """fp32 and fp64 tensors, with different step counts, in one call: grouped by the kernel."""
    dtypes = [torch.float32, torch.float64, torch.float64, torch.float32, torch.float64, torch.float32]
    run = Run(dtypes, amsgrad=amsgrad, step_offsets=STEP_OFFSETS)
    for call in range(1, STEPS + 1):
        run.step(call, step_argument("tensors", call, STEP_OFFSETS), lr=LR, beta1=0.9, beta2=0.999, eps=EPS,
                 rectify=rectify, degenerated_to_sgd=True, **DECAY_MODES["coupled"])
        run.assert_matches_reference(exact=not rectify, where=f"call {call}")


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adabelief", "amsgrad"])
def test_step_forms_agree(amsgrad):
    """One int, a list of equal ints, and a list of equal 0-d tensors give the same bits."""
    runs = {kind: Run([torch.float64] * len(LAYOUTS), amsgrad=amsgrad, step_offsets=[0] * len(LAYOUTS))
            for kind in ("int", "ints", "tensors")}
    for call in range(1, STEPS + 1):
        for kind, run in runs.items():
            run.step(call, step_argument(kind, call, [0] * len(LAYOUTS)), lr=LR, beta1=0.9, beta2=0.999,
                     eps=EPS, rectify=True, degenerated_to_sgd=True, **DECAY_MODES["decoupled"])
    for run in (runs["ints"], runs["tensors"]):
        for mine, theirs in zip(run.params + run.exp_avg_vars, runs["int"].params + runs["int"].exp_avg_vars):
            assert_close(mine, theirs, **EXACT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("decay", ["no-decay", "coupled", "decoupled"])
@pytest.mark.parametrize("degenerated_to_sgd", [True, False], ids=["sgd-warmup", "no-sgd-warmup"])
@pytest.mark.parametrize("rectify", [True, False], ids=["rectified", "unrectified"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adabelief", "amsgrad"])
def test_zero_lr_leaves_params_unchanged(amsgrad, rectify, degenerated_to_sgd, decay, dtype):
    """lr=0 moves no param (fixed decay is left out: it scales by 1 - weight_decay whatever lr)."""
    run = Run([dtype] * len(LAYOUTS), amsgrad=amsgrad, step_offsets=STEP_OFFSETS)
    for call in range(1, STEPS + 1):
        run.step(call, step_argument("tensors", call, STEP_OFFSETS), lr=0.0, beta1=0.9, beta2=0.999, eps=EPS,
                 rectify=rectify, degenerated_to_sgd=degenerated_to_sgd, **DECAY_MODES[decay])
    for param, initial, exp_avg in zip(run.params, run.initial, run.exp_avgs):
        assert torch.equal(param, initial)
        assert exp_avg.numel() == 0 or exp_avg.abs().sum() > 0, "the state should still be updated"


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adabelief", "amsgrad"])
def test_no_update_before_rectification_without_sgd_warmup(amsgrad):
    """rectify and not degenerated_to_sgd: params stay put while rho_t < 5 (steps 1-5 for
    beta2=0.999) and move from step 6; with beta2=0.5, rho_t < rho_inf = 3 never reaches 5."""
    for beta2, first_move in ((0.999, 6), (0.5, None)):
        run = Run([torch.float64] * len(LAYOUTS), amsgrad=amsgrad, step_offsets=[0] * len(LAYOUTS))
        for call in range(1, STEPS + 1):
            before = [same_layout_copy(p) for p in run.params]
            run.step(call, call, lr=LR, beta1=0.9, beta2=beta2, eps=EPS, rectify=True, degenerated_to_sgd=False,
                     **DECAY_MODES["no-decay"])
            moved = [not torch.equal(p, b) for p, b in zip(run.params, before) if p.numel()]
            if first_move is None or call < first_move:
                assert not any(moved), f"beta2={beta2}: a param moved at step {call}"
            else:
                assert all(moved), f"beta2={beta2}: a param did not move at step {call}"
        assert run.exp_avg_vars[0].min() > 0


def test_tensor_lr_equals_float_lr():
    """A 0-d tensor lr (as torch.optim accepts) gives the same bits as the float."""
    runs = [Run([torch.float32] * len(LAYOUTS), amsgrad=True, step_offsets=[0] * len(LAYOUTS)) for _ in range(2)]
    for call in range(1, STEPS + 1):
        for run, lr in zip(runs, (torch.tensor(LR, dtype=torch.float64), LR)):
            run.step(call, call, lr=lr, beta1=0.9, beta2=0.999, eps=EPS, rectify=True, degenerated_to_sgd=True,
                     **DECAY_MODES["no-decay"])
    for mine, theirs in zip(runs[0].params, runs[1].params):
        assert torch.equal(mine, theirs)



# --- low-precision state (state_precision="bf16" / "8bit", stochastic rounding of bf16 params) ---
# Shapes: quantised (whole blocks), kept float (under 4096 elements), quantised with a partial block
LOW_PRECISION_SHAPES = [(16, 256), (7, 5), (MIN_QUANTIZED_NUMEL + 3,)]
LOW_PRECISION_CASES = {"bf16": dict(state_precision="bf16"), "8bit": dict(state_precision="8bit"),
                       "bf16-params-8bit": dict(state_precision="8bit", stochastic_rounding=True)}
LOW_PRECISION_STEPS = 8  # rectified: 5 SGD-like steps (rho_t < 5), then 3 adaptive


def low_precision_run(steps=LOW_PRECISION_STEPS, *, state_precision="fp32", stochastic_rounding=False,
                      bf16_params=False, upcast=False, float_state=False, lr=LR, **options):
    """``steps`` calls from the same start on the same grads whatever the options. ``bf16_params``:
    params and grads rounded to bf16 (``upcast``: then held in float32, the fp32 algorithm's run
    from the same start); ``float_state``: float32 state whatever ``state_precision`` (nothing
    rounded: the low-precision rule alone). Returns the params, the moments' float32 values, and
    the stored moments and scales."""
    dtype = torch.bfloat16 if bf16_params else torch.float32
    as_run = (lambda t: t.to(dtype).float()) if upcast else (lambda t: t.to(dtype))
    generator = torch.Generator().manual_seed(0)
    params = [as_run(torch.randn(shape, generator=generator)) for shape in LOW_PRECISION_SHAPES]
    precision = "fp32" if float_state else state_precision
    state = {name: [new_state(p, precision, stochastic_rounding=stochastic_rounding) for p in params]
             for name in ("exp_avgs", "exp_avg_vars")}
    scales = {}
    if state_precision == "8bit":
        scales = {f"{name[:-1]}_scales": [new_scales(s) for s in state[name]] for name in state}
    for step in range(1, steps + 1):
        generator = torch.Generator().manual_seed(100 + step)
        grads = [as_run(torch.randn(p.shape, generator=generator)) for p in params]
        adabelief_update(params, grads, state["exp_avgs"], state["exp_avg_vars"], step=step, lr=lr,
                         state_precision=state_precision, stochastic_rounding=stochastic_rounding, seed=3,
                         **scales, **options)
    values = {name: [load_state(s, scales[f"{name[:-1]}_scales"][i] if scales else None, signed=name == "exp_avgs")
                     for i, s in enumerate(state[name])] for name in state}
    return dict(params=params, **values, stored=state, scales=scales)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("case", list(LOW_PRECISION_CASES.values()), ids=list(LOW_PRECISION_CASES))
@pytest.mark.parametrize("rectify", [True, False], ids=["rectified", "unrectified"])
def test_low_precision_tracks_fp32(rectify, case, compiled, one_thread):
    """8 steps of lr 0.01 against the fp32 kernel from the same start on the same grads: params
    within the format's share of the distance they move (8 lr; ``LOW_PRECISION_TRACKING``: a
    tenth for bf16 state, a quarter for 8-bit codes rounded stochastically; bf16 params rounded
    stochastically also within the bf16 spacing each step's rounding may add, 8 times 2^-7 |p|),
    the first moment within ``FIRST_MOMENT_TRACKING`` of its largest value."""
    bf16_params = case.get("stochastic_rounding", False)
    precision = case["state_precision"]
    share = LOW_PRECISION_TRACKING[precision]
    reference = low_precision_run(rectify=rectify, bf16_params=bf16_params, upcast=True)
    ours = low_precision_run(rectify=rectify, bf16_params=bf16_params, compiled=compiled, **case)
    rtol = LOW_PRECISION_STEPS * 2**-7 if bf16_params else 0
    for index, (mine, theirs) in enumerate(zip(ours["params"], reference["params"])):
        assert_close(mine.float(), theirs, rtol=rtol, atol=share * LOW_PRECISION_STEPS * LR, msg=f"param {index}")
    m = ours["exp_avgs"][0]
    assert_close(m, reference["exp_avgs"][0], rtol=0, atol=FIRST_MOMENT_TRACKING[precision] * m.abs().max().item())


SCHEDULES = {"rectified": dict(rectify=True), "no-sgd-warmup": dict(rectify=True, degenerated_to_sgd=False),
             "unrectified": dict(rectify=False)}


# the native kernel in every case; torch.compile's rule (a compile of 5-25 s per graph) in one
@pytest.mark.parametrize("schedule,case,native", [
    *(pytest.param(SCHEDULES[s], LOW_PRECISION_CASES[c], True, id=f"{s}-{c}-native")
      for s in SCHEDULES for c in LOW_PRECISION_CASES),
    pytest.param(SCHEDULES["unrectified"], LOW_PRECISION_CASES["8bit"], False, id="unrectified-8bit-inductor")])
def test_low_precision_compiled_equals_eager(schedule, case, native, one_thread, monkeypatch):
    """The same rule compiled (the native CPU kernel; ``inductor``: torch.compile's, as off CPU):
    scales equal to rounding;
    codes equal but where a value sits on a rounding boundary (then the next code: at under 1% of
    the elements); bf16 moments and params one bf16 step apart at under 1% of the elements
    (stochastic rounding of a value one float32 ulp apart); float32 state to rounding, params
    too but at under 1% of the elements (there, within a bf16 step per step taken)."""
    if not native:
        monkeypatch.setattr(optkernels.adam, "native_low_precision_steps", lambda lists, **scalars: lists)
    bf16_params = case.get("stochastic_rounding", False)
    eager = low_precision_run(bf16_params=bf16_params, **schedule, **case)
    compiled = low_precision_run(bf16_params=bf16_params, compiled=True, **schedule, **case)
    for name, scales in eager["scales"].items():
        for mine, theirs in zip(compiled["scales"][name], scales):
            assert_close(mine, theirs, rtol=1e-6, atol=0)
    for name in ("exp_avgs", "exp_avg_vars"):
        for mine, theirs in zip(compiled["stored"][name], eager["stored"][name]):
            if theirs.dtype == torch.float32:
                assert_close(mine, theirs, rtol=1e-5, atol=1e-7, msg=name)
                continue
            assert (mine != theirs).float().mean() < 0.01, name
            if theirs.dtype == torch.uint8:  # e4m3 codes as signed indices, monotone in the value
                index = lambda codes: torch.where(codes >= 0x80, 0x80 - codes.int(), codes.int())
                assert (index(mine) - index(theirs)).abs().max() <= 1, name
            else:
                assert_close(mine.float(), theirs.float(), rtol=2**-7, atol=0, msg=name)
    for mine, theirs in zip(compiled["params"], eager["params"]):
        # beyond rounding only where an earlier step's code or bf16 value took its neighbour
        apart = (mine.float() - theirs.float()).abs() > 1e-5 * theirs.float().abs() + 1e-6
        assert apart.float().mean() < 0.01
        # each step's rounding may take the other neighbour there: at most a bf16 step per step
        assert_close(mine.float(), theirs.float(), rtol=LOW_PRECISION_STEPS * 2**-7, atol=0)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("schedule", [dict(rectify=True), dict(rectify=True, degenerated_to_sgd=False),
                                      dict(rectify=False)], ids=["rectified", "no-sgd-warmup", "unrectified"])
def test_low_precision_rule_with_float_state_equals_the_fp32_kernel(schedule, compiled, one_thread):
    """The low-precision rule with float32 state (nothing rounded) is the fp32 kernel's update to
    rounding at every step: the SGD-like steps before rectification, none without
    degenerated_to_sgd, the adaptive ones, eps added into s_t; coupled and decoupled decay."""
    for decay in (dict(weight_decay=0.01), dict(param_scale=1 - LR * 0.01)):
        for steps in range(1, LOW_PRECISION_STEPS + 1):
            reference = low_precision_run(steps, eps=EPS, **schedule, **decay)
            ours = low_precision_run(steps, eps=EPS, state_precision="8bit", float_state=True, compiled=compiled,
                                     **schedule, **decay)
            for name in ("params", "exp_avgs", "exp_avg_vars"):
                for mine, theirs in zip(ours[name], reference[name]):
                    assert_close(mine, theirs, rtol=1e-6, atol=1e-6, msg=f"{name} at step {steps}, {decay}")


def test_low_precision_no_update_before_rectification_without_sgd_warmup(one_thread):
    """rectify and not degenerated_to_sgd: in 8-bit too, params stay put for steps 1-5 and move at 6."""
    start = low_precision_run(0)["params"]
    for steps, moves in ((5, False), (6, True)):
        params = low_precision_run(steps, state_precision="8bit", degenerated_to_sgd=False)["params"]
        assert all(torch.equal(p, s) != moves for p, s in zip(params, start)), steps


def test_low_precision_checks():
    run = low_precision_run(0, state_precision="8bit")
    params = run["params"]
    grads = [torch.ones_like(p) for p in params]
    args = (params, grads, run["stored"]["exp_avgs"], run["stored"]["exp_avg_vars"])
    with pytest.raises(ValueError, match="exp_avg_scales"):
        adabelief_update(*args, step=1, lr=0.1, state_precision="8bit")
    with pytest.raises(UnsupportedOptionError, match="AMSGrad"):
        adabelief_update(*args, [torch.zeros_like(p) for p in params], step=1, lr=0.1, state_precision="8bit",
                         **run["scales"])
    with pytest.raises(ValueError, match="go with"):
        adabelief_update([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], step=1, lr=0.1,
                         exp_avg_var_scales=[None])
    assert all(torch.equal(p, q) for p, q in zip(params, low_precision_run(0)["params"]))  # nothing changed
