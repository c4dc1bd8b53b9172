"""What the fast modes promise beyond equal numbers (tests/wrappers/test_parity.py checks those):
the compiled rules never recompile as an lr schedule moves, and a step's temporaries stay within
the budget, measured with the profiler's allocation events."""

import inspect

import pytest
import torch
from torch.optim import lr_scheduler

import optkernels
import optkernels._math
from optkernels import _native
import wrappers
from optkernels._torch_private import dynamo_counters
from benchmarks.measure import peak_extra_bytes
from tests.configs import API_KWARGS, GENERIC_WRAPPERS

ELEMENTWISE = [name for name in GENERIC_WRAPPERS if getattr(wrappers, name).elementwise]
CPU = torch.device("cpu")
MiB = 2**20


def _options(name: str, **extra) -> dict:
    """API_KWARGS plus maximize and weight decay where the wrapper takes them: the options that
    add temporaries of their own (the negated grads, coupled decay's grads)."""
    parameters = inspect.signature(getattr(wrappers, name)).parameters
    options = dict(API_KWARGS[name], **extra)
    for option, value in (("maximize", True), ("weight_decay", 0.1)):
        if option in parameters:
            options[option] = value
    return options


def _params(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(size, generator=generator)) for size in sizes]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator)
    return params


def _graphs() -> int:
    return dynamo_counters()["stats"]["unique_graphs"]


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "lists"])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_compiled_rules_never_recompile_over_a_cosine_schedule(name, flat):
    params = _params([(30, 20), (20,), (), (7, 3)])
    optimizer = getattr(wrappers, name)(params, **_options(name), flat=flat, compiled=True)
    schedule = lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    # the first steps compile; RAdam and AdaBelief take their rectified branch from step 6
    for _ in range(10):
        optimizer.step()
        schedule.step()
    graphs = _graphs()
    lrs = set()
    for _ in range(90):
        optimizer.step()
        schedule.step()
        lrs.add(optimizer.param_groups[0]["lr"])
    assert len(lrs) == 90
    assert _graphs() == graphs, f"{_graphs() - graphs} graphs compiled after step 10"


@pytest.mark.parametrize("native", [True, False], ids=["native", "inductor"])
@pytest.mark.parametrize("state_precision", ["bf16", "8bit"])
def test_low_precision_rules_never_recompile_over_a_cosine_schedule(state_precision, native, monkeypatch):
    """Neither the torch.compile'd rule (as off CPU) nor the native kernel (CPU: a library per
    variant, its numbers passed at each call) builds anything new as the lr moves."""
    monkeypatch.setenv(_native.DISABLE, "0" if native else "1")
    # quantised (4,096 elements and more) and full-precision moments: both branches
    params = _params([(64, 128), (20,), (7, 3)])
    optimizer = wrappers.AdamW(params, lr=1e-3, compiled=True, state_precision=state_precision)
    schedule = lr_scheduler.CosineAnnealingLR(optimizer, T_max=50)
    for _ in range(2):
        optimizer.step()
        schedule.step()
    graphs, builds = _graphs(), _native._library.cache_info().misses
    for _ in range(30):
        optimizer.step()
        schedule.step()
    assert _graphs() == graphs, f"{_graphs() - graphs} graphs compiled after step 2"
    assert _native._library.cache_info().misses == builds


def test_adam_compiles_once_whatever_the_shapes_and_hyperparameters():
    before = _graphs()
    optimizer = wrappers.Adam(_params([(30, 20), (20,), (), (7, 3)]), lr=1e-3, flat=True, compiled=True)
    optimizer.step()
    after_first = _graphs()
    optimizer.add_param_group({"params": _params([(1,), (1000,)], seed=1), "lr": 0.5, "betas": (0.5, 0.6),
                               "eps": 1e-3})
    for step in range(20):
        optimizer.param_groups[0]["lr"] = 1e-3 / (step + 1)
        optimizer.step()
    assert after_first - before <= 1  # none when another test compiled this branch already
    assert _graphs() == after_first


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_list_path_temporaries_stay_within_the_budget(name, monkeypatch):
    budget = MiB
    monkeypatch.setattr(optkernels._math, "TEMPORARY_BYTES", budget)
    # 2 MiB of small params, and two of 1 and 4 MiB that must be cut into slices
    params = _params([(64, 64)] * 32 + [(2**18,), (1024, 1024)])
    optimizer = getattr(wrappers, name)(params, **_options(name))
    optimizer.step()  # creates the state: allocations that stay
    assert peak_extra_bytes(optimizer.step, CPU) <= budget


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_flat_compiled_step_allocates_next_to_nothing(name):
    params = _params([(256, 256)] * 8)
    optimizer = getattr(wrappers, name)(params, **API_KWARGS[name], flat=True, compiled=True)
    for _ in range(2):
        optimizer.step()  # state, then the flat buffers
    # a few 0-d scalars per call; nothing the size of a param
    assert peak_extra_bytes(optimizer.step, CPU) < 64 * 1024


DECOUPLED_DECAY = {"AdamW": {}, "Adam": dict(decoupled_weight_decay=True), "RAdam": dict(decoupled_weight_decay=True),
                   "NAdam": dict(decoupled_weight_decay=True), "AdaBelief": dict(fixed_decay=True)}
# every elementwise optimizer with maximize and its coupled decay; those with a decoupled one
ONE_PASS = [(name, _options(name, **({"decoupled_weight_decay": False} if name == "AdaBelief" else {})))
            for name in ELEMENTWISE if name != "AdamW"]
ONE_PASS += [(name, dict(options, weight_decay=0.1, maximize=True)) for name, options in DECOUPLED_DECAY.items()]


@pytest.mark.parametrize(("name", "options"), ONE_PASS, ids=[f"{name}-{sorted(options)}" for name, options in ONE_PASS])
def test_flat_compiled_step_with_maximize_and_weight_decay_is_one_pass(name, options):
    """Torch's preparation of grads and params (maximize, coupled or decoupled decay) is inside the
    compiled rule: outside it, no op reads or writes the buffers."""
    params = _params([(256, 256)] * 8)
    optimizer = getattr(wrappers, name)(params, **options, flat=True, compiled=True)
    for _ in range(2):
        optimizer.step()
    with torch.profiler.profile(record_shapes=True) as profile:
        optimizer.step()
    buffer_shape = [sum(param.numel() for param in params)]
    views = ("aten::detach", "detach", "aten::as_strided")
    passes = {event.name for event in profile.events() if buffer_shape in event.input_shapes} - set(views)
    assert not passes


def _kernel_state(name, params):
    state = [[torch.zeros_like(param) for param in params] for _ in range(2)]
    return state + [[torch.tensor(1.0) for _ in params]] if name == "nadam" else state


@pytest.mark.parametrize("name", ["adam", "nadam"])  # NAdam: its 0-d mu_product read by every slice
def test_kernels_chunk_their_own_temporaries(name, monkeypatch):
    budget = MiB
    monkeypatch.setattr(optkernels._math, "TEMPORARY_BYTES", budget)
    params = _params([(2**20,), (3, 2**16)])
    grads = [param.grad for param in params]
    state = _kernel_state(name, params)
    kernel = getattr(optkernels, f"{name}_update")
    with torch.no_grad():
        peak = peak_extra_bytes(lambda: kernel(params, grads, *state, step=1, lr=0.1, weight_decay=0.1,
                                               maximize=True), CPU)
    assert peak <= budget


def test_nadam_kernel_in_slices_gives_the_numbers_it_gives_whole(monkeypatch):
    results = []
    for budget in (optkernels._math.TEMPORARY_BYTES, MiB // 4):
        monkeypatch.setattr(optkernels._math, "TEMPORARY_BYTES", budget)
        params = [param.detach() for param in _params([(2**18,), (3, 2**14)])]
        grads = [torch.randn(param.shape, generator=torch.Generator().manual_seed(7)) for param in params]
        state = _kernel_state("nadam", params)
        for step in range(1, 4):
            optkernels.nadam_update(params, grads, *state, step=step, lr=0.1)
        results.append(params + [t for tensors in state for t in tensors])
    for sliced, whole in zip(*results):
        assert torch.equal(sliced, whole)


MODES = {"flat": (dict(flat=True), True), "compiled": (dict(compiled=True), False),
         "flat-compiled": (dict(flat=True, compiled=True), False)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_every_mode_steps_as_the_list_path(name, mode):
    """Also for AdaBelief, which torch lacks (test_parity compares the others with torch.optim):
    maximize, weight decay, a param without grad on some steps, 12 steps."""
    options, bitwise = MODES[mode]
    results = []
    for mode_options in ({}, options):
        params = _params([(30, 20), (20,), (), (7, 3)])
        grads = [param.grad for param in params]
        optimizer = getattr(wrappers, name)(params, **_options(name), **mode_options)
        for step in range(12):
            params[1].grad = None if step % 4 == 3 else grads[1] * (step + 1)
            optimizer.step()
        results.append((params, optimizer))
    (list_params, list_optimizer), (params, optimizer) = results
    tolerance = dict(rtol=0, atol=0) if bitwise else {}
    for mine, theirs in zip(params, list_params):
        torch.testing.assert_close(mine, theirs, **tolerance)
        for key, value in list_optimizer.state[theirs].items():
            torch.testing.assert_close(optimizer.state[mine][key], value, **tolerance)
