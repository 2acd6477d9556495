"""Tests for orthosparse.diagnostics and orthosparse.plotting: known answers computed here."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch import nn

from orthosparse.diagnostics import (
    conv_singular_values,
    input_output_jacobian,
    inspect_model,
    jacobian_singular_values,
    jacobian_summary,
    orthogonality_error,
    orthogonality_errors,
    signal_propagation,
    summarize_singular_values,
)

METHODS = ["auto", "vmap", "loop"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run single-threaded: these are small ops, and on a shared 2-core machine two OpenMP threads
    per process oversubscribe the CPU and make a 50-layer Jacobian 1000x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def haar(n: int, gen: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random orthogonal n x n matrix (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)  # (n, n)


def deep_linear(weights: list[torch.Tensor]) -> nn.Sequential:
    layers = []
    for w in weights:
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
        layers.append(lin)
    return nn.Sequential(*layers)


def two_layer_tanh(n_in: int, hidden: int, n_out: int, gen: torch.Generator) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return net


# --------------------------------------------------------------------------- Jacobian


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_in,n_out", [(3, 2), (2, 6)])  # reverse mode; forward mode (jacfwd)
def test_jacobian_matches_hand_formula(method, n_in, n_out):
    gen = torch.Generator().manual_seed(0)
    net = two_layer_tanh(n_in, 5, n_out, gen)
    x = torch.randn(4, n_in, generator=gen, dtype=torch.float64)
    w1, b1, w2 = net[0].weight, net[0].bias, net[2].weight
    with torch.no_grad():  # J_b = W2 diag(1 - tanh(W1 x_b + b1)^2) W1
        expected = torch.stack([w2 @ torch.diag(1 - torch.tanh(w1 @ xb + b1) ** 2) @ w1
                                for xb in x])
    jac = input_output_jacobian(net, x, method=method)
    assert jac.shape == (4, n_out, n_in)
    torch.testing.assert_close(jac, expected, atol=1e-12, rtol=0)
    sv = jacobian_singular_values(net, x, method=method)
    assert sv.shape == (4, min(n_in, n_out))
    torch.testing.assert_close(sv, torch.linalg.svdvals(expected), atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_jacobian_cnn_matches_autograd_functional(method):
    gen = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 5)).double()
    x = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    expected = torch.stack([
        torch.autograd.functional.jacobian(lambda xb: net(xb[None])[0], xb).reshape(5, 32)
        for xb in x])  # (3, 5, 32)
    jac = input_output_jacobian(net, x, method=method, chunk_size=2)
    torch.testing.assert_close(jac, expected, atol=1e-12, rtol=0)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_deep_orthogonal_linear_network_is_isometric(dtype, rtol):
    # 50 layers W_l = g Q_l: J = g^50 Q_50 ... Q_1, all singular values g^50 = 1.6446...
    gen = torch.Generator().manual_seed(2)
    g, depth = 1.01, 50
    net = deep_linear([g * haar(32, gen, dtype) for _ in range(depth)])
    x = torch.randn(6, 32, generator=gen, dtype=dtype)
    sv = jacobian_singular_values(net, x)
    assert sv.shape == (6, 32)
    torch.testing.assert_close(sv, torch.full_like(sv, g**depth), rtol=rtol, atol=0)
    summary = jacobian_summary(net, x, max_examples=4)
    assert summary["mean"] == pytest.approx(g**depth, rel=rtol)
    assert summary["std"] < rtol * g**depth
    assert summary["condition_number"] == pytest.approx(1.0, abs=10 * rtol)


def test_masked_gaussian_deep_network_is_not_isometric():
    # Masked Kaiming-normal (density 0.5, std sqrt(2 / fan_in)) at depth 100, width 32: products of
    # random matrices spread the spectrum over many orders of magnitude.
    gen = torch.Generator().manual_seed(3)
    weights = []
    for _ in range(100):
        mask = torch.rand(32, 32, generator=gen, dtype=torch.float64) < 0.5
        weights.append(torch.randn(32, 32, generator=gen, dtype=torch.float64)
                       * math.sqrt(2 / 32) * mask)
    net = deep_linear(weights)
    summary = jacobian_summary(net, torch.randn(4, 32, generator=gen, dtype=torch.float64))
    assert summary["condition_number"] > 1e6
    assert summary["std"] > 0.5 * summary["mean"]


def test_summary_of_diagonal_layer_is_exact():
    net = deep_linear([torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))])
    x = torch.randn(5, 3, dtype=torch.float64)
    sv = jacobian_singular_values(net, x, max_examples=2)
    torch.testing.assert_close(sv, torch.tensor([[3.0, 2.0, 1.0]] * 2, dtype=torch.float64))
    summary = jacobian_summary(net, x)
    assert summary == pytest.approx({"mean": 2.0, "std": math.sqrt(2 / 3), "min": 1.0,
                                     "max": 3.0, "condition_number": 3.0}, rel=1e-12)


def test_summarize_singular_values_edge_cases():
    assert summarize_singular_values(torch.tensor([0.0, 2.0]))["condition_number"] == math.inf
    nan = summarize_singular_values(torch.tensor([1.0, math.nan]))
    assert all(math.isnan(v) for v in nan.values())
    with pytest.raises(ValueError, match="values is empty"):
        summarize_singular_values(torch.tensor([]))
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        summarize_singular_values([1.0, 2.0])


class ItemInForward(nn.Module):
    """Calls ``float(tensor)`` in forward: fine for autograd, impossible under ``vmap``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2, bias=False).double()

    def forward(self, x):
        return self.lin(x) * float(x.abs().max() >= 0)


def test_auto_falls_back_to_loop_when_vmap_fails():
    net = ItemInForward()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="falling back to a loop over the 2 outputs"):
        jac = input_output_jacobian(net, x)
    torch.testing.assert_close(jac, net.lin.weight.detach().expand(4, 2, 3))
    torch.testing.assert_close(input_output_jacobian(net, x, method="loop"), jac)
    with pytest.raises(RuntimeError):
        input_output_jacobian(net, x, method="vmap")


def test_non_finite_jacobian_gives_nan_and_warns():
    net = deep_linear([torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)])
    with torch.no_grad():
        net[0].weight[0, 0] = math.inf
    with pytest.warns(UserWarning, match="2 of 2 examples have a non-finite Jacobian"):
        sv = jacobian_singular_values(net, torch.ones(2, 2, dtype=torch.float64))
    assert sv.isnan().all()


def test_eval_mode_used_and_restored():
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.9), nn.Linear(3, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        expected = (net[2].weight @ net[0].weight).expand(5, 2, 3)  # dropout off in eval
    for method in METHODS:
        torch.testing.assert_close(input_output_jacobian(net, x, method=method), expected)
    assert net.training and net[1].training


class TupleOut(nn.Module):
    def forward(self, x):
        return x, x


def test_jacobian_errors():
    net = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        jacobian_summary(lambda x: x, torch.randn(2, 3))
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        jacobian_summary(net, [[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="floating-point"):
        jacobian_summary(net, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(batch, \*features\).*got shape \(3,\)"):
        jacobian_summary(net, torch.randn(3))
    with pytest.raises(ValueError, match=r"got shape \(0, 3\)"):
        jacobian_summary(net, torch.randn(0, 3))
    with pytest.raises(ValueError, match="max_examples=0"):
        jacobian_summary(net, torch.randn(2, 3), max_examples=0)
    with pytest.raises(ValueError, match="unknown Jacobian method 'jacrev'; choose one of: "
                                         "auto, loop, vmap"):
        jacobian_summary(net, torch.randn(2, 3), method="jacrev")
    with pytest.raises(ValueError, match="chunk_size=0"):
        input_output_jacobian(net, torch.randn(2, 3), chunk_size=0)
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        jacobian_summary(TupleOut(), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"min\(outputs, inputs\)=3 passes, more than max_dim=2"):
        jacobian_singular_values(nn.Identity(), torch.randn(2, 3), max_dim=2)


# --------------------------------------------------------------------------- orthogonality


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (5, 5)])
def test_orthogonality_error_zero_for_orthogonal(shape):
    gen = torch.Generator().manual_seed(4)
    q = haar(max(shape), gen)[: shape[0], : shape[1]]  # orthonormal rows or columns
    assert orthogonality_error(1.5 * q, gain=1.5) < 1e-14
    # gain 1 instead: G = 2.25 I_r, ||1.25 I_r||_F / sqrt(r) = 1.25
    assert orthogonality_error(1.5 * q) == pytest.approx(1.25, rel=1e-12)


def test_orthogonality_error_hand_made():
    assert orthogonality_error(torch.tensor([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(
        3 / math.sqrt(2), rel=1e-12)  # G - I = diag(0, 3)
    w = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    mask = torch.tensor([[True, False, True], [True, True, True]])
    # masked W = [[1, 0, 0], [0, 1, 1]]: W W^T = diag(1, 2), minus I = diag(0, 1): 1 / sqrt(2)
    assert orthogonality_error(w, mask) == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    # tall: W^T W of the transpose is the same 2 x 2 Gram
    assert orthogonality_error(w.T, mask.T) == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    # unmasked: W W^T = [[2, 1], [1, 2]], minus I = [[1, 1], [1, 1]]: 2 / sqrt(2)
    assert orthogonality_error(w) == pytest.approx(math.sqrt(2), rel=1e-12)


def test_orthogonality_error_conv_modes():
    gen = torch.Generator().manual_seed(5)
    delta = torch.zeros(4, 6, 3, 3, dtype=torch.float64)
    delta[:, :, 1, 1] = 2.0 * haar(6, gen)[:4]  # delta-orthogonal, gain 2
    assert orthogonality_error(delta, gain=2.0) < 1e-14
    assert orthogonality_error(delta, gain=2.0, conv="flat") < 1e-14
    k = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    k[:, :, 1, 1] = torch.eye(2)
    k[:, :, 0, 0] = torch.eye(2)
    assert orthogonality_error(k) == 0.0  # centre tap I
    assert orthogonality_error(k, conv="flat") == pytest.approx(1.0, rel=1e-12)  # 2I - I
    mask = torch.ones_like(k, dtype=torch.bool)
    mask[:, :, 0, 0] = False
    assert orthogonality_error(k, mask, conv="flat") == 0.0
    k1d = torch.zeros(3, 3, 5, dtype=torch.float64)
    k1d[:, :, 2] = torch.eye(3)
    assert orthogonality_error(k1d) == 0.0


def test_orthogonality_error_errors():
    w = torch.eye(3)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        orthogonality_error([[1.0]])
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        orthogonality_error(torch.ones(3))
    with pytest.raises(ValueError, match=r"mask shape \(3, 2\) does not match weight shape "
                                         r"\(3, 3\)"):
        orthogonality_error(w, torch.ones(3, 2))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        orthogonality_error(w, [[1]])
    with pytest.raises(ValueError, match="gain=0.0 must be a finite number > 0"):
        orthogonality_error(w, gain=0.0)
    with pytest.raises(TypeError, match="gain must be a real number"):
        orthogonality_error(w, gain="1")
    with pytest.raises(ValueError, match="unknown conv orthogonality mode 'full'"):
        orthogonality_error(w, conv="full")
    with pytest.raises(ValueError, match=r"odd kernel sizes, got kernel_size=\(2, 3\)"):
        orthogonality_error(torch.zeros(2, 2, 2, 3))


def test_orthogonality_errors_per_layer():
    gen = torch.Generator().manual_seed(6)
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(),
                        nn.Conv1d(1, 1, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(haar(4, gen))
        net[2].weight.fill_(3.0)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[0, 0] = False  # row 0 loses entry q00: its norm^2 drops to 1 - q00^2
    q00 = net[0].weight[0, 0].item()
    errors = orthogonality_errors(net, {"0.weight": mask})
    assert list(errors) == ["0.weight", "2.weight"]
    assert errors["2.weight"] == pytest.approx(8.0)  # 1 x 1 matrix [3]: |9 - 1|
    w = net[0].weight.detach() * mask
    gram_err = torch.linalg.matrix_norm(w @ w.T - torch.eye(4, dtype=torch.float64)).item() / 2
    assert errors["0.weight"] == pytest.approx(gram_err, rel=1e-12)
    assert errors["0.weight"] > q00**2 / 2  # the diagonal entry alone contributes q00^2
    with pytest.raises(ValueError, match=r"masks has keys \['fc.weight'\] that are not prunable"):
        orthogonality_errors(net, {"fc.weight": mask})


# --------------------------------------------------------------------------- signal propagation


def identity_linear(n: int) -> nn.Linear:
    lin = nn.Linear(n, n).double()
    with torch.no_grad():
        lin.weight.copy_(torch.eye(n))
        lin.bias.zero_()
    return lin


def test_identity_network_norms_are_constant():
    act = nn.ReLU()  # shared module, called twice
    net = nn.Sequential(identity_linear(8), act, identity_linear(8), act)
    x = torch.rand(5, 8, dtype=torch.float64) + 0.1  # positive: ReLU is the identity here
    records = signal_propagation(net, x)
    assert [r.label for r in records] == ["0", "1", "2", "1[1]"]
    assert [r.kind for r in records] == ["layer", "activation", "layer", "activation"]
    expected = x.norm(dim=1).mean().item()
    for r in records:
        assert r.activation_norm == pytest.approx(expected, rel=1e-12)
        assert r.gradient_norm == pytest.approx(math.sqrt(8), rel=1e-12)  # cotangent of ones
    assert [r.label for r in signal_propagation(net, x, kinds="layers")] == ["0", "2"]
    assert [r.label for r in signal_propagation(net, x, kinds="activations")] == ["1", "1[1]"]
    assert all(p.grad is None for p in net.parameters())


def test_inplace_activation_and_cross_entropy_gradient():
    net = nn.Sequential(identity_linear(3), nn.ReLU(inplace=True), identity_linear(3))
    x = torch.tensor([[1.0, -2.0, 3.0], [-1.0, -1.0, 2.0]], dtype=torch.float64)
    targets = torch.tensor([0, 2])
    lin0, relu, lin2 = signal_propagation(net, x, targets)
    relu_x = x.clamp_min(0)
    assert lin0.activation_norm == pytest.approx(x.norm(dim=1).mean().item(), rel=1e-12)
    assert relu.activation_norm == pytest.approx(relu_x.norm(dim=1).mean().item(), rel=1e-12)
    # dL/dy_b = softmax(y_b) - e_{t_b} with y = relu(x); pre-activation gradient masks by x > 0
    g = torch.softmax(relu_x, dim=1) - torch.eye(3, dtype=torch.float64)[targets]
    assert lin2.gradient_norm == pytest.approx(g.norm(dim=1).mean().item(), rel=1e-12)
    assert relu.gradient_norm == pytest.approx(g.norm(dim=1).mean().item(), rel=1e-12)
    assert lin0.gradient_norm == pytest.approx((g * (x > 0)).norm(dim=1).mean().item(),
                                               rel=1e-12)


def test_signal_propagation_errors():
    net = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="unknown propagation kinds 'relu'"):
        signal_propagation(net, x, kinds="relu")
    with pytest.raises(ValueError, match="no module of kinds='activations' ran"):
        signal_propagation(net, x, kinds="activations")
    with pytest.raises(ValueError, match=r"targets shape \(3,\) must be \(batch,\) = \(4,\)"):
        signal_propagation(net, x, torch.tensor([0, 1, 0]))
    with pytest.raises(TypeError, match="targets must be a torch.Tensor"):
        signal_propagation(net, x, [0, 1, 0, 1])


# --------------------------------------------------------------------------- conv spectra


def dense_conv_matrix(conv: nn.Module, size: tuple[int, ...]) -> torch.Tensor:
    """The conv as an explicit (c_out * prod(n), c_in * prod(n)) matrix: apply it to a basis."""
    c_in = conv.in_channels
    numel = c_in * math.prod(size)
    basis = torch.eye(numel, dtype=torch.float64).reshape(numel, c_in, *size)
    with torch.no_grad():
        return conv(basis).reshape(numel, -1).T  # column j = conv(e_j)


CONV_CASES = [  # (conv kwargs, input size); every one circular, no bias (not part of the map)
    (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (5, 5)),
    (nn.Conv2d, dict(in_channels=3, out_channels=2, kernel_size=(3, 1), padding=(1, 0)), (5, 4)),
    (nn.Conv2d, dict(in_channels=2, out_channels=2, kernel_size=2, padding="same"), (5, 5)),
    (nn.Conv2d, dict(in_channels=2, out_channels=2, kernel_size=3, padding=2, dilation=2),
     (5, 5)),
    (nn.Conv2d, dict(in_channels=4, out_channels=2, kernel_size=3, padding=1, groups=2), (4, 4)),
    (nn.Conv1d, dict(in_channels=3, out_channels=2, kernel_size=5, padding=2), (7,)),
    (nn.Conv3d, dict(in_channels=2, out_channels=2, kernel_size=3, padding=1), (3, 3, 3)),
]


@pytest.mark.parametrize("conv_type,kwargs,size", CONV_CASES)
def test_conv_singular_values_match_dense_matrix(conv_type, kwargs, size):
    torch.manual_seed(7)
    conv = conv_type(**kwargs, padding_mode="circular", bias=False, dtype=torch.float64)
    expected = torch.linalg.svdvals(dense_conv_matrix(conv, size)).sort(descending=True).values
    got = conv_singular_values(conv, size)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


def test_conv_singular_values_of_weight_tensor_and_delta_orthogonal():
    torch.manual_seed(8)
    conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular", bias=False).double()
    expected = torch.linalg.svdvals(dense_conv_matrix(conv, (5, 5)))
    torch.testing.assert_close(conv_singular_values(conv.weight, 5),
                               expected.sort(descending=True).values, atol=1e-10, rtol=0)
    delta = torch.zeros(4, 4, 3, 3, dtype=torch.float64)  # circular delta-orthogonal: isometry
    delta[:, :, 1, 1] = 1.3 * haar(4, torch.Generator().manual_seed(9))
    sv = conv_singular_values(delta, (6, 6))
    torch.testing.assert_close(sv, torch.full((6 * 6 * 4,), 1.3, dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_conv_singular_values_errors():
    with pytest.raises(ValueError, match="padding_mode='circular'.*got padding_mode='zeros'"):
        conv_singular_values(nn.Conv2d(2, 2, 3, padding=1), 5)
    with pytest.raises(ValueError, match=r"kernel_size=\(2, 2\) with padding=\(1, 1\).*odd"):
        conv_singular_values(nn.Conv2d(2, 2, 2, padding=1, padding_mode="circular"), 5)
    with pytest.raises(ValueError, match=r"padding=\(0, 0\).*does not keep the spatial size"):
        conv_singular_values(nn.Conv2d(2, 2, 3, padding_mode="circular"), 5)
    with pytest.raises(ValueError, match="padding='valid' does not keep the spatial size"):
        conv_singular_values(nn.Conv2d(2, 2, 3, padding="valid", padding_mode="circular"), 5)
    with pytest.raises(ValueError, match=r"stride 1, got stride=\(2, 2\)"):
        conv_singular_values(nn.Conv2d(2, 2, 3, 2, padding=1, padding_mode="circular"), 5)
    with pytest.raises(ValueError, match=r"size \(5, 5\) is larger than input_size=\(4, 4\)"):
        conv_singular_values(torch.zeros(2, 2, 5, 5), 4)
    with pytest.raises(ValueError, match=r"input_size=\(5, 5, 5\) must give 2 spatial dims"):
        conv_singular_values(torch.zeros(2, 2, 3, 3), (5, 5, 5))
    with pytest.raises(ValueError, match="input_size=0"):
        conv_singular_values(torch.zeros(2, 2, 3, 3), 0)
    with pytest.raises(ValueError, match=r"\(c_out, c_in, \*kernel\).*got shape \(2, 2\)"):
        conv_singular_values(torch.zeros(2, 2), 5)
    with pytest.raises(TypeError, match="nn.Conv1d/Conv2d/Conv3d or a weight tensor"):
        conv_singular_values(nn.Linear(2, 2), 5)
    with pytest.raises(TypeError, match="nn.Conv1d/Conv2d/Conv3d or a weight tensor"):
        conv_singular_values(nn.ConvTranspose2d(2, 2, 3, padding=1), 5)


# --------------------------------------------------------------------------- report


def test_inspect_model_report():
    gen = torch.Generator().manual_seed(10)
    net = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        net[0].weight.copy_(haar(6, gen))
        net[2].weight.copy_(haar(6, gen)[:3])
        net[0].bias.zero_()
        net[2].bias.zero_()
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[:, :3] = True  # 18 of 36
    with torch.no_grad():
        net[2].weight[0, 0] = 0.0  # no mask for layer 2: density from nonzeros, 17 of 18
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    report = inspect_model(net, x, masks={"0.weight": mask}, max_examples=8)
    assert [layer.name for layer in report.layers] == ["0.weight", "2.weight"]
    assert report.layers[0].density == 0.5
    assert report.layers[1].density == pytest.approx(17 / 18, rel=1e-12)
    assert report.layers[0].shape == (6, 6)
    w = net[0].weight.detach() * mask
    expected = torch.linalg.matrix_norm(w @ w.T - torch.eye(6, dtype=torch.float64)) / 6**0.5
    assert report.layers[0].orthogonality_error == pytest.approx(expected.item(), rel=1e-12)
    assert report.layers[0].activation_norm == pytest.approx(
        (x[:8] @ net[0].weight.detach().T).norm(dim=1).mean().item(), rel=1e-12)
    assert report.layers[1].gradient_norm == pytest.approx(math.sqrt(3), rel=1e-12)
    assert report.num_examples == 8
    assert set(report.jacobian) == {"mean", "std", "min", "max", "condition_number"}
    text = str(report)
    assert "0.weight" in text and "6x6" in text and "0.5000" in text and "Jacobian" in text
    json.dumps(report.to_dict())


def test_inspect_model_reads_prune_mask_buffer():
    from torch.nn.utils import prune

    net = nn.Sequential(identity_linear(4), nn.Tanh(), identity_linear(4))
    mask = torch.ones(4, 4)
    mask[0, 0] = 0.0
    mask[1, 2] = 0.0  # density is the mask's 14 of 16, not the 3 of 16 nonzero weights
    prune.custom_from_mask(net[2], "weight", mask)
    report = inspect_model(net, torch.rand(3, 4, dtype=torch.float64))
    assert [layer.density for layer in report.layers] == [4 / 16, 14 / 16]
    # layer 2 is I with the (0, 0) entry pruned: W W^T - I = -e_0 e_0^T, norm 1, / sqrt(4)
    assert report.layers[1].orthogonality_error == pytest.approx(0.5, rel=1e-12)
    assert [layer.name for layer in report.layers] == ["0.weight", "2.weight"]


# --------------------------------------------------------------------------- plotting


def test_plot_singular_values(tmp_path):
    pytest.importorskip("matplotlib")
    from orthosparse.plotting import plot_singular_values

    spectra = {"eoi": torch.ones(50), "kaiming": torch.logspace(-3, 1, 50)}
    fig = plot_singular_values(spectra, log_x=True, path=tmp_path / "sv.png", title="depth 100",
                               layout="overlay")
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # one step outline per init
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["eoi", "kaiming"]
    assert ax.get_xscale() == "log"
    assert (tmp_path / "sv.png").stat().st_size > 1000
    with pytest.warns(UserWarning, match=r"spectra\['z'\]: 1 of 2 values <= 0"):
        plot_singular_values({"z": [0.0, 1.0]}, log_x=True)
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_singular_values({})
    with pytest.raises(ValueError, match=r"spectra\['a'\] is empty or contains NaN"):
        plot_singular_values({"a": [math.nan]})


def test_plot_signal_propagation(tmp_path):
    pytest.importorskip("matplotlib")
    from orthosparse.plotting import plot_signal_propagation

    net = nn.Sequential(identity_linear(4), nn.Tanh(), identity_linear(4))
    records = signal_propagation(net, torch.rand(3, 4, dtype=torch.float64))
    fig = plot_signal_propagation({"a": records, "b": records}, path=tmp_path / "n.pdf")
    act, grad = fig.axes
    assert len(act.lines) == 2 and len(grad.lines) == 2
    assert list(act.lines[0].get_xdata()) == [1, 2]  # two Linear outputs
    assert act.get_yscale() == "log"
    assert (tmp_path / "n.pdf").exists()
    fig = plot_signal_propagation(records, kind="all", log_y=False)
    assert len(fig.axes[0].lines[0].get_xdata()) == 3
    with pytest.raises(ValueError, match="kind='relu' must be one of"):
        plot_signal_propagation(records, kind="relu")
    with pytest.raises(ValueError, match="run 'a' has no records of kind='activation'"):
        plot_signal_propagation({"a": records[:1]}, kind="activation")


# --------------------------------------------------------------------------- devices


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(12)
    net = two_layer_tanh(8, 16, 3, gen)
    x = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    for method in METHODS:
        torch.testing.assert_close(
            jacobian_singular_values(net.cuda(), x.cuda(), method=method).cpu(),
            jacobian_singular_values(net.cpu(), x, method=method), atol=1e-10, rtol=0)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular", dtype=torch.float64)
    torch.testing.assert_close(conv_singular_values(conv.cuda(), 6).cpu(),
                               conv_singular_values(conv.cpu(), 6), atol=1e-10, rtol=0)


# --------------------------------------------------------------------------- performance


@pytest.mark.slow
def test_jacobian_summary_1000_layer_mlp_under_60_seconds():
    gen = torch.Generator().manual_seed(11)
    layers: list[nn.Module] = [nn.Linear(64, 128), nn.Tanh()]
    for _ in range(998):
        layers += [nn.Linear(128, 128), nn.Tanh()]
    net = nn.Sequential(*layers, nn.Linear(128, 10))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=1.0247, generator=gen)
                m.bias.zero_()
    x = torch.randn(128, 64, generator=gen)
    start = time.perf_counter()
    summary = jacobian_summary(net, x)
    assert time.perf_counter() - start <= 60.0
    assert 0 < summary["min"] <= summary["mean"] <= summary["max"] < math.inf


def test_orthogonality_error_of_a_grouped_conv_is_per_block():
    # A depthwise conv with +-1 centre taps is an isometry: err 0 with its groups, not as one
    # (c_out, 1) matrix; a grouped conv's error is the RMS of its blocks' errors.
    w = torch.zeros(4, 1, 3, 3)
    w[:, 0, 1, 1] = torch.tensor([1.0, -1.0, 1.0, 1.0])
    assert orthogonality_error(w, groups=4) == 0.0
    assert orthogonality_error(w) > 1.0
    g = torch.zeros(4, 2, 3, 3)                                  # 2 groups of (2, 2) centres
    g[:2, :, 1, 1] = torch.eye(2)
    g[2:, :, 1, 1] = 2 * torch.eye(2)                            # block error sqrt(2*9)/sqrt(2)=3
    assert orthogonality_error(g, groups=2) == pytest.approx(math.sqrt((0 + 9) / 2))
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(w)
    assert orthogonality_errors(net) == {"0.weight": 0.0}
    with pytest.raises(ValueError, match=r"groups=3 must be a positive integer dividing c_out=4"):
        orthogonality_error(w, groups=3)
