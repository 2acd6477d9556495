"""Approximate isometry: loss decreases, masks kept exactly, batched == per layer, autograd."""

import pytest
import torch

from orthosparse.baselines.ai import approximate_isometry_, isometry_loss
from orthosparse.init import conv_orthogonal_, orthogonal_


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def loss_by_hand(w, gain=1.0):
    v = w.reshape(w.shape[0], -1).double()
    if v.shape[0] > v.shape[1]:
        v = v.T
    return torch.linalg.matrix_norm(v @ v.T - gain**2 * torch.eye(v.shape[0], dtype=v.dtype))


def masked_orthogonal(rows, cols, density, seed, dtype=torch.float64):
    g = gen(seed)
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=g,
                                       dtype=torch.float64))
    w = q if rows > cols else q.T
    mask = torch.rand(rows, cols, generator=g) < density
    return (w * mask).to(dtype), mask


def test_loss_decreases_below_masked_orthogonal_start_and_mask_kept():
    w, mask = masked_orthogonal(48, 48, 0.2, seed=1)
    start = loss_by_hand(w)
    w_short, w_long = w.clone(), w.clone()
    (short,) = approximate_isometry_([w_short], [mask], iterations=20, start="current")
    (long,) = approximate_isometry_([w_long], [mask], iterations=150, start="current")
    assert long < short < float(start)
    assert long < 0.5 * float(start)
    assert short == pytest.approx(float(loss_by_hand(w_short)), rel=1e-9)  # reported = actual
    assert long == pytest.approx(float(loss_by_hand(w_long)), rel=1e-9)
    assert (w_long[~mask] == 0).all()  # zeros stay exactly zero
    assert (w_long[mask] != w[mask]).any()


def test_one_step_matches_autograd_oracle():
    w, mask = masked_orthogonal(12, 20, 0.5, seed=2)
    gain, lr = 1.2, 0.1
    x = w.clone().requires_grad_(True)
    v = x * mask
    loss = torch.linalg.matrix_norm(v @ v.T - gain**2 * torch.eye(12, dtype=v.dtype))
    loss.backward()
    expected = (w - lr * (x.grad * mask)).detach()  # (lr * bool mask would be float32)
    out = w.clone()
    approximate_isometry_([out], [mask], gain=gain, lr=lr, iterations=1, start="current")
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_tall_and_conv_layers_use_gram_on_smaller_side():
    tall, tall_mask = masked_orthogonal(30, 10, 0.6, seed=3)
    conv = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen(4)) / 5  # (c_out, c_in, k, k)
    conv_mask = torch.rand(conv.shape, generator=gen(5)) < 0.5
    conv = conv * conv_mask
    before = [float(loss_by_hand(tall)), float(loss_by_hand(conv))]
    losses = approximate_isometry_([tall, conv], [tall_mask, conv_mask], iterations=200,
                                   start="current")
    assert losses[0] == pytest.approx(float(loss_by_hand(tall)), rel=1e-9)
    assert losses[1] == pytest.approx(float(loss_by_hand(conv)), rel=1e-9)
    assert losses[0] < before[0] and losses[1] < before[1]
    assert (conv[~conv_mask] == 0).all() and (tall[~tall_mask] == 0).all()
    assert isometry_loss(conv) == pytest.approx(losses[1], rel=1e-9)


def test_batched_same_shape_equals_per_layer():
    pairs = [masked_orthogonal(24, 40, 0.3, seed=s) for s in range(3)]
    together = [w.clone() for w, _ in pairs]
    joint = approximate_isometry_(together, [m for _, m in pairs], iterations=50,
                                  start="current")
    for (w, m), batched, loss in zip(pairs, together, joint, strict=True):
        alone = w.clone()
        (single,) = approximate_isometry_([alone], [m], iterations=50, start="current")
        torch.testing.assert_close(batched, alone, atol=1e-10, rtol=0)
        assert loss == pytest.approx(single, rel=1e-9)


def test_orthogonal_start_is_orthogonal_and_seeded():
    w = torch.empty(16, 32, dtype=torch.float64)
    full = torch.ones(16, 32, dtype=torch.bool)
    (loss,) = approximate_isometry_([w], [full], gain=2.0, iterations=0, generator=gen(6))
    torch.testing.assert_close(w @ w.T, 4.0 * torch.eye(16, dtype=torch.float64), atol=1e-12,
                               rtol=0)
    assert loss < 1e-12
    # ||E||_F (not squared) has a kink at its minimum: the normalized gradient of rounding
    # noise still takes a step of length ~2 * lr * ||E V|| / ||E||, so plain SGD leaves an
    # exact isometry. It must stay finite and report its true loss.
    (loss,) = approximate_isometry_([w], [full], gain=2.0, iterations=5, start="current")
    assert torch.isfinite(w).all() and loss == pytest.approx(float(loss_by_hand(w, 2.0)))
    (loss,) = approximate_isometry_([torch.eye(4)], [torch.eye(4, dtype=torch.bool)],
                                    iterations=3, start="current")  # E == 0 exactly: no step
    assert loss == 0.0
    a, b = torch.empty(8, 8), torch.empty(8, 8)
    m = torch.rand(8, 8, generator=gen(7)) < 0.5
    approximate_isometry_([a], [m], iterations=3, generator=gen(8))
    approximate_isometry_([b], [m], iterations=3, generator=gen(8))
    assert torch.equal(a, b)


def test_float32_and_integer_masks():
    w, mask = masked_orthogonal(32, 32, 0.25, seed=9, dtype=torch.float32)
    (loss,) = approximate_isometry_([w], [mask.to(torch.uint8)], iterations=100, start="current")
    assert w.dtype == torch.float32 and (w[~mask] == 0).all()
    assert loss == pytest.approx(float(loss_by_hand(w)), rel=1e-4)


def test_bad_arguments_raise():
    w, m = torch.zeros(4, 4), torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="got 1 weights but 2 masks"):
        approximate_isometry_([w], [m, m])
    with pytest.raises(ValueError, match=r"mask shape \(4, 3\) does not match weight shape "
                                         r"\(4, 4\)"):
        approximate_isometry_([w], [torch.ones(4, 3, dtype=torch.bool)])
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        approximate_isometry_([w], [torch.full((4, 4), 0.5)])
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        approximate_isometry_([w], [torch.full((4, 4), 2)])
    with pytest.raises(TypeError, match="sequences of tensors"):
        approximate_isometry_(w, m)
    with pytest.raises(ValueError, match="lr=0.0 must be a finite number > 0"):
        approximate_isometry_([w], [m], lr=0.0)
    with pytest.raises(ValueError, match="iterations=-1 must be >= 0"):
        approximate_isometry_([w], [m], iterations=-1)
    with pytest.raises(TypeError, match="iterations must be an int"):
        approximate_isometry_([w], [m], iterations=1.5)
    with pytest.raises(ValueError, match="start='random' must be one of"):
        approximate_isometry_([w], [m], start="random")
    with pytest.raises(ValueError, match="2-D .* or 3-5-D"):
        approximate_isometry_([torch.zeros(4)], [torch.ones(4, dtype=torch.bool)])
    with pytest.raises(TypeError, match="must be floating point"):
        approximate_isometry_([torch.zeros(4, 4, dtype=torch.int64)], [m])


def test_conv_start_rules():
    shape = (8, 4, 3, 3)
    full = torch.ones(shape, dtype=torch.bool)
    # default "flat": an orthogonal matrix of the flattened (8, 36) shape, every entry nonzero
    flat = torch.empty(shape)
    approximate_isometry_([flat], [full], iterations=0, generator=gen(1))
    assert isometry_loss(flat) < 1e-5 and (flat != 0).all()
    # "conv-orthogonal" starts from conv_orthogonal_ (the official AI start), "delta" from the
    # centre-only kernel; linear layers keep their QR start whatever the conv rule
    for rule, reference in (("conv-orthogonal", conv_orthogonal_),
                            ("delta", lambda w, g, generator: orthogonal_(w, g,
                                                                        generator=generator))):
        w, lin = torch.empty(shape), torch.empty(6, 10)
        approximate_isometry_([w, lin], [full, torch.ones(6, 10, dtype=torch.bool)], gain=1.5,
                              iterations=0, generator=gen(2), conv=rule)
        expected = reference(torch.empty(shape), 1.5, generator=gen(2))
        assert torch.equal(w, expected)
        lin_flat = torch.empty(6, 10)
        g = gen(2)
        reference(torch.empty(shape), 1.5, generator=g)  # same draws before the linear layer
        approximate_isometry_([lin_flat], [torch.ones(6, 10, dtype=torch.bool)], gain=1.5,
                              iterations=0, generator=g)
        assert torch.equal(lin, lin_flat)
    # the start is masked, and AI then lowers the flattened loss from there
    mask = torch.rand(shape, generator=gen(3)) < 0.5
    w = torch.empty(shape)
    (start,) = approximate_isometry_([w], [mask], iterations=0, generator=gen(4),
                                     conv="conv-orthogonal")
    assert not w[~mask].any()
    w = torch.empty(shape)
    (end,) = approximate_isometry_([w], [mask], iterations=200, lr=0.01, generator=gen(4),
                                   conv="conv-orthogonal")
    assert end < start


def test_conv_start_errors():
    w, m = torch.zeros(4, 4, 3, 3), torch.ones(4, 4, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"conv='xiao' must be one of: 'flat', 'delta', "
                                         r"'conv-orthogonal'"):
        approximate_isometry_([w], [m], conv="xiao")
    with pytest.raises(ValueError, match=r"conv='delta' chooses the orthogonal start .* "
                                         r"start='current' keeps"):
        approximate_isometry_([w], [m], start="current", conv="delta")
    with pytest.raises(ValueError, match=r"odd kernel sizes"):
        approximate_isometry_([torch.zeros(4, 4, 2, 2)], [torch.ones(4, 4, 2, 2, dtype=bool)],
                              conv="conv-orthogonal")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    w, mask = masked_orthogonal(64, 64, 0.2, seed=10)
    cpu, gpu = w.clone(), w.clone().cuda()
    approximate_isometry_([cpu], [mask], iterations=20, start="current")
    approximate_isometry_([gpu], [mask.cuda()], iterations=20, start="current")
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-9, rtol=0)
