"""``optkernels.schedule_free``: the kernels on lists against the official ``schedulefree`` 1.4.1
optimizers (``AdamWScheduleFree``, ``SGDScheduleFree``), their foreach path and their for-loop
path, for every option, in fp32 and fp64.

The foreach bodies run the reference's ops in its order, so every comparison with it is exact.
The one-tensor rules (what ``compiled=True`` runs) fuse differently (``sqrt(v) / sqrt(1 - beta2^t)``
for ``sqrt(v / (1 - beta2^t))``): they are checked against the foreach bodies in fp64, to a few
ulps. The compiled path itself is tested through the wrappers (tests/wrappers/test_schedule_free.py).
"""

import math

import pytest
import schedulefree
import torch
from torch.testing import assert_close

from optkernels.schedule_free import (
    schedule_free_adamw_rule,
    schedule_free_adamw_update,
    schedule_free_eval,
    schedule_free_sgd_rule,
    schedule_free_sgd_update,
    schedule_free_train,
    schedule_free_weights,
)
from tests.helpers import laid_out, same_layout_copy

STEPS = 20
# A matrix, a vector, a 0-d tensor, a transposed matrix, a strided view, an empty tensor.
LAYOUTS = [((4, 5), "contiguous"), ((7,), "contiguous"), ((), "contiguous"), ((6, 3), "transposed"),
           ((5,), "strided"), ((0,), "contiguous")]
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}

# Every option of the reference, each case away from the defaults in a few of them at once. ``lr``
# changes during the run (LR_CHANGES), so the weights see a falling lr and a new maximum.
ADAMW_CASES = {
    "defaults": dict(lr=0.0025),
    "warmup": dict(lr=0.01, warmup_steps=6),
    "r-power": dict(lr=0.01, warmup_steps=3, r=1.5, weight_lr_power=1.0),
    "no-lr-weighting": dict(lr=0.01, warmup_steps=4, weight_lr_power=0.0),
    "weight-decay": dict(lr=0.01, weight_decay=0.1),
    "betas-eps": dict(lr=0.02, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.01, r=0.5),
}
SGD_CASES = {
    "defaults": dict(lr=1.0),
    "warmup": dict(lr=0.1, warmup_steps=6),
    "r-power": dict(lr=0.1, warmup_steps=3, r=1.5, weight_lr_power=1.0),
    "no-lr-weighting": dict(lr=0.1, warmup_steps=4, weight_lr_power=0.0),
    "weight-decay": dict(lr=0.1, weight_decay=0.1),
    "momentum": dict(lr=0.05, momentum=0.5, weight_decay=0.01, r=0.5),
}
LR_CHANGES = {8: 0.3, 14: 5.0}  # step: factor on the lr from that step on


def random_tensors(dtype, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [laid_out(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype), layout)
            for shape, layout in LAYOUTS]


def kernel_options(algorithm: str, options: dict) -> dict:
    """The reference's constructor options as the kernel's keywords."""
    options = dict(options)
    if algorithm == "adamw":
        options["beta1"], options["beta2"] = options.pop("betas", (0.9, 0.999))
    return options


class Run:
    """Our lists and state beside the reference optimizer on copies of the same params."""

    def __init__(self, algorithm: str, dtype, options: dict, *, foreach: bool):
        self.algorithm, self.options = algorithm, options
        self.params = random_tensors(dtype, seed=0)
        self.zs = [same_layout_copy(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params] if algorithm == "adamw" else None
        self.weight_sum, self.lr_max = 0.0, -1.0
        self.ref_params = [torch.nn.Parameter(same_layout_copy(p)) for p in self.params]
        reference = schedulefree.AdamWScheduleFree if algorithm == "adamw" else schedulefree.SGDScheduleFree
        self.reference = reference(self.ref_params, **options, foreach=foreach)
        self.reference.train()

    def state(self) -> list[list[torch.Tensor]]:
        return [self.zs] + ([self.exp_avg_sqs] if self.exp_avg_sqs is not None else [])

    def step(self, step: int, lr: float, **extra) -> None:
        grads = random_tensors(self.params[0].dtype, seed=1000 + step)
        before = [same_layout_copy(g) for g in grads]
        options = dict(kernel_options(self.algorithm, self.options), lr=lr, **extra)
        update = schedule_free_adamw_update if self.algorithm == "adamw" else schedule_free_sgd_update
        weights = update(self.params, grads, *self.state(), step=step, weight_sum=self.weight_sum,
                         lr_max=self.lr_max, **options)
        self.weight_sum, self.lr_max = weights.weight_sum, weights.lr_max
        for grad, grad_before in zip(grads, before):
            assert torch.equal(grad, grad_before) and grad.stride() == grad_before.stride(), "a grad changed"
        for group in self.reference.param_groups:
            group["lr"] = lr
        for param, grad in zip(self.ref_params, grads):
            param.grad = same_layout_copy(grad)  # the reference changes its grads
        self.reference.step()
        group = self.reference.param_groups[0]
        assert (weights.weight_sum, weights.lr_max, weights.lr) == (group["weight_sum"], group["lr_max"],
                                                                      group["scheduled_lr"])

    def assert_exact(self, where: str) -> None:
        names = ["z", "exp_avg_sq"]
        for index, (param, ref_param) in enumerate(zip(self.params, self.ref_params)):
            assert torch.equal(param, ref_param.detach()), f"{where}: param {index} {LAYOUTS[index]}"
            ref_state = self.reference.state[ref_param]
            for name, tensors in zip(names, self.state()):
                assert param.numel() == 0 or torch.equal(tensors[index], ref_state[name]), \
                    f"{where}: param {index} {LAYOUTS[index]} {name}"


def run_against_reference(algorithm: str, dtype, options: dict, *, foreach: bool) -> Run:
    run = Run(algorithm, dtype, options, foreach=foreach)
    lr = options["lr"]
    for step in range(1, STEPS + 1):
        lr *= LR_CHANGES.get(step, 1.0)
        run.step(step, lr)
        run.assert_exact(f"step {step}")
    return run


@pytest.mark.parametrize("foreach", [True, False], ids=["ref-foreach", "ref-forloop"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("case", list(ADAMW_CASES))
def test_adamw_matches_reference_bit_for_bit(case, dtype, foreach):
    run = run_against_reference("adamw", dtype, ADAMW_CASES[case], foreach=foreach)
    initial = random_tensors(dtype, seed=0)
    assert all(p.numel() == 0 or not torch.equal(p, q) for p, q in zip(run.params, initial)), "a param never moved"


@pytest.mark.parametrize("foreach", [True, False], ids=["ref-foreach", "ref-forloop"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_matches_reference_bit_for_bit(case, dtype, foreach):
    run_against_reference("sgd", dtype, SGD_CASES[case], foreach=foreach)


@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_eval_and_train_match_the_reference(algorithm):
    """After some steps: ``schedule_free_eval`` gives the reference's ``eval()`` params (x),
    ``schedule_free_train`` its ``train()`` params (y), bit for bit."""
    options = ADAMW_CASES["betas-eps"] if algorithm == "adamw" else SGD_CASES["momentum"]
    run = Run(algorithm, torch.float32, options, foreach=True)
    for step in range(1, 6):
        run.step(step, options["lr"])
    momentum = options["betas"][0] if algorithm == "adamw" else options["momentum"]
    for switch, reference_switch in ((schedule_free_eval, run.reference.eval),
                                     (schedule_free_train, run.reference.train)):
        switch(run.params, run.zs, momentum=momentum)
        reference_switch()
        run.assert_exact(switch.__name__)


def test_mixed_dtypes_in_one_call():
    """fp32 and fp64 tensors in one call: each dtype gets the numbers it gets alone."""
    options = dict(lr=0.01, weight_decay=0.1, warmup_steps=2)
    runs = {dtype: Run("adamw", dtype, options, foreach=True) for dtype in DTYPES.values()}
    mixed = {name: [t for lst in lists for t in lst] for name, lists in
             (("params", [r.params for r in runs.values()]), ("zs", [r.zs for r in runs.values()]),
              ("vs", [r.exp_avg_sqs for r in runs.values()]))}
    alone = {dtype: [same_layout_copy(p) for p in run.params] for dtype, run in runs.items()}
    alone_state = {dtype: ([same_layout_copy(z) for z in run.zs], [torch.zeros_like(p) for p in run.params])
                   for dtype, run in runs.items()}
    weight_sum, lr_max = 0.0, -1.0
    for step in (1, 2, 3):
        grads = {dtype: random_tensors(dtype, seed=step) for dtype in runs}
        weights = schedule_free_adamw_update(mixed["params"], [g for gs in grads.values() for g in gs], mixed["zs"],
                                             mixed["vs"], step=step, weight_sum=weight_sum, lr_max=lr_max, **options)
        for dtype in runs:
            schedule_free_adamw_update(alone[dtype], grads[dtype], *alone_state[dtype], step=step,
                                       weight_sum=weight_sum, lr_max=lr_max, **options)
        weight_sum, lr_max = weights.weight_sum, weights.lr_max
    for dtype, run in runs.items():
        for mine, theirs in zip(run.params + run.zs, alone[dtype] + alone_state[dtype][0]):
            assert torch.equal(mine, theirs)


# --- the rules (what compiled=True runs) against the foreach bodies --------------------------------

# fp64, 7 steps: the rule computes sqrt(v) * (1 - beta2^t)^-1/2 where the foreach body computes
# sqrt(v / (1 - beta2^t)), and adds param * decay before the lerp as a fused expression: a rounding
# or two per step, on values of magnitude ~2 (measured: at most 4.4e-16 apart, 2 ulps of 1).
RULE_TOLERANCE = dict(rtol=1e-14, atol=1e-14)


def rule_scalars(algorithm: str, options: dict, weights, step: int) -> dict:
    lr, ckp1 = weights.lr, weights.ckp1
    momentum = options.get("beta1", options.get("momentum", 0.9))
    scalars = dict(ckp1=ckp1, lr=lr, y_scale=lr * (momentum * (1 - ckp1) - 1),
                   decay=options.get("weight_decay") or None)
    if algorithm == "adamw":
        beta2 = options.get("beta2", 0.999)
        scalars.update(beta2=beta2, eps=options.get("eps", 1e-8), rsqrt_bias_correction2=(1 - beta2**step) ** -0.5)
    return {name: value if value is None else torch.tensor(value, dtype=torch.float64)
            for name, value in scalars.items()}


ALL_CASES = [("adamw", case) for case in ADAMW_CASES] + [("sgd", case) for case in SGD_CASES]


@pytest.mark.parametrize("algorithm,case", ALL_CASES)
def test_rule_is_the_foreach_update_on_one_tensor(algorithm, case):
    """Each rule, run eagerly per tensor with its scalars as 0-d tensors (as the compiled path
    passes them), gives the foreach body's numbers to rounding, in fp64, for every option."""
    options = kernel_options(algorithm, (ADAMW_CASES if algorithm == "adamw" else SGD_CASES)[case])
    update = schedule_free_adamw_update if algorithm == "adamw" else schedule_free_sgd_update
    rule = schedule_free_adamw_rule if algorithm == "adamw" else schedule_free_sgd_rule
    params = random_tensors(torch.float64, seed=0)
    lists = [params, [same_layout_copy(p) for p in params]] + ([[torch.zeros_like(p) for p in params]]
                                                               if algorithm == "adamw" else [])
    by_rule = [[same_layout_copy(t) for t in lst] for lst in lists]
    weight_sum, lr_max = 0.0, -1.0
    for step in range(1, 8):
        grads = random_tensors(torch.float64, seed=step)
        weights = update(lists[0], grads, *lists[1:], step=step, weight_sum=weight_sum, lr_max=lr_max, **options)
        scalars = rule_scalars(algorithm, options, weights, step)
        for param, grad, *state in zip(by_rule[0], grads, *by_rule[1:]):
            rule(param, grad, *state, **scalars)
        weight_sum, lr_max = weights.weight_sum, weights.lr_max
        for mine, theirs in zip(by_rule, lists):
            for a, b in zip(mine, theirs):
                assert_close(a, b, **RULE_TOLERANCE, msg=lambda m: f"step {step}: {m}")


# --- the weights --------------------------------------------------------------------------------

def test_weights_follow_the_paper():
    """Warm-up is linear to ``warmup_steps``; c_t = w_t / sum w with w_t = t^r lr_max^p; while every
    weight is 0 (lr 0 from the start), c_t is 0, as the reference's ZeroDivisionError branch."""
    weight_sum, lr_max = 0.0, -1.0
    for step in range(1, 7):
        weights = schedule_free_weights(step, 0.1, weight_sum=weight_sum, lr_max=lr_max, warmup_steps=4, r=1.0,
                                        weight_lr_power=2.0)
        assert weights.lr == pytest.approx(0.1 * min(1.0, step / 4))
        assert weights.lr_max == weights.lr  # rising
        assert weights.weight == pytest.approx(step * weights.lr**2)
        assert weights.ckp1 == pytest.approx(weights.weight / (weight_sum + weights.weight))
        weight_sum, lr_max = weights.weight_sum, weights.lr_max
    zero = schedule_free_weights(1, 0.0, weight_sum=0.0, lr_max=-1.0)
    assert (zero.weight_sum, zero.ckp1) == (0.0, 0)


@pytest.mark.parametrize("algorithm", ["adamw", "sgd"])
def test_lr_zero_changes_no_param(algorithm):
    """lr 0 from the start: every weight is 0, so c = 0 and y and z stay where they are."""
    params = random_tensors(torch.float32, seed=0)
    before = [same_layout_copy(p) for p in params]
    zs = [same_layout_copy(p) for p in params]
    state = [zs] + ([[torch.zeros_like(p) for p in params]] if algorithm == "adamw" else [])
    update = schedule_free_adamw_update if algorithm == "adamw" else schedule_free_sgd_update
    weights = update(params, random_tensors(torch.float32, seed=1), *state, step=1, lr=0.0, weight_sum=0.0,
                     lr_max=-1.0, weight_decay=0.1)
    assert weights.ckp1 == 0
    for param, z, initial in zip(params, zs, before):
        assert torch.equal(param, initial) and torch.equal(z, initial)


# --- bad input ----------------------------------------------------------------------------------

def adamw_call(**changes):
    params = random_tensors(torch.float32, seed=0)
    arguments = dict(params=params, grads=random_tensors(torch.float32, seed=1),
                     zs=[same_layout_copy(p) for p in params], exp_avg_sqs=[torch.zeros_like(p) for p in params])
    keywords = dict(step=1, lr=0.01, weight_sum=0.0, lr_max=-1.0)
    for name, value in changes.items():
        (arguments if name in arguments else keywords)[name] = value(arguments) if callable(value) else value
    return arguments, keywords


BAD_ADAMW = {
    "lr": (dict(lr=-0.1), ValueError, "learning rate"),
    "lr nan": (dict(lr=math.nan), ValueError, "lr"),
    "beta1 zero": (dict(beta1=0.0), ValueError, "beta1"),
    "beta1 one": (dict(beta1=1.0), ValueError, "beta1"),
    "beta2": (dict(beta2=1.5), ValueError, "beta2"),
    "eps": (dict(eps=-1.0), ValueError, "eps"),
    "weight_decay": (dict(weight_decay=math.nan), ValueError, "weight_decay"),
    "warmup_steps negative": (dict(warmup_steps=-1), ValueError, "warmup_steps"),
    "warmup_steps float": (dict(warmup_steps=2.5), ValueError, "warmup_steps"),
    "r": (dict(r=math.inf), ValueError, "r "),
    "weight_lr_power": (dict(weight_lr_power=-2.0), ValueError, "weight_lr_power"),
    "weight_sum": (dict(weight_sum=-1.0), ValueError, "weight_sum"),
    "lr_max": (dict(lr_max=math.nan), ValueError, "lr_max"),
    "step zero": (dict(step=0), ValueError, "step"),
    "step fraction": (dict(step=1.5), ValueError, "step"),
    "step per tensor": (dict(step=[1] * len(LAYOUTS)), TypeError, "step"),
    "short zs": (dict(zs=lambda a: a["zs"][:-1]), ValueError, "zs"),
    "shape": (dict(exp_avg_sqs=lambda a: [torch.zeros(3)] + a["exp_avg_sqs"][1:]), ValueError, r"exp_avg_sqs\[0\]"),
    "dtype": (dict(grads=lambda a: [a["grads"][0].double()] + a["grads"][1:]), TypeError, r"grads\[0\]"),
    "sparse": (dict(grads=lambda a: a["grads"][:1] + [a["grads"][1].to_sparse()] + a["grads"][2:]),
               RuntimeError, r"grads\[1\] is sparse"),
}


@pytest.mark.parametrize("bad", list(BAD_ADAMW))
def test_bad_input_raises_naming_it_and_changes_nothing(bad):
    changes, error, match = BAD_ADAMW[bad]
    arguments, keywords = adamw_call(**changes)
    before = {name: [same_layout_copy(t) for t in tensors] for name, tensors in arguments.items()
              if all(t.layout == torch.strided for t in tensors)}
    with pytest.raises(error, match=match):
        schedule_free_adamw_update(*arguments.values(), **keywords)
    for name, tensors in before.items():
        assert all(torch.equal(a, b) for a, b in zip(arguments[name], tensors)), f"{name} changed"


@pytest.mark.parametrize("momentum", [0.0, 1.0, -0.5, math.nan])
def test_sgd_momentum_must_lie_strictly_between_0_and_1(momentum):
    params = random_tensors(torch.float32, seed=0)
    with pytest.raises(ValueError, match="momentum"):
        schedule_free_sgd_update(params, params, [same_layout_copy(p) for p in params], step=1, lr=0.1,
                                 weight_sum=0.0, lr_max=-1.0, momentum=momentum)
    with pytest.raises(ValueError, match="momentum"):
        schedule_free_eval(params, params, momentum=momentum)
