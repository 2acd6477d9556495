"""SAO: exact orthogonality, degree regularity, exact density, structure, errors."""

import math
import warnings

import pytest
import torch

from orthosparse.baselines.sao import sao_, sao_degrees, sao_densities, sao_layers_, sao_matrix


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def wide_gram(w):
    """Gram matrix on the smaller side, computed by hand."""
    return w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w


@pytest.mark.parametrize("rows,cols,degree", [(16, 16, 1), (16, 16, 4), (16, 16, 16),
                                              (64, 64, 8), (32, 64, 16), (64, 32, 16),
                                              (12, 8, 6), (8, 12, 3)])
def test_plain_is_exactly_orthogonal_with_regular_degrees(rows, cols, degree):
    r, c = min(rows, cols), max(rows, cols)
    gain = 1.3
    w, m = sao_matrix(rows, cols, degree, gain=gain, generator=gen(1))
    assert w.shape == (rows, cols) and m.dtype == torch.bool
    torch.testing.assert_close(wide_gram(w), gain**2 * torch.eye(r, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    wide = m if rows <= cols else m.T  # (r, c)
    assert (wide.sum(1) == degree).all()  # every short-side neuron has exactly `degree` links
    assert (wide.sum(0) == r * degree // c).all()  # every long-side neuron has a = r d / c
    assert int(m.sum()) == r * degree  # density == degree / c exactly
    assert int(m.sum()) / m.numel() == degree / c
    assert ((w != 0) <= m).all()  # weights live on the mask


def test_support_is_disjoint_union_of_complete_bipartite_graphs():
    # Biadjacency of g = c/d copies of K_{a,d}: singular values sqrt(a d) (g times) and 0.
    rows, cols, degree = 24, 48, 12
    a, g = rows * degree // cols, cols // degree
    _, m = sao_matrix(rows, cols, degree, generator=gen(2))
    s = torch.linalg.svdvals(m.double())
    expected = torch.zeros(rows, dtype=torch.float64)
    expected[:g] = math.sqrt(a * degree)
    torch.testing.assert_close(s, expected, atol=1e-9, rtol=0)
    # Each component is Ramanujan: its nontrivial singular values (0) <= sqrt(a-1)+sqrt(d-1).
    assert s[g:].max() <= math.sqrt(a - 1) + math.sqrt(degree - 1)


def test_float32_tensor_orthogonal_to_float_tolerance():
    w = torch.empty(128, 128)
    m = sao_(w, 0.125, generator=gen(3))
    torch.testing.assert_close(w @ w.T, torch.eye(128), atol=1e-6, rtol=0)
    assert int(m.sum()) == 128 * 16
    assert (m.sum(0) == 16).all() and (m.sum(1) == 16).all()


def test_relu_mirrored_construction():
    rows = cols = 32
    w, m = sao_matrix(rows, cols, 8, gain=2.0, activation="relu", generator=gen(4))
    h = rows // 2
    top_left = w[:h, :h]
    assert torch.equal(w[:h, h:], -top_left) and torch.equal(w[h:, :h], -top_left)
    assert torch.equal(w[h:, h:], top_left)
    torch.testing.assert_close(top_left @ top_left.T, 4.0 * torch.eye(h, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert (m.sum(0) == 8).all() and (m.sum(1) == 8).all()
    assert int(m.sum()) == rows * 8  # density 8/32
    # The looks-linear pair acts as M: W [relu(z); relu(-z)] = [M z; -M z].
    z = torch.randn(h, dtype=torch.float64, generator=gen(5))
    out = w @ torch.cat([z.clamp(min=0), (-z).clamp(min=0)])
    torch.testing.assert_close(out, torch.cat([top_left @ z, -(top_left @ z)]))


@pytest.mark.parametrize("shape", [(16, 32, 3, 3), (32, 16, 5, 5), (16, 16, 3), (8, 8, 3, 3, 3)])
def test_conv_delta_with_whole_kernel_mask(shape):
    rows, cols, kernel = shape[0], shape[1], shape[2:]
    r, c = min(rows, cols), max(rows, cols)
    degree = c // 4
    w = torch.empty(shape, dtype=torch.float64)
    m = sao_(w, degree / c, generator=gen(6))
    assert m.shape == w.shape
    centre = (slice(None), slice(None), *(k // 2 for k in kernel))
    h = w[centre]  # (c_out, c_in)
    torch.testing.assert_close(wide_gram(h), torch.eye(r, dtype=torch.float64), atol=1e-12,
                               rtol=0)
    others = w.clone()
    others[centre] = 0
    assert (others == 0).all()  # delta-orthogonal: only the centre tap is nonzero
    flat = m.reshape(rows, cols, -1)
    assert (flat.all(-1) == flat.any(-1)).all()  # whole kernels kept or dropped
    assert torch.equal(flat[..., 0], m[centre])  # and the centre support is the kernel mask
    assert int(m.sum()) == r * degree * math.prod(kernel)  # density == degree / c exactly
    assert ((w != 0) <= m).all()


def test_supported_degrees_by_hand():
    assert sao_degrees((8, 8)) == [1, 2, 4, 8]
    assert sao_degrees((12, 8)) == [3, 6, 12]  # d | 12 and 12 | 8 d
    assert sao_degrees((8, 8), "relu") == [2, 4, 8]
    assert sao_degrees((6, 6), "relu") == [2, 6]
    assert sao_degrees((7, 7), "relu") == []
    assert sao_degrees((16, 8, 3, 3)) == [2, 4, 8, 16]
    assert sao_densities((8, 8)) == [0.125, 0.25, 0.5, 1.0]


def test_degree_argument_equals_density_argument():
    a, b = torch.empty(20, 20), torch.empty(20, 20)
    ma = sao_(a, 0.25, generator=gen(7))
    mb = sao_(b, degree=5, generator=gen(7))
    assert torch.equal(ma, mb) and torch.equal(a, b)


def test_same_seed_same_output_and_seeds_differ():
    a, b, c = (torch.empty(32, 32) for _ in range(3))
    ma, mb, mc = sao_(a, 0.25, generator=gen(8)), sao_(b, 0.25, generator=gen(8)), sao_(
        c, 0.25, generator=gen(9))
    assert torch.equal(ma, mb) and torch.equal(a, b)
    assert not torch.equal(ma, mc)


def test_unsupported_density_lists_possible_ones():
    with pytest.raises(ValueError, match=r"density=0\.3 .*shape \(10, 10\).*possible degrees "
                                         r"\(densities = degree/10\) are: 1 \(0\.1\), 2 \(0\.2\), "
                                         r"5 \(0\.5\), 10 \(1\)"):
        sao_(torch.empty(10, 10), 0.3)
    with pytest.raises(ValueError, match=r"degree=3 .*possible degrees"):
        sao_(torch.empty(10, 10), degree=3)
    with pytest.raises(ValueError, match=r"no degree is possible .*even"):
        sao_(torch.empty(7, 7), degree=7, activation="relu")
    with pytest.raises(ValueError, match=r"degree=3 .*possible degrees"):
        sao_matrix(10, 10, 3)


def test_unsupported_density_with_fallback_is_dense_orthogonal_and_warns():
    w = torch.empty(10, 10, 3, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"density=0\.3 .*dense orthogonal \(density 1\.0\)"):
        m = sao_(w, 0.3, fallback=True, generator=gen(10))
    assert m.all()
    torch.testing.assert_close(w[:, :, 1, 1] @ w[:, :, 1, 1].T,
                               torch.eye(10, dtype=torch.float64), atol=1e-12, rtol=0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="odd kernel"):
        sao_(torch.empty(8, 8, 2, 2), 0.5)
    with pytest.raises(ValueError, match="exactly one of density and degree"):
        sao_(torch.empty(8, 8), 0.5, degree=4)
    with pytest.raises(ValueError, match="exactly one of density and degree"):
        sao_(torch.empty(8, 8))
    with pytest.raises(ValueError, match=r"density=0 must be in \(0, 1\]"):
        sao_(torch.empty(8, 8), 0)
    with pytest.raises(ValueError, match=r"degree=9 must be in \[1, 8\]"):
        sao_(torch.empty(8, 8), degree=9)
    with pytest.raises(ValueError, match="activation='selu' must be one of"):
        sao_(torch.empty(8, 8), 0.5, activation="selu")
    with pytest.raises(ValueError, match="gain=0.0 must be a finite number > 0"):
        sao_(torch.empty(8, 8), 0.5, gain=0.0)
    with pytest.raises(ValueError, match="2-D .* or 3-5-D"):
        sao_(torch.empty(8), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        sao_(torch.empty(8, 8, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="fallback must be a bool"):
        sao_(torch.empty(8, 8), 0.5, fallback=1)
    with pytest.raises(TypeError, match="degree must be an int"):
        sao_(torch.empty(8, 8), degree=2.0)


def test_empty_weight_warns():
    with pytest.warns(UserWarning, match=r"shape \(0, 8\) has no elements"):
        m = sao_(torch.empty(0, 8), 0.5)
    assert m.shape == (0, 8)


def test_layers_plain_first_layer_under_relu_and_errors_name_layer():
    ws = [torch.empty(16, 16, dtype=torch.float64) for _ in range(3)]
    masks = sao_layers_(ws, [0.25] * 3, activation="relu", generator=gen(11))
    assert [int(m.sum()) for m in masks] == [64, 64, 64]
    h = 8
    assert not torch.equal(ws[0][:h, h:], -ws[0][:h, :h])  # first layer: plain
    for w in ws[1:]:
        assert torch.equal(w[:h, h:], -w[:h, :h])  # hidden layers: mirrored
    with pytest.raises(ValueError, match="layer 1: SAO cannot build density=0.3"):
        sao_layers_(ws, [0.25, 0.3, 0.25])
    with pytest.warns(UserWarning, match="layer 1: SAO cannot build density=0.3"):
        sao_layers_(ws, [0.25, 0.3, 0.25], fallback=True)
    with pytest.raises(ValueError, match="layer 'fc2.weight': SAO cannot build density=0.3"):
        sao_layers_(ws, [0.25, 0.3, 0.25], names=["fc1.weight", "fc2.weight", "fc3.weight"])
    with pytest.raises(ValueError, match="3 tensors but 2 names"):
        sao_layers_(ws, [0.25] * 3, names=["a", "b"])
    with pytest.raises(ValueError, match="3 tensors but 2 densities"):
        sao_layers_(ws, [0.25, 0.25])


# ----------------------------------------------------------------------------- paper's handling
def test_non_square_layers_dense_by_default_as_the_official_mlp():
    # the official Linear_Init: 784 -> 64 and 64 -> 10 dense orthogonal, 64 -> 64 SAO
    ws = [torch.empty(64, 784, dtype=torch.float64), torch.empty(64, 64, dtype=torch.float64),
          torch.empty(10, 64, dtype=torch.float64)]
    gain = 1.1
    masks = sao_layers_(ws, [0.125] * 3, gain=gain, generator=gen(4))
    assert masks[0].all() and masks[2].all()                       # dense, whatever the density
    assert int(masks[1].sum()) == 64 * 8 and (masks[1].sum(1) == 8).all()
    for w in ws:                                                   # every layer an isometry
        torch.testing.assert_close(wide_gram(w), gain**2 * torch.eye(min(w.shape),
                                                                     dtype=torch.float64),
                                   atol=1e-12, rtol=0)
    assert (ws[0] != 0).all()
    # "sparse" builds SAO in every layer (64 -> 784 has no degree 8*784/64; use 128 inputs)
    ws = [torch.empty(64, 128, dtype=torch.float64), torch.empty(64, 64, dtype=torch.float64)]
    masks = sao_layers_(ws, [0.125] * 2, non_square="sparse", generator=gen(4))
    assert [int(m.sum()) for m in masks] == [64 * 16, 64 * 8]
    torch.testing.assert_close(ws[0] @ ws[0].T, torch.eye(64, dtype=torch.float64), atol=1e-12,
                               rtol=0)


def test_non_square_conv_is_dense_delta_orthogonal():
    # the deep CNN's input conv (3 -> 16 channels): delta-orthogonal, all kernels kept
    ws = [torch.empty(16, 3, 3, 3), torch.empty(16, 16, 3, 3)]
    masks = sao_layers_(ws, [0.25, 0.25], generator=gen(5))
    assert masks[0].all() and masks[0].shape == (16, 3, 3, 3)
    centre = ws[0][:, :, 1, 1]                                     # (16, 3)
    torch.testing.assert_close(centre.T @ centre, torch.eye(3), atol=1e-6, rtol=0)
    assert ws[0].abs().sum() == centre.abs().sum()                 # other taps 0
    assert int(masks[1][:, :, 1, 1].sum()) == 16 * 4


def test_official_blocks_are_orth_of_uniform_draws():
    pytest.importorskip("scipy")
    # degree = width: one group, W = a row/column permutation of orth(U), U uniform in [0, 1)
    w, m = sao_matrix(16, 16, 16, blocks="official", generator=gen(6))
    torch.testing.assert_close(w @ w.T, torch.eye(16, dtype=torch.float64), atol=1e-12, rtol=0)
    assert m.all()
    # U's leading left singular vector is one-signed (Perron-Frobenius): one column of W is
    # one-signed with entries near 1/4 = 1/sqrt(16); a Haar matrix has such a column with
    # probability 16 * 2^-15
    one_signed = [j for j in range(16) if (w[:, j] > 0).all() or (w[:, j] < 0).all()]
    assert len(one_signed) == 1
    assert (w[:, one_signed[0]].abs() - 0.25).abs().max() < 0.1
    haar, _ = sao_matrix(16, 16, 16, generator=gen(6))
    assert not any((haar[:, j] > 0).all() or (haar[:, j] < 0).all() for j in range(16))
    # the draws come from the torch generator: same seed, same weights; another seed, others
    again, _ = sao_matrix(16, 16, 16, blocks="official", generator=gen(6))
    other, _ = sao_matrix(16, 16, 16, blocks="official", generator=gen(7))
    assert torch.equal(w, again) and not torch.equal(w, other)
    # through the layer functions, with groups and the mirrored ReLU construction
    t = torch.empty(32, 32, dtype=torch.float64)
    mask = sao_(t, 0.25, blocks="official", activation="relu", generator=gen(8))
    torch.testing.assert_close(t[:16, :16] @ t[:16, :16].T, torch.eye(16, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert int(mask.sum()) == 32 * 8


def test_official_blocks_without_scipy_name_the_extra(monkeypatch):
    import sys
    import types

    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("operator does not exist")             # a broken install

    for module in (None, Broken("scipy.linalg")):
        monkeypatch.setitem(sys.modules, "scipy.linalg", module)
        with pytest.raises(ImportError, match=r"blocks='official' needs scipy .*pip install "
                                              r"'orthosparse\[sao\]'"):
            sao_matrix(8, 8, 4, blocks="official", generator=gen(0))
    w, _ = sao_matrix(8, 8, 4, generator=gen(0))                   # haar needs no scipy
    assert w.shape == (8, 8)


def test_blocks_and_non_square_errors():
    with pytest.raises(ValueError, match=r"blocks='qr' must be one of: 'haar', 'official'"):
        sao_matrix(8, 8, 4, blocks="qr")
    with pytest.raises(ValueError, match=r"blocks='qr' must be one of"):
        sao_(torch.empty(8, 8), 0.5, blocks="qr")
    with pytest.raises(ValueError, match=r"non_square='drop' must be one of: 'dense', 'sparse'"):
        sao_layers_([torch.empty(8, 8)], [0.5], non_square="drop")


def test_literal_aliases_list_the_accepted_names():
    import typing

    from orthosparse.baselines import SAO_BLOCKS, SAO_NON_SQUARE, SaoBlocks, SaoNonSquare

    assert typing.get_args(SaoBlocks) == SAO_BLOCKS
    assert typing.get_args(SaoNonSquare) == SAO_NON_SQUARE


def test_layer_fallbacks_give_one_warning_per_message_naming_the_layers():
    # A 1000-layer network used to print one warning per layer (docs/results.md part 2).
    tensors = [torch.empty(100, 100) for _ in range(12)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = sao_layers_(tensors, [0.05] * 12, fallback=True, activation="relu",
                            generator=torch.Generator().manual_seed(0))
    messages = [str(w.message) for w in caught]
    # layer 0 reads the input (tanh rule), the other 11 share the ReLU message
    relu = [m for m in messages if "activation='relu'" in m]
    assert relu == ["layer 1, layer 2, layer 3, layer 4, layer 5 and 6 more: SAO cannot build "
                    "density=0.05 for weight shape (100, 100) (activation='relu'); initialized "
                    "dense orthogonal (density 1.0) because fallback=True"]
    assert all(bool(m.all()) for m in masks[1:])
