"""Every wrapper is called as its torch.optim namesake is: the same parameter names, order, kinds
(positional or keyword-only) and defaults; AdaBelief as DESIGN.md gives it. The elementwise ones
add our two keyword-only switches after torch's, both off by default."""

import inspect

import pytest
import torch

import wrappers
from tests.configs import OURS


OUR_SWITCHES = [("flat", inspect.Parameter.KEYWORD_ONLY, False), ("compiled", inspect.Parameter.KEYWORD_ONLY, False)]
# Adam, AdamW and RAdam also keep their moments in low precision (optkernels.quantization)
LOW_PRECISION_SWITCHES = [("state_precision", inspect.Parameter.KEYWORD_ONLY, "fp32"),
                          ("stochastic_rounding", inspect.Parameter.KEYWORD_ONLY, False),
                          ("seed", inspect.Parameter.KEYWORD_ONLY, 0)]


def _parameters(cls):
    """Names, kinds and defaults; annotations aside (torch's are types, ours are not written)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(cls).parameters.values()]


@pytest.mark.parametrize("reference", list(OURS), ids=lambda cls: cls.__name__)
def test_signature_is_torchs(reference):
    ours = OURS[reference]
    switches = OUR_SWITCHES if ours.elementwise else []
    if issubclass(ours, wrappers.adam.LowPrecisionMoments):
        switches = switches + LOW_PRECISION_SWITCHES
    assert _parameters(ours) == _parameters(reference) + switches


def test_every_torch_optimizer_has_a_wrapper():
    torch_classes = {cls for cls in vars(torch.optim).values()
                     if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
                     and cls is not torch.optim.Optimizer}
    assert torch_classes <= set(OURS), sorted(cls.__name__ for cls in torch_classes - set(OURS))


def test_adabelief_signature_is_the_designs():
    def adabelief(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0, amsgrad=False, *,
                  decoupled_weight_decay=True, fixed_decay=False, rectify=True, degenerated_to_sgd=True,
                  maximize=False, flat=False, compiled=False):
        pass

    # the design's, then our mode switches and the low-precision options every such class takes
    assert _parameters(wrappers.AdaBelief) == _parameters(adabelief) + LOW_PRECISION_SWITCHES
