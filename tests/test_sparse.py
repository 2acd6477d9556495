"""Fixed-mask engine: pruned weights, gradients and optimizer state stay exactly 0."""

from __future__ import annotations

import copy
import gc
import hashlib
import io
import warnings

import pytest
import torch
from torch import nn

from orthosparse.sparse import (
    MASK_SUFFIX,
    DensityReport,
    apply_masks,
    attach_optimizer,
    broadcast_masks,
    density_report,
    get_masks,
    load_sparse_state_dict,
    mask_checksum,
    remove_masks,
)


# ----------------------------------------------------------------------------- fixtures
def make_mlp() -> nn.Module:
    torch.manual_seed(0)  # test-side seeding only: the library never seeds
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 4))


def make_cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def inputs(model: nn.Module, n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    shape = (n, 8) if isinstance(first, nn.Linear) else (n, 3, 6, 6)
    return torch.randn(shape, generator=g)


def random_masks(model: nn.Module, density: float = 0.3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, param in model.named_parameters():
        if name.endswith("weight"):
            mask = torch.rand(param.shape, generator=g) < density
            mask.view(-1)[0] = True  # never empty
            mask.view(-1)[1] = False  # never full
            masks[name] = mask
    return masks


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).square().mean() + model(x).sum() * 0.1


NETS = {"mlp": make_mlp, "cnn": make_cnn}

OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                 weight_decay=1e-2),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def assert_pruned_zero(model: nn.Module, masks: dict, optimizer=None) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        param = params[name]
        assert torch.equal(param.detach()[~mask], torch.zeros(int((~mask).sum()))), name
        if param.grad is not None:
            assert torch.count_nonzero(param.grad[~mask]) == 0, name
        if optimizer is not None:
            for key, value in optimizer.state[param].items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    assert torch.count_nonzero(value[~mask]) == 0, (name, key)


# ----------------------------------------------------------------------------- install
@pytest.mark.parametrize("net", NETS)
def test_apply_masks_zeroes_pruned_entries_and_keeps_parameters(net):
    model = NETS[net]()
    masks = random_masks(model)
    before = {name: (id(p), p.detach().clone()) for name, p in model.named_parameters()}
    assert apply_masks(model, masks) is model
    for name, param in model.named_parameters():
        assert id(param) == before[name][0]  # never replaced
        if name in masks:
            mask = masks[name]
            assert torch.count_nonzero(param.detach()[~mask]) == 0
            assert torch.equal(param.detach()[mask], before[name][1][mask])  # kept untouched
        else:
            assert torch.equal(param.detach(), before[name][1])
    buffers = dict(model.named_buffers())
    assert MASK_SUFFIX == "_orthosparse_mask"  # not torch.nn.utils.prune's "_mask"
    assert sorted(buffers) == sorted(name + MASK_SUFFIX for name in masks)
    for name, mask in masks.items():
        assert buffers[name + MASK_SUFFIX].dtype == torch.bool
        assert torch.equal(buffers[name + MASK_SUFFIX], mask)
    got = get_masks(model)
    assert list(got) == list(masks)
    for name, mask in masks.items():
        assert torch.equal(got[name], mask)
        assert got[name] is not buffers[name + MASK_SUFFIX]  # a copy


def test_mask_is_copied_not_aliased():
    model = make_mlp()
    masks = random_masks(model)
    mask = masks["0.weight"]
    apply_masks(model, masks)
    mask.fill_(True)  # editing the caller's tensor must not change the model
    assert not bool(model[0].weight_orthosparse_mask.all())


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_pruned_weights_grads_and_state_stay_zero(net, opt):
    model = NETS[net]()
    optimizer = OPTIMIZERS[opt](model.parameters())  # built before the masks: still valid
    masks = random_masks(model)
    apply_masks(model, masks)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    for step in range(4):
        optimizer.zero_grad()
        loss_of(model, inputs(model, seed=step)).backward()
        assert_pruned_zero(model, masks)  # gradients right after backward
        optimizer.step()
        assert_pruned_zero(model, masks, optimizer)
    for name, mask in masks.items():  # training really happened on the kept entries
        param = dict(model.named_parameters())[name]
        assert not torch.equal(param.detach()[mask], start[name][mask])


def test_gradient_accumulation_is_masked_and_autograd_grad_is_not():
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, masks)
    x = inputs(model)
    loss_of(model, x).backward()
    loss_of(model, x * 2).backward()  # accumulates into .grad
    assert_pruned_zero(model, masks)
    # Documented: torch.autograd.grad does not touch .grad and returns the true gradient.
    grads = torch.autograd.grad(loss_of(model, x), [model[0].weight])
    assert torch.count_nonzero(grads[0][~masks["0.weight"]]) > 0
    model.zero_grad(set_to_none=False)  # zero-filled .grad buffers are reused, still masked
    loss_of(model, x).backward()
    assert_pruned_zero(model, masks)


def test_masks_follow_dtype_and_remask():
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, masks)
    model.double()
    x = inputs(model).double()
    loss_of(model, x).backward()
    assert model[0].weight.grad.dtype == torch.float64
    assert_pruned_zero(model, masks)
    # Masking a parameter again replaces its mask: the hook uses the new one.
    new = {"0.weight": ~masks["0.weight"]}
    new["0.weight"].view(-1)[0] = True
    apply_masks(model, new)
    model.zero_grad()
    loss_of(model, x).backward()
    assert torch.count_nonzero(model[0].weight.grad[~new["0.weight"]]) == 0
    assert torch.count_nonzero(model[0].weight.detach()[~new["0.weight"]]) == 0


def test_frozen_parameter_gets_mask_and_hook_and_stays_frozen():
    model = make_mlp()
    model[0].weight.requires_grad_(False)
    masks = random_masks(model)
    apply_masks(model, masks)
    assert not model[0].weight.requires_grad  # the hook was installed without unfreezing it
    assert torch.count_nonzero(model[0].weight[~masks["0.weight"]]) == 0
    loss_of(model, inputs(model)).backward()
    assert model[0].weight.grad is None
    assert_pruned_zero(model, masks)
    model[0].weight.requires_grad_(True)  # unfrozen later: its gradient is masked
    loss_of(model, inputs(model)).backward()
    assert_pruned_zero(model, masks)


# ----------------------------------------------------------------------------- autocast, compile
@pytest.mark.parametrize("net", NETS)
def test_autocast_bfloat16_cpu(net):
    model = NETS[net]()
    masks = random_masks(model)
    apply_masks(model, masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                weight_decay=1e-2)
    for step in range(3):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(inputs(model, seed=step))
            assert out.dtype == torch.bfloat16  # autocast really ran
            loss = out.float().square().mean()
        loss.backward()
        assert model[0].weight.grad.dtype == torch.float32
        assert_pruned_zero(model, masks)
        optimizer.step()
        assert_pruned_zero(model, masks, optimizer)


def test_dynamo_sees_no_graph_break():
    torch._dynamo.reset()
    model = make_cnn()
    apply_masks(model, random_masks(model))
    explanation = torch._dynamo.explain(model)(inputs(model))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.slow),
])
def test_compiled_fullgraph_training_keeps_zeros(backend):
    torch._dynamo.reset()
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, masks)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        optimizer.zero_grad()
        compiled(inputs(model, seed=step)).square().mean().backward()
        assert_pruned_zero(model, masks)
        optimizer.step()
        assert_pruned_zero(model, masks, optimizer)
    # The compiled model computes what the eager one does.
    x = inputs(model, seed=9)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- state_dict
@pytest.mark.parametrize("net", NETS)
def test_state_dict_round_trip_into_fresh_model(net):
    model = NETS[net]()
    masks = random_masks(model)
    apply_masks(model, masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_of(model, inputs(model)).backward()
    optimizer.step()
    state = model.state_dict()
    assert {name + MASK_SUFFIX for name in masks} <= set(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    fresh = NETS[net]()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict(loaded)  # a fresh model has no mask buffers: hence the helper
    fresh = NETS[net]()
    result = load_sparse_state_dict(fresh, loaded)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # The fresh model is armed: training it keeps the zeros.
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2, weight_decay=1e-2)
    for step in range(2):
        fresh_opt.zero_grad()
        loss_of(fresh, inputs(fresh, seed=step)).backward()
        assert_pruned_zero(fresh, masks)
        fresh_opt.step()
        assert_pruned_zero(fresh, masks, fresh_opt)


def test_plain_load_state_dict_into_masked_model_updates_masks():
    source, target = make_mlp(), make_mlp()
    masks_a, masks_b = random_masks(source, seed=1), random_masks(target, seed=2)
    apply_masks(source, masks_a)
    apply_masks(target, masks_b)
    loss_of(target, inputs(target)).backward()  # build the hook's cast cache with masks_b
    target.load_state_dict(source.state_dict())
    target.zero_grad()
    loss_of(target, inputs(target)).backward()
    assert_pruned_zero(target, masks_a)
    assert any(int((m_a & ~m_b).sum()) for m_a, m_b in zip(masks_a.values(), masks_b.values(),
                                                               strict=True))


def test_load_sparse_state_dict_zeroes_stray_values_with_warning():
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, masks)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = ~masks["2.weight"]
    state["2.weight"][pruned] = 1.0
    fresh = make_mlp()
    with pytest.warns(UserWarning, match=rf"{int(pruned.sum())} pruned entries of '2.weight'"):
        load_sparse_state_dict(fresh, state)
    assert torch.count_nonzero(fresh[2].weight[pruned]) == 0


def test_load_sparse_state_dict_errors():
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        load_sparse_state_dict(make_mlp(), [1, 2])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        load_sparse_state_dict("model", {})


# ----------------------------------------------------------------------------- remove / copy
def test_remove_masks_bakes_and_drops_machinery():
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, masks)
    with torch.no_grad():
        model[0].weight[~masks["0.weight"]] = 3.0  # someone wrote to pruned entries
    weight_id = id(model[0].weight)
    assert remove_masks(model) is model
    assert id(model[0].weight) == weight_id
    assert dict(model.named_buffers()) == {}
    assert torch.count_nonzero(model[0].weight[~masks["0.weight"]]) == 0  # baked
    loss_of(model, inputs(model)).backward()  # hooks gone: dense gradients again
    assert torch.count_nonzero(model[0].weight.grad[~masks["0.weight"]]) > 0
    with pytest.warns(UserWarning, match="no fixed masks"):
        remove_masks(model)


def test_remove_masks_without_bake_and_by_name():
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, masks)
    with torch.no_grad():
        model[0].weight[~masks["0.weight"]] = 3.0
    remove_masks(model, ["0.weight"], bake=False)
    assert torch.all(model[0].weight[~masks["0.weight"]] == 3.0)
    assert list(get_masks(model)) == ["2.weight", "4.weight"]
    with pytest.raises(ValueError, match=r"no mask on '0.weight'; masked parameters are: "
                                         r"2.weight, 4.weight"):
        remove_masks(model, "0.weight")


def test_deepcopy_keeps_buffers_and_rearms_itself():
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, masks)
    clone = copy.deepcopy(model)
    # PyTorch copies no tensor hook; the module's guard re-arms the copy as it is restored.
    loss_of(clone, inputs(clone)).backward()
    assert_pruned_zero(clone, masks)
    apply_masks(clone)  # re-arming by hand is harmless
    clone.zero_grad()
    loss_of(clone, inputs(clone)).backward()
    assert_pruned_zero(clone, masks)
    # The original keeps its own hooks and masks.
    loss_of(model, inputs(model)).backward()
    assert_pruned_zero(model, masks)


# ----------------------------------------------------------------------------- optimizers
class _Drift(torch.optim.Optimizer):
    """A (bad) optimizer whose update is nonzero for a zero gradient."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["trace"] = state.get("trace", torch.zeros_like(p)) + 1.0
                p.add_(state["trace"], alpha=group["lr"])


def test_attach_optimizer_guards_arbitrary_optimizers():
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, masks)
    optimizer = _Drift(model.parameters())
    handle = attach_optimizer(optimizer, model)
    for _ in range(2):
        optimizer.step()
        assert_pruned_zero(model, masks, optimizer)
    assert torch.all(model[0].weight[masks["0.weight"]] != 0)
    assert handle.active
    handle.remove()  # the per-step net off: the bad optimizer now moves pruned weights
    assert not handle.active
    optimizer.step()
    assert torch.count_nonzero(model[0].weight[~masks["0.weight"]]) > 0


def test_attach_optimizer_clears_state_from_before_the_masks():
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_of(model, inputs(model)).backward()
    optimizer.step()  # momentum buffers are dense now
    masks = random_masks(model)
    apply_masks(model, masks)
    buffer = optimizer.state[model[0].weight]["momentum_buffer"]
    assert torch.count_nonzero(buffer[~masks["0.weight"]]) > 0
    attach_optimizer(optimizer, model)
    assert_pruned_zero(model, masks, optimizer)
    for step in range(3):
        optimizer.zero_grad()
        loss_of(model, inputs(model, seed=step)).backward()
        optimizer.step()
        assert_pruned_zero(model, masks, optimizer)


def test_attach_optimizer_follows_later_masks_and_rearms_copies():
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, {"0.weight": masks["0.weight"]})
    clone = copy.deepcopy(model)
    optimizer = _Drift(clone.parameters())
    attach_optimizer(optimizer, clone)  # re-arms the copy's gradient hook
    loss_of(clone, inputs(clone)).backward()
    assert torch.count_nonzero(clone[0].weight.grad[~masks["0.weight"]]) == 0
    apply_masks(clone, {"2.weight": masks["2.weight"]})  # masked after attaching
    optimizer.step()
    assert torch.count_nonzero(clone[2].weight[~masks["2.weight"]]) == 0


@pytest.mark.parametrize("opt", ["sgd-nesterov-wd", "adam-wd", "adamw"])
def test_attach_optimizer_skips_the_step_hook_for_zero_preserving_optimizers(opt):
    model = make_mlp()
    masks = random_masks(model)
    apply_masks(model, masks)
    optimizer = OPTIMIZERS[opt](model.parameters())
    handle = attach_optimizer(optimizer, model)
    assert not handle.active  # no per-step cost for optimizers that keep zeros at 0
    handle.remove()  # harmless
    assert attach_optimizer(optimizer, model, every_step=True).active
    drift = _Drift(model.parameters())
    attach_optimizer(drift, model, every_step=False)
    drift.step()  # no net asked for: the bad optimizer moves pruned weights
    assert torch.count_nonzero(model[0].weight[~masks["0.weight"]]) > 0


def test_attach_optimizer_errors():
    model = make_mlp()
    apply_masks(model, random_masks(model))
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        attach_optimizer("sgd", model)
    other = torch.optim.SGD(make_mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of the model's 3 masked parameters"):
        attach_optimizer(other, model)


# ----------------------------------------------------------------------------- errors
def test_apply_masks_errors():
    model = make_mlp()
    with pytest.raises(ValueError, match=r"mask for parameter '2.weight' has shape \(16, 8\) "
                                         r"but the parameter has shape \(16, 16\)"):
        apply_masks(model, {"2.weight": torch.ones(16, 8, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"mask for '0.weight' must be a bool tensor, got dtype "
                                        r"torch.float32"):
        apply_masks(model, {"0.weight": torch.ones(16, 8)})
    with pytest.raises(TypeError, match="mask for '0.weight' must be a torch.Tensor"):
        apply_masks(model, {"0.weight": [[True]]})
    with pytest.raises(ValueError, match=r"'9.weight' is not a parameter of the model; "
                                         r"parameters are: 0.weight, 0.bias"):
        apply_masks(model, {"9.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="masks must be a mapping"):
        apply_masks(model, [torch.ones(2, dtype=torch.bool)])
    with pytest.raises(TypeError, match="mask keys must be parameter names"):
        apply_masks(model, {0: torch.ones(2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        apply_masks(object(), {})
    clash = nn.Linear(3, 2)
    clash.weight_orthosparse_mask = 5  # a plain attribute in the way
    with pytest.raises(ValueError, match="already has an attribute 'weight_orthosparse_mask'"):
        apply_masks(clash, {"weight": torch.ones(2, 3, dtype=torch.bool)})
    foreign = nn.Linear(3, 2)
    foreign.register_buffer("weight_orthosparse_mask", torch.ones(2, 3))  # float: not ours
    with pytest.raises(ValueError, match="already has an attribute 'weight_orthosparse_mask'"):
        apply_masks(foreign, {"weight": torch.ones(2, 3, dtype=torch.bool)})
    # Validation happens before anything is touched.
    untouched = make_mlp()
    reference = copy.deepcopy(untouched.state_dict())
    with pytest.raises(ValueError, match="has shape"):
        apply_masks(untouched, {"0.weight": torch.zeros(16, 8, dtype=torch.bool),
                                "2.weight": torch.ones(1, dtype=torch.bool)})
    assert list(untouched.state_dict()) == list(reference)
    assert torch.equal(untouched[0].weight, reference["0.weight"])


def test_empty_mask_warns_with_the_name():
    model = make_mlp()
    with pytest.warns(UserWarning, match="mask for '2.weight' keeps none of its 256 entries"):
        apply_masks(model, {"2.weight": torch.zeros(16, 16, dtype=torch.bool)})
    assert torch.count_nonzero(model[2].weight) == 0


# ----------------------------------------------------------------------------- distributed
def test_mask_checksum_is_sensitive_to_bits_names_and_shapes():
    a = torch.tensor([[True, False, True], [False, False, True]])
    base = mask_checksum({"w": a, "v": a.T.contiguous()})
    assert base == mask_checksum({"v": a.T.clone(), "w": a.clone()})  # order-free
    flipped = a.clone()
    flipped[1, 1] = True
    assert mask_checksum({"w": flipped, "v": a.T}) != base
    assert mask_checksum({"u": a, "v": a.T}) != base
    assert mask_checksum({"w": a.reshape(3, 2), "v": a.T}) != base
    # Same bits through a model.
    model = nn.Linear(3, 2)
    apply_masks(model, {"weight": a})
    assert mask_checksum(model) == mask_checksum({"weight": a})
    digest = hashlib.sha256(b"weight:(2, 3);" + bytes([0b10100100])).hexdigest()
    assert mask_checksum({"weight": a}) == digest  # documented rule: packed bits, row-major
    with pytest.raises(TypeError, match="mask 'w' must be a bool tensor"):
        mask_checksum({"w": torch.ones(2)})


def test_broadcast_masks_without_distributed_is_identity():
    masks = {"w": torch.tensor([True, False])}
    out = broadcast_masks(masks)
    assert list(out) == ["w"] and torch.equal(out["w"], masks["w"])


def _ddp_train(model: nn.Module, masks: dict, bucket_view: bool, seed: int) -> list[int]:
    """Train a DDP-wrapped masked model; return nonzero counts at pruned entries (all steps)."""
    ddp = nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=bucket_view)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    counts = []
    for step in range(3):
        optimizer.zero_grad()
        loss_of(ddp, inputs(model, seed=seed + step)).backward()
        counts += [int(torch.count_nonzero(p.grad[~masks[n]])) for n, p in
                   model.named_parameters() if n in masks]
        optimizer.step()
        counts += [int(torch.count_nonzero(p.detach()[~masks[n]])) for n, p in
                   model.named_parameters() if n in masks]
    del ddp, optimizer
    gc.collect()  # free the DDP reducer before the process group goes away
    return counts


def _shutdown() -> None:
    import torch.distributed as dist

    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("bucket_view", [False, True])
def test_ddp_single_rank_keeps_zeros(tmp_path, bucket_view):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        model = make_mlp()
        masks = random_masks(model)
        apply_masks(model, masks)
        counts = _ddp_train(model, masks, bucket_view, seed=0)
        assert counts and set(counts) == {0}
        assert not torch.equal(model[0].weight.detach(), torch.zeros(16, 8))
    finally:
        _shutdown()


def _broadcast_worker(rank: int, world: int, path: str, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(100 + rank)  # different masks on every rank
        masks = {"a": torch.rand(4, 5, generator=g) < 0.5, "b": torch.rand(7, generator=g) < 0.5}
        out = broadcast_masks(masks)
        results[rank] = (mask_checksum(out), mask_checksum(masks))
        bad = {"a": masks["a"]} if rank == 1 else masks
        try:
            broadcast_masks(bad)
        except ValueError as err:
            results[rank + 10] = str(err)
        # DDP on two ranks (different data per rank) with masks made equal by broadcasting.
        model = make_mlp()
        masks = broadcast_masks(random_masks(model, seed=rank))
        apply_masks(model, masks)
        results[rank + 20] = (_ddp_train(model, masks, False, seed=10 * rank),
                              mask_checksum(model))
    finally:
        _shutdown()


@pytest.mark.slow
def test_broadcast_masks_two_ranks(tmp_path):
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_broadcast_worker, args=(2, str(tmp_path / "store"), results), nprocs=2)
    (out0, own0), (out1, own1) = results[0], results[1]
    assert own0 != own1  # they started different
    assert out0 == out1 == own0  # rank 0's masks everywhere
    assert "different mask names or shapes" in results[10]
    assert "different mask names or shapes" in results[11]
    (counts0, sum0), (counts1, sum1) = results[20], results[21]
    assert sum0 == sum1
    assert counts0 and set(counts0) == set(counts1) == {0}


# ----------------------------------------------------------------------------- report
def test_density_report_counts_and_table():
    model = make_cnn()
    conv_mask = torch.zeros(8, 3, 3, 3, dtype=torch.bool)
    conv_mask[:, :, 1, 1] = True  # 24 kept of 216
    apply_masks(model, {"0.weight": conv_mask})
    with torch.no_grad():
        model[0].weight[0, 0, 1, 1] = 0.0  # a kept entry that happens to be 0
    from orthosparse.sparse import _record_targets

    _record_targets(model, {"0.weight": 0.1})
    report = density_report(model)
    assert isinstance(report, DensityReport)
    assert [row.name for row in report.rows] == ["0.weight", "2.weight", "5.weight"]
    first, second, last = report.rows
    assert (first.shape, first.kept, first.numel, first.nonzero) == ((8, 3, 3, 3), 24, 216, 23)
    assert first.target == 0.1 and first.density == 24 / 216
    assert (second.kept, second.numel, second.target) == (576, 576, None)  # unmasked: dense
    assert last.kept == last.numel == 5 * 128
    assert report.kept == 24 + 576 + 640 and report.numel == 216 + 576 + 640
    assert report.density == pytest.approx((24 + 576 + 640) / (216 + 576 + 640), abs=0, rel=1e-12)
    assert [(r.status, r.module) for r in report.rows] == [
        ("masked", "Conv2d.weight"), ("dense", "Conv2d.weight"), ("dense", "Linear.weight")]
    # Every other parameter is shown too, by module type: here the three biases.
    assert [(r.name, r.status, r.module) for r in report.other] == [
        ("0.bias", "not prunable", "Conv2d.bias"), ("2.bias", "not prunable", "Conv2d.bias"),
        ("5.bias", "not prunable", "Linear.bias")]
    assert report.parameters == sum(p.numel() for p in model.parameters()) == 1432 + 8 + 8 + 5
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "shape", "target", "density", "kept", "numel",
                                "nonzero", "status"]
    assert lines[2].split() == ["0.weight", "8x3x3x3", "0.1000", "0.1111", "24", "216", "23",
                                "masked"]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[-3:] == ["1240", "1432", "1239"]
    rule = lines[1]
    assert set(rule) == {"-"} and all(len(line) <= len(rule) for line in lines[:7])
    assert lines[2].index("0.1111") + 6 == lines[0].index("density") + 7  # right-aligned
    assert lines[7].startswith("not prunable (by module type), 3 tensors")
    assert lines[8].split() == ["Conv2d.bias", "2", "x", "16", "1.1%"]
    assert lines[-1] == "prunable weights: 1432 of 1453 parameters (98.6%)"
    records = report.to_records()
    assert records[0]["kept"] == 24 and records[0]["shape"] == [8, 3, 3, 3]
    assert records[0]["status"] == "masked" and records[-1]["status"] == "not prunable"


def test_density_report_from_masks_and_targets():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.ones(2, 2, dtype=bool)}
    report = density_report(masks, targets={"a": 0.25})
    assert [(r.name, r.kept, r.numel, r.target, r.nonzero) for r in report.rows] == [
        ("a", 1, 4, 0.25, None), ("b", 4, 4, None, None)]
    assert report.density == 5 / 8
    with pytest.raises(TypeError, match="targets must be a mapping"):
        density_report(masks, targets=[0.1])
    with pytest.raises(TypeError, match="expected a model or a mapping"):
        density_report(3)


def test_no_warning_on_normal_use():
    model = make_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_masks(model, random_masks(model))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        attach_optimizer(optimizer, model)
        loss_of(model, inputs(model)).backward()
        optimizer.step()


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_autocast_with_grad_scaler_keeps_zeros():
    model = make_cnn()
    masks = random_masks(model)
    apply_masks(model, masks)
    model.cuda()
    assert model[0].weight_orthosparse_mask.device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cuda")
    for step in range(3):
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(inputs(model, seed=step).cuda()).float().square().mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    model.cpu()  # moves weights, grads and mask buffers back
    assert_pruned_zero(model, masks)
