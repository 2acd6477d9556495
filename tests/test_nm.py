"""N:M structured EOI (docs/nm.md): exact orthogonality, the pattern in every group, the density
rule, the layout and the pair distribution, every backend == oracle, determinism, errors."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from orthosparse.eoi import (
    backends,
    list_backends,
    reachable_density,
    satisfies_nm,
    sparse_orthogonal,
)
from orthosparse.eoi.nm import NMDraws, class_sizes, max_nnz
from orthosparse.eoi.problem import make_problem

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}  # max |entry| of W W^T - gain^2 I
# (rows, cols) = (out, in): wide, square, tall, a partial last group of rows, a single row
SHAPES = [(16, 32), (24, 24), (40, 16), (10, 784), (1, 8), (12, 8)]
PATTERNS = [(2, 4), (1, 4), (1, 8), (3, 8), (1, 2)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gram_error(w, gain=1.0):
    w = w.double()
    rows, cols = w.shape[-2:]
    gram = w @ w.transpose(-1, -2) if rows <= cols else w.transpose(-1, -2) @ w
    return (gram - gain**2 * torch.eye(min(rows, cols), dtype=torch.float64)).abs().max().item()


def group_counts(mask, m):
    """Nonzeros of every group of ``m`` consecutive inputs of every row, recomputed here."""
    rows, cols = mask.shape[-2:]
    return mask.reshape(*mask.shape[:-2], rows, cols // m, m).sum(dim=-1)


def cases():
    for (rows, cols), (n, m) in itertools.product(SHAPES, PATTERNS):
        if cols % m == 0:
            yield rows, cols, (n, m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,cols,nm", list(cases()))
def test_exactly_orthogonal_with_at_most_n_per_group(rows, cols, nm, dtype):
    top = reachable_density(rows, cols, nm)
    for density in sorted({top, top / 2, 1.0 / max(rows, cols)}):
        for gain in (1.0, 1.0247):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # top/2 may be below the 1/c floor
                w, mask = sparse_orthogonal(rows, cols, density, gain=gain, nm=nm,
                                            generator=gen(1), dtype=dtype)
            assert w.shape == mask.shape == (rows, cols) and w.dtype == dtype
            assert gram_error(w, gain) <= TOL[dtype] * gain**2
            assert not w[~mask].any(), "values outside the support must be exactly zero"
            assert int(group_counts(mask, nm[1]).max()) <= nm[0]
            assert satisfies_nm(mask, nm)


def _support_trace(rows, cols, density, nm, seed):
    """Independent support bookkeeping with Python sets on the N:M stream; also checks that
    every drawn pair is a same-class pair. Returns nnz after every applied rotation."""
    r, c = min(rows, cols), max(rows, cols)
    draws = NMDraws(1, rows, cols, density, nm, gen(seed))
    support = [{k} if k < r else set() for k in range(c)]
    trace = [r]
    need = density * r * c
    k = 0
    while trace[-1] < need:
        i_s, j_s, _ = draws.chunk(k)
        classes = draws.column_classes()[0]
        for i, j in zip(i_s[0].tolist(), j_s[0].tolist(), strict=True):
            assert i != j and classes[i] == classes[j]
            support[i] = support[j] = support[i] | support[j]
            trace.append(sum(len(s) for s in support))
            if trace[-1] >= need:
                break
        k += 1
    return trace


@pytest.mark.parametrize("rows,cols,density,nm", [(12, 12, 0.37, (2, 4)), (6, 16, 0.21, (1, 4)),
                                                  (20, 8, 0.3, (2, 4)), (9, 24, 0.1, (1, 8)),
                                                  (16, 16, 0.5, (2, 4))])
def test_density_is_the_closer_of_the_two_candidate_steps(backend, rows, cols, density, nm):
    need = density * rows * cols
    for seed in range(6):
        trace = _support_trace(rows, cols, density, nm, seed)
        after, before = trace[-1], trace[-2] if len(trace) > 1 else trace[-1]
        expected = after if after - need <= need - before else before
        _, mask = sparse_orthogonal(rows, cols, density, nm=nm, generator=gen(seed),
                                    backend=backend)
        assert int(mask.sum()) == expected


@pytest.mark.parametrize("rows,cols,nm", [(24, 24, (2, 4)), (16, 40, (1, 8)), (40, 16, (1, 4)),
                                          (20, 12, (2, 4)), (16, 24, (3, 8))])
def test_at_the_reachable_density_each_class_block_is_full(rows, cols, nm):
    # The whole semantics in one picture: at the top density the mask is exactly "row and
    # column in the same class" (wide: A = W; tall: A = W^T), so every row of W keeps exactly
    # its class's positions of each group. (With N not dividing M and a partial last group of
    # rows, the bound is the least favourable layout's, and a luckier draw stops before full.)
    top = reachable_density(rows, cols, nm)
    if nm[1] % nm[0] == 0:
        assert top == nm[0] / nm[1]
    draws = NMDraws(1, rows, cols, top, nm, gen(4))
    classes = torch.from_numpy(draws.column_classes()[0])  # class of every column of A
    _, mask = sparse_orthogonal(rows, cols, top, nm=nm, generator=gen(4))
    r = min(rows, cols)
    block = classes[:r, None] == classes[None, :]  # (r, c): A's rows keep their column's class
    assert torch.equal(mask, block if rows <= cols else block.T)
    if nm[1] % nm[0] == 0:
        assert int(group_counts(mask, nm[1]).min()) == nm[0]
    assert int(mask.sum()) == max_nnz(rows, cols, nm)


@pytest.mark.parametrize("rows,cols,nm", [(16, 24, (2, 4)), (30, 12, (1, 4)), (8, 16, (3, 8))])
def test_layout_is_a_partition_of_every_group_and_tall_classes_are_apportioned(rows, cols, nm):
    n, m = nm
    sizes = class_sizes(n, m)
    assert sum(sizes) == m and max(sizes) <= n and len(sizes) == -(-m // n)
    draws = NMDraws(3, rows, cols, 0.2, nm, gen(0))
    classes = draws.column_classes()  # (3, c)
    inputs = classes[:, :cols] if rows > cols else classes  # class of every input
    for group in inputs.reshape(3, cols // m, m).reshape(-1, m):
        assert np.bincount(group, minlength=len(sizes)).tolist() == list(sizes)
    counts = [np.bincount(row, minlength=len(sizes)).tolist() for row in classes]
    if rows > cols:  # c = rows columns split in proportion to the class sizes
        share = [rows * s / m for s in sizes]
        for count in counts:
            assert all(abs(x - y) < 1 for x, y in zip(count, share, strict=True))
            assert sum(count) == rows
    assert counts[0] == counts[1] == counts[2]
    assert not np.array_equal(classes[0], classes[1])  # every matrix draws its own layout


def test_pairs_are_uniform_among_same_class_pairs_and_layouts_uniform():
    stats = pytest.importorskip("scipy.stats")
    # 12 x 6 tall at 1:2: 3 inputs per class, c_k = (6, 6) columns: 15 pairs per class
    draws = NMDraws(1, 12, 6, 0.5, (1, 2), gen(3), first=30000, rest=16)
    i, j, theta = draws.chunk(0)
    classes = draws.column_classes()[0]
    pairs = {}
    for a, b in zip(i[0].tolist(), j[0].tolist(), strict=True):
        assert classes[a] == classes[b] and a != b
        key = (min(a, b), max(a, b))
        pairs[key] = pairs.get(key, 0) + 1
    assert len(pairs) == 30
    assert stats.chisquare(list(pairs.values())).pvalue > 1e-4
    assert stats.kstest(theta[0] / (2 * math.pi), "uniform").pvalue > 1e-4
    # every labelled partition of a 2:4 group into two classes of two: 6, equally likely
    layout = NMDraws(2000, 4, 8, 0.5, (2, 4), gen(5)).column_classes().reshape(-1, 4)
    labels = {}
    for row in layout.tolist():
        labels[tuple(row)] = labels.get(tuple(row), 0) + 1
    assert len(labels) == 6
    assert stats.chisquare(list(labels.values())).pvalue > 1e-4


FAST = [name for name in list_backends() if name != "reference"]


@pytest.fixture(params=FAST)
def backend(request):
    """Each backend of the table by name; one that cannot load here is skipped."""
    if request.param not in list_backends(available_only=True):
        pytest.skip(f"EOI backend {request.param!r} cannot run here (numba not installed?)")
    return request.param


def _state_after(fn):
    g = gen(8)
    out = fn(g)
    return out, g.get_state()


@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("rows,cols,density,nm", [(32, 32, 0.3, (2, 4)), (20, 48, 0.25, (1, 4)),
                                                  (48, 16, 0.125, (1, 8)), (10, 160, 0.5, (2, 4)),
                                                  (24, 24, 0.5, (2, 4)), (12, 24, 0.3, (3, 8))])
def test_every_backend_equals_the_oracle(backend, rows, cols, density, nm, batch):
    def run(name):
        return _state_after(lambda g: sparse_orthogonal(
            rows, cols, density, nm=nm, generator=g, dtype=torch.float64, batch=batch,
            backend=name))
    (w, m), state = run(backend)
    (w_ref, m_ref), state_ref = run("reference")
    assert torch.equal(m, m_ref)
    torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)
    assert torch.equal(state, state_ref), "the generator must end in the same state"


def test_every_backend_equals_the_oracle_on_a_stream_of_small_chunks(backend):
    # the backend interface itself, (problem, draws) -> (weight, mask), 5 then 3 at a time
    table = backends.BACKENDS
    for rows, cols, density, nm in [(12, 12, 0.4, (2, 4)), (7, 16, 0.5, (2, 4)),
                                     (19, 8, 0.25, (1, 4))]:
        problem = make_problem(rows, cols, density, dtype=torch.float64, batch=2, nm=nm)
        out = []
        for name in (backend, "reference"):
            draws = NMDraws(2, rows, cols, density, nm, gen(2), first=5, rest=3)
            out.append(table.get(name).build(problem, draws))
        (w, m), (w_ref, m_ref) = out
        assert torch.equal(m, m_ref)
        torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)


def test_deterministic_batched_and_different_from_plain_eoi():
    a = sparse_orthogonal(32, 64, 0.4, nm=(2, 4), generator=gen(11))
    b = sparse_orthogonal(32, 64, 0.4, nm=(2, 4), generator=gen(11))
    c = sparse_orthogonal(32, 64, 0.4, nm=(2, 4), generator=gen(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    one = sparse_orthogonal(32, 64, 0.4, nm=(2, 4), generator=gen(11), batch=1)
    assert torch.equal(one[0][0], a[0]) and torch.equal(one[1][0], a[1])
    w, m = sparse_orthogonal(32, 64, 0.4, nm=(2, 4), generator=gen(11), batch=4)
    assert w.shape == m.shape == (4, 32, 64)
    assert not torch.equal(m[0], m[1])
    assert all(gram_error(w[k]) <= 1e-6 for k in range(4))
    assert int(group_counts(m, 4).max()) <= 2


def test_floor_density_warns_and_draws_nothing():
    g = gen(0)
    before = g.get_state()
    with pytest.warns(UserWarning, match=r"below the sparsest exact orthogonal 8x16"):
        w, mask = sparse_orthogonal(8, 16, 0.01, nm=(1, 4), generator=g)
    assert torch.equal(g.get_state(), before)
    assert int(mask.sum()) == 8 and gram_error(w) <= 1e-6


@pytest.mark.parametrize("rows,cols", [(128, 128), (128, 256), (256, 128), (100, 784)])
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (1, 8)])
def test_reachable_density_is_n_over_m_at_the_issue_shapes(rows, cols, nm):
    assert reachable_density(rows, cols, nm) == nm[0] / nm[1]
    assert max_nnz(rows, cols, nm) * nm[1] == nm[0] * rows * cols


def test_reachable_density_when_n_does_not_divide_m():
    # 3:8: classes of 3, 3 and 2 positions; square: (3^2 + 3^2 + 2^2) / 8^2 of the entries
    assert max_nnz(64, 64, (3, 8)) == 22 * 8 * 8
    # wide, 100 rows: 12 full groups of rows and 4 rows of the least favourable classes (2 + 2)
    assert max_nnz(100, 784, (3, 8)) == 98 * (12 * 22 + 2 * 2 + 2 * 3)
    top = reachable_density(100, 784, (3, 8))
    _, mask = sparse_orthogonal(100, 784, top, nm=(3, 8), generator=gen(0))  # accepted
    assert int(mask.sum()) >= top * 100 * 784 - 1e-6


@pytest.mark.parametrize("nm,exc,match", [
    ((4, 4), ValueError, r"nm=\(4, 4\): N=4 must satisfy 1 <= N < M=4"),
    ((5, 4), ValueError, r"nm=\(5, 4\): N=5 must satisfy 1 <= N < M=4"),
    ((0, 4), ValueError, r"nm=\(0, 4\): N=0 must satisfy 1 <= N < M=4"),
    ((0, 1), ValueError, r"nm=\(0, 1\): M=1 must be >= 2"),
    ((2.0, 4), TypeError, r"nm must be a pair of integers \(N, M\), e.g. \(2, 4\); got \(2.0, 4\)"),
    ((True, 4), TypeError, r"nm must be a pair of integers"),
    ((2, 4, 8), TypeError, r"nm must be a pair of integers"),
    ("2:4", TypeError, r"nm must be a pair of integers .* got '2:4'"),
])
def test_bad_nm_raises(nm, exc, match):
    with pytest.raises(exc, match=match):
        sparse_orthogonal(8, 8, 0.25, nm=nm)


def test_unreachable_density_and_indivisible_inputs_raise():
    with pytest.raises(ValueError, match=r"density=0.6 is above the largest density reachable "
                                         r"with nm=\(2, 4\) for a 64x64 weight: 0.5$"):
        sparse_orthogonal(64, 64, 0.6, nm=(2, 4))
    with pytest.raises(ValueError, match=r"density=0.126 is above .* nm=\(1, 8\) for a "
                                         r"256x128 weight: 0.125"):
        sparse_orthogonal(256, 128, 0.126, nm=(1, 8))
    with pytest.raises(ValueError, match=r"nm=\(2, 4\) needs the input size to be a multiple "
                                         r"of M=4; a 10x6 \(out x in\) weight has 6 inputs"):
        sparse_orthogonal(10, 6, 0.3, nm=(2, 4))
    with pytest.raises(ValueError, match=r"nm=\(1, 8\) needs the input size .* has 12 inputs"):
        sparse_orthogonal(16, 12, 0.1, nm=(1, 8))  # tall: still the inputs, the columns of W


def test_satisfies_nm_checks_masks_and_rejects_bad_shapes():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 0, 1]], dtype=torch.bool)
    assert satisfies_nm(mask, (2, 4)) and not satisfies_nm(mask, (1, 4))
    assert satisfies_nm(torch.zeros(3, 2, 8, dtype=torch.bool), (1, 8))  # batched
    with pytest.raises(ValueError, match=r"mask of shape \(1, 8\): its last dim .* M=3"):
        satisfies_nm(mask, (1, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rows,cols,density,nm", [(64, 64, 0.5, (2, 4)), (96, 32, 0.25, (1, 4)),
                                                  (32, 96, 0.1, (1, 8))])
def test_cpu_and_cuda_agree(rows, cols, density, nm):
    w_cpu, m_cpu = sparse_orthogonal(rows, cols, density, nm=nm, generator=gen(9), batch=2)
    w_gpu, m_gpu = sparse_orthogonal(rows, cols, density, nm=nm, generator=gen(9), batch=2,
                                     device="cuda")
    assert w_gpu.device.type == "cuda"
    assert torch.equal(m_cpu, m_gpu.cpu())
    torch.testing.assert_close(w_gpu.cpu(), w_cpu, atol=1e-6, rtol=0)


def _chain_mean_density(c, c_k, pairs, t_max):
    """E[K_t]/c for a row of a class of ``c_k`` columns: K -> K+1 w.p. 2K(c_k-K)/P per draw,
    ``P`` the ordered same-class pairs of all classes (the draw is in this class w.p.
    c_k(c_k-1)/P, then grows K w.p. 2K(c_k-K)/(c_k(c_k-1)), as in EOI)."""
    p = np.zeros(c_k + 1)
    p[1] = 1.0
    k = np.arange(c_k + 1)
    up = 2.0 * k * (c_k - k) / pairs
    means = [1.0 / c]
    for _ in range(t_max):
        moved = p * up
        p = p - moved
        p[1:] += moved[:-1]
        means.append(float((p * k).sum()) / c)
    return np.array(means)


@pytest.mark.parametrize("c,density,nm", [(64, 0.25, (2, 4)), (64, 0.4, (2, 4)),
                                          (96, 0.1, (1, 8))])
def test_rotation_count_matches_the_per_class_markov_chain(c, density, nm):
    from orthosparse.eoi import arrays

    c_k = c * nm[0] // nm[1]
    pairs = (nm[1] // nm[0]) * c_k * (c_k - 1)
    means = _chain_mean_density(c, c_k, pairs, 40 * c)
    t_chain = int(np.argmax(means >= density))
    draws = NMDraws(300, c, c, density, nm, gen(123))
    kept, _ = arrays._stop_points(300, c, c, density * c * c, draws, torch.device("cpu"))
    assert abs(kept.mean() / t_chain - 1.0) < 0.03
    # the mean-field estimate that sizes the first chunk is of the right size
    assert 0.8 < draws._expected_rotations(density) / t_chain < 1.05
