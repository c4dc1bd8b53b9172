"""ZeroRedundancyOptimizer (gloo, CPU, 2 ranks, the model in DDP) with ``optimizer_class=`` ours
against ``optimizer_class=`` torch.optim's, in every mode, with ``parameters_as_bucket_view`` on
and off: the params and each rank's local state, the consolidated checkpoint, and training on
after loading that checkpoint into a fresh ZeRO (and back into the used one).

ZeRO hands its ``**defaults`` (our ``flat``/``compiled`` among them) to the local optimizer and
copies its param groups' keys into the local ones at each step: the mode must not leak into the
local state dicts it consolidates, and must survive loading a checkpoint.

The workers start once for the module (see ``_harness``); each test reads one scenario's results.
"""

import copy

import pytest
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from tests.distributed import _common as common
from tests.distributed._harness import Context, Scenario, Sections, engine_fixture, ids

STEPS, MORE_STEPS = 3, 2
MODE_KEYS = ("flat", "compiled")
LIBS = ("ours", "torch")
SCENARIOS = [
    Scenario(f"zero-{layout}-{mode}-{name}", dict(bucket_view=layout == "bucket_view", mode=mode, name=name))
    for layout in ("bucket_view", "no_bucket_view")
    for mode in common.MODES
    for name in ("Adam", "AdamW", "SGD")
]
BUCKET_VIEW_SCENARIOS = [scenario for scenario in SCENARIOS if scenario["bucket_view"]]


# --- in the workers ----------------------------------------------------------------------------

def _zero(ctx: Context, scenario: Scenario, lib: str, model) -> ZeroRedundancyOptimizer:
    name, mode = scenario["name"], scenario["mode"]
    return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=common.optimizer_class(lib, name),
                                   process_group=ctx.group, parameters_as_bucket_view=scenario["bucket_view"],
                                   **common.optimizer_kwargs(lib, name, mode))


def _train(ctx: Context, ddp, zero, steps) -> None:
    for step in steps:
        common.loss(ddp, ctx.rank, step).backward()
        zero.step()
        zero.zero_grad()


def _modes(optimizer) -> dict:
    return {key: getattr(optimizer, key, None) for key in MODE_KEYS}


def _snapshot(model, zero) -> dict:
    """The full params, and this rank's local optimizer's state (the params it owns)."""
    return {"params": common.param_values(model),
            "state": common.optimizer_state(zero.optim, common.param_names(model))}


def run_scenario(scenario: Scenario, ctx: Context) -> dict:
    base = common.make_model()
    out: dict = {lib: {} for lib in LIBS}
    models, ddps, zeros, checkpoints, models_at_checkpoint = {}, {}, {}, {}, {}

    def train():
        for lib in LIBS:
            model = models[lib] = copy.deepcopy(base)
            ddps[lib] = DistributedDataParallel(model, process_group=ctx.group)
            zeros[lib] = _zero(ctx, scenario, lib, model)
            out[lib]["data_ptrs_before"] = [param.data_ptr() for param in model.parameters()]
            _train(ctx, ddps[lib], zeros[lib], range(STEPS))
            out[lib]["data_ptrs_after"] = [param.data_ptr() for param in model.parameters()]
            out[lib].update(_snapshot(model, zeros[lib]))

    def checkpoint():
        for lib in LIBS:
            zeros[lib].consolidate_state_dict(to=0)
            out[lib]["local_group_keys"] = [sorted(key for key in group if key != "params")
                                            for group in zeros[lib].optim.state_dict()["param_groups"]]
            # copies: training goes on
            saved = copy.deepcopy(zeros[lib].state_dict()) if ctx.rank == 0 else None
            out[lib]["checkpoint"] = saved
            received = [saved]
            dist.broadcast_object_list(received, src=dist.get_global_rank(ctx.group, 0), group=ctx.group)
            checkpoints[lib] = received[0]
            models_at_checkpoint[lib] = copy.deepcopy(models[lib].state_dict())

    def reload():  # a fresh model and ZeRO, loaded from the checkpoint, train on
        for lib in LIBS:
            fresh = common.make_model(seed=1)
            fresh.load_state_dict(models_at_checkpoint[lib])
            fresh_ddp = DistributedDataParallel(fresh, process_group=ctx.group)
            fresh_zero = _zero(ctx, scenario, lib, fresh)
            fresh_zero.load_state_dict(copy.deepcopy(checkpoints[lib]))  # ZeRO's edits what it is given
            out[lib]["modes_after_load"] = _modes(fresh_zero.optim)
            _train(ctx, fresh_ddp, fresh_zero, range(STEPS, STEPS + MORE_STEPS))
            out[lib]["modes_after_more_steps"] = _modes(fresh_zero.optim)
            out[lib]["reloaded"] = _snapshot(fresh, fresh_zero)

    def roll_back():  # the used ZeRO steps once more, is rolled back to the checkpoint, trains on
        for lib in LIBS:
            model, ddp, zero = models[lib], ddps[lib], zeros[lib]
            _train(ctx, ddp, zero, range(STEPS, STEPS + 1))
            model.load_state_dict(models_at_checkpoint[lib])  # copies into the params, bucket views included
            zero.load_state_dict(copy.deepcopy(checkpoints[lib]))
            _train(ctx, ddp, zero, range(STEPS, STEPS + MORE_STEPS))
            out[lib]["rolled_back"] = _snapshot(model, zero)

    sections = Sections()
    sections.run("train", train)
    sections.run("checkpoint", checkpoint, needs=("train",))
    sections.run("reload", reload, needs=("checkpoint",))
    sections.run("roll_back", roll_back, needs=("checkpoint",))
    return {**out, "errors": sections.errors}


# --- the tests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zero_run(request, tmp_path_factory):
    return engine_fixture(request, tmp_path_factory, SCENARIOS, "zero")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids(SCENARIOS))
def test_zero_matches_torch(zero_run, scenario):
    for rank, data in enumerate(zero_run.ranks(scenario, "train")):
        for key in ("params", "state"):
            common.assert_matches(data["ours"][key], data["torch"][key], exact=common.exact(scenario),
                                  what=f"rank {rank} {key} after {STEPS} steps")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids(SCENARIOS))
def test_zero_ranks_agree(zero_run, scenario):
    first, *others = zero_run.ranks(scenario, "train")
    for rank, data in enumerate(others, start=1):
        common.assert_matches(data["ours"]["params"], first["ours"]["params"], exact=True,
                              what=f"ours: rank {rank} params", other="rank 0's")


@pytest.mark.parametrize("scenario", BUCKET_VIEW_SCENARIOS, ids=ids(BUCKET_VIEW_SCENARIOS))
def test_zero_leaves_bucket_views_in_place(zero_run, scenario):
    """ZeRO's params are views of its buckets, which it broadcasts after each step: a step must
    update them where they are, not move them."""
    for rank, data in enumerate(zero_run.ranks(scenario, "train")):
        ours = data["ours"]
        assert ours["data_ptrs_after"] == ours["data_ptrs_before"], (
            f"rank {rank}: params' storage moved during the steps")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids(SCENARIOS))
def test_zero_state_dict_matches_torch(zero_run, scenario):
    """consolidate_state_dict(to=0) then state_dict() on rank 0: torch's state under torch's keys,
    torch's param group entries (the mode keys are test_zero_state_dict_has_no_mode_keys')."""
    ours, torchs = (zero_run.ranks(scenario, "checkpoint")[0][lib]["checkpoint"] for lib in ("ours", "torch"))
    assert set(ours) == set(torchs), f"checkpoint keys: ours {sorted(ours)}, torch's {sorted(torchs)}"
    common.assert_matches(ours["state"], torchs["state"], exact=common.exact(scenario), what="checkpoint['state']")
    groups = [{key: value for key, value in group.items() if key not in MODE_KEYS} for group in ours["param_groups"]]
    common.assert_matches(groups, torchs["param_groups"], exact=True, what="checkpoint['param_groups']")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids(SCENARIOS))
def test_zero_consolidates_local_state_dicts_without_mode_keys(zero_run, scenario):
    """The mode is how this process runs, not training state: the local optimizer's state dicts,
    which consolidate_state_dict gathers, must not carry it, though ZeRO copies its keywords (ours
    among them) into the local param groups. (ZeRO's own param groups keep every keyword it was
    given; the README says how to keep the modes out of them: bind them to the class.)"""
    for rank, data in enumerate(zero_run.ranks(scenario, "checkpoint")):
        leaked = [(index, key) for index, keys in enumerate(data["ours"]["local_group_keys"])
                  for key in MODE_KEYS if key in keys]
        assert not leaked, f"rank {rank}: local param_groups carry the mode: {leaked}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids(SCENARIOS))
def test_zero_reload_continues_like_torch(zero_run, scenario):
    """The checkpoint loaded into a fresh model and ZeRO of ours, then MORE_STEPS steps: torch's
    numbers after the same."""
    for rank, data in enumerate(zero_run.ranks(scenario, "reload")):
        for key in ("params", "state"):
            common.assert_matches(data["ours"]["reloaded"][key], data["torch"]["reloaded"][key],
                                  exact=common.exact(scenario), what=f"rank {rank} {key} after reloading")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids(SCENARIOS))
def test_zero_reload_keeps_mode(zero_run, scenario):
    expected = common.MODES[scenario["mode"]]
    for rank, data in enumerate(zero_run.ranks(scenario, "reload")):
        for when in ("modes_after_load", "modes_after_more_steps"):
            assert data["ours"][when] == expected, (
                f"rank {rank}: local optimizer's (flat, compiled) {when.removeprefix('modes_')}: "
                f"{data['ours'][when]}, asked {expected}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids(SCENARIOS))
def test_zero_reload_into_used_optimizer(zero_run, scenario):
    """The checkpoint loaded back into the ZeRO that saved it, after it stepped once more (and its
    model rolled back): ZeRO puts the state straight into the local optimizer's ``state``, past
    its load_state_dict, so a mode must not keep stepping stale copies of it."""
    for rank, data in enumerate(zero_run.ranks(scenario, "roll_back")):
        for key in ("params", "state"):
            common.assert_matches(data["ours"]["rolled_back"][key], data["torch"]["rolled_back"][key],
                                  exact=common.exact(scenario), what=f"rank {rank} {key} after rolling back")
