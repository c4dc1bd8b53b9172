"""DistributedDataParallel (gloo, CPU, 2 ranks): a DDP model stepped by ours against the same DDP
model stepped by torch.optim, in every mode, with DDP's gradients as bucket views and as copies,
and with gradient accumulation under ``no_sync()``.

The workers start once for the module (see ``_harness``); each test reads one scenario's results.
"""

import copy

import pytest
from torch.nn.parallel import DistributedDataParallel

from tests.distributed import _common as common
from tests.distributed._harness import Context, Scenario, engine_fixture, ids

STEPS = 3
VARIANTS = {  # id part: (gradient_as_bucket_view, micro-batches per step, the first ones under no_sync)
    "bucket_view": (True, 1),
    "grad_copy": (False, 1),
    "no_sync-bucket_view": (True, 2),
    "no_sync-grad_copy": (False, 2),
}
SCENARIOS = [
    Scenario(f"ddp-{variant}-{mode}-{name}", dict(bucket_view=bucket_view, micro=micro, mode=mode, name=name))
    for variant, (bucket_view, micro) in VARIANTS.items()
    for mode in common.MODES
    for name in ("Adam", "AdamW", "SGD")
] + [
    Scenario(f"ddp-{variant}-{mode}-{name}", dict(bucket_view=bucket_view, micro=micro, mode=mode, name=name))
    for variant, (bucket_view, micro) in VARIANTS.items()
    for mode in common.EXACT_MODES
    for name in common.TORCHLESS
]


# --- in the workers ----------------------------------------------------------------------------

def _train(ctx: Context, scenario: Scenario, lib: str, base) -> dict:
    model = copy.deepcopy(base)
    ddp = DistributedDataParallel(model, process_group=ctx.group,
                                  gradient_as_bucket_view=scenario["bucket_view"])
    optimizer = common.make_optimizer(lib, scenario["name"], ddp.parameters(), scenario["mode"])
    for step in range(STEPS):
        for micro in range(scenario["micro"] - 1):
            with ddp.no_sync():
                common.loss(ddp, ctx.rank, step, micro).backward()
        common.loss(ddp, ctx.rank, step, scenario["micro"] - 1).backward()
        optimizer.step()
        optimizer.zero_grad()
    names = common.param_names(ddp)
    return {"params": common.param_values(ddp), "state": common.optimizer_state(optimizer, names)}


def run_scenario(scenario: Scenario, ctx: Context) -> dict:
    base = common.make_model()
    return {lib: _train(ctx, scenario, lib, base) for lib in ("ours", "torch")}


# --- the tests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_run(request, tmp_path_factory):
    return engine_fixture(request, tmp_path_factory, SCENARIOS, "ddp")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids(SCENARIOS))
def test_ddp_matches_torch(ddp_run, scenario):
    exact = common.exact(scenario)
    for rank, data in enumerate(ddp_run.ranks(scenario)):
        for key in ("params", "state"):
            common.assert_matches(data["ours"][key], data["torch"][key], exact=exact, what=f"rank {rank} {key}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids(SCENARIOS))
def test_ddp_ranks_agree(ddp_run, scenario):
    first, *others = ddp_run.ranks(scenario)
    for rank, data in enumerate(others, start=1):
        for key in ("params", "state"):
            common.assert_matches(data["ours"][key], first["ours"][key], exact=True,
                                  what=f"ours: rank {rank} {key}", other="rank 0's")
