"""SNIP, GraSP and SynFlow against hand-computed scores on a toy network; restoration; errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from orthosparse._layers import prunable_layers
from orthosparse.masks import (
    compute_densities,
    compute_masks,
    grasp_scores,
    keep_top,
    layer_densities,
    snip_scores,
    synflow_scores,
)

# Toy network Linear(3, 4) - tanh - Linear(4, 2) with fixed, distinct weights.
W1 = np.array([[0.5, -0.3, 0.8], [-0.6, 0.1, 0.4], [0.2, 0.9, -0.7], [-0.35, -0.45, 0.15]])
B1 = np.array([0.1, -0.2, 0.05, 0.0])
W2 = np.array([[0.7, -0.2, 0.3, -0.55], [-0.4, 0.6, 0.25, 0.65]])
B2 = np.array([0.05, -0.1])
X = np.array([[1.0, -0.5, 0.3], [0.2, 0.8, -1.1], [-0.7, 0.4, 0.9], [0.5, 0.5, 0.5],
              [-1.2, 0.1, -0.3]])
Y = np.array([0, 1, 1, 0, 1])
X2 = np.array([[0.3, -0.9, 0.6], [1.1, 0.2, -0.4]])
Y2 = np.array([1, 0])


def toy(dtype=torch.float64) -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    with torch.no_grad():
        for p, v in zip(net.parameters(), (W1, B1, W2, B2), strict=True):
            p.copy_(torch.from_numpy(v))
    return net


def batch(x=X, y=Y):
    return torch.from_numpy(x), torch.from_numpy(y)


# ----------------------------------------------------------------------------- hand oracles
def np_grads(w1, w2, x, y, temperature=1.0, loss="ce"):
    """Gradients of the mean loss by the explicit backprop formulas: ``loss="ce"`` cross-entropy
    of the logits / temperature, ``"nll"`` ``-mean_b o[b, y_b]`` (nll_loss of the raw logits)."""
    h = np.tanh(x @ w1.T + B1)                                  # (B, 4)
    o = (h @ w2.T + B2) / temperature                           # (B, 2)
    p = np.exp(o - o.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    if loss == "nll":
        p = np.zeros_like(p)                                    # d(-o[y])/do = -onehot(y)
    d_o = (p - np.eye(2)[y]) / (len(x) * temperature)           # dL/d(pre-temperature logits)
    g2 = d_o.T @ h                                              # (2, 4)
    d_a = (d_o @ w2) * (1 - h ** 2)                             # (B, 4)
    g1 = d_a.T @ x                                              # (4, 3)
    return g1, g2


def np_hessian_grad(x, y, temperature=1.0, eps=1e-6):
    """H g by central finite differences of the gradient along g (error ~ eps^2)."""
    g1, g2 = np_grads(W1, W2, x, y, temperature)
    plus = np_grads(W1 + eps * g1, W2 + eps * g2, x, y, temperature)
    minus = np_grads(W1 - eps * g1, W2 - eps * g2, x, y, temperature)
    return [(a - b) / (2 * eps) for a, b in zip(plus, minus, strict=True)]


def np_synflow_scores(a1, a2):
    """|dR/dA * A| for R = sum(|W2| tanh(|W1| 1 + |b1|) + |b2|) with A = |W| * mask."""
    h = np.tanh(a1.sum(1) + np.abs(B1))                         # (4,), input all ones
    d_h = a2.sum(0)                                             # dR/dh_j = sum_i A2[i, j]
    g1 = np.outer(d_h * (1 - h ** 2), np.ones(3))               # dR/dA1[j, k]
    g2 = np.tile(h, (2, 1))                                     # dR/dA2[i, j] = h_j
    return np.abs(g1 * a1), np.abs(g2 * a2)


def np_keep_top(scores, k):
    """Keep the k largest of the concatenated scores; ties: earliest position first."""
    flat = np.concatenate([s.ravel() for s in scores])
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    return [part.reshape(s.shape) for part, s in
            zip(np.split(keep, np.cumsum([s.size for s in scores])[:-1]), scores, strict=True)]


def assert_clear_cut(scores, k, gap=1e-6):
    """The oracle is meaningful only if the k-th and (k+1)-th scores are well apart (``gap``
    relative to the largest absolute score)."""
    flat = np.sort(np.concatenate([s.ravel() for s in scores]))[::-1]
    assert k == flat.size or flat[k - 1] - flat[k] > gap * np.abs(flat).max()


def as_np(masks):
    return [m.numpy() for m in masks.values()]


# ----------------------------------------------------------------------------- SNIP
@pytest.mark.parametrize(("loss", "oracle_loss"), [(None, "nll"), ("nll-logits", "nll"),
                                                   ("cross-entropy", "ce")])
def test_snip_scores_match_hand_computation(loss, oracle_loss):
    # default: the official F.nll_loss of the raw logits, -mean_b o[b, y_b]
    net = toy()
    g1, g2 = np_grads(W1, W2, X, Y, loss=oracle_loss)
    scores = snip_scores(net, prunable_layers(net), [batch()], loss=loss)
    np.testing.assert_allclose(scores["0.weight"].numpy(), np.abs(g1 * W1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores["2.weight"].numpy(), np.abs(g2 * W2), rtol=0, atol=1e-12)


def test_snip_nll_logits_by_hand():
    # -mean_b o[b, y_b]: dL/dW2[i, j] = -sum_{b: y_b = i} h[b, j] / B, independent of W2
    h = np.tanh(X @ W1.T + B1)                                  # (5, 4)
    g2 = -np.stack([h[Y == i].sum(0) for i in range(2)]) / len(X)
    net = toy()
    scores = snip_scores(net, prunable_layers(net), [batch()])
    np.testing.assert_allclose(scores["2.weight"].numpy(), np.abs(g2 * W2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [0.2, 0.35, 0.5, 0.8])
@pytest.mark.parametrize(("options", "oracle_loss"), [({}, "nll"),
                                                      ({"loss": "cross-entropy"}, "ce")])
def test_snip_keeps_hand_computed_top_k(d, options, oracle_loss):
    g1, g2 = np_grads(W1, W2, X, Y, loss=oracle_loss)
    oracle = [np.abs(g1 * W1), np.abs(g2 * W2)]
    k = math.floor(d * 20 + 0.5)
    assert_clear_cut(oracle, k)
    masks = compute_masks("snip", toy(), d, data=[batch()], **options)
    for got, want in zip(as_np(masks), np_keep_top(oracle, k), strict=True):
        np.testing.assert_array_equal(got, want)


def test_snip_averages_gradients_over_batches():
    ga, gb = np_grads(W1, W2, X, Y), np_grads(W1, W2, X2, Y2)
    net = toy()
    data = [batch(), batch(X2, Y2), batch()]                   # the third batch is not used
    scores = snip_scores(net, prunable_layers(net), data, batches=2, loss="cross-entropy")
    np.testing.assert_allclose(scores["0.weight"].numpy(), np.abs((ga[0] + gb[0]) / 2 * W1),
                               atol=1e-12, rtol=0)
    np.testing.assert_allclose(scores["2.weight"].numpy(), np.abs((ga[1] + gb[1]) / 2 * W2),
                               atol=1e-12, rtol=0)


def test_snip_custom_loss_fn():
    # loss = sum of all logits: dL/dW2[i, j] = sum_b h[b, j]
    h = np.tanh(X @ W1.T + B1)
    net = toy()
    scores = snip_scores(net, prunable_layers(net), [batch()], loss_fn=lambda out, y: out.sum())
    np.testing.assert_allclose(scores["2.weight"].numpy(), np.abs(h.sum(0) * W2), atol=1e-12)


def test_snip_in_float32():
    g1, g2 = np_grads(W1, W2, X, Y, loss="nll")
    net = toy(torch.float32)
    x, y = batch()
    scores = snip_scores(net, prunable_layers(net), [(x.float(), y)])
    np.testing.assert_allclose(scores["0.weight"].numpy(), np.abs(g1 * W1), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- GraSP
def test_grasp_scores_match_finite_difference_hessian():
    h1, h2 = np_hessian_grad(X, Y)
    net = toy()
    scores = grasp_scores(net, prunable_layers(net), [batch()], temperature=1.0)
    np.testing.assert_allclose(scores["0.weight"].numpy(), -W1 * h1, rtol=0, atol=1e-8)
    np.testing.assert_allclose(scores["2.weight"].numpy(), -W2 * h2, rtol=0, atol=1e-8)


@pytest.mark.parametrize(("options", "temperature"), [({"temperature": 2.0}, 2.0),
                                                      ({}, 200.0)])
def test_grasp_temperature(options, temperature):
    # default temperature: 200, the official GraSP_v2's
    h1, h2 = np_hessian_grad(X, Y, temperature=temperature)
    net = toy()
    scores = grasp_scores(net, prunable_layers(net), [batch()], **options)
    scale = np.abs(W1 * h1).max()
    np.testing.assert_allclose(scores["0.weight"].numpy(), -W1 * h1, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(scores["2.weight"].numpy(), -W2 * h2, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("d", [0.25, 0.5, 0.75])
def test_grasp_wang_removes_the_highest_scores(d):
    # Wang et al. (2020): remove the top fraction of S(-w) = -w * Hg, i.e. keep the lowest.
    h1, h2 = np_hessian_grad(X, Y)
    neg = [W1 * h1, W2 * h2]                                    # -S: keep its largest
    k = math.floor(d * 20 + 0.5)
    assert_clear_cut(neg, k)
    masks = compute_masks("grasp", toy(), d, data=[batch()], variant="wang", temperature=1.0)
    for got, want in zip(as_np(masks), np_keep_top(neg, k), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("d", [0.25, 0.5, 0.75])
def test_grasp_official_keeps_the_highest_scores(d):
    # GraSP_v2 scores +w * Hg and keeps the lowest: the highest S = -w * Hg; default T = 200
    h1, h2 = np_hessian_grad(X, Y, temperature=200.0)
    s = [-W1 * h1, -W2 * h2]                                    # S: keep its largest
    k = math.floor(d * 20 + 0.5)
    assert_clear_cut(s, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                         # d=0.25 empties the last layer
        masks = compute_masks("grasp", toy(), d, data=[batch()])
        wang = compute_masks("grasp", toy(), d, data=[batch()], variant="wang")
    for got, want in zip(as_np(masks), np_keep_top(s, k), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not all(torch.equal(wang[n], masks[n]) for n in masks)  # the two ends differ here


def test_grasp_averages_over_batches():
    # g is the mean gradient; Hg is the mean over batches of H_b g
    ga, gb = np_grads(W1, W2, X, Y), np_grads(W1, W2, X2, Y2)
    g = [(a + b) / 2 for a, b in zip(ga, gb, strict=True)]
    eps = 1e-6

    def hv(x, y):
        plus = np_grads(W1 + eps * g[0], W2 + eps * g[1], x, y)
        minus = np_grads(W1 - eps * g[0], W2 - eps * g[1], x, y)
        return [(a - b) / (2 * eps) for a, b in zip(plus, minus, strict=True)]

    hg = [(a + b) / 2 for a, b in zip(hv(X, Y), hv(X2, Y2), strict=True)]
    net = toy()
    scores = grasp_scores(net, prunable_layers(net), [batch(), batch(X2, Y2)], batches=2,
                          temperature=1.0)
    np.testing.assert_allclose(scores["0.weight"].numpy(), -W1 * hg[0], atol=1e-8, rtol=0)
    np.testing.assert_allclose(scores["2.weight"].numpy(), -W2 * hg[1], atol=1e-8, rtol=0)


class Passes:
    """A re-iterable data source that counts how often it is read."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_grasp_reads_every_batch_by_default():
    two = [batch(), batch(X2, Y2)]
    net = toy()
    want = grasp_scores(net, prunable_layers(net), two, batches=2)
    source = Passes(two)
    got = grasp_scores(net, prunable_layers(net), source)       # batches="all"
    assert source.passes == 2                                   # g, then H g: the loader twice
    once = grasp_scores(net, prunable_layers(net), iter(two))   # a one-shot iterator is kept
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
        torch.testing.assert_close(once[name], want[name], rtol=0, atol=0)
    # an int takes that many batches once and reads them in both passes
    source = Passes(two)
    a = compute_masks("grasp", toy(), 0.5, data=source, batches=1)
    b = compute_masks("grasp", toy(), 0.5, data=[batch()])
    assert source.passes == 1 and all(torch.equal(a[n], b[n]) for n in a)


def test_snip_batches_all():
    ga, gb = np_grads(W1, W2, X, Y, loss="nll"), np_grads(W1, W2, X2, Y2, loss="nll")
    net = toy()
    scores = snip_scores(net, prunable_layers(net), [batch(), batch(X2, Y2)], batches="all")
    np.testing.assert_allclose(scores["2.weight"].numpy(), np.abs((ga[1] + gb[1]) / 2 * W2),
                               atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- SynFlow
def test_synflow_scores_match_hand_computation():
    s1, s2 = np_synflow_scores(np.abs(W1), np.abs(W2))
    net = toy()
    scores = synflow_scores(net, prunable_layers(net), input_shape=(3,))
    np.testing.assert_allclose(scores["0.weight"].numpy(), s1, rtol=1e-12, atol=0)
    np.testing.assert_allclose(scores["2.weight"].numpy(), s2, rtol=1e-12, atol=0)
    assert scores["0.weight"].dtype == torch.float64


def test_synflow_scores_with_masks_and_float32():
    m1, m2 = np.ones((4, 3)), np.ones((2, 4))
    m1[0, :] = 0
    m2[:, 3] = 0
    s1, s2 = np_synflow_scores(np.abs(W1) * m1, np.abs(W2) * m2)
    net = toy(torch.float32)
    masks = {"0.weight": torch.from_numpy(m1).bool(), "2.weight": torch.from_numpy(m2).bool()}
    scores = synflow_scores(net, prunable_layers(net), input_shape=3, masks=masks,
                            double_precision=False)
    assert scores["0.weight"].dtype == torch.float32
    np.testing.assert_allclose(scores["0.weight"].numpy(), s1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores["2.weight"].numpy(), s2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rounds", [1, 3, 10])
@pytest.mark.parametrize("d", [0.3, 0.6])
def test_synflow_iterative_exponential_schedule(rounds, d):
    a1, a2 = np.abs(W1), np.abs(W2)
    keep = [np.ones_like(a1, dtype=bool), np.ones_like(a2, dtype=bool)]
    for r in range(1, rounds + 1):
        scores = np_synflow_scores(a1 * keep[0], a2 * keep[1])
        scores = [np.where(m, s, -np.inf) for s, m in zip(scores, keep, strict=True)]
        # the official count N - int((1 - d^(r/R)) N) before the last round, keep_count after
        k = math.floor(d * 20 + 0.5) if r == rounds else 20 - int((1.0 - d ** (r / rounds)) * 20)
        assert_clear_cut([s[np.isfinite(s)] for s in scores], k, gap=1e-9)
        keep = np_keep_top(scores, k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = compute_masks("synflow", toy(), d, rounds=rounds, input_shape=(3,))
    # one-shot SynFlow at 0.3 prunes the whole first layer (the warning must say so); iterating
    # avoids that layer collapse (Tanaka et al. 2020)
    collapsed = not all(m.any() for m in keep)
    assert collapsed == (rounds == 1 and d == 0.3)
    assert [str(w.message) for w in caught] == (
        ["1 layer keeps 0 weights: '0.weight' (of 12); the network is disconnected there "
         "(layer collapse)"] if collapsed else [])
    for got, want in zip(as_np(masks), keep, strict=True):
        np.testing.assert_array_equal(got, want)
    assert sum(int(m.sum()) for m in masks.values()) == math.floor(d * 20 + 0.5)


def test_synflow_reads_input_shape_from_data():
    a = compute_masks("synflow", toy(), 0.4, rounds=5, data=[batch()])
    b = compute_masks("synflow", toy(), 0.4, rounds=5, input_shape=(3,))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_synflow_ties_keep_the_earliest_positions():
    # Constant weights: every score inside a layer is equal. One round keeps 3 of 8.
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.5)
    # R = sum_i sum_j A2[i, j] * sum_k A1[j, k] * 1: every weight of either layer scores
    # 0.5 * 0.5 * 2 = 0.5, so the 3 kept are the first three positions of layer 0 then layer 1.
    with pytest.warns(UserWarning, match=r"1 layer keeps 0 weights: '1.weight'"):
        masks = compute_masks("synflow", net, 3 / 8, rounds=1, input_shape=(2,))
    assert masks["0.weight"].tolist() == [[True, True], [True, False]]
    assert masks["1.weight"].tolist() == [[False, False], [False, False]]


def test_synflow_conv_bn_model_in_train_mode_is_restored():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    net.train()
    net[1].eval()                                              # mixed modes must come back as-is
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)                    # abs() must not leak into buffers
    state = {k: v.clone() for k, v in net.state_dict().items()}
    masks = compute_masks("synflow", net, 0.2, rounds=4, input_shape=(3, 5, 5))
    assert sum(int(m.sum()) for m in masks.values()) == math.floor(0.2 * (108 + 300) + 0.5)
    assert net.training and not net[1].training and net[0].training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


# ----------------------------------------------------------------------------- restoration
@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_model_weights_modes_buffers_grads_restored(method):
    net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).double()
    net.train()
    net[3].weight.requires_grad_(False)
    net[0].weight.grad = torch.full_like(net[0].weight, 7.0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    masks = compute_masks(method, net, 0.5, data=[batch()], rounds=2) if method == "synflow" \
        else compute_masks(method, net, 0.5, data=[batch()])
    assert sum(int(m.sum()) for m in masks.values()) == 15
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k                     # weights and BN statistics
    assert all(m.training for m in net.modules())
    assert net[0].weight.requires_grad and not net[3].weight.requires_grad
    assert torch.equal(net[0].weight.grad, torch.full_like(net[0].weight, 7.0))
    assert net[3].weight.grad is None


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_saliency_is_deterministic_and_ignores_generator(method):
    opts = {"rounds": 3} if method == "synflow" else {}
    a = compute_masks(method, toy(), 0.4, data=[batch()], generator=torch.Generator(), **opts)
    b = compute_masks(method, toy(), 0.4, data=[batch()], **opts)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unused_layer_gets_zero_scores_and_collapses_with_warning():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    net = Skip().double()
    with pytest.warns(UserWarning, match=r"1 layer keeps 0 weights: 'unused.weight' \(of 6\)"):
        masks = compute_masks("snip", net, 0.25, data=[batch()])
    assert int(masks["used.weight"].sum()) == 3 and int(masks["unused.weight"].sum()) == 0


# ----------------------------------------------------------------------------- keep_top
def test_keep_top_ties_and_bounds():
    a, b = torch.tensor([1.0, 3.0, 2.0]), torch.tensor([[3.0, 2.0], [2.0, 0.0]])
    kept = keep_top([a, b], 3)                 # 3, 3 then the first of the tied 2s (a[2])
    assert kept[0].tolist() == [False, True, True]
    assert kept[1].tolist() == [[True, False], [False, False]]
    kept = keep_top([a, b], 5)
    assert kept[0].tolist() == [False, True, True]
    assert kept[1].tolist() == [[True, True], [True, False]]
    assert not any(bool(m.any()) for m in keep_top([a, b], 0))
    assert all(bool(m.all()) for m in keep_top([a, b], 7))
    kept = keep_top([torch.tensor([-math.inf, 1.0, -math.inf])], 2)
    assert kept[0].tolist() == [True, True, False]
    with pytest.raises(ValueError, match=r"k=8 must be in \[0, 7\]"):
        keep_top([a, b], 8)
    with pytest.raises(ValueError, match="needs at least one score tensor"):
        keep_top([], 0)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_driven_methods_need_data(method):
    with pytest.raises(ValueError, match=f"mask method '{method}' needs data"):
        compute_masks(method, toy(), 0.5)
    with pytest.raises(ValueError, match=rf"mask method '{method}' was asked for batches=2 but "
                                         r"data yielded only 1"):
        compute_masks(method, toy(), 0.5, data=[batch()], batches=2)
    with pytest.raises(TypeError, match=r"each batch of data must be an \(inputs, targets\) pair"):
        compute_masks(method, toy(), 0.5, data=batch())
    with pytest.raises(TypeError, match="data must be an iterable of"):
        compute_masks(method, toy(), 0.5, data=3)
    with pytest.raises(ValueError, match="batches=0 must be a positive integer"):
        compute_masks(method, toy(), 0.5, data=[batch()], batches=0)


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_batches_errors(method):
    with pytest.raises(ValueError, match=r"batches='some' must be a positive integer or 'all'"):
        compute_masks(method, toy(), 0.5, data=[batch()], batches="some")
    with pytest.raises(TypeError, match=r"batches must be a positive integer or 'all', got "
                                        r"float: 1.5"):
        compute_masks(method, toy(), 0.5, data=[batch()], batches=1.5)
    with pytest.raises(ValueError, match=rf"mask method '{method}' got no batches: data is empty"):
        compute_masks(method, toy(), 0.5, data=[], batches="all")


def test_snip_loss_errors():
    with pytest.raises(ValueError, match=r"loss='mse' is not a SNIP loss; choose one of: "
                                         r"'nll-logits', 'cross-entropy'"):
        compute_masks("snip", toy(), 0.5, data=[batch()], loss="mse")
    with pytest.raises(ValueError, match=r"pass either loss= .* or loss_fn= \(a callable\), not "
                                         r"both \(got loss='cross-entropy'\)"):
        compute_masks("snip", toy(), 0.5, data=[batch()], loss="cross-entropy",
                      loss_fn=lambda out, y: out.sum())
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'loss' for mask method 'grasp'"):
        compute_masks("grasp", toy(), 0.5, data=[batch()], loss="nll-logits")


def test_grasp_variant_unknown():
    with pytest.raises(ValueError, match=r"variant='tanaka' is not a GraSP variant; choose one "
                                         r"of: 'official', 'wang'"):
        compute_masks("grasp", toy(), 0.5, data=[batch()], variant="tanaka")


def test_wrongly_shaped_batch_names_both_shapes():
    # an MNIST-sized MLP given 8x8 digits: a clear error instead of torch's matmul message
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Tanh(), nn.Linear(10, 10))
    data = [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))]
    for method in ("snip", "grasp"):
        with pytest.raises(ValueError, match=rf"{method}: the model failed on a batch of inputs of "
                                             r"shape \(4, 1, 8, 8\); its first layer '1' "
                                             r"\(Linear\) takes 784 input features: inputs of "
                                             r"shape \(batch, 784\)"):
            compute_masks(method, net, 0.5, data=data)
    with pytest.raises(ValueError, match=r"synflow: the model failed on an all-ones input of "
                                         r"shape \(1, 64\); its first layer '1' \(Linear\) "
                                         r"takes 784"):
        compute_masks("synflow", net, 0.5, input_shape=64, rounds=1)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match=r"shape \(2, 1, 5, 5\); its first layer '0' \(Conv2d\) "
                                         r"takes 3 input channels: inputs of shape "
                                         r"\(batch, 3, H, W\)"):
        compute_masks("snip", conv, 0.5, data=[(torch.randn(2, 1, 5, 5), torch.zeros(2).long())],
                      loss_fn=lambda out, y: out.sum())
    with pytest.raises(ValueError, match=r"snip: the loss failed on outputs of shape \(5, 2\) "
                                         r"and targets of shape \(3,\)"):
        compute_masks("snip", toy(), 0.5, data=[(batch()[0], torch.tensor([0, 1, 1]))])


def test_grasp_temperature_invalid():
    with pytest.raises(ValueError, match=r"temperature=0 must be a finite number > 0"):
        compute_masks("grasp", toy(), 0.5, data=[batch()], temperature=0)
    with pytest.raises(TypeError, match=r"temperature must be a real number, got str: '200'"):
        compute_masks("grasp", toy(), 0.5, data=[batch()], temperature="200")


def test_synflow_errors():
    with pytest.raises(ValueError, match="mask method 'synflow' needs the shape of one input"):
        compute_masks("synflow", toy(), 0.5)
    with pytest.raises(ValueError, match=r"input_shape=\(3, 0\) must be a non-empty tuple"):
        compute_masks("synflow", toy(), 0.5, input_shape=(3, 0))
    with pytest.raises(ValueError, match=r"input_shape='3' must be a non-empty tuple"):
        compute_masks("synflow", toy(), 0.5, input_shape="3")
    with pytest.raises(ValueError, match=r"cannot infer input_shape from a data batch of shape"):
        compute_masks("synflow", toy(), 0.5, data=[(torch.ones(3), torch.ones(3))])
    with pytest.raises(ValueError, match="rounds=0 must be a positive integer"):
        compute_masks("synflow", toy(), 0.5, input_shape=3, rounds=0)
    with pytest.raises(TypeError, match="double_precision must be a bool"):
        compute_masks("synflow", toy(), 0.5, input_shape=3, double_precision=1)
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'batches' for mask method 'synflow'"):
        compute_masks("synflow", toy(), 0.5, input_shape=3, batches=2)
    net = toy()
    with pytest.raises(ValueError, match=r"masks has no entry for layer\(s\) 2.weight"):
        synflow_scores(net, prunable_layers(net), input_shape=3,
                       masks={"0.weight": torch.ones(4, 3, dtype=bool)})
    with pytest.raises(ValueError, match=r"mask for '2.weight' has shape \(4, 2\) but the weight "
                                         r"has shape \(2, 4\)"):
        synflow_scores(net, prunable_layers(net), input_shape=3,
                       masks={"0.weight": torch.ones(4, 3, dtype=bool),
                              "2.weight": torch.ones(4, 2, dtype=bool)})


def test_synflow_overflow_in_float32_is_reported():
    # 12 layers with |w| = 1e4 and width 8: R ~ (8e4)^12 = 7e58 overflows float32, not float64
    net = nn.Sequential(*[nn.Linear(8, 8, bias=False) for _ in range(12)])
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1e4)
    with pytest.raises(ValueError, match=r"synflow scores are not finite .*; try "
                                         r"double_precision=True"):
        compute_masks("synflow", net, 0.5, input_shape=8, rounds=1, double_precision=False)
    # equal weights: every weight scores R / 64 up to rounding, so one-shot pruning keeps 6 whole
    # layers (which 6 depends on the rounding) and warns about the other 6
    with pytest.warns(UserWarning, match=r"6 layers keep 0 weights: '\d+.weight' \(of 64\)"):
        masks = compute_masks("synflow", net, 0.5, input_shape=8, rounds=1,
                              double_precision=True)
    assert sorted(int(m.sum()) for m in masks.values()) == [0] * 6 + [64] * 6


def test_non_finite_snip_scores_are_reported():
    net = toy()
    with torch.no_grad():
        net[0].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"snip scores are not finite \(inf/NaN\) in layer\(s\) "
                                         r"0.weight"):
        compute_masks("snip", net, 0.5, data=[batch()])


def test_density_one_keeps_everything():
    for method in ("snip", "grasp", "synflow"):
        masks = compute_masks(method, toy(), 1.0, data=[batch()])
        assert all(bool(m.all()) for m in masks.values())


@pytest.mark.parametrize(("method", "options"), [
    ("snip", {}), ("grasp", {"temperature": 2.0}), ("synflow", {"rounds": 3, "input_shape": (3,)}),
])
def test_densities_are_those_of_the_computed_masks(method, options):
    # data-driven methods compute their masks either way; the densities are their kept fractions
    masks = compute_masks(method, toy(), 0.5, data=[batch()], **options)
    assert compute_densities(method, toy(), 0.5, data=[batch()], **options) == \
        layer_densities(masks)


def test_literal_aliases_list_the_accepted_names():
    import typing

    from orthosparse.masks import GRASP_VARIANTS, SNIP_LOSSES, GraspVariant, SnipLoss

    assert typing.get_args(SnipLoss) == tuple(SNIP_LOSSES)
    assert typing.get_args(GraspVariant) == GRASP_VARIANTS
