"""Input validation of the functional kernels, and what a kernel must never touch.

Every bad call must raise ``ValueError``/``TypeError``/``RuntimeError`` with a message that names
the offending argument, and must leave every tensor it was given bit for bit as it was. Kernels
never mutate ``grads``; mixed dtype/device lists and per-tensor step counts give the same numbers
as separate calls.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch

from optkernels import adabelief_update, adam_update, radam_update, sgd_update, weight_decay_l2

# ------------------------------------------------------------------------------------------------
# The calls under test: one kernel, the names of its positional tensor lists, its keyword options.
# ------------------------------------------------------------------------------------------------

POSITIVE_STATE = {"exp_avg_sqs", "max_exp_avg_sqs", "exp_avg_vars", "max_exp_avg_vars"}


@dataclass(frozen=True)
class KernelCall:
    id: str
    kernel: Callable[..., Any]
    lists: tuple[str, ...]  # positional tensor lists, in order
    kwargs: dict[str, Any] = field(default_factory=dict)
    optional: tuple[str, ...] = ()  # lists that may legitimately be None

    @property
    def takes_step(self) -> bool:
        return "step" in self.kwargs

    def make(self, shapes=((3,), (2, 4)), dtype=torch.float32, device="cpu", seed=0) -> dict[str, list]:
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for name in self.lists:
            tensors = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
                       for s in shapes]
            out[name] = [t.abs() + 0.1 for t in tensors] if name in POSITIVE_STATE else tensors
        return out

    def __call__(self, lists: dict[str, Any], **overrides) -> Any:
        return self.kernel(*[lists[name] for name in self.lists], **{**self.kwargs, **overrides})


ADAM = KernelCall("adam", adam_update, ("params", "grads", "exp_avgs", "exp_avg_sqs"),
                  dict(step=3, lr=0.1), optional=("max_exp_avg_sqs",))
ADAM_AMSGRAD = KernelCall("adam-amsgrad", adam_update,
                          ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"), dict(step=3, lr=0.1))
RADAM = KernelCall("radam", radam_update, ("params", "grads", "exp_avgs", "exp_avg_sqs"), dict(step=3, lr=0.1))
RADAM_RECTIFIED = KernelCall("radam-step10", radam_update, ("params", "grads", "exp_avgs", "exp_avg_sqs"),
                             dict(step=10, lr=0.1))
ADABELIEF = KernelCall("adabelief", adabelief_update, ("params", "grads", "exp_avgs", "exp_avg_vars"),
                       dict(step=3, lr=0.1), optional=("max_exp_avg_vars",))
ADABELIEF_RECTIFIED = KernelCall("adabelief-step10", adabelief_update,
                                 ("params", "grads", "exp_avgs", "exp_avg_vars"), dict(step=10, lr=0.1))
ADABELIEF_NO_SGD = KernelCall("adabelief-no-degenerate", adabelief_update,
                              ("params", "grads", "exp_avgs", "exp_avg_vars"),
                              dict(step=2, lr=0.1, degenerated_to_sgd=False))
ADABELIEF_PLAIN = KernelCall("adabelief-unrectified", adabelief_update,
                             ("params", "grads", "exp_avgs", "exp_avg_vars"), dict(step=3, lr=0.1, rectify=False))
ADABELIEF_AMSGRAD = KernelCall("adabelief-amsgrad", adabelief_update,
                               ("params", "grads", "exp_avgs", "exp_avg_vars", "max_exp_avg_vars"),
                               dict(step=3, lr=0.1, rectify=False))
SGD = KernelCall("sgd", sgd_update, ("params", "grads"), dict(lr=0.1), optional=("momentum_buffers",))
SGD_MOMENTUM = KernelCall("sgd-momentum", sgd_update, ("params", "grads", "momentum_buffers"),
                          dict(lr=0.1, momentum=0.9))
SGD_DAMPENING = KernelCall("sgd-dampening", sgd_update, ("params", "grads", "momentum_buffers"),
                           dict(lr=0.1, momentum=0.9, dampening=0.3))
SGD_NESTEROV = KernelCall("sgd-nesterov", sgd_update, ("params", "grads", "momentum_buffers"),
                          dict(lr=0.1, momentum=0.9, nesterov=True))
WD_COUPLED = KernelCall("weight_decay_l2-coupled", weight_decay_l2, ("params", "grads"), dict(weight_decay=0.1))
WD_DECOUPLED = KernelCall("weight_decay_l2-decoupled", weight_decay_l2, ("params", "grads"),
                          dict(weight_decay=0.1, lr=0.5, decoupled=True))
WD_FIXED = KernelCall("weight_decay_l2-fixed", weight_decay_l2, ("params", "grads"),
                      dict(weight_decay=0.1, decoupled=True, fixed=True))

# one call per kernel (the validation matrix), and every option (the never-mutate-grads checks)
BASE_CALLS = [ADAM, ADAM_AMSGRAD, RADAM, ADABELIEF, ADABELIEF_AMSGRAD, SGD, SGD_MOMENTUM, WD_COUPLED, WD_DECOUPLED]
ALL_CALLS = [ADAM, ADAM_AMSGRAD, RADAM, RADAM_RECTIFIED, ADABELIEF, ADABELIEF_RECTIFIED, ADABELIEF_NO_SGD,
             ADABELIEF_PLAIN, ADABELIEF_AMSGRAD, SGD, SGD_MOMENTUM, SGD_DAMPENING, SGD_NESTEROV,
             WD_COUPLED, WD_DECOUPLED, WD_FIXED]
STEP_CALLS = [c for c in ALL_CALLS if c.takes_step]
STEP_KERNELS = [ADAM, ADAM_AMSGRAD, RADAM, ADABELIEF]  # one call per kernel that takes step


def _ids(calls):
    return [c.id for c in calls]


def snapshot(lists: dict[str, Any]) -> dict[str, list]:
    """Clones of every tensor in every list (non-tensor entries are kept as they are)."""
    return {name: [t.clone() if isinstance(t, torch.Tensor) else t for t in lst]
            for name, lst in lists.items() if isinstance(lst, list)}


def assert_unchanged(before: dict[str, list], lists: dict[str, Any]) -> None:
    for name, tensors in before.items():
        now = lists[name]
        assert len(now) == len(tensors), f"{name} changed length"
        for index, (old, new) in enumerate(zip(tensors, now)):
            if not isinstance(old, torch.Tensor):
                assert new is old, f"{name}[{index}] was replaced by {new!r}"
                continue
            assert isinstance(new, torch.Tensor), f"{name}[{index}] was replaced by {new!r}"
            assert old.layout == new.layout and old.dtype == new.dtype and old.device == new.device
            if new.device.type == "meta":
                continue
            if new.is_sparse:
                old, new = old.to_dense(), new.to_dense()
            assert torch.equal(old, new), f"{name}[{index}] was mutated by a call that raised"


def named(name: str) -> str:
    """A regex that finds the argument's name as a word (``exp_avgs`` does not match ``exp_avg_sqs``)."""
    return rf"(?<![\w]){re.escape(name)}(?![\w])"


def expect_error(call: KernelCall, lists: dict[str, Any], errors, pattern: str, **overrides) -> None:
    """The call raises one of ``errors`` naming the argument, and leaves every tensor as it was."""
    before = snapshot(lists)
    with pytest.raises(errors, match=pattern):
        call(lists, **overrides)
    assert_unchanged(before, lists)


# ------------------------------------------------------------------------------------------------
# Tensor lists that do not line up
# ------------------------------------------------------------------------------------------------

LIST_CASES = [(c, name) for c in BASE_CALLS for name in c.lists]
LIST_IDS = [f"{c.id}-{name}" for c, name in LIST_CASES]
OTHER_LIST_CASES = [(c, name) for c, name in LIST_CASES if name != "params"]
OTHER_LIST_IDS = [f"{c.id}-{name}" for c, name in OTHER_LIST_CASES]


@pytest.mark.parametrize(("call", "name"), LIST_CASES, ids=LIST_IDS)
@pytest.mark.parametrize("change", ["one-short", "one-extra"])
def test_mismatched_list_lengths(call, name, change):
    lists = call.make()
    if change == "one-short":
        lists[name] = lists[name][:-1]
    else:
        lists[name] = lists[name] + [lists[name][0].clone()]
    # the message names the list that disagrees (for params: "grads has 2 tensors but params has 1")
    expect_error(call, lists, ValueError, named(name))


@pytest.mark.parametrize(("call", "name"), OTHER_LIST_CASES, ids=OTHER_LIST_IDS)
@pytest.mark.parametrize("bad_shape", [(5,), (4, 2), ()], ids=["wrong-length", "transposed", "scalar"])
def test_mismatched_shapes(call, name, bad_shape):
    lists = call.make()
    lists[name][1] = torch.ones(bad_shape)
    expect_error(call, lists, ValueError, re.escape(f"{name}[1]"))


@pytest.mark.parametrize(("call", "name"), OTHER_LIST_CASES, ids=OTHER_LIST_IDS)
@pytest.mark.parametrize("change", ["float64", "bfloat16", "meta-device"])
def test_dtype_or_device_mismatch_within_an_index(call, name, change):
    lists = call.make()
    tensor = lists[name][1]
    lists[name][1] = tensor.to("meta") if change == "meta-device" else tensor.to(getattr(torch, change))
    expect_error(call, lists, TypeError, re.escape(f"{name}[1]"))


@pytest.mark.parametrize("call", BASE_CALLS, ids=_ids(BASE_CALLS))
@pytest.mark.parametrize("name", ["grads", "params"])
def test_sparse_tensors_are_rejected(call, name):
    lists = call.make()
    lists[name][0] = lists[name][0].to_sparse()
    expect_error(call, lists, RuntimeError, re.escape(f"{name}[0]") + ".*sparse")


NON_LISTS = {
    "a-tensor": lambda lst: lst[0],
    "a-generator": lambda lst: (t for t in lst),
    "a-dict": lambda lst: dict(enumerate(lst)),
    "an-int": lambda lst: 3,
}


@pytest.mark.parametrize(("call", "name"), LIST_CASES, ids=LIST_IDS)
@pytest.mark.parametrize("kind", list(NON_LISTS))
def test_non_list_arguments(call, name, kind):
    lists = call.make()
    lists[name] = NON_LISTS[kind](lists[name])
    expect_error(call, lists, TypeError, named(name))


@pytest.mark.parametrize(("call", "name"), LIST_CASES, ids=LIST_IDS)
def test_non_tensor_element(call, name):
    lists = call.make()
    lists[name][1] = [[1.0, 2.0, 3.0]] if name != "momentum_buffers" else "buffer"
    expect_error(call, lists, TypeError, re.escape(f"{name}[1]"))


# one call per kernel function for the known-bug cases below
DISTINCT_KERNELS = [ADAM, RADAM, ADABELIEF, SGD_MOMENTUM, WD_COUPLED]
REQUIRED_CASES = [(c, name) for c in DISTINCT_KERNELS for name in c.lists if name != "momentum_buffers"]


@pytest.mark.parametrize(("call", "name"), REQUIRED_CASES, ids=[f"{c.id}-{n}" for c, n in REQUIRED_CASES])
def test_required_list_given_as_none(call, name):
    lists = call.make()
    lists[name] = None
    expect_error(call, lists, TypeError, named(name))


NONE_ENTRY_CASES = [(c, name) for c in DISTINCT_KERNELS for name in c.lists
                    if name not in ("params", "momentum_buffers")]


@pytest.mark.parametrize(("call", "name"), NONE_ENTRY_CASES, ids=[f"{c.id}-{n}" for c, n in NONE_ENTRY_CASES])
def test_none_entry_outside_momentum_buffers(call, name):
    lists = call.make()
    lists[name][1] = None
    expect_error(call, lists, TypeError, re.escape(f"{name}[1]"))


@pytest.mark.parametrize("call", [SGD_MOMENTUM, SGD_NESTEROV], ids=_ids([SGD_MOMENTUM, SGD_NESTEROV]))
def test_sgd_none_momentum_buffer_is_filled_with_a_copy_of_the_grad(call):
    lists = call.make()
    lists["momentum_buffers"][0] = None
    grad = lists["grads"][0].clone()
    call(lists)
    buffer = lists["momentum_buffers"][0]
    assert torch.equal(buffer, grad)
    assert buffer.data_ptr() != lists["grads"][0].data_ptr()


# ------------------------------------------------------------------------------------------------
# The step count
# ------------------------------------------------------------------------------------------------

BAD_STEPS = {
    "zero": (0, ValueError),
    "negative": (-2, ValueError),
    "non-integer-float": (1.5, ValueError),
    "nan": (math.nan, ValueError),
    "zero-tensor": (torch.tensor(0.0), ValueError),
    "fractional-tensor": (torch.tensor(2.5), ValueError),
    "wrong-length-list": ([1, 1, 1], ValueError),
    "short-list": ([1], ValueError),
    "list-with-zero": ([1, 0], ValueError),
    "list-with-fraction": ([torch.tensor(1.0), torch.tensor(0.5)], ValueError),
    "list-with-2-element-tensor": ([1, torch.tensor([1.0, 2.0])], ValueError),
    "two-element-tensor": (torch.tensor([1.0, 2.0]), (TypeError, ValueError)),
    "string": ("3", TypeError),
    "bool": (True, TypeError),
}


@pytest.mark.parametrize("call", STEP_KERNELS, ids=_ids(STEP_KERNELS))
@pytest.mark.parametrize("bad", list(BAD_STEPS))
def test_bad_step(call, bad):
    value, errors = BAD_STEPS[bad]
    expect_error(call, call.make(), errors, named("step"), step=value)


@pytest.mark.parametrize("call", STEP_KERNELS, ids=_ids(STEP_KERNELS))
def test_step_none_is_rejected(call):
    expect_error(call, call.make(), TypeError, named("step"), step=None)


def test_step_is_required():
    lists = ADAM.make()
    before = snapshot(lists)
    with pytest.raises(TypeError, match="step"):
        adam_update(*[lists[n] for n in ADAM.lists], lr=0.1)
    assert_unchanged(before, lists)


# ------------------------------------------------------------------------------------------------
# Hyperparameters
# ------------------------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf

# (call, overrides, error, the argument the message must name)
HPARAM_CASES = []
for _call in STEP_KERNELS:
    HPARAM_CASES += [
        (_call, "negative-lr", dict(lr=-0.1), ValueError, "lr"),
        (_call, "nan-lr", dict(lr=NAN), ValueError, "lr"),
        (_call, "inf-lr", dict(lr=INF), ValueError, "lr"),
        (_call, "nan-tensor-lr", dict(lr=torch.tensor(NAN)), ValueError, "lr"),
        (_call, "2-element-tensor-lr", dict(lr=torch.tensor([0.1, 0.1])), ValueError, "lr"),
        (_call, "string-lr", dict(lr="0.1"), TypeError, "lr"),
        (_call, "beta1-is-1", dict(beta1=1.0), ValueError, "beta1"),
        (_call, "beta1-negative", dict(beta1=-0.1), ValueError, "beta1"),
        (_call, "beta1-nan", dict(beta1=NAN), ValueError, "beta1"),
        (_call, "beta2-is-1", dict(beta2=1.0), ValueError, "beta2"),
        (_call, "beta2-above-1", dict(beta2=1.5), ValueError, "beta2"),
        (_call, "beta2-nan", dict(beta2=NAN), ValueError, "beta2"),
        (_call, "beta2-inf", dict(beta2=INF), ValueError, "beta2"),
        (_call, "negative-eps", dict(eps=-1e-8), ValueError, "eps"),
        (_call, "nan-eps", dict(eps=NAN), ValueError, "eps"),
        (_call, "inf-eps", dict(eps=INF), ValueError, "eps"),
    ]
for _call in [SGD, SGD_MOMENTUM]:
    HPARAM_CASES += [
        (_call, "negative-lr", dict(lr=-0.1), ValueError, "lr"),
        (_call, "nan-lr", dict(lr=NAN), ValueError, "lr"),
        (_call, "inf-lr", dict(lr=INF), ValueError, "lr"),
        (_call, "negative-momentum", dict(momentum=-0.9), ValueError, "momentum"),
        (_call, "nan-momentum", dict(momentum=NAN), ValueError, "momentum"),
        (_call, "negative-dampening", dict(dampening=-0.1), ValueError, "dampening"),
        (_call, "nan-dampening", dict(dampening=NAN), ValueError, "dampening"),
    ]
HPARAM_CASES += [
    (SGD, "nesterov-without-momentum", dict(nesterov=True), ValueError, "(?i)nesterov"),
    (SGD_MOMENTUM, "nesterov-with-dampening", dict(nesterov=True, dampening=0.1), ValueError, "dampening"),
    (SGD, "momentum-without-momentum_buffers", dict(momentum=0.9), ValueError, "momentum_buffers"),
]
for _call in [WD_COUPLED, WD_DECOUPLED]:
    HPARAM_CASES += [
        (_call, "negative-weight_decay", dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (_call, "nan-weight_decay", dict(weight_decay=NAN), ValueError, "weight_decay"),
        (_call, "inf-weight_decay", dict(weight_decay=INF), ValueError, "weight_decay"),
    ]
HPARAM_CASES += [
    (WD_DECOUPLED, "negative-lr", dict(lr=-0.5), ValueError, "lr"),
    (WD_DECOUPLED, "nan-lr", dict(lr=NAN), ValueError, "lr"),
    (WD_DECOUPLED, "missing-lr", dict(lr=None), ValueError, "lr"),
]


@pytest.mark.parametrize(("call", "overrides", "error", "argument"),
                         [pytest.param(c, o, e, a, id=f"{c.id}-{desc}") for c, desc, o, e, a in HPARAM_CASES])
def test_bad_hyperparameter(call, overrides, error, argument):
    pattern = argument if argument.startswith("(?i)") else named(argument)
    expect_error(call, call.make(), error, pattern, **overrides)


# ------------------------------------------------------------------------------------------------
# Grads are never mutated
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ALL_CALLS, ids=_ids(ALL_CALLS))
def test_kernel_never_mutates_grads(call):
    lists = call.make()
    if "momentum_buffers" in lists:  # the first step copies the grad in: check it is a copy
        lists["momentum_buffers"][0] = None
    grads_before = [g.clone() for g in lists["grads"]]
    params_before = [p.clone() for p in lists["params"]]
    for extra in range(3):  # repeated calls with the same grad tensors: no aliasing into state
        overrides = dict(step=call.kwargs["step"] + extra) if call.takes_step else {}
        call(lists, **overrides)
        for grad, before in zip(lists["grads"], grads_before):
            assert torch.equal(grad, before)
    changed = [not torch.equal(p, b) for p, b in zip(lists["params"], params_before)]
    if call not in (WD_COUPLED, ADABELIEF_NO_SGD):  # those two legitimately leave params alone here
        assert all(changed), "the call did nothing, so it checks nothing"


@pytest.mark.parametrize("call", [WD_COUPLED, WD_DECOUPLED, WD_FIXED], ids=_ids([WD_COUPLED, WD_DECOUPLED, WD_FIXED]))
def test_weight_decay_returns_new_grads_or_the_same_list(call):
    lists = call.make()
    out = call(lists)
    if call is WD_COUPLED:
        assert all(o is not g for o, g in zip(out, lists["grads"]))
    else:
        assert out is lists["grads"]


# ------------------------------------------------------------------------------------------------
# Mixed dtype/device lists and per-tensor steps give the same numbers as separate calls
# ------------------------------------------------------------------------------------------------

def _devices():
    yield pytest.param(("cpu",), id="cpu")
    yield pytest.param(("cpu", "cuda"), id="cpu+cuda",
                       marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


MIXED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _layout(devices):
    # (dtype, device, shape) per position, interleaved so grouping must reorder and put back
    shapes = [(3,), (2, 4), (5,), (1,), (2, 2), (4,)]
    combos = [(d, dev) for dev in devices for d in MIXED_DTYPES]
    return [(combos[i % len(combos)][0], combos[i % len(combos)][1], shapes[i % len(shapes)])
            for i in range(max(len(combos) + 2, 6))]


def _make_at(call, layout, seed):
    lists = {name: [] for name in call.lists}
    for i, (dtype, device, shape) in enumerate(layout):
        one = call.make(shapes=(shape,), dtype=dtype, device=device, seed=seed + i)
        for name in call.lists:
            lists[name].append(one[name][0])
    return lists


@pytest.mark.parametrize("devices", list(_devices()))
@pytest.mark.parametrize("call", ALL_CALLS, ids=_ids(ALL_CALLS))
def test_mixed_dtype_and_device_list_equals_separate_calls(call, devices):
    layout = _layout(devices)
    together = _make_at(call, layout, seed=10)
    apart = {name: [t.clone() for t in lst] for name, lst in together.items()}
    out_together = call(together)
    outs_apart = {}
    for key in {(dtype, device) for dtype, device, _ in layout}:
        indices = [i for i, (dt, dev, _) in enumerate(layout) if (dt, dev) == key]
        sub = {name: [apart[name][i] for i in indices] for name in call.lists}
        out = call(sub)
        for name in call.lists:  # the kernel may replace list entries (SGD's new buffers)
            for i, t in zip(indices, sub[name]):
                apart[name][i] = t
        if out is not None:
            outs_apart.update(zip(indices, out))
    for name in call.lists:
        for i, (a, b) in enumerate(zip(together[name], apart[name])):
            assert a.dtype == layout[i][0] and a.device.type == layout[i][1]
            assert torch.equal(a, b), f"{name}[{i}] ({a.dtype}, {a.device}) differs from a separate call"
    if out_together is not None:  # weight_decay_l2 returns grads
        for i, t in enumerate(out_together):
            assert torch.equal(t, outs_apart[i])


@pytest.mark.parametrize("call", STEP_CALLS, ids=_ids(STEP_CALLS))
@pytest.mark.parametrize("kind", ["0-d-tensors", "ints", "tuple-of-floats"])
def test_per_tensor_steps_equal_separate_calls(call, kind):
    steps = [1, 7, 30, 7, 2]
    shapes = [(3,), (2, 2), (4,), (1,), (5,)]
    together = call.make(shapes=shapes, seed=3)
    apart = {name: [t.clone() for t in lst] for name, lst in together.items()}
    if kind == "0-d-tensors":
        step_arg = [torch.tensor(float(s)) for s in steps]
    elif kind == "ints":
        step_arg = list(steps)
    else:
        step_arg = tuple(float(s) for s in steps)
    step_before = [s.clone() for s in step_arg] if kind == "0-d-tensors" else None
    call(together, step=step_arg)
    for i, s in enumerate(steps):
        call({name: [apart[name][i]] for name in call.lists}, step=s)
    for name in call.lists:
        for i, (a, b) in enumerate(zip(together[name], apart[name])):
            assert torch.equal(a, b), f"{name}[{i}] with step {steps[i]} differs from a separate call"
    if step_before is not None:  # the kernel reads the step counts, it does not advance them
        assert all(torch.equal(a, b) for a, b in zip(step_arg, step_before))


@pytest.mark.parametrize("call", STEP_CALLS, ids=_ids(STEP_CALLS))
def test_shared_step_as_0d_tensor_equals_int(call):
    a = call.make(seed=4)
    b = {name: [t.clone() for t in lst] for name, lst in a.items()}
    call(a, step=torch.tensor(5.0))
    call(b, step=5)
    for name in call.lists:
        assert all(torch.equal(x, y) for x, y in zip(a[name], b[name]))
