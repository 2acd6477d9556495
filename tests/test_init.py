"""nn.init-style initializers: eoi_ on Linear/Conv weights, delta rule, isometry, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from orthosparse.diagnostics import conv_singular_values
from orthosparse.eoi import list_backends, sparse_orthogonal
from orthosparse.init import (
    center_density_for,
    conv_orthogonal_,
    eoi_,
    eoi_group_,
    orthogonal_,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gram_error(m, gain=1.0):
    m = m.double()
    g = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return (g - gain**2 * torch.eye(min(m.shape), dtype=torch.float64)).abs().max().item()


def keep(density, numel):
    """Expected mask size: ``density * numel`` rounded half up (the rule of the masks)."""
    return math.floor(density * numel + 0.5)


def centre(w):
    return w[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))]


@pytest.mark.parametrize("shape", [(64, 64), (30, 100), (100, 30)])
def test_eoi_linear_is_orthogonal_with_its_mask(shape):
    w = torch.empty(shape)
    mask = eoi_(w, 0.2, gain=1.5, generator=gen())
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert gram_error(w, 1.5) <= 4e-6
    assert not w[~mask].any()
    w2, m2 = sparse_orthogonal(*shape, 0.2, gain=1.5, generator=gen())
    assert torch.equal(w, w2) and torch.equal(mask, m2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_eoi_keeps_dtype(dtype):
    w = torch.empty(32, 48, dtype=dtype)
    eoi_(w, 0.3, generator=gen())
    assert w.dtype == dtype
    assert gram_error(w) <= (1e-13 if dtype == torch.float64 else 2e-2)


@pytest.mark.parametrize("shape", [(16, 8, 3), (32, 32, 3, 3), (8, 16, 5, 5), (8, 8, 3, 3, 3),
                                   (24, 24, 1, 1)])
@pytest.mark.parametrize("density", [0.05, 0.2, 1.0])
def test_eoi_conv_delta_rule(shape, density):
    w = torch.full(shape, 7.0)
    mask = eoi_(w, density, gain=1.0247, generator=gen(4))
    numel = w.numel()
    assert int(mask.sum()) == max(keep(density, numel), int((centre(w) != 0).sum()))
    off_centre = torch.ones(shape, dtype=torch.bool)
    off_centre[(slice(None), slice(None), *(k // 2 for k in shape[2:]))] = False
    assert not w[off_centre].any(), "only the centre tap holds values"
    assert gram_error(centre(w), 1.0247) <= 4e-6
    assert not w[~mask].any()
    assert centre(mask)[centre(w) != 0].all()


def test_conv_mask_count_rounds_halves_up_like_the_masks():
    # 4x2x3x3 at d=0.0625: 4.5 weights; keep_count (and compute_masks("uniform")) keep 5, where
    # Python's round (half to even) would keep 4.
    from orthosparse._checks import keep_count

    w = torch.empty(4, 2, 3, 3)
    mask = eoi_(w, 0.0625, generator=gen())
    assert 0.0625 * w.numel() == 4.5
    assert int(mask.sum()) == 5 == keep_count(0.0625, w.numel())
    masks = eoi_group_([torch.empty(4, 2, 3, 3) for _ in range(3)], 0.0625, generator=gen())
    assert [int(m.sum()) for m in masks] == [5, 5, 5]


@pytest.mark.parametrize("backend", list_backends(available_only=True))
def test_every_backend_gives_the_same_masks_through_eoi(backend):
    for shape in [(30, 50), (16, 8, 3, 3)]:
        ws = [torch.empty(shape) for _ in range(2)]
        masks = eoi_group_(ws, 0.2, generator=gen(2), backend=backend)
        ref = [torch.empty(shape) for _ in range(2)]
        ref_masks = eoi_group_(ref, 0.2, generator=gen(2), backend="reference")
        for w, m, w_ref, m_ref in zip(ws, masks, ref, ref_masks, strict=True):
            assert torch.equal(m, m_ref)
            torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=0)
        w, w_ref = torch.empty(shape), torch.empty(shape)
        m = eoi_(w, 0.2, generator=gen(3), backend=backend)
        assert torch.equal(m, eoi_(w_ref, 0.2, generator=gen(3), backend="reference"))
        torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=0)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match=r"unknown EOI backend 'fast'; choose 'auto' or one of"):
        eoi_(torch.empty(4, 4), 0.5, backend="fast")


def test_conv_below_centre_floor_still_reaches_density_or_warns():
    w = torch.empty(8, 8, 3, 3, 3)  # d=0.05 < 1/8 at the centre, but 86 >= 8 positions allowed
    mask = eoi_(w, 0.05, generator=gen())
    assert int(mask.sum()) == keep(0.05, w.numel())
    with pytest.warns(UserWarning, match=r"below the sparsest exact delta-orthogonal kernel"):
        mask = eoi_(torch.empty(64, 64, 3, 3), 0.001, generator=gen())
    assert int(mask.sum()) == 64


def test_eoi_conv_extra_positions_start_at_zero_and_are_uniform():
    # The extra trainable positions are spread over every tap, not just the centre.
    w = torch.empty(64, 64, 3, 3)
    mask = eoi_(w, 0.1, generator=gen(1))
    extra = mask & (w == 0)
    per_tap = extra.sum(dim=(0, 1)).flatten().double()
    assert per_tap.sum() > 0
    assert (per_tap > 0).all()
    # off-centre taps receive about equal numbers of extras (multinomial spread, loose bound)
    off = torch.cat([per_tap[:4], per_tap[5:]])
    assert (off - off.mean()).abs().max() < 5 * math.sqrt(off.mean())


def test_center_density_policies():
    assert center_density_for(0.1, 9) == 0.1
    assert center_density_for(0.1, 9, "same") == 0.1
    assert center_density_for(0.1, 9, "more") == pytest.approx(min(0.9, 1.0, math.sqrt(0.1)))
    assert center_density_for(0.01, 9, "more") == pytest.approx(0.09)
    assert center_density_for(0.5, 9, "more") == pytest.approx(math.sqrt(0.5))
    assert center_density_for(0.1, 9, 0.5) == 0.5
    w = torch.empty(64, 64, 3, 3)
    mask = eoi_(w, 0.05, generator=gen(), center_density="more")
    centre_nnz = int((centre(w) != 0).sum())
    assert centre_nnz == pytest.approx(min(0.45, math.sqrt(0.05)) * 64 * 64, rel=0.05)
    assert int(mask.sum()) == keep(0.05, w.numel())


@pytest.mark.parametrize("policy,exc,match", [
    ("most", ValueError, r"center_density='most' must be a number in \(0, 1\], 'same' or"),
    (0.95, ValueError, r"center_density=0.95 exceeds density\*kernel_taps=0.9"),
    (0.0, ValueError, r"center_density=0.0 must be in \(0, 1\]"),
    ([0.1], TypeError, r"center_density must be a number"),
])
def test_bad_center_density(policy, exc, match):
    with pytest.raises(exc, match=match):
        eoi_(torch.empty(8, 8, 3, 3), 0.1, center_density=policy)


def test_grouped_and_depthwise_centre_matrices():
    grouped = torch.empty(32, 8, 3, 3)  # Conv2d(32, 32, 3, groups=4)
    eoi_(grouped, 0.25, generator=gen())
    assert gram_error(centre(grouped)) <= 2e-6  # tall: columns orthonormal
    depthwise = torch.empty(16, 1, 3, 3)
    mask = eoi_(depthwise, 0.5, generator=gen())
    assert gram_error(centre(depthwise)) <= 2e-6  # a unit vector over channels
    assert int(mask.sum()) == keep(0.5, depthwise.numel())


@pytest.mark.parametrize("density", [1.0, 0.3])
def test_circular_delta_orthogonal_conv_is_an_isometry(density):
    gain, n = 1.3, 8
    w = torch.empty(16, 16, 3, 3, dtype=torch.float64)
    eoi_(w, density, gain=gain, generator=gen(2))
    # Per-frequency transfer matrices of the circular convolution (Sedghi et al. 2019): the DFT of
    # the zero-padded kernel. All singular values of all of them equal the gain.
    padded = torch.zeros(16, 16, n, n, dtype=torch.float64)
    padded[:, :, :3, :3] = w
    transfer = torch.fft.fft2(padded).permute(2, 3, 0, 1)  # (n, n, c_out, c_in)
    sv = torch.linalg.svdvals(transfer)
    torch.testing.assert_close(sv, torch.full_like(sv, gain), atol=1e-12, rtol=0)
    # and the layer preserves norms on real inputs
    x = torch.randn(4, 16, n, n, generator=gen(3), dtype=torch.float64)
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w)
    torch.testing.assert_close(y.flatten(1).norm(dim=1), gain * x.flatten(1).norm(dim=1))


def test_group_equals_single_and_batches_same_shapes():
    a = torch.empty(40, 40)
    eoi_(a, 0.2, generator=gen(8))
    b = torch.empty(40, 40)
    (mask,) = eoi_group_([b], 0.2, generator=gen(8))
    assert torch.equal(a, b)
    ws = [torch.empty(16, 32, 3, 3) for _ in range(5)]
    masks = eoi_group_(ws, 0.1, generator=gen())
    for w, m in zip(ws, masks, strict=True):
        assert gram_error(centre(w)) <= 2e-6
        assert int(m.sum()) == keep(0.1, w.numel())
    assert not torch.equal(masks[0], masks[1])


def test_group_errors():
    with pytest.raises(ValueError, match="at least one tensor"):
        eoi_group_([], 0.1)
    with pytest.raises(ValueError, match=r"one shape, dtype and device; got \(4, 4\)"):
        eoi_group_([torch.empty(4, 4), torch.empty(4, 5)], 0.5)


def test_deterministic():
    a, b = torch.empty(8, 8, 3, 3), torch.empty(8, 8, 3, 3)
    ma = eoi_(a, 0.2, generator=gen(3))
    mb = eoi_(b, 0.2, generator=gen(3))
    assert torch.equal(a, b) and torch.equal(ma, mb)


@pytest.mark.parametrize("tensor,exc,match", [
    (torch.empty(5), ValueError, r"2-D Linear weight .* got shape \(5,\)"),
    (torch.empty(2, 2, 2, 2, 2, 2), ValueError, r"got shape \(2, 2, 2, 2, 2, 2\)"),
    (torch.empty(4, 4, 2, 2), ValueError, r"odd kernel sizes .* got kernel \(2, 2\)"),
    (torch.empty(4, 4, dtype=torch.int64), TypeError, r"floating-point tensor, got dtype"),
    ([[1.0]], TypeError, r"expects a torch.Tensor, got list"),
])
def test_bad_tensors(tensor, exc, match):
    with pytest.raises(exc, match=match):
        eoi_(tensor, 0.5)


def test_bad_density_and_generator():
    with pytest.raises(ValueError, match=r"density=1.2 must be in \(0, 1\]"):
        eoi_(torch.empty(4, 4), 1.2)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        eoi_(torch.empty(4, 4), 0.5, generator="seed")


def test_zero_element_tensor_warns_and_returns_empty_mask():
    w = torch.empty(0, 4)
    with pytest.warns(UserWarning, match="zero-element tensor is a no-op"):
        mask = eoi_(w, 0.5)
    assert mask.shape == (0, 4) and mask.dtype == torch.bool


def test_below_floor_warning_reaches_the_caller():
    with pytest.warns(UserWarning, match=r"density=0.001 is below") as record:
        eoi_(torch.empty(32, 32), 0.001, generator=gen())
    assert record[0].filename == __file__


def test_dense_orthogonal_and_delta_orthogonal():
    w = orthogonal_(torch.empty(20, 30), gain=2.0, generator=gen())
    assert gram_error(w, 2.0) <= 1e-5
    k = orthogonal_(torch.empty(12, 6, 3, 3), generator=gen())
    assert gram_error(centre(k)) <= 1e-6
    assert int((k != 0).sum()) == 12 * 6
    a = orthogonal_(torch.empty(8, 8), generator=gen(5))
    b = orthogonal_(torch.empty(8, 8), generator=gen(5))
    assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_eoi_on_cuda_matches_cpu():
    cpu, gpu = torch.empty(32, 16, 3, 3), torch.empty(32, 16, 3, 3, device="cuda")
    m_cpu = eoi_(cpu, 0.2, generator=gen(1))
    m_gpu = eoi_(gpu, 0.2, generator=gen(1))
    assert m_gpu.device.type == "cuda"
    assert torch.equal(m_cpu, m_gpu.cpu())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0)


@pytest.mark.parametrize("count,threshold,permute_up_to", [
    (2, 0, 10**9),  # small array: a choice among the free entries
    (4, 0, 0),      # most free entries drawn: the same choice
    (2, 0, 0),      # rejection rounds only
    (2, 40, 0),     # independent byte picks, topped up by rejection
    (2, 255, 0),    # byte picks overshoot: a uniform subset is dropped
])
def test_extra_positions_are_a_uniform_sample_without_replacement(monkeypatch, count, threshold,
                                                                  permute_up_to):
    # Every count-subset of the 6 free entries must be equally likely, whichever stages run.
    from itertools import combinations

    from scipy.stats import chisquare

    from orthosparse import init

    monkeypatch.setattr(init, "_bernoulli_threshold", lambda count, free: threshold)
    monkeypatch.setattr(init, "_PERMUTE_UP_TO", permute_up_to)
    base = torch.zeros(8, dtype=torch.bool)
    base[[2, 5]] = True
    free = [k for k in range(8) if not base[k]]
    subsets = {s: 0 for s in combinations(free, count)}
    rng, trials = init._free_stream(gen()), 3000  # one stream for all trials, as for a group
    for _ in range(trials):
        taken = base.clone()
        init._add_free(taken, count, rng)
        picked = tuple(torch.nonzero(taken & ~base).squeeze(1).tolist())
        assert taken[base].all() and len(picked) == count
        subsets[picked] += 1
    assert chisquare(list(subsets.values())).pvalue > 1e-4


def test_extra_positions_large_count_exact_and_spread():
    # The byte stage runs (count >= 64): exact count, only free entries, even spread.
    from orthosparse.init import _add_free, _bernoulli_threshold, _free_stream

    taken = torch.zeros(40000, dtype=torch.bool)  # above _PERMUTE_UP_TO
    taken[::7] = True
    before = taken.clone()
    assert _bernoulli_threshold(3000, int((~taken).sum())) > 0
    _add_free(taken, 3000, _free_stream(gen(3)))
    assert int((taken & ~before).sum()) == 3000 and taken[before].all()
    per_block = (taken & ~before).view(40, 1000).sum(dim=1).float()
    assert per_block.min() > 40 and per_block.max() < 110  # 75 expected per block
    with pytest.raises(AssertionError, match="cannot draw 40000 of"):
        _add_free(taken, 40000, _free_stream(gen(3)))


# ----------------------------------------------------------------------------- conv_orthogonal_
def circular_conv(weight, groups=1):
    """The circular stride-1 conv that holds ``weight`` (kernel centred, size kept)."""
    conv_type = {3: torch.nn.Conv1d, 4: torch.nn.Conv2d, 5: torch.nn.Conv3d}[weight.dim()]
    kernel = tuple(weight.shape[2:])
    conv = conv_type(weight.shape[1] * groups, weight.shape[0], kernel, groups=groups,
                     padding=tuple(k // 2 for k in kernel), padding_mode="circular", bias=False)
    conv.weight.data = weight
    return conv


@pytest.mark.parametrize("shape,groups", [
    ((16, 16, 3, 3), 1), ((32, 8, 3, 3), 1), ((8, 32, 5, 5), 1), ((12, 6, 3, 5), 1),
    ((16, 8, 3), 1), ((6, 6, 3, 3, 3), 1), ((16, 16, 1, 1), 1), ((32, 4, 3, 3), 4),
])
def test_conv_orthogonal_circular_conv_is_an_isometry(shape, groups):
    gain = 1.3
    w = torch.empty(shape)
    assert conv_orthogonal_(w, gain, generator=gen(), groups=groups) is w
    n = {3: 11, 4: 8, 5: 5}[w.dim()]
    sv = conv_singular_values(circular_conv(w, groups), n)  # exact, via the FFT
    assert sv.numel() == n ** (w.dim() - 2) * min(shape[0] // groups, shape[1]) * groups
    torch.testing.assert_close(sv, torch.full_like(sv, gain), atol=1e-5, rtol=0)
    # and the layer preserves norms on real inputs (c_out >= c_in: an isometry on inputs)
    if shape[0] // groups >= shape[1]:
        x = torch.randn(3, shape[1] * groups, *(n,) * (w.dim() - 2), generator=gen(1))
        y = circular_conv(w, groups)(x)
        torch.testing.assert_close(y.flatten(1).norm(dim=1), gain * x.flatten(1).norm(dim=1))


def test_conv_orthogonal_every_tap_is_nonzero_unlike_delta():
    w = conv_orthogonal_(torch.empty(32, 16, 3, 3), generator=gen())
    taps = w.abs().sum(dim=(0, 1))  # (3, 3)
    assert (taps > 1e-3).all()
    assert (w != 0).float().mean() > 0.99  # dense, not a centre-only kernel
    # the centre alone is not orthogonal (the energy is spread over the taps)
    assert gram_error(centre(w)) > 0.1
    delta = orthogonal_(torch.empty(32, 16, 3, 3), generator=gen())
    assert int((delta.abs().sum(dim=(0, 1)) > 0).sum()) == 1


def test_conv_orthogonal_deterministic_from_the_generator():
    a = conv_orthogonal_(torch.empty(8, 4, 3, 3), generator=gen(4))
    b = conv_orthogonal_(torch.empty(8, 4, 3, 3), generator=gen(4))
    c = conv_orthogonal_(torch.empty(8, 4, 3, 3), generator=gen(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = conv_orthogonal_(torch.empty(8, 4, 3, 3, dtype=torch.float64), generator=gen(4))
    torch.testing.assert_close(d.float(), a, atol=1e-7, rtol=0)  # float64 inside, then cast


def test_conv_orthogonal_depthwise_blocks_are_signed_shifts():
    w = conv_orthogonal_(torch.empty(8, 1, 3, 3), 2.0, generator=gen(), groups=8)
    flat = w.reshape(8, 9)
    assert ((flat != 0).sum(dim=1) == 1).all()  # one tap per channel
    torch.testing.assert_close(flat.abs().sum(dim=1), torch.full((8,), 2.0))


@pytest.mark.parametrize("tensor,kw,exc,match", [
    (torch.empty(4, 4), {}, ValueError, r"conv weight .* got the 2-D shape \(4, 4\) \(use "
                                        r"orthogonal_\)"),
    (torch.empty(4, 4, 2, 2), {}, ValueError, r"odd kernel sizes \(a same-size circular conv "
                                              r".* got kernel \(2, 2\)"),
    (torch.empty(4, 4, 3, 2), {}, ValueError, r"odd kernel sizes"),
    (torch.empty(2, 2, 1, 1, 1, 1), {}, ValueError, r"got shape \(2, 2, 1, 1, 1, 1\)"),
    (torch.empty(4, 4, 3, 3, dtype=torch.int32), {}, TypeError, "floating-point tensor"),
    (torch.empty(6, 2, 3, 3), {"groups": 4}, ValueError, r"groups=4 does not divide c_out=6"),
    (torch.empty(6, 2, 3, 3), {"groups": 0}, ValueError, r"groups=0 must be >= 1"),
    (torch.empty(6, 2, 3, 3), {"groups": 2.0}, TypeError, r"groups must be an int >= 1, got "
                                                         r"float"),
    (torch.empty(6, 2, 3, 3), {"gain": -1.0}, ValueError, r"gain"),
])
def test_conv_orthogonal_errors(tensor, kw, exc, match):
    with pytest.raises(exc, match=match):
        conv_orthogonal_(tensor, **kw)


def test_orthogonal_conv_rules():
    shape = (12, 6, 3, 3)
    delta = orthogonal_(torch.empty(shape), generator=gen(1))  # default: unchanged
    assert torch.equal(delta, orthogonal_(torch.empty(shape), generator=gen(1), conv="delta"))
    full = orthogonal_(torch.empty(shape), 1.5, generator=gen(1), conv="conv-orthogonal")
    assert torch.equal(full, conv_orthogonal_(torch.empty(shape), 1.5, generator=gen(1)))
    flat = orthogonal_(torch.empty(shape), 1.5, generator=gen(1), conv="flat")
    assert gram_error(flat.reshape(12, -1), 1.5) <= 1e-5 and (flat != 0).all()
    lin = orthogonal_(torch.empty(6, 9), generator=gen(1), conv="conv-orthogonal")
    assert torch.equal(lin, orthogonal_(torch.empty(6, 9), generator=gen(1)))  # 2-D: plain QR
    with pytest.raises(ValueError, match=r"conv='xiao' must be one of: 'delta', "
                                         r"'conv-orthogonal', 'flat'"):
        orthogonal_(torch.empty(shape), conv="xiao")
    with pytest.raises(ValueError, match=r"groups=2 needs a conv weight"):
        orthogonal_(torch.empty(6, 6), groups=2)


def test_orthogonal_groups_give_one_orthogonal_block_per_group():
    w = orthogonal_(torch.empty(16, 1, 3, 3), 1.5, generator=gen(), groups=16)
    torch.testing.assert_close(centre(w).abs().flatten(), torch.full((16,), 1.5))
    w = orthogonal_(torch.empty(32, 8, 3, 3), generator=gen(), groups=4, conv="flat")
    for block in w.reshape(4, 8, -1):
        assert gram_error(block) <= 1e-5


# ----------------------------------------------------------------------------- grouped EOI
def test_depthwise_eoi_with_groups_is_an_isometry_the_paper_rule_is_not():
    """The issue's example: depthwise 8 channels at d=0.5."""
    paper = torch.empty(8, 1, 3, 3)
    eoi_(paper, 0.5, generator=gen())  # the (8, 1) centre as one matrix
    assert (centre(paper).flatten() == 0).sum() >= 1  # channels dead at init
    blocks = torch.empty(8, 1, 3, 3)
    mask = eoi_(blocks, 0.5, generator=gen(), groups=8)
    torch.testing.assert_close(centre(blocks).abs().flatten(), torch.ones(8), atol=1e-6, rtol=0)
    assert int(mask.sum()) == keep(0.5, blocks.numel())  # extra positions as usual
    assert mask[:, :, 1, 1].all() and not blocks[~mask].any()
    assert not (blocks * ~centre_only(blocks)).any()  # only the centre taps are nonzero
    sv = conv_singular_values(circular_conv(blocks, 8), 6)
    torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-6, rtol=0)


def centre_only(w):
    m = torch.zeros(w.shape, dtype=torch.bool)
    m[(slice(None), slice(None), *(k // 2 for k in w.shape[2:]))] = True
    return m


@pytest.mark.parametrize("shape,groups,density", [
    ((32, 8, 3, 3), 4, 0.1), ((24, 4, 3, 3), 3, 0.3), ((16, 16, 1, 1), 2, 0.5),
])
def test_grouped_eoi_every_block_is_exactly_orthogonal(shape, groups, density):
    w = torch.empty(shape)
    mask = eoi_(w, density, gain=1.2, generator=gen(), groups=groups)
    rows = shape[0] // groups
    for g in range(groups):
        assert gram_error(centre(w)[g * rows:(g + 1) * rows], 1.2) <= 4e-6
    assert int(mask.sum()) == keep(density, w.numel())
    sv = conv_singular_values(circular_conv(w, groups), 5)
    torch.testing.assert_close(sv, torch.full_like(sv, 1.2), atol=1e-5, rtol=0)


def test_depthwise_below_one_tap_per_channel_warns_and_keeps_the_floor():
    w = torch.empty(8, 1, 3, 3)
    with pytest.warns(UserWarning, match=r"below the sparsest exact block-orthogonal kernel "
                                         r"with groups=8 .* returning density 0.111111"):
        mask = eoi_(w, 0.05, generator=gen(), groups=8)
    assert int(mask.sum()) == 8 and mask[:, :, 1, 1].all()


def test_grouped_eoi_group_matches_single_and_validates_groups():
    a = torch.empty(16, 2, 3, 3)
    ma = eoi_(a, 0.3, generator=gen(7), groups=8)
    b = torch.empty(16, 2, 3, 3)
    (mb,) = eoi_group_([b], 0.3, generator=gen(7), groups=8)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    with pytest.raises(ValueError, match=r"eoi_: groups=3 does not divide c_out=16"):
        eoi_(torch.empty(16, 2, 3, 3), 0.3, groups=3)
    with pytest.raises(ValueError, match=r"eoi_group_: groups=2 needs a conv weight"):
        eoi_group_([torch.empty(4, 4)], 0.3, groups=2)
    with pytest.raises(TypeError, match=r"groups must be an int >= 1, got bool"):
        eoi_(torch.empty(16, 2, 3, 3), 0.3, groups=True)
