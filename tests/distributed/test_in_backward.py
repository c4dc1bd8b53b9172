"""Step in backward under DistributedDataParallel (gloo, CPU, 2 ranks): ours attached with
``step_in_backward(optimizer, ddp=model)`` against torch.optim stepping after backward, on the same
DDP model and data; with DDP's grads as bucket views and as copies, and with accumulation under
``no_sync()``. And the refusal without ``ddp=``: a hook would see this rank's grads, not the mean.

The workers start once for the module (see ``_harness``); each test reads one scenario's results.
Compiled modes are left to tests/distributed/test_ddp.py (their rules are the same; a cold inductor
compile in two workers does not fit this file's time budget).
"""

import copy

import pytest
from torch.nn.parallel import DistributedDataParallel

from tests.distributed import _common as common
from tests.distributed._harness import Context, Scenario, engine_fixture, ids

STEPS = 3
SCENARIOS = [
    Scenario(f"in_backward-{view}-{mode}-micro{micro}", dict(bucket_view=view == "bucket_view", mode=mode, micro=micro))
    for view, mode, micro in [("bucket_view", "list", 1), ("grad_copy", "list", 1), ("bucket_view", "flat", 1),
                              ("grad_copy", "flat", 1), ("bucket_view", "flat", 2), ("grad_copy", "list", 2)]
] + [Scenario("in_backward-refused-without-ddp")]


# --- in the workers ----------------------------------------------------------------------------

def _train(ctx: Context, scenario: Scenario, lib: str, base) -> dict:
    from wrappers.in_backward import step_in_backward

    model = copy.deepcopy(base)
    ddp = DistributedDataParallel(model, process_group=ctx.group, gradient_as_bucket_view=scenario["bucket_view"])
    optimizer = common.make_optimizer(lib, "AdamW", ddp.parameters(), scenario["mode"])
    micro = scenario["micro"]
    if lib == "ours":
        step_in_backward(optimizer, ddp=ddp, accumulation_steps=micro)
    grads_none = []
    for step in range(STEPS):
        for index in range(micro - 1):
            with ddp.no_sync():
                common.loss(ddp, ctx.rank, step, index).backward()
        common.loss(ddp, ctx.rank, step, micro - 1).backward()
        grads_none.append(all(param.grad is None for param in ddp.parameters()))
        optimizer.step()  # ours: nothing, backward stepped
        optimizer.zero_grad()
    names = common.param_names(ddp)
    return {"params": common.param_values(ddp), "state": common.optimizer_state(optimizer, names),
            "grads_none_after_backward": grads_none}


def _refused(ctx: Context) -> dict:
    import wrappers
    from optkernels import UnsupportedOptionError
    from wrappers.in_backward import step_in_backward

    ddp = DistributedDataParallel(common.make_model(), process_group=ctx.group)
    optimizer = wrappers.AdamW(ddp.parameters())
    step_in_backward(optimizer)  # no ddp=: refused at the first backward, before any step
    before = common.param_values(ddp)
    try:
        common.loss(ddp, ctx.rank, 0).backward()
    except UnsupportedOptionError as error:
        message = str(error)
    else:
        message = None
    unchanged = all(value.equal(before[name]) for name, value in common.param_values(ddp).items())
    return {"message": message, "unchanged": unchanged}


def run_scenario(scenario: Scenario, ctx: Context) -> dict:
    if scenario.id.endswith("refused-without-ddp"):
        return _refused(ctx)
    base = common.make_model()
    return {lib: _train(ctx, scenario, lib, base) for lib in ("ours", "torch")}


# --- the tests ---------------------------------------------------------------------------------
TRAINED = SCENARIOS[:-1]


@pytest.fixture(scope="module")
def in_backward_run(request, tmp_path_factory):
    return engine_fixture(request, tmp_path_factory, SCENARIOS, "in_backward")


@pytest.mark.parametrize("scenario", TRAINED, ids=ids(TRAINED))
def test_step_in_backward_under_ddp_matches_torch_after_backward(in_backward_run, scenario):
    for rank, data in enumerate(in_backward_run.ranks(scenario)):
        assert data["ours"]["grads_none_after_backward"] == [True] * STEPS, f"rank {rank}: grads left after backward"
        for key in ("params", "state"):  # list and flat: bitwise
            common.assert_matches(data["ours"][key], data["torch"][key], exact=True, what=f"rank {rank} {key}")
    first, second = in_backward_run.ranks(scenario)
    common.assert_matches(second["ours"]["params"], first["ours"]["params"], exact=True, what="rank 1 params",
                          other="rank 0's")


@pytest.mark.parametrize("scenario", SCENARIOS[-1:], ids=ids(SCENARIOS[-1:]))
def test_a_distributed_run_without_ddp_is_refused_before_any_step(in_backward_run, scenario):
    for rank, data in enumerate(in_backward_run.ranks(scenario)):
        assert data["message"] is not None and "ddp=model" in data["message"], f"rank {rank}: {data['message']!r}"
        assert data["unchanged"], f"rank {rank}: params changed"
