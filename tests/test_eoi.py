"""EOI generator: exact orthogonality, the density rule, every backend == oracle, statistics,
the backend table, errors."""

import math
import warnings

import numpy as np
import pytest
import torch

from orthosparse.eoi import (
    arrays,
    backends,
    default_backend,
    list_backends,
    reference_sparse_orthogonal,
    sparse_orthogonal,
)
from orthosparse.eoi.problem import make_problem
from orthosparse.eoi.stream import Draws, expected_rotations

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
    draws = Draws(1, c, density, gen(seed))
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
def test_density_is_the_closer_of_the_two_candidate_steps(backend, rows, cols, density):
    need = density * rows * cols
    for seed in range(8):
        trace = _draw_support_trace(rows, cols, density, seed)
        after = trace[-1]
        before = trace[-2] if len(trace) > 1 else after
        expected = after if after - need <= need - before else before
        _, mask = sparse_orthogonal(rows, cols, density, generator=gen(seed), backend=backend)
        assert int(mask.sum()) == expected


FAST = [name for name in list_backends() if name != "reference"]


@pytest.fixture(params=FAST)
def backend(request):
    """Run a test with each backend of the table, by name (the oracle is what they are checked
    against); one that cannot load here (numba not installed) is skipped."""
    if request.param not in list_backends(available_only=True):
        pytest.skip(f"EOI backend {request.param!r} cannot run here (numba not installed?)")
    return request.param


def test_every_backend_is_checked_and_the_table_is_public():
    assert set(list_backends()) >= {"compiled", "compiled-layered", "arrays", "arrays-dense",
                                    "arrays-segments", "arrays-bitset", "reference"}
    assert "reference" in list_backends(available_only=True)
    assert default_backend() in list_backends(available_only=True)


@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("rows,cols,density", [(8, 8, 0.5), (5, 9, 0.3), (9, 5, 0.3),
                                               (1, 7, 0.5), (7, 1, 0.5), (16, 16, 1.0),
                                               (32, 20, 0.05), (64, 64, 0.1), (70, 130, 0.2),
                                               (130, 70, 0.2), (3, 3, 0.01)])
def test_every_backend_equals_the_one_rotation_at_a_time_oracle(backend, rows, cols, density,
                                                                 batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (3, 3, 0.01) is below the floor on purpose
        for seed in range(6):
            g_fast, g_ref = gen(seed), gen(seed)
            w, m = sparse_orthogonal(rows, cols, density, generator=g_fast,
                                     dtype=torch.float64, batch=batch, backend=backend)
            w_ref, m_ref = reference_sparse_orthogonal(rows, cols, density, generator=g_ref,
                                                       batch=batch)
            assert torch.equal(m, m_ref)
            torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)
            assert torch.equal(g_fast.get_state(), g_ref.get_state())
            w32, m32 = sparse_orthogonal(rows, cols, density, generator=gen(seed), batch=batch,
                                         backend=backend)
            assert torch.equal(m32, m_ref)
            torch.testing.assert_close(w32.double(), w_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch", [None, 4])
def test_streams_drawn_in_many_small_chunks_equal_the_oracle(backend, batch):
    # Every backend must carry its state across chunks: draw the stream 5, then 3 rotations at a
    # time, through the backend interface itself (problem, draws) -> (weight, mask).
    table = backends.BACKENDS
    for rows, cols, density in [(12, 12, 0.4), (7, 19, 0.6), (19, 7, 1.0)]:
        problem = make_problem(rows, cols, density, dtype=torch.float64, batch=batch)
        out = []
        for name in (backend, "reference"):
            draws = Draws(problem.n_mat, problem.c, density, gen(2), first=5, rest=3)
            out.append(table.get(name).build(problem, draws))
        (w, m), (w_ref, m_ref) = out
        assert w.shape == m.shape == (problem.n_mat, rows, cols)
        assert torch.equal(m, m_ref)
        torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)


def test_dense_route_on_many_matrices_equals_the_oracle():
    for seed in range(3):
        w, m = sparse_orthogonal(40, 24, 0.3, generator=gen(seed), dtype=torch.float64, batch=8,
                                 backend="arrays-dense")
        w_ref, m_ref = reference_sparse_orthogonal(40, 24, 0.3, generator=gen(seed), batch=8)
        assert torch.equal(m, m_ref)
        torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)


def test_reference_backend_is_the_oracle():
    w, m = sparse_orthogonal(20, 30, 0.3, generator=gen(1), dtype=torch.float64,
                             backend="reference")
    w_ref, m_ref = reference_sparse_orthogonal(20, 30, 0.3, generator=gen(1))
    assert torch.equal(w, w_ref) and torch.equal(m, m_ref)


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
    draws = Draws(300, c, density, gen(123))
    kept, _ = arrays._stop_points(300, c, c, density * c * c, draws, torch.device("cpu"))
    assert abs(kept.mean() / t_chain - 1.0) < 0.03
    # the mean-field estimate that sizes the draws is a slight underestimate, never far off
    assert 0.85 < expected_rotations(c, density) / t_chain < 1.0


def test_popcount_fallback_matches_numpy():
    words = torch.randint(-(2**62), 2**62, (50, 7), generator=gen(), dtype=torch.int64)
    words[0, 0] = -1  # all 64 bits set, sign bit included
    words[1, 1] = -(2**63)
    expected = np.bitwise_count(words.numpy().view(np.uint64)).sum(axis=1).astype(np.int64)
    assert torch.equal(arrays._popcount_rows_swar(words), torch.from_numpy(expected))


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


@pytest.mark.parametrize("batch,n,c", [(1, 500, 16), (7, 120, 9), (3, 0, 5), (2, 300, 40000)])
def test_schedule_levels_equal_the_sequential_definition(batch, n, c):
    rng = np.random.default_rng(0)
    i = rng.integers(0, c, (batch, n))
    j = (i + rng.integers(1, c, (batch, n))) % c  # j != i
    level = arrays._schedule(i, j, c)
    for b in range(batch):
        last = {}  # column -> level of the latest rotation touching it
        for s in range(n):
            expect = 1 + max(last.get(i[b, s], -1), last.get(j[b, s], -1))
            assert level[b, s] == expect
            last[i[b, s]] = last[j[b, s]] = expect
        for lv in np.unique(level[b]):  # a layer touches every column at most once
            touched = np.concatenate([i[b][level[b] == lv], j[b][level[b] == lv]])
            assert len(np.unique(touched)) == touched.size


def test_arrays_route_follows_size_and_threads(monkeypatch):
    assert arrays.route_for(1, 128, 128) == arrays.route_for(1, 1024, 1024) == "dense"
    assert arrays.route_for(1, 2048, 2048) == "segments"
    assert arrays.route_for(1, 8192, 8192) == "bitset"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert arrays.route_for(1000, 128, 128) == "bitset"  # large batch, threads: segment passes
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert arrays.route_for(1000, 128, 128) == "dense"


def test_auto_backend_and_the_environment_variable(monkeypatch):
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    numba = "compiled" in list_backends(available_only=True)
    assert default_backend() == ("compiled" if numba else "arrays")
    assert default_backend("cuda") == default_backend()  # both run on every device
    monkeypatch.setenv(backends.BACKEND_ENV, "arrays")
    assert default_backend() == "arrays"
    w0, m0 = sparse_orthogonal(60, 90, 0.2, generator=gen(4))
    monkeypatch.setenv(backends.BACKEND_ENV, "auto")
    w1, m1 = sparse_orthogonal(60, 90, 0.2, generator=gen(4))
    assert torch.equal(m0, m1)
    torch.testing.assert_close(w0, w1, atol=1e-6, rtol=0)
    monkeypatch.setenv(backends.BACKEND_ENV, "arrays-dense")  # backend= beats the variable
    w2, _ = sparse_orthogonal(60, 90, 0.2, generator=gen(4), backend="reference")
    torch.testing.assert_close(w0, w2, atol=1e-6, rtol=0)
    monkeypatch.setenv(backends.BACKEND_ENV, "yes")
    with pytest.raises(ValueError, match=r"ORTHOSPARSE_EOI_BACKEND='yes' must be 'auto' or an "
                                         r"EOI backend: arrays, "):
        sparse_orthogonal(4, 4, 0.5)


@pytest.mark.parametrize("name,exc,match", [
    ("numba", ValueError, r"unknown EOI backend 'numba'; choose 'auto' or one of: arrays, "
                          r"arrays-bitset, .*reference"),
    (3, TypeError, r"backend must be a string, got int"),
])
def test_bad_backend_raises(name, exc, match):
    with pytest.raises(exc, match=match):
        sparse_orthogonal(4, 4, 0.5, backend=name)


def test_backend_for_other_devices_only_is_refused_on_the_cpu(monkeypatch):
    gpu_only = backends.Backend(backends.BACKENDS.get("arrays").build, "test", devices=("cuda",))
    monkeypatch.setitem(backends.BACKENDS._items, "gpu-test", gpu_only)
    with pytest.raises(ValueError, match=r"EOI backend 'gpu-test' runs on cuda, not on cpu"):
        sparse_orthogonal(4, 4, 0.5, backend="gpu-test")


def test_without_numba_the_array_passes_run(monkeypatch):
    import sys

    import orthosparse

    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    backends.load_compiled.cache_clear()
    monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "orthosparse.eoi.compiled", raising=False)
    monkeypatch.delattr(orthosparse.eoi, "compiled", raising=False)  # the package attribute too
    try:
        assert default_backend() == "arrays"
        assert "compiled" not in list_backends(available_only=True)
        w, m = sparse_orthogonal(30, 30, 0.3, generator=gen(1), dtype=torch.float64)
        w_ref, m_ref = reference_sparse_orthogonal(30, 30, 0.3, generator=gen(1))
        assert torch.equal(m, m_ref)
        torch.testing.assert_close(w, w_ref, atol=1e-12, rtol=0)
        with pytest.raises(RuntimeError, match=r"EOI backend 'compiled' cannot run here: numba "
                                               r"is not installed \(pip install numba"):
            sparse_orthogonal(30, 30, 0.3, backend="compiled")
    finally:
        backends.load_compiled.cache_clear()


def test_unusable_numba_warns_and_falls_back(monkeypatch):
    import sys
    import types

    import orthosparse

    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    broken = types.ModuleType("numba")  # imports, but has no njit: loading the kernels fails
    backends.load_compiled.cache_clear()
    monkeypatch.setitem(sys.modules, "numba", broken)
    monkeypatch.delitem(sys.modules, "orthosparse.eoi.compiled", raising=False)
    monkeypatch.delattr(orthosparse.eoi, "compiled", raising=False)
    try:
        with pytest.warns(UserWarning, match="EOI kernel cannot be loaded .*AttributeError"):
            assert default_backend() == "arrays"
        w, m = sparse_orthogonal(20, 20, 0.3, generator=gen(1))
        assert gram_error(w) <= 1e-6
        with pytest.raises(RuntimeError, match=r"'compiled-layered' cannot run here: numba is "
                                               r"installed but the kernel cannot be loaded"):
            sparse_orthogonal(20, 20, 0.3, backend="compiled-layered")
    finally:
        backends.load_compiled.cache_clear()
