"""``wrappers.Adam`` / ``AdamW`` with ``state_precision`` and ``stochastic_rounding``: a small
model trains to fp32 Adam's loss (RAdam, NAdam and AdaBelief to their own fp32 loss), state keys
and bytes are as documented, and checkpoints cross precisions (quantised on load, dequantised on
load)."""

import copy
import pickle

import pytest
import torch

import wrappers
from optkernels import UnsupportedOptionError
from optkernels.quantization import dequantize_blockwise, quantize_blockwise
from tests.helpers import LOW_PRECISION_WRAPPER_CASES, low_precision_stepped


def _train(steps=200, dtype=torch.float32, cls=wrappers.AdamW, **options):
    """A 2-layer MLP (64-64-64: its weights are quantised, its biases are not) on a noisy
    regression it cannot memorise (65k targets, 8k params): the final loss sits near the noise
    floor, where precision shows."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(1024, 64, generator=generator)
    targets = torch.tanh(inputs @ (torch.randn(64, 64, generator=generator) / 8))
    targets += 0.5 * torch.randn(1024, 64, generator=generator)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64)).to(dtype)
    optimizer = cls(model.parameters(), lr=1e-2, **options)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs.to(dtype)).float(), targets).backward()
        optimizer.step()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(inputs.to(dtype)).float(), targets).item(), optimizer


@pytest.fixture(scope="module")
def fp32_losses(one_thread):
    return {cls: _train(cls=cls)[0] for cls in (wrappers.AdamW, wrappers.RAdam, wrappers.NAdam, wrappers.AdaBelief)}


@pytest.mark.parametrize("case", [dict(state_precision="8bit"), dict(state_precision="bf16"),
                                  dict(state_precision="8bit", stochastic_rounding=True, dtype=torch.bfloat16),
                                  dict(state_precision="8bit", cls=wrappers.RAdam),
                                  *(dict(case, cls=cls) for cls in (wrappers.NAdam, wrappers.AdaBelief)
                                    for case in (dict(state_precision="8bit"), dict(state_precision="bf16"),
                                                 dict(state_precision="8bit", stochastic_rounding=True,
                                                      dtype=torch.bfloat16)))],
                         ids=["8bit", "bf16", "bf16-params-8bit", "radam-8bit",
                              *(f"{name}-{case}" for name in ("nadam", "adabelief")
                                for case in ("8bit", "bf16", "bf16-params-8bit"))])
def test_trains_to_fp32_loss(case, fp32_losses, one_thread):
    loss, _ = _train(**case)
    fp32_loss = fp32_losses[case.get("cls", wrappers.AdamW)]
    assert abs(loss / fp32_loss - 1) <= 0.01, (loss, fp32_loss)


def _stepped(**options):
    params = [torch.nn.Parameter(torch.randn(64, 80, generator=torch.Generator().manual_seed(0))),
              torch.nn.Parameter(torch.randn(10, generator=torch.Generator().manual_seed(1)))]
    optimizer = wrappers.AdamW(params, lr=1e-2, **options)
    for step in range(3):
        generator = torch.Generator().manual_seed(10 + step)
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()
    return params, optimizer


def test_state_keys_and_bytes():
    params, optimizer = _stepped(state_precision="8bit")
    big, small = (optimizer.state[p] for p in params)
    assert list(big) == ["step", "exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale"]
    assert big["exp_avg"].dtype == torch.uint8 and big["exp_avg_scale"].shape == (20,)
    state_bytes = sum(t.numel() * t.element_size() for name, t in big.items() if name != "step")
    assert state_bytes / params[0].numel() <= 2.1
    assert small["exp_avg"].dtype == torch.float32 and small["exp_avg_scale"].numel() == 0
    params, optimizer = _stepped(state_precision="bf16")
    assert list(optimizer.state[params[0]]) == ["step", "exp_avg", "exp_avg_sq"]
    assert optimizer.state[params[0]]["exp_avg"].dtype == torch.bfloat16


def test_fp32_checkpoint_loads_quantised_and_back():
    params, fp32 = _stepped()
    reference = torch.optim.AdamW([p.detach().clone() for p in params], lr=1e-2)
    reference.load_state_dict(copy.deepcopy(fp32.state_dict()))  # a torch.optim checkpoint, the same state
    low = wrappers.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2, state_precision="8bit")
    low.load_state_dict(copy.deepcopy(reference.state_dict()))
    big = low.state[low.param_groups[0]["params"][0]]
    codes, scales = quantize_blockwise(fp32.state[params[0]]["exp_avg"])
    assert torch.equal(big["exp_avg"], codes) and torch.equal(big["exp_avg_scale"], scales)
    assert low.state[low.param_groups[0]["params"][1]]["exp_avg"].dtype == torch.float32
    back = wrappers.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2)
    back.load_state_dict(copy.deepcopy(low.state_dict()))  # dequantised
    restored = back.state[back.param_groups[0]["params"][0]]
    assert list(restored) == ["step", "exp_avg", "exp_avg_sq"] and restored["exp_avg"].dtype == torch.float32
    assert torch.equal(restored["exp_avg"], dequantize_blockwise(codes, scales))
    for optimizer in (low, back):  # both step on from the loaded state
        for param in optimizer.param_groups[0]["params"]:
            param.grad = torch.ones_like(param)
        optimizer.step()
        assert optimizer.state[optimizer.param_groups[0]["params"][0]]["step"] == 4


def test_bf16_checkpoint_loads_into_8bit():
    params, bf16 = _stepped(state_precision="bf16")
    low = wrappers.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2, state_precision="8bit")
    low.load_state_dict(bf16.state_dict())
    expected, _ = quantize_blockwise(bf16.state[params[0]]["exp_avg_sq"].float(), signed=False)
    assert torch.equal(low.state[low.param_groups[0]["params"][0]]["exp_avg_sq"], expected)


def test_options_survive_copies_and_checks():
    _, optimizer = _stepped(state_precision="8bit", stochastic_rounding=True, seed=5)
    for clone in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert (clone.state_precision, clone.stochastic_rounding, clone.seed) == ("8bit", True, 5)
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(UnsupportedOptionError, match="flat"):
        wrappers.AdamW(params, state_precision="8bit", flat=True)
    with pytest.raises(UnsupportedOptionError, match="amsgrad"):
        wrappers.Adam(params, amsgrad=True, state_precision="bf16")
    with pytest.raises(ValueError, match="state_precision"):
        wrappers.Adam(params, state_precision="fp8")
    with pytest.raises(UnsupportedOptionError, match="flat"):
        wrappers.RAdam(params, state_precision="bf16", flat=True)


@pytest.mark.parametrize("case", list(LOW_PRECISION_WRAPPER_CASES.values()), ids=list(LOW_PRECISION_WRAPPER_CASES))
@pytest.mark.parametrize("cls", [wrappers.AdamW, wrappers.RAdam, wrappers.NAdam, wrappers.AdaBelief],
                         ids=lambda cls: cls.__name__)
def test_compiled_equals_eager(cls, case, one_thread):
    """compiled=True takes the same steps: params equal but at under 1% of the elements, where a
    code or a stochastically rounded value took its neighbour at some step (there within a bf16
    step per step taken), moments likewise."""
    eager, eager_optimizer = low_precision_stepped(cls=cls, **case)
    compiled, compiled_optimizer = low_precision_stepped(cls=cls, compiled=True, **case)
    for mine, theirs in zip(compiled, eager):
        apart = (mine.float() - theirs.float()).abs() > 1e-5 * theirs.float().abs() + 1e-6
        assert apart.float().mean() < 0.01
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=8 * 2**-7, atol=0)
    for mine, theirs in zip(compiled, eager):
        a, b = compiled_optimizer.state[mine], eager_optimizer.state[theirs]
        assert list(a) == list(b)
        for name in cls.moments:
            assert a[name].dtype == b[name].dtype and (a[name] != b[name]).float().mean() < 0.01, name
