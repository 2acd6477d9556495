"""Fixed masks hold through what PyTorch users do to models (issue 15), or fail loudly.

Each test names the operation; every one of them failed (silently) before the guard, the
process-wide optimizer net, the load hooks and the parameter-registration hook of
``orthosparse.sparse``.
"""

from __future__ import annotations

import copy
import io
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from orthosparse import apply_masks, density_report, get_masks, load_sparse_state_dict, sparsify
from orthosparse.diagnostics import orthogonality_error
from orthosparse.sparse import MASK_SUFFIX, attach_optimizer, remove_masks


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_mlp() -> nn.Module:
    torch.manual_seed(0)  # test-side seeding only
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 4))


def make_cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 5))


def x_for(model: nn.Module, seed: int = 0) -> torch.Tensor:
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    shape = (8, first.in_features) if isinstance(first, nn.Linear) else (8, 3, 6, 6)
    return torch.randn(shape, generator=gen(seed))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for step in range(steps):
        optimizer.zero_grad()
        out = model(x_for(model, step))
        (out.square().mean() + out.sum() * 0.1).backward()
        optimizer.step()


def leaked(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Nonzero weights outside the masks, by the masks' names (effective weights for pruned or
    weight-normed layers, since ``get_submodule(...).weight`` is what the forward uses)."""
    count = 0
    for name, mask in masks.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        count += int(torch.count_nonzero(getattr(module, attr).detach()[~mask]))
    return count


NETS = {"mlp": make_mlp, "cnn": make_cnn}


# ----------------------------------------------------------------------------- copies
@pytest.mark.parametrize("net", NETS)
def test_deepcopy_keeps_masks_without_any_call(net):
    model = NETS[net]()
    masks = sparsify(model, 0.3, generator=gen())
    clone = copy.deepcopy(model)
    train(clone, torch.optim.SGD(clone.parameters(), lr=0.1, momentum=0.9))
    assert leaked(clone, masks) == 0
    assert get_masks(clone).keys() == masks.keys()
    train(model, torch.optim.SGD(model.parameters(), lr=0.1))  # the original too
    assert leaked(model, masks) == 0


@pytest.mark.parametrize("net", NETS)
def test_pickled_whole_model_keeps_masks(net):
    model = NETS[net]()
    masks = sparsify(model, 0.3, generator=gen())
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    train(loaded, torch.optim.Adam(loaded.parameters(), lr=1e-2))
    assert leaked(loaded, masks) == 0
    # A copy of the copy, and one moved to float64, still hold.
    again = copy.deepcopy(loaded).double()
    for step in range(2):
        again.zero_grad()
        again(x_for(again, step).double()).square().mean().backward()
        torch.optim.SGD(again.parameters(), lr=0.1).step()
    assert leaked(again, masks) == 0


# ----------------------------------------------------------------------------- state_dict
def test_state_dict_into_fresh_model_plain_and_helper():
    model = make_mlp()
    masks = sparsify(model, 0.3, generator=gen())
    state = model.state_dict()
    assert all(key.endswith(MASK_SUFFIX) for key in state if "mask" in key)
    # A fresh model has no mask buffers: plain load_state_dict fails loudly, naming the keys.
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*0\.weight_orthosparse_mask"):
        make_mlp().load_state_dict(state)
    # The helper installs them, strict or not.
    for strict in (True, False):
        fresh = make_mlp()
        load_sparse_state_dict(fresh, state, strict=strict)
        train(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9))
        assert leaked(fresh, masks) == 0
    # A model that already has masks takes plain load_state_dict (masks replaced by the file's).
    other = make_mlp()
    sparsify(other, 0.3, generator=gen(5))
    other.load_state_dict(state)
    assert all(torch.equal(get_masks(other)[n], m) for n, m in masks.items())
    train(other, torch.optim.Adam(other.parameters(), lr=1e-2))
    assert leaked(other, masks) == 0


def test_strict_false_load_of_a_dense_checkpoint_keeps_masks():
    model = make_mlp()
    masks = sparsify(model, 0.3, generator=gen())
    dense = {k: v for k, v in make_mlp().state_dict().items()}  # no masks, dense weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.load_state_dict(dense, strict=False)
    said = [str(w.message) for w in caught]
    assert len(said) == 3 and all(re.fullmatch(
        rf"load_state_dict: \d+ pruned entries of '{n}' \(Linear\) were nonzero in the loaded "
        rf"state; set to 0 \(the fixed mask holds\)", m) for n, m in zip(masks, said, strict=True))
    assert sorted(result.missing_keys) == sorted(n + MASK_SUFFIX for n in masks)
    assert get_masks(model).keys() == masks.keys() and leaked(model, masks) == 0
    train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert leaked(model, masks) == 0


def test_checkpoint_with_the_old_buffer_name_loads():
    model = make_mlp()
    masks = sparsify(model, 0.3, generator=gen())
    old = {k.replace(MASK_SUFFIX, "_mask"): v for k, v in model.state_dict().items()}
    fresh = make_mlp()
    load_sparse_state_dict(fresh, old)
    assert all(torch.equal(get_masks(fresh)[n], m) for n, m in masks.items())
    masked = make_mlp()
    sparsify(masked, 0.3, generator=gen(3))
    masked.load_state_dict(old)  # plain load into a masked model
    assert all(torch.equal(get_masks(masked)[n], m) for n, m in masks.items())


# ----------------------------------------------------------------------------- frozen
def test_frozen_at_sparsify_then_unfrozen_keeps_mask():
    model = make_mlp()
    model[0].weight.requires_grad_(False)
    masks = sparsify(model, 0.3, generator=gen())
    model[0].weight.requires_grad_(True)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert leaked(model, masks) == 0
    assert model[0].weight.grad is not None


# ----------------------------------------------------------------------------- optimizers
OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-2),
}
if hasattr(torch.optim, "Muon"):  # orthogonalized updates are dense: the per-step net is needed
    OPTIMIZERS["muon"] = lambda p: torch.optim.Muon([q for q in p if q.dim() == 2], lr=0.05)


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("when", ["before-with-state", "before", "after"])
def test_any_optimizer_without_attach(opt, when):
    model = make_mlp()
    optimizer = None
    if when.startswith("before"):
        optimizer = OPTIMIZERS[opt](list(model.parameters()))
        if when == "before-with-state":
            train(model, optimizer, steps=2)  # dense state at entries about to be pruned
    masks = sparsify(model, 0.3, generator=gen())
    if optimizer is None:
        optimizer = OPTIMIZERS[opt](list(model.parameters()))
    train(model, optimizer, steps=3)
    assert leaked(model, masks) == 0
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        for value in optimizer.state.get(params[name], {}).values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                assert torch.count_nonzero(value[~mask]) == 0, (name, opt)


def test_optimizer_state_loaded_after_the_masks_is_cleaned():
    model = make_mlp()
    dense_opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, dense_opt, steps=2)
    saved = copy.deepcopy(dense_opt.state_dict())  # dense moments
    masks = sparsify(model, 0.3, generator=gen())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, optimizer, steps=1)
    optimizer.load_state_dict(saved)
    train(model, optimizer, steps=2)
    assert leaked(model, masks) == 0


def test_attach_optimizer_still_works_and_can_turn_the_net_off():
    model = make_mlp()
    masks = sparsify(model, 0.3, generator=gen())
    optimizer = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    handle = attach_optimizer(optimizer, model)
    assert handle.active
    train(model, optimizer)
    assert leaked(model, masks) == 0
    handle.remove()
    assert not handle.active


# ----------------------------------------------------------------------------- prune
def test_torch_prune_after_sparsify_composes():
    model = make_mlp()
    masks = sparsify(model, 0.3, generator=gen())
    prune.l1_unstructured(model[2], "weight", amount=0.2)
    assert model[2].weight_mask.dtype == torch.float32  # prune's own buffer, untouched by us
    assert torch.equal(model[2].weight_orthosparse_mask, masks["2.weight"])
    got = get_masks(model)
    assert list(got) == ["0.weight", "2.weight_orig", "4.weight"]  # the Parameter's new name
    train(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    assert leaked(model, masks) == 0  # the effective weight keeps the fixed zeros
    assert torch.count_nonzero(model[2].weight_orig.detach()[~masks["2.weight"]]) == 0
    prune.remove(model[2], "weight")  # the same Parameter back under its name
    assert list(get_masks(model)) == ["0.weight", "2.weight", "4.weight"]
    train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert leaked(model, masks) == 0


def test_torch_prune_before_sparsify_is_a_clear_error():
    model = make_mlp()
    prune.random_unstructured(model[2], "weight", amount=0.5)
    with pytest.raises(ValueError) as info:
        sparsify(model, 0.3, generator=gen())
    message = str(info.value)
    assert "layer '2' (Linear, '2.weight')" in message
    assert "torch.nn.utils.prune.remove(module, 'weight')" in message
    assert "exclude" in message and "prunable_layers" not in message
    with pytest.raises(ValueError, match=r"cannot mask '2\.weight' of layer '2' \(Linear\): it is "
                                         r"pruned by torch.nn.utils.prune"):
        apply_masks(model, {"2.weight": torch.ones(32, 32, dtype=torch.bool)})
    sparsify(model, 0.3, generator=gen(), exclude=["2"])  # what the message offers


# ----------------------------------------------------------------------------- weight norm
def _old_weight_norm(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of parametrize
        return torch.nn.utils.weight_norm(module)


@pytest.mark.parametrize("api", ["utils", "parametrizations"])
def test_weight_norm_after_sparsify_keeps_the_mask(api):
    model = make_mlp()
    masks = sparsify(model, 0.3, generator=gen())
    if api == "utils":
        _old_weight_norm(model[2])
    else:
        torch.nn.utils.parametrizations.weight_norm(model[2])
    assert len(get_masks(model)) == 3
    train(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    assert leaked(model, masks) == 0
    assert torch.count_nonzero(model[2].weight.detach()) > 0  # it did train
    if api == "utils":
        torch.nn.utils.remove_weight_norm(model[2])
    else:
        parametrize.remove_parametrizations(model[2], "weight")
    assert list(get_masks(model)) == ["0.weight", "2.weight", "4.weight"]
    train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert leaked(model, masks) == 0


@pytest.mark.parametrize("api", ["utils", "parametrizations"])
def test_weight_norm_before_sparsify_is_a_clear_error(api):
    model = make_mlp()
    if api == "utils":
        _old_weight_norm(model[2])
        match = (r"layer '2' \(Linear, '2\.weight'\): it has torch.nn.utils.weight_norm"
                 r".*remove_weight_norm")
    else:
        torch.nn.utils.parametrizations.weight_norm(model[2])
        match = r"layer '2' \(.*Linear, '2\.weight'\): it is parametrized.*remove_parametrizations"
    with pytest.raises(ValueError, match=match):
        sparsify(model, 0.3, generator=gen())


class _Symmetric(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.triu() + x.triu(1).T


def test_other_parametrizations_after_sparsify_are_refused():
    model = make_mlp()
    masks = sparsify(model, 0.3, generator=gen())
    with pytest.raises(RuntimeError, match=r"cannot register the parametrization _Symmetric on a "
                                           r"weight of shape \(32, 32\) that has a fixed "
                                           r"orthosparse mask.*remove_masks"):
        parametrize.register_parametrization(model[2], "weight", _Symmetric())
    assert not parametrize.is_parametrized(model[2])  # refused before the module changed
    train(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert leaked(model, masks) == 0
    remove_masks(model, ["2.weight"])  # what the message offers
    parametrize.register_parametrization(model[2], "weight", _Symmetric())


def test_replacing_a_masked_parameter_keeps_the_mask():
    model = make_mlp()
    masks = sparsify(model, 0.3, generator=gen())
    model[2].weight = nn.Parameter(torch.randn(32, 32))
    assert leaked(model, masks) == 0  # the new Parameter takes the mask, zeroed where pruned
    train(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    assert leaked(model, masks) == 0


# ----------------------------------------------------------------------------- tied weights
class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def test_tied_linear_weights_get_one_mask_initialized_once():
    model = Tied()
    masks = sparsify(model, 0.5, mask="uniform", generator=gen())
    assert list(masks) == ["a.weight"]
    weight = model.a.weight.detach()
    density = int(torch.count_nonzero(weight)) / weight.numel()
    assert abs(density - 0.5) <= 32 / weight.numel()  # not 0.25 (two masks on one tensor)
    assert orthogonality_error(weight) < 1e-5  # EOI once: exactly orthogonal
    report = density_report(model)
    assert [(r.name, r.numel) for r in report.rows] == [("a.weight", 1024)]  # counted once
    assert [b for b, _ in model.named_buffers()] == ["a.weight" + MASK_SUFFIX]
    model.forward(x_for(model)).sum().backward()
    torch.optim.Adam(model.parameters(), lr=1e-2).step()
    assert leaked(model, masks) == 0
    with pytest.raises(ValueError, match=r"'a\.weight' and 'b\.weight' are the same Parameter "
                                         r"\(tied\) but got different masks"):
        apply_masks(model, {"a.weight": masks["a.weight"], "b.weight": ~masks["a.weight"]})


class TiedEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.embed(tokens))))


def test_embedding_tied_to_output_stays_dense_with_a_warning():
    model = TiedEmbedding()
    embedding = model.embed.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"'embed\.weight' is tied to 'head\.weight' and a module "
                                         r"that cannot be masked uses it \(Embedding\.weight\): "
                                         r"left dense"):
        masks = sparsify(model, 0.5, generator=gen())
    assert list(masks) == ["hidden.weight"]
    assert torch.equal(model.embed.weight, embedding)  # never zeroed or re-initialized
    rows = {r.name: r for r in density_report(model).rows}
    assert rows["embed.weight"].status == "tied" and rows["embed.weight"].density == 1.0


# ----------------------------------------------------------------------------- coverage
def test_multihead_attention_in_proj_is_prunable_as_one_out_in_matrix():
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, batch_first=True,
                                       dropout=0.0)
    masks = sparsify(model, 0.25, mask="erk", generator=gen())
    assert list(masks) == ["self_attn.in_proj_weight", "self_attn.out_proj.weight",
                           "linear1.weight", "linear2.weight"]
    w = model.self_attn.in_proj_weight.detach()  # (3E, E): E columns orthonormal
    torch.testing.assert_close(w.T @ w, torch.eye(32), atol=1e-5, rtol=0)
    from orthosparse.masks import compute_densities

    densities = compute_densities("erk", model, 0.25)
    # ERK sees 3E = 96 rows and E = 32 columns: (96 + 32) / (96 * 32) times the common scale
    # (three (E, E) blocks would give 2 / 32, a ratio of 1.33); densities are whole counts.
    ratio = densities["self_attn.in_proj_weight"] / densities["linear1.weight"]
    assert ratio == pytest.approx(((96 + 32) / (96 * 32)) / ((64 + 32) / (64 * 32)), rel=1e-2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 5, 32, generator=gen(step))).square().mean().backward()
        optimizer.step()
    assert leaked(model, masks) == 0


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(32, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def test_report_lists_unprunable_parameters_and_sparsify_warns_on_a_large_share():
    model = WithLSTM()
    with pytest.warns(UserWarning, match=r"9[0-9]\.[0-9]% of the model's parameters are "
                                         r"matrices that cannot be masked by module type and stay "
                                         r"dense \(LSTM\.weight_ih_l0 8192, LSTM\.weight_hh_l0 "
                                         r"16384\)"):
        sparsify(model, 0.5, generator=gen())
    report = density_report(model)
    assert [r.name for r in report.rows] == ["head.weight"]
    assert {r.module for r in report.other} == {"LSTM.weight_ih_l0", "LSTM.weight_hh_l0",
                                                "LSTM.bias_ih_l0", "LSTM.bias_hh_l0",
                                                "Linear.bias"}
    assert report.parameters == sum(p.numel() for p in model.parameters())
    assert re.search(r"prunable weights: 256 of \d+ parameters", str(report))
    with warnings.catch_warnings(record=True) as caught:  # a plain MLP: no coverage warning
        warnings.simplefilter("always")
        sparsify(make_mlp(), 0.3, generator=gen())
    assert not [w for w in caught if re.search("cannot be masked|is tied to", str(w.message))]
