"""N:M EOI in the layer API and in sparsify (docs/nm.md §7, §9): ``eoi_(nm=)`` for Linear and
convs (exact orthogonality, the pattern along the input (channel) axis at every tap, the density,
determinism, fast == oracle, errors) and ``sparsify(mask="nm")`` with EOI and the masked
baselines (N:M masks that hold through training, ``nm_indivisible``, option routing)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from orthosparse import eoi_, eoi_group_, sparsify
from orthosparse._checks import keep_count
from orthosparse.eoi import (
    list_backends,
    reachable_density,
    reference_sparse_orthogonal,
    satisfies_nm,
    sparse_orthogonal,
)
from orthosparse.eoi.nm import add_capped
from orthosparse.masks import compute_densities, compute_masks
from orthosparse.masks.nm import check_nm_option
from orthosparse.sparsify import attach_optimizer

# sparse layers at small widths may start with channels no weight reads; that is not tested here
pytestmark = pytest.mark.filterwarnings(r"ignore:init '[\w-]+' leaves layer .* dead channels")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gram_error(w):
    w = w.detach().double()
    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    return (gram - torch.eye(min(rows, cols), dtype=torch.float64)).abs().max().item()


def centre(w):
    return w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))]


def by_tap(mask):
    """A conv mask ``(c_out, c_in, *k)`` as ``(c_out, *k, c_in)``: groups along the channels."""
    return mask.permute(0, *range(2, mask.dim()), 1) if mask.dim() > 2 else mask


def group_counts(mask, m):
    t = by_tap(mask)
    return t.reshape(*t.shape[:-1], t.shape[-1] // m, m).sum(-1)


# ----------------------------------------------------------------------------- eoi_(nm=)
@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48), (10, 784)])
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (1, 8), (3, 8)])
def test_linear_exactly_orthogonal_with_the_pattern_at_the_reachable_density(shape, nm):
    if shape[1] % nm[1]:
        pytest.skip("input size not a multiple of M")
    top = reachable_density(*shape, nm)
    w = torch.empty(shape, dtype=torch.float64)
    mask = eoi_(w, top, nm=nm, generator=gen(1))
    assert gram_error(w) < 1e-12
    assert satisfies_nm(mask, nm)
    assert int(mask.sum()) == round(top * w.numel())  # the reachable density, exactly
    assert torch.equal(mask, w != 0)
    if nm[1] % nm[0] == 0:  # N | M: every group full, N/M exactly
        assert top == nm[0] / nm[1]
        assert bool((group_counts(mask, nm[1]) == nm[0]).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_below_the_reachable_density_float32_too(dtype):
    w = torch.empty(96, 128, dtype=dtype)
    mask = eoi_(w, 0.2, nm=(2, 4), generator=gen(2))
    assert satisfies_nm(mask, (2, 4))
    assert gram_error(w) < (1e-5 if dtype == torch.float32 else 1e-12)
    assert abs(mask.double().mean().item() - 0.2) < 1.0 / 128


@pytest.mark.parametrize("shape,density,nm", [
    ((32, 16, 3, 3), 0.5, (2, 4)),       # tall 32x16 centre, every group full
    ((16, 32, 3, 3), 0.3, (2, 4)),       # wide centre, extras fill other taps under the cap
    ((16, 32, 3, 3), 0.1, (1, 8)),
    ((24, 16, 5), 0.2, (1, 4)),          # Conv1d
    ((8, 16, 3, 3, 3), 0.25, (1, 4)),    # Conv3d
    ((32, 16, 3, 3), 0.3, (3, 8)),       # N does not divide M: centre capped at 22/64
])
def test_conv_centre_orthogonal_pattern_at_every_tap_and_exact_density(shape, density, nm):
    w = torch.empty(shape, dtype=torch.float64)
    mask = eoi_(w, density, nm=nm, generator=gen(3))
    assert gram_error(centre(w)) < 1e-12
    assert satisfies_nm(by_tap(mask), nm)  # N of every M consecutive input channels, per tap
    assert int(mask.sum()) == keep_count(density, w.numel())
    assert torch.count_nonzero(w[~mask]) == 0
    off = torch.ones(shape[2:], dtype=torch.bool)
    off[tuple(k // 2 for k in shape[2:])] = False
    assert torch.count_nonzero(w[:, :, off]) == 0  # only the centre tap holds values


def test_conv_at_n_over_m_fills_every_group_of_every_tap():
    w = torch.empty(16, 32, 3, 3, dtype=torch.float64)
    mask = eoi_(w, 0.5, nm=(2, 4), generator=gen(4))
    assert bool((group_counts(mask, 4) == 2).all())
    assert torch.equal(centre(mask), centre(w) != 0)  # the centre is EOI's own full support


def test_conv_centre_density_is_capped_at_the_reachable_one():
    # "more": min(d K, 1, sqrt d) = 0.447 > 0.25, the most 1:4 EOI reaches: the centre is
    # capped there (every block full), the extra positions bring the layer to d
    w = torch.empty(32, 32, 3, 3, dtype=torch.float64)
    mask = eoi_(w, 0.2, nm=(1, 4), center_density="more", generator=gen(5))
    assert int((centre(w) != 0).sum()) == 32 * 32 // 4
    assert int(mask.sum()) == keep_count(0.2, w.numel())
    assert satisfies_nm(by_tap(mask), (1, 4))
    assert gram_error(centre(w)) < 1e-12


def test_grouped_conv_blocks_each_orthogonal_and_n_m():
    w = torch.empty(32, 8, 3, 3, dtype=torch.float64)  # groups=2: c_in/groups = 8
    mask = eoi_(w, 0.5, nm=(2, 4), groups=2, generator=gen(6))
    for block in centre(w).split(16):
        assert gram_error(block) < 1e-12
    assert satisfies_nm(by_tap(mask), (2, 4))


def test_same_generator_same_weight_other_seed_other_mask():
    def build(seed):
        w = torch.empty(16, 32, 3, 3)
        return w, eoi_(w, 0.3, nm=(2, 4), generator=gen(seed))
    (w1, m1), (w2, m2), (_, m3) = build(7), build(7), build(8)
    assert torch.equal(w1, w2) and torch.equal(m1, m2)
    assert not torch.equal(m1, m3)


@pytest.mark.parametrize("backend", [b for b in list_backends(available_only=True)
                                     if b != "reference"])
@pytest.mark.parametrize("shape,density", [((24, 48), 0.5), ((48, 24), 0.3),
                                           ((16, 32, 3, 3), 0.4)])
def test_fast_equals_the_oracle_for_the_same_generator(backend, shape, density):
    out = {}
    for name in (backend, "reference"):
        g = gen(9)
        w = torch.empty(shape, dtype=torch.float64)
        out[name] = w, eoi_(w, density, nm=(2, 4), generator=g, backend=name), g.get_state()
    (w, m, s), (w_ref, m_ref, s_ref) = out[backend], out["reference"]
    assert torch.equal(m, m_ref)
    assert (w - w_ref).abs().max().item() < 1e-12
    assert torch.equal(s, s_ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_weights_get_the_cpu_masks():
    for shape, density in [((64, 128), 0.5), ((32, 64, 3, 3), 0.3)]:
        w_cpu, w_gpu = torch.empty(shape), torch.empty(shape, device="cuda")
        m_cpu = eoi_(w_cpu, density, nm=(2, 4), generator=gen(19))
        m_gpu = eoi_(w_gpu, density, nm=(2, 4), generator=gen(19))
        assert m_gpu.device.type == "cuda" and torch.equal(m_cpu, m_gpu.cpu())
        torch.testing.assert_close(w_gpu.cpu(), w_cpu, atol=1e-6, rtol=0)
    model = make_cnn().cuda()
    masks = sparsify(model, 0.5, mask="nm", nm=(2, 4), init="orthogonal", generator=gen(20))
    assert all(m.device.type == "cuda" and satisfies_nm(by_tap(m).cpu(), (2, 4))
               for m in masks.values())


def test_reference_sparse_orthogonal_takes_nm():
    w_ref, m_ref = reference_sparse_orthogonal(24, 48, 0.5, nm=(2, 4), generator=gen(10))
    w, m = sparse_orthogonal(24, 48, 0.5, nm=(2, 4), generator=gen(10), dtype=torch.float64,
                             backend="arrays")
    assert torch.equal(m, m_ref) and (w - w_ref).abs().max().item() < 1e-12
    assert satisfies_nm(m_ref, (2, 4))


def test_eoi_group_of_one_equals_eoi_and_a_batch_keeps_the_pattern():
    single, alone = torch.empty(16, 32, 3, 3), torch.empty(16, 32, 3, 3)
    assert torch.equal(eoi_group_([single], 0.3, nm=(2, 4), generator=gen(11))[0],
                       eoi_(alone, 0.3, nm=(2, 4), generator=gen(11)))
    assert torch.equal(single, alone)
    ws = [torch.empty(16, 32, 3, 3, dtype=torch.float64) for _ in range(3)]
    masks = eoi_group_(ws, 0.3, nm=(2, 4), generator=gen(11))
    assert not torch.equal(masks[0], masks[1])  # independent matrices
    for w, mask in zip(ws, masks, strict=True):
        assert satisfies_nm(by_tap(mask), (2, 4)) and gram_error(centre(w)) < 1e-12


def test_eoi_nm_errors():
    with pytest.raises(ValueError, match=r"eoi_: nm=\(2, 4\) needs the input size to be a "
                                         r"multiple of M=4; weight of shape \(8, 10\) has in=10"):
        eoi_(torch.empty(8, 10), 0.5, nm=(2, 4))
    with pytest.raises(ValueError, match=r"weight of shape \(8, 6, 3, 3\) has c_in=6"):
        eoi_(torch.empty(8, 6, 3, 3), 0.5, nm=(2, 4))
    with pytest.raises(ValueError, match=r"has c_in/groups=6"):
        eoi_(torch.empty(8, 6, 3, 3), 0.5, nm=(2, 4), groups=2)
    with pytest.raises(ValueError, match=r"eoi_: density=0.6 is above the largest density "
                                         r"reachable with nm=\(2, 4\) for weight shape "
                                         r"\(64, 64\): 0.5"):
        eoi_(torch.empty(64, 64), 0.6, nm=(2, 4))
    with pytest.raises(ValueError, match=r"density=0.3 is above the largest density reachable "
                                         r"with nm=\(1, 4\) for weight shape \(8, 8, 3, 3\): "
                                         r"0.25"):
        eoi_(torch.empty(8, 8, 3, 3), 0.3, nm=(1, 4))
    with pytest.raises(ValueError, match=r"eoi_group_: center_density=0.3 is above the "
                                         r"largest density reachable with nm=\(1, 4\) for the "
                                         r"8x8 centre matrix of weight shape \(8, 8, 3, 3\): "
                                         r"0.25"):
        eoi_group_([torch.empty(8, 8, 3, 3)], 0.2, nm=(1, 4), center_density=0.3)
    with pytest.raises(TypeError, match=r"nm must be a pair of integers \(N, M\), e.g. "
                                        r"\(2, 4\); got '2:4'"):
        eoi_(torch.empty(8, 8), 0.5, nm="2:4")
    with pytest.raises(ValueError, match=r"nm=\(4, 4\): N=4 must satisfy 1 <= N < M=4"):
        eoi_(torch.empty(8, 8), 0.5, nm=(4, 4))


# ----------------------------------------------------------------------------- add_capped
def test_add_capped_keeps_the_cap_and_the_count():
    rng = np.random.default_rng(0)
    groups = np.zeros((500, 4), dtype=bool)
    groups[::3, 1] = True  # some groups already hold one
    add_capped(groups, 700, 2, rng)
    assert int(groups.sum()) == 167 + 700
    assert groups.sum(1).max() <= 2
    full = np.zeros((300, 8), dtype=bool)
    add_capped(full, 300, 1, rng)  # N/M: exactly N per group
    assert (full.sum(1) == 1).all()
    # positions within groups are uniform: each of the 8 about 300/8 times
    assert np.abs(full.sum(0) - 37.5).max() < 20
    with pytest.raises(AssertionError, match="cannot add 301 entries under the cap: 0 free"):
        add_capped(full, 301, 1, rng)


# ----------------------------------------------------------------------------- sparsify
def make_mlp(hidden=64, last_in=64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, hidden), nn.Tanh(), nn.Linear(hidden, last_in),
                         nn.Tanh(), nn.Linear(last_in, 10))


def make_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(16 * 6 * 6, 10))


def train_a_little(model, shape):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                weight_decay=1e-4)
    attach_optimizer(optimizer, model)
    g = gen(12)
    for _ in range(3):
        optimizer.zero_grad()
        x = torch.randn(4, *shape, generator=g)
        nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()


@pytest.mark.parametrize("init", ["eoi", "orthogonal", "sparse-kaiming", "kaiming"])
@pytest.mark.parametrize("make,shape", [(make_mlp, (32,)), (make_cnn, (4, 6, 6))])
def test_sparsify_nm_masks_hold_through_training(init, make, shape):
    model = make()
    masks = sparsify(model, 0.5, mask="nm", nm=(2, 4), init=init, generator=gen(13))
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        w = params[name].detach()
        assert satisfies_nm(by_tap(mask), (2, 4))
        assert int(mask.sum()) == mask.numel() // 2
        if w.dim() == 2:  # the values fill the mask (a.s. for dense draws)
            assert torch.equal(w != 0, mask)
        else:  # delta-orthogonal convs: values at the centre tap, the mask's other taps zero
            assert torch.count_nonzero(w[~mask]) == 0 and torch.equal(centre(w) != 0,
                                                                      centre(mask))
        if init == "eoi":
            assert gram_error(centre(w) if w.dim() > 2 else w) < 1e-5
    train_a_little(model, shape)
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name].detach()[~mask]) == 0
        assert torch.count_nonzero(params[name].grad[~mask]) == 0


def test_sparsify_nm_orthogonal_is_the_dense_draw_masked():
    # the masked-orthogonal baseline: a dense orthogonal matrix, then the N:M mask
    model, twin = make_mlp(), make_mlp()
    masks = sparsify(model, 0.25, mask="nm", nm=(1, 4), init="orthogonal", generator=gen(14))
    same = compute_masks("nm", twin, 0.25, nm=(1, 4), generator=(g := gen(14)))
    assert all(torch.equal(masks[k], same[k]) for k in masks)
    from orthosparse.init import orthogonal_
    for name, p in twin.named_parameters():
        if name.endswith("weight"):
            orthogonal_(p.data, generator=g)
            assert torch.equal(dict(model.named_parameters())[name].detach(),
                               p.data * masks[name])


def test_sparsify_nm_density_default_and_bounds():
    masks = sparsify(make_mlp(), None, mask="nm", nm=[1, 4], init="eoi", generator=gen())
    assert all(m.double().mean().item() == 0.25 for m in masks.values())
    assert compute_densities("nm", make_mlp(), 0.1, nm="1:8") == {
        "0.weight": keep_count(0.1, 2048) / 2048, "2.weight": keep_count(0.1, 4096) / 4096,
        "4.weight": keep_count(0.1, 640) / 640}
    with pytest.raises(ValueError, match=r"mask method 'nm' with nm=\(2, 4\): density=0.6 "
                                         r"must be in \(0, N/M = 2/4 = 0.5\]"):
        sparsify(make_mlp(), 0.6, mask="nm", nm=(2, 4), init="eoi")
    with pytest.raises(ValueError, match=r"mask method 'nm' needs the option nm=\(N, M\)"):
        sparsify(make_mlp(), 0.5, mask="nm", init="orthogonal")


def test_sparsify_nm_eoi_below_n_over_m():
    model = make_mlp()
    masks = sparsify(model, 0.1, mask="nm", nm=(2, 4), init="eoi", generator=gen(15))
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            assert satisfies_nm(masks[name], (2, 4)) and gram_error(p) < 1e-5
            assert abs(masks[name].double().mean().item() - 0.1) < 0.02


def test_nm_indivisible_error_lists_every_layer():
    model = nn.Sequential(nn.Linear(32, 10), nn.Tanh(), nn.Linear(10, 6), nn.Tanh(),
                          nn.Linear(6, 4))
    with pytest.raises(ValueError, match=r"nm=\(2, 4\) needs every layer's input size to be a "
                                         r"multiple of M=4; 2 layers are not: '2.weight' "
                                         r"\(input size 10\), '4.weight' \(input size 6\)\. "
                                         r"Exclude them, or pass nm_indivisible='dense'"):
        sparsify(model, 0.5, mask="nm", nm=(2, 4), init="orthogonal")


@pytest.mark.parametrize("init", ["eoi", "sparse-kaiming"])
def test_nm_indivisible_dense_keeps_them_dense_with_a_warning(init):
    model = make_mlp(last_in=100)  # 100 % 8 != 0
    with pytest.warns(UserWarning, match=r"nm=\(1, 8\): 1 layer whose input size is not a "
                                         r"multiple of M=8 left dense \(nm_indivisible="
                                         r"'dense'\): '4.weight' \(input size 100\)"):
        masks = sparsify(model, 0.125, mask="nm", nm=(1, 8), nm_indivisible="dense",
                         init=init, generator=gen(16))
    assert bool(masks["4.weight"].all())
    assert torch.count_nonzero(model[4].weight) == model[4].weight.numel()
    for name in ("0.weight", "2.weight"):
        assert satisfies_nm(masks[name], (1, 8))
        assert masks[name].double().mean().item() == 0.125
    if init == "eoi":
        assert gram_error(model[4].weight) < 1e-5  # dense exact orthogonal


def test_eoi_option_nm_without_the_nm_mask():
    # nm is shared: with mask="uniform", EOI alone takes it; a sparse indivisible layer is an
    # error naming it
    model = make_mlp()
    masks = sparsify(model, 0.25, mask="uniform", init="eoi", nm="2,4", generator=gen(17))
    assert all(satisfies_nm(m, (2, 4)) for m in masks.values())
    with pytest.raises(ValueError, match=r"init 'eoi' with nm=\(2, 4\) needs the input size of "
                                         r"every sparse layer to be a multiple of M=4; not: "
                                         r"'2.weight' \(input size 10\) \(mask 'nm' with "
                                         r"nm_indivisible='dense' keeps such layers dense\)"):
        sparsify(nn.Sequential(nn.Linear(8, 12), nn.Linear(12, 10), nn.Linear(10, 4)), 0.5,
                 mask="uniform", init="eoi", nm=(2, 4), exclude=["0.*"])


def test_nm_option_errors_and_routing():
    with pytest.raises(ValueError, match=r"mask 'nm' gives structured masks \(nm\), but init "
                                         r"'sao' builds its own masks without that structure"):
        sparsify(make_mlp(), 0.5, mask="nm", nm=(2, 4), init="sao")
    with pytest.raises(ValueError, match=r"nm_indivisible='drop' must be one of: 'error', "
                                         r"'dense'"):
        sparsify(make_mlp(), 0.5, mask="nm", nm=(2, 4), nm_indivisible="drop", init="kaiming")
    with pytest.raises(TypeError, match=r"unknown option 'nm': mask method 'erk' takes"):
        sparsify(make_mlp(), 0.5, mask="erk", nm=(2, 4), init="orthogonal")
    with pytest.raises(TypeError, match=r"nm='2-4' must be a pair of integers \(N, M\) or the "
                                        r"text 'N,M' or 'N:M'"):
        sparsify(make_mlp(), 0.5, mask="nm", nm="2-4", init="eoi")
    assert check_nm_option("2:4") == check_nm_option("2,4") == check_nm_option([2, 4]) == (2, 4)


class Conv1D(nn.Module):
    """Hugging Face's Conv1D: weight stored (in, out), y = x W + b."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


@pytest.mark.parametrize("init", ["eoi", "orthogonal"])
def test_hf_conv1d_groups_run_along_its_inputs(init):
    model = nn.Sequential(Conv1D(24, 32), nn.Tanh(), Conv1D(8, 24))  # (in, out) storage
    masks = sparsify(model, 0.5, mask="nm", nm=(2, 4), init=init, generator=gen(18))
    for mask in masks.values():
        assert satisfies_nm(mask.T, (2, 4))  # (out, in): groups of 4 consecutive inputs
    if init == "eoi":
        assert gram_error(model[0].weight.T) < 1e-5


def test_lab_options_reach_sparsify():
    from orthosparse.lab.config import TrainConfig, sparsify_options_for

    for text in ("nm=[2,4]", "nm=2:4"):
        options = sparsify_options_for(TrainConfig(mask="nm", sparsify_options=[text]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            masks = sparsify(make_mlp(), 0.5, mask="nm", init="eoi", generator=gen(),
                             **options)
        assert all(satisfies_nm(m, (2, 4)) for m in masks.values())
