"""EOI generator: exact orthogonality, the density rule, fast == oracle, statistics, errors."""

import math
import warnings

import numpy as np
import pytest
import torch

from orthosparse.eoi import arrays as _eoi_arrays
from orthosparse.eoi import generator as givens
from orthosparse.eoi import stream as _eoi_stream
from orthosparse.eoi.generator import reference_sparse_orthogonal, sparse_orthogonal

SHAPES = [(16, 16), (12, 40), (40, 12), (1, 24), (24, 1), (1, 1), (2, 2), (70, 130)]
TOL = {torch.float32: 1e-6, torch.float64: 1e-13}  # max |entry| of W W^T - gain^2 I


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gram_error(w, gain=1.0):
    w = w.double()
    rows, cols = w.shape[-2:]
    gram = w @ w.transpose(-1, -2) if rows <= cols else w.transpose(-1, -2) @ w
    eye = torch.eye(min(rows, cols), dtype=torch.float64)
    return (gram - gain**2 * eye).abs().max().item()


def densities_for(rows, cols):
    floor = 1.0 / max(rows, cols)
    return sorted({floor} | {d for d in (0.05, 0.3, 0.5, 1.0) if d >= floor})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_exactly_orthogonal_on_smaller_side(rows, cols, dtype):
    for d in densities_for(rows, cols):
        for gain in (1.0, 1.0247):
            w, mask = sparse_orthogonal(rows, cols, d, gain=gain, generator=gen(1), dtype=dtype)
            assert w.shape == mask.shape == (rows, cols)
            assert w.dtype == dtype and mask.dtype == torch.bool
            assert gram_error(w, gain) <= TOL[dtype] * max(1.0, gain**2)
            assert not w[~mask].any(), "values outside the support must be exactly zero"


def test_large_square_float32_rounding_level():
    w, _ = sparse_orthogonal(512, 512, 0.1, generator=gen(3))
    assert gram_error(w) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes_are_cast_from_float32(dtype):
    w, mask = sparse_orthogonal(64, 32, 0.2, generator=gen(2), dtype=dtype)
    w32, mask32 = sparse_orthogonal(64, 32, 0.2, generator=gen(2), dtype=torch.float32)
    assert w.dtype == dtype
    assert torch.equal(mask, mask32)
    assert torch.equal(w, w32.to(dtype))
    assert gram_error(w) <= 2e-2  # half precision rounding of unit-norm columns


def _draw_support_trace(rows, cols, density, seed):
    """Independent support bookkeeping with Python sets on the same random stream."""
    r, c = min(rows, cols), max(rows, cols)
    draws = _eoi_stream.Draws(1, c, density, gen(seed))
    support = [{k} if k < r else set() for k in range(c)]
    nnz_trace = [r]
    k = 0
    while nnz_trace[-1] < density * r * c:
        i_s, j_s, _ = draws.chunk(k)
        for i, j in zip(i_s[0].tolist(), j_s[0].tolist(), strict=True):
            union = support[i] | support[j]
            support[i], support[j] = union, set(union)
            nnz_trace.append(sum(len(s) for s in support))
            if nnz_trace[-1] >= density * r * c:
                break
        k += 1
    return nnz_trace


@pytest.mark.parametrize("rows,cols,density", [(10, 10, 0.37), (6, 15, 0.41), (15, 6, 0.2),
                                               (1, 30, 0.5), (9, 9, 0.123456)])
def test_density_is_the_closer_of_the_two_candidate_steps(scan, rows, cols, density):
    need = density * rows * cols
    for seed in range(8):
        trace = _draw_support_trace(rows, cols, density, seed)
        after = trace[-1]
        before = trace[-2] if len(trace) > 1 else after
        expected = after if after - need <= need - before else before
        _, mask = sparse_orthogonal(rows, cols, density, generator=gen(seed))
        assert int(mask.sum()) == expected


PATHS = ["compiled", "compiled+segments", "sequential+dense", "sequential+segments",
         "bitset+segments"]


@pytest.fixture(params=PATHS)
def scan(request, monkeypatch):
    """Run a test with each path: the compiled (numba) scan, which on the CPU also applies the
    rotations ("compiled") or hands them to the layered torch passes of other devices
    ("compiled+segments"); or, with ``ORTHOSPARSE_NUMBA=0``, the Python-int sequential scan
    (small problems) or the bitset support pass, then dense layer-wise rotations (small problems)
    or 8-row segment passes."""
    path = request.param
    if path.startswith("compiled"):
        if givens.compiled_kernels() is None:
            pytest.skip("numba is not installed (pip install numba)")
        monkeypatch.setattr(_eoi_arrays, "FORCE_TORCH_PASSES", path.endswith("segments"))
        return path
    monkeypatch.setenv(givens.NUMBA_ENV, "0")
    dense = path.endswith("dense")
    monkeypatch.setattr(_eoi_arrays, "_DENSE_ROWS_UP_TO", 10**9 if dense else 0)
    monkeypatch.setattr(_eoi_arrays, "_DENSE_MULTITHREAD_UP_TO", 10**18 if dense else 0)
    monkeypatch.setattr(_eoi_arrays, "_SEQUENTIAL_UP_TO", 0 if path.startswith("bitset") else 10**9)
    return path


@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("rows,cols,density", [(8, 8, 0.5), (5, 9, 0.3), (9, 5, 0.3),
                                               (1, 7, 0.5), (7, 1, 0.5), (16, 16, 1.0),
                                               (32, 20, 0.05), (64, 64, 0.1), (70, 130, 0.2),
                                               (130, 70, 0.2), (3, 3, 0.01)])
def test_fast_path_equals_one_rotation_at_a_time_oracle(scan, rows, cols, density, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (3, 3, 0.01) is below the floor on purpose
        for seed in range(6):
            g_fast, g_ref = gen(seed), gen(seed)
            w, m = sparse_orthogonal(rows, cols, density, generator=g_fast,
                                     dtype=torch.float64, batch=batch)
            w_ref, m_ref = reference_sparse_orthogonal(rows, cols, density, generator=g_ref,
                                                       batch=batch)
            assert torch.equal(m, m_ref)
            torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)
            assert torch.equal(g_fast.get_state(), g_ref.get_state())
            w32, m32 = sparse_orthogonal(rows, cols, density, generator=gen(seed), batch=batch)
            assert torch.equal(m32, m_ref)
            torch.testing.assert_close(w32.double(), w_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch", [None, 4])
def test_streams_drawn_in_many_small_chunks_equal_the_oracle(scan, monkeypatch, batch):
    # Every path must carry its state across chunks: draw the stream 5, then 3 rotations at a time.
    init = _eoi_stream.Draws.__init__

    def small_chunks(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.first, self.rest = 5, 3

    monkeypatch.setattr(_eoi_stream.Draws, "__init__", small_chunks)
    for rows, cols, density in [(12, 12, 0.4), (7, 19, 0.6), (19, 7, 1.0)]:
        w, m = sparse_orthogonal(rows, cols, density, generator=gen(2), dtype=torch.float64,
                                 batch=batch)
        w_ref, m_ref = reference_sparse_orthogonal(rows, cols, density, generator=gen(2),
                                                   batch=batch)
        assert torch.equal(m, m_ref)
        torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)


def test_dense_path_on_many_matrices_equals_the_oracle(monkeypatch):
    monkeypatch.setenv(givens.NUMBA_ENV, "0")
    monkeypatch.setattr(_eoi_arrays, "_DENSE_ROWS_UP_TO", 10**9)
    monkeypatch.setattr(_eoi_arrays, "_DENSE_MULTITHREAD_UP_TO", 10**18)
    for seed in range(3):
        w, m = sparse_orthogonal(40, 24, 0.3, generator=gen(seed), dtype=torch.float64, batch=8)
        w_ref, m_ref = reference_sparse_orthogonal(40, 24, 0.3, generator=gen(seed), batch=8)
        assert torch.equal(m, m_ref)
        torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)


def test_batch_of_one_equals_single_and_batch_members_differ():
    w1, m1 = sparse_orthogonal(20, 20, 0.3, generator=gen(5))
    wb, mb = sparse_orthogonal(20, 20, 0.3, generator=gen(5), batch=1)
    assert torch.equal(w1, wb[0]) and torch.equal(m1, mb[0])
    w, m = sparse_orthogonal(20, 20, 0.3, generator=gen(5), batch=4)
    assert w.shape == (4, 20, 20)
    assert not torch.equal(m[0], m[1])
    for k in range(4):
        assert gram_error(w[k]) <= 1e-6


def test_deterministic_for_a_fixed_generator():
    a = sparse_orthogonal(33, 47, 0.2, generator=gen(11))
    b = sparse_orthogonal(33, 47, 0.2, generator=gen(11))
    c = sparse_orthogonal(33, 47, 0.2, generator=gen(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_default_generator_is_the_global_cpu_one():
    torch.manual_seed(7)
    a = sparse_orthogonal(16, 16, 0.3)
    torch.manual_seed(7)
    b = sparse_orthogonal(16, 16, 0.3)
    assert torch.equal(a[0], b[0])


def test_density_one_is_dense_and_floor_is_identity():
    w, m = sparse_orthogonal(12, 12, 1.0, generator=gen())
    assert m.all()
    w, m = sparse_orthogonal(6, 10, 0.1, generator=gen())  # need = 6 = r: no rotation at all
    expected = torch.zeros(6, 10)
    expected[:, :6] = torch.eye(6)
    assert torch.equal(w, expected) and torch.equal(m, expected.bool())


def _chain_mean_density(c, t_max):
    """E[K_t]/c for the per-row Markov chain K: 1 -> K+1 w.p. 2K(c-K)/(c(c-1))."""
    p = np.zeros(c + 1)
    p[1] = 1.0
    k = np.arange(c + 1)
    up = 2.0 * k * (c - k) / (c * (c - 1))
    means = [1.0 / c]
    for _ in range(t_max):
        moved = p * up
        p = p - moved
        p[1:] += moved[:-1]
        means.append(float((p * k).sum()) / c)
    return np.array(means)


@pytest.mark.parametrize("c,density", [(64, 0.25), (48, 0.5), (128, 0.125)])
def test_rotation_count_matches_markov_chain(c, density):
    # E[density after t rotations] = E[K_t]/c; the mean stopping time over many matrices must
    # match the chain's crossing time within a few percent.
    means = _chain_mean_density(c, 20 * c)
    t_chain = int(np.argmax(means >= density))
    draws = _eoi_stream.Draws(300, c, density, gen(123))
    kept, _ = _eoi_arrays._stop_points(300, c, c, density * c * c, draws,
                                  torch.device("cpu"))
    assert abs(kept.mean() / t_chain - 1.0) < 0.03
    # the mean-field estimate that sizes the draws is a slight underestimate, never far off
    assert 0.85 < givens.expected_rotations(c, density) / t_chain < 1.0


def test_popcount_fallback_matches_numpy():
    words = torch.randint(-(2**62), 2**62, (50, 7), generator=gen(), dtype=torch.int64)
    words[0, 0] = -1  # all 64 bits set, sign bit included
    words[1, 1] = -(2**63)
    expected = np.bitwise_count(words.numpy().view(np.uint64)).sum(axis=1).astype(np.int64)
    assert torch.equal(_eoi_arrays._popcount_rows_swar(words), torch.from_numpy(expected))


def test_warns_below_lowest_reachable_density():
    with pytest.warns(UserWarning, match=r"density=0\.01 is below .* 1/64"):
        w, m = sparse_orthogonal(64, 32, 0.01, generator=gen())
    assert int(m.sum()) == 32  # density 1/64
    assert gram_error(w) == 0.0


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_bad_density_raises(density):
    with pytest.raises(ValueError, match=r"density=.* must be in \(0, 1\]"):
        sparse_orthogonal(4, 4, density)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(rows=0, cols=4), ValueError, r"rows=0 must be a positive integer"),
    (dict(rows=4, cols=-2), ValueError, r"cols=-2 must be a positive integer"),
    (dict(rows=2.5, cols=4), TypeError, r"rows must be a positive integer, got float"),
    (dict(rows=4, cols=4, dtype=torch.int64), TypeError, r"dtype=torch.int64 must be a float"),
    (dict(rows=4, cols=4, density="0.5"), TypeError, r"density must be a real number"),
    (dict(rows=4, cols=4, gain=math.nan), ValueError, r"gain=nan must be a finite"),
    (dict(rows=4, cols=4, batch=0), ValueError, r"batch=0 must be a positive integer"),
    (dict(rows=4, cols=4, generator=3), TypeError, r"generator must be a torch.Generator"),
])
def test_bad_arguments_raise(kwargs, exc, match):
    kwargs = {"density": 0.5, **kwargs}
    with pytest.raises(exc, match=match):
        sparse_orthogonal(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rows,cols,density", [(64, 64, 0.1), (100, 37, 0.3), (37, 100, 0.3)])
def test_cpu_and_cuda_agree(rows, cols, density):
    w_cpu, m_cpu = sparse_orthogonal(rows, cols, density, generator=gen(9), batch=2)
    w_gpu, m_gpu = sparse_orthogonal(rows, cols, density, generator=gen(9), batch=2,
                                     device="cuda")
    assert w_gpu.device.type == "cuda"
    assert torch.equal(m_cpu, m_gpu.cpu())
    torch.testing.assert_close(w_gpu.cpu(), w_cpu, atol=1e-6, rtol=0)
    # the device popcount/unpack fallbacks are exercised on CUDA
    assert gram_error(w_gpu.cpu()) <= 1e-6


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("rows,cols,density", [(48, 80, 0.2), (80, 48, 0.3), (33, 33, 0.9)])
def test_device_passes_equal_cpu_passes(monkeypatch, rows, cols, density, batch):
    # CUDA runs the torch passes (and the SWAR popcount); check them here on the CPU.
    ref = sparse_orthogonal(rows, cols, density, generator=gen(6), batch=batch)
    monkeypatch.setenv(givens.NUMBA_ENV, "0")
    monkeypatch.setattr(_eoi_arrays, "_DENSE_ROWS_UP_TO", 0)  # the segment passes
    monkeypatch.setattr(_eoi_arrays, "_SEQUENTIAL_UP_TO", 0)  # and the bitset support pass
    monkeypatch.setattr(_eoi_arrays, "FORCE_TORCH_PASSES", True)
    monkeypatch.setattr(_eoi_arrays, "_popcount_rows", _eoi_arrays._popcount_rows_swar)
    out = sparse_orthogonal(rows, cols, density, generator=gen(6), batch=batch)
    assert torch.equal(ref[1], out[1])
    torch.testing.assert_close(ref[0], out[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch,n,c", [(1, 500, 16), (7, 120, 9), (3, 0, 5), (2, 300, 40000)])
def test_schedule_levels_equal_the_sequential_definition(batch, n, c):
    rng = np.random.default_rng(0)
    i = rng.integers(0, c, (batch, n))
    j = (i + rng.integers(1, c, (batch, n))) % c  # j != i
    level = _eoi_arrays._schedule(i, j, c)
    for b in range(batch):
        last = {}  # column -> level of the latest rotation touching it
        for s in range(n):
            expect = 1 + max(last.get(i[b, s], -1), last.get(j[b, s], -1))
            assert level[b, s] == expect
            last[i[b, s]] = last[j[b, s]] = expect
        for lv in np.unique(level[b]):  # a layer touches every column at most once
            touched = np.concatenate([i[b][level[b] == lv], j[b][level[b] == lv]])
            assert len(np.unique(touched)) == touched.size


def test_path_choice_follows_size_and_threads(monkeypatch):
    assert _eoi_arrays.dense_path(1, 128, 128) and _eoi_arrays.dense_path(1, 1024, 1024)
    assert not _eoi_arrays.dense_path(1, 2048, 2048)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not _eoi_arrays.dense_path(1000, 128, 128)  # large batch, threads: segment passes
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert _eoi_arrays.dense_path(1000, 128, 128)


def test_numba_switch_selects_the_backend(monkeypatch):
    monkeypatch.setenv(givens.NUMBA_ENV, "0")
    assert givens.backend() == "python" and givens.compiled_kernels() is None
    w0, m0 = sparse_orthogonal(60, 90, 0.2, generator=gen(4))
    monkeypatch.setenv(givens.NUMBA_ENV, "1")
    expected = "numba" if givens._import_kernel() is not None else "python"
    assert givens.backend() == expected
    w1, m1 = sparse_orthogonal(60, 90, 0.2, generator=gen(4))
    assert torch.equal(m0, m1)
    torch.testing.assert_close(w0, w1, atol=1e-6, rtol=0)
    monkeypatch.setenv(givens.NUMBA_ENV, "yes")
    with pytest.raises(ValueError, match=r"ORTHOSPARSE_NUMBA='yes' must be 0 .* or 1"):
        sparse_orthogonal(4, 4, 0.5)


def test_without_numba_the_python_path_runs(monkeypatch):
    import sys

    import orthosparse

    givens._import_kernel.cache_clear()
    monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "orthosparse.eoi.compiled", raising=False)
    monkeypatch.delattr(orthosparse.eoi, "compiled", raising=False)  # the package attribute too
    try:
        assert givens.backend() == "python"
        w, m = sparse_orthogonal(30, 30, 0.3, generator=gen(1), dtype=torch.float64)
        w_ref, m_ref = reference_sparse_orthogonal(30, 30, 0.3, generator=gen(1))
        assert torch.equal(m, m_ref)
        torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)
    finally:
        givens._import_kernel.cache_clear()


def test_unusable_numba_warns_and_falls_back(monkeypatch):
    import sys
    import types

    import orthosparse

    broken = types.ModuleType("numba")  # imports, but has no njit: loading the kernels fails
    givens._import_kernel.cache_clear()
    monkeypatch.setitem(sys.modules, "numba", broken)
    monkeypatch.delitem(sys.modules, "orthosparse.eoi.compiled", raising=False)
    monkeypatch.delattr(orthosparse.eoi, "compiled", raising=False)
    try:
        with pytest.warns(UserWarning, match="EOI kernel cannot be loaded .*AttributeError"):
            assert givens.backend() == "python"
        w, m = sparse_orthogonal(20, 20, 0.3, generator=gen(1))
        assert gram_error(w) <= 1e-6
    finally:
        givens._import_kernel.cache_clear()
