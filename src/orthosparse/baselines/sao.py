"""Sparsity-aware orthogonal initialization (SAO): block-regular sparse support, orthogonal weights.

`Sparsity-Aware Orthogonal Initialization of Deep Neural Networks` - Esguerra et al. (2023),
IEEE Access 11:74165-74181, doi:10.1109/ACCESS.2023.3295344 (no arXiv id).

Construction (for a weight with ``r = min(rows, cols)``, ``c = max(rows, cols)``, worked as the
wide ``r x c`` matrix and transposed back when ``rows > cols``), with degree ``d``:

1. Support. Split the ``c`` columns at random into ``g = c / d`` groups of ``d``; split the ``r``
   rows at random into ``g`` groups of ``a = r d / c`` and join row group k to column group k.
   Every row has exactly ``d`` nonzeros, every column exactly ``a`` (``a = d`` for square layers:
   a d-regular bipartite graph), and the density is ``r d / (r c) = d / c``. The graph is a
   disjoint union of ``g`` complete bipartite graphs ``K_{a,d}``: the biadjacency has singular
   values ``sqrt(a d)`` (multiplicity ``g``) and 0, so every component is (trivially) Ramanujan,
   its only nontrivial singular value 0 being below ``sqrt(a-1) + sqrt(d-1)``.
2. Weights. Rows of a group share their support; they get the first ``a`` rows of an independent
   ``d x d`` orthogonal matrix: Haar-random (``blocks="haar"``, the default), or, as the SAO
   authors' code (``sao/ramanujan_constructions.py``, ``_val_generator``),
   ``scipy.linalg.orth(U)`` of a ``d x d`` matrix ``U`` of uniform [0, 1) draws
   (``blocks="official"``; needs scipy). The official blocks are not Haar: ``orth`` returns
   ``U``'s left singular vectors as columns, and the leading one of a positive matrix has
   entries of one sign (Perron-Frobenius), so in every group one input column carries weights
   of a single sign, each near ``+-1/sqrt(d)``. Rows of one group are orthonormal, rows of different
   groups have disjoint supports, hence ``W W^T = gain^2 I_r`` exactly (``W^T W`` when tall).
3. ReLU ("mirrored", looks-linear): build ``M`` for the half problem ``(rows/2, cols/2, d/2)``
   and use ``W = [[M, -M], [-M, M]]``. Same density ``d / c``; on inputs ``[relu(z); relu(-z)]``
   the layer acts as ``M`` on ``z``, so ``M M^T = gain^2 I`` is the isometry that holds.
4. Convolutions (SAO-delta): the centre tap holds the matrix above, all other taps are 0, and the
   mask keeps *whole kernels*: ``(i, j)`` in the support keeps all ``k*k`` taps of kernel
   ``(i, j)``. Mask density is again ``d / c``.

Supported degrees: ``d`` divides ``c`` and ``c`` divides ``r d`` (for ReLU: both dimensions and
``d`` even, and the half problem supported). Other densities raise a ``ValueError`` listing the
possible ones, or, with ``fallback=True``, give a dense (delta-)orthogonal layer with a warning.

Whole networks (:func:`sao_layers_`): the paper's official code (``sao/init_calls.py``,
``Linear_Init``) builds SAO only for the *square* layers of its MLPs and initializes the
non-square ones (784 -> width input, width -> 10 output) dense orthogonal; for its CNNs
(``Delta_Init``) the input convolution (3 channels in) and the Linear head are dense too. In the
paper's two SAO experiments (the 1000-layer MLP and CNN) that is exactly "non-square layers
dense", the default ``non_square="dense"``; ``non_square="sparse"`` builds SAO in every layer.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .._checks import check_density, check_generator, check_positive_int, keep_count
from .._optional import import_optional

__all__ = [
    "SAO_BLOCKS",
    "SAO_NON_SQUARE",
    "SaoActivation",
    "SaoBlocks",
    "SaoNonSquare",
    "sao_",
    "sao_degrees",
    "sao_densities",
    "sao_layers_",
    "sao_matrix",
]

SaoActivation = Literal["tanh", "relu"]
SaoBlocks = Literal["haar", "official"]
SaoNonSquare = Literal["dense", "sparse"]
_ACTIVATIONS = ("tanh", "relu")
#: How each group's orthogonal block is drawn (module docstring, step 2).
SAO_BLOCKS: tuple[str, ...] = ("haar", "official")
#: What :func:`sao_layers_` does with a layer whose channel matrix is not square.
SAO_NON_SQUARE: tuple[str, ...] = ("dense", "sparse")


def _check_choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of: {', '.join(map(repr, allowed))}")
    return value


def _check_activation(activation: object) -> str:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation={activation!r} must be one of: 'tanh' (plain construction, "
                         f"any non-ReLU activation), 'relu' (mirrored construction)")
    return activation  # type: ignore[return-value]


def _check_gain(gain: object) -> float:
    if isinstance(gain, bool) or not isinstance(gain, numbers.Real):
        raise TypeError(f"gain must be a real number, got {type(gain).__name__}: {gain!r}")
    if not math.isfinite(float(gain)) or float(gain) <= 0:
        raise ValueError(f"gain={gain} must be a finite number > 0")
    return float(gain)


def _plain_degrees(rows: int, cols: int) -> list[int]:
    r, c = min(rows, cols), max(rows, cols)
    return [d for d in range(1, c + 1) if c % d == 0 and (r * d) % c == 0]


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2 or len(shape) > 5:
        raise ValueError(f"SAO needs a 2-D (Linear) or 3-5-D (Conv) weight, got shape {shape}")
    return shape[0], shape[1]


def sao_degrees(shape: tuple[int, ...] | torch.Size, activation: SaoActivation = "tanh",
                ) -> list[int]:
    """List the degrees SAO can build for a weight of ``shape`` (density = degree / max side).

    Args:
        shape: (c_out, c_in) or (c_out, c_in, *kernel); for convs the channel matrix counts.
        activation: ``"tanh"`` (plain construction) or ``"relu"`` (mirrored construction).

    Example:
        >>> sao_degrees((8, 8))
        [1, 2, 4, 8]
    """
    activation = _check_activation(activation)
    rows, cols = _matrix_shape(tuple(shape))
    if activation == "tanh":
        return _plain_degrees(rows, cols)
    if rows % 2 or cols % 2:
        return []
    return [2 * d for d in _plain_degrees(rows // 2, cols // 2)]


def sao_densities(shape: tuple[int, ...] | torch.Size, activation: SaoActivation = "tanh",
                  ) -> list[float]:
    """List the densities SAO can build for a weight of ``shape``: ``degree / max(c_out, c_in)``.

    Example:
        >>> sao_densities((8, 8))
        [0.125, 0.25, 0.5, 1.0]
    """
    rows, cols = _matrix_shape(tuple(shape))
    return [d / max(rows, cols) for d in sao_degrees(shape, activation)]


def _haar_orthogonal(batch: int, n: int, generator: torch.Generator | None) -> Tensor:
    """``batch`` independent Haar-random ``n x n`` orthogonal matrices (float64, CPU)."""
    g = torch.randn(batch, n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)  # (batch, n, n)
    diag = torch.diagonal(r, dim1=-2, dim2=-1)  # (batch, n)
    return q * torch.where(diag < 0, -1.0, 1.0).to(q.dtype)[:, None, :]


def _scipy_orth():
    """``scipy.linalg.orth``, as the SAO authors' code draws its blocks."""
    return import_optional("scipy.linalg", "orth", user="SAO with blocks='official'",
                           package="scipy (scipy.linalg.orth, as the SAO authors' code)",
                           extra="sao", pip_name="scipy",
                           alternative=", or use blocks='haar'")


def _official_orthogonal(batch: int, n: int, generator: torch.Generator | None) -> Tensor:
    """``batch`` blocks ``scipy.linalg.orth(U)``, ``U`` uniform [0, 1) ``n x n`` (float64, CPU).

    The draws come from ``generator``: one 32-bit seed drawn from it seeds a NumPy
    ``RandomState`` (the legacy generator of the authors' ``np.random.rand``), which draws the
    ``U``s in order. A rank-deficient ``U`` (probability 0) is drawn again.
    """
    orth = _scipy_orth()
    seed = int(torch.randint(0, 2**32, (1,), generator=generator, dtype=torch.int64))
    state = np.random.RandomState(seed)
    out = np.empty((batch, n, n))
    for i in range(batch):
        q = orth(state.rand(n, n))  # (n, rank)
        while q.shape[1] < n:
            q = orth(state.rand(n, n))
        out[i] = q
    return torch.from_numpy(out)


def _plain(rows: int, cols: int, degree: int, generator: torch.Generator | None,
           blocks: str = "haar") -> tuple[Tensor, Tensor]:
    """Plain SAO matrix and mask, float64 on the CPU, unscaled (``W W^T = I`` on the small side)."""
    r, c = min(rows, cols), max(rows, cols)
    groups, per_group = c // degree, (r * degree) // c
    col_perm = torch.randperm(c, generator=generator)  # (c,)
    row_perm = torch.randperm(r, generator=generator)  # (r,)
    draw = _official_orthogonal if blocks == "official" else _haar_orthogonal
    blocks = draw(groups, degree, generator)[:, :per_group, :]  # (g, a, d)
    row_idx = row_perm.view(groups, per_group, 1)  # (g, a, 1)
    col_idx = col_perm.view(groups, 1, degree)  # (g, 1, d)
    weight = torch.zeros(r, c, dtype=torch.float64)
    weight[row_idx, col_idx] = blocks
    mask = torch.zeros(r, c, dtype=torch.bool)
    mask[row_idx, col_idx] = True
    if rows > cols:
        return weight.T, mask.T
    return weight, mask


def _mirror(m: Tensor) -> Tensor:
    """Looks-linear block ``[[M, -M], [-M, M]]`` (Burkholz & Dubatovka, 2019)."""
    return torch.cat([torch.cat([m, -m], dim=1), torch.cat([-m, m], dim=1)], dim=0)


def _unsupported_message(shape: tuple[int, ...], request: str, activation: str) -> str:
    rows, cols = _matrix_shape(shape)
    c = max(rows, cols)
    degrees = sao_degrees(shape, activation)
    if degrees:
        options = ", ".join(f"{d} ({d / c:g})" for d in degrees)
        possible = f"possible degrees (densities = degree/{c}) are: {options}"
    else:
        possible = "no degree is possible (the mirrored construction needs even c_out and c_in)"
    return (f"SAO cannot build {request} for a weight of shape {shape} with "
            f"activation={activation!r}; {possible}. Pass fallback=True to initialize this layer "
            f"dense orthogonal instead (as the paper does for layers it cannot build)")


def _resolve_degree(shape: tuple[int, ...], density: object, degree: object,
                    activation: str) -> tuple[int | None, str]:
    """Return (degree or None when unsupported, description of the request)."""
    rows, cols = _matrix_shape(shape)
    c = max(rows, cols)
    if (density is None) == (degree is None):
        raise ValueError("give exactly one of density and degree "
                         f"(got density={density!r}, degree={degree!r})")
    if degree is not None:
        if isinstance(degree, bool) or not isinstance(degree, numbers.Integral):
            raise TypeError(f"degree must be an int, got {type(degree).__name__}: {degree!r}")
        if not 1 <= degree <= c:
            raise ValueError(f"degree={degree} must be in [1, {c}] for a weight of shape {shape}")
        request = f"degree={degree}"
        wanted = int(degree)
    else:
        density = check_density(density)
        request = f"density={density}"
        wanted = keep_count(density, c)
        if abs(density * c - wanted) > 1e-9 * c or wanted < 1:
            return None, request
    return (wanted if wanted in sao_degrees(shape, activation) else None), request


def sao_matrix(
    rows: int,
    cols: int,
    degree: int,
    *,
    gain: float = 1.0,
    activation: SaoActivation = "tanh",
    generator: torch.Generator | None = None,
    blocks: SaoBlocks = "haar",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Build one SAO weight matrix and its bool mask (see the module docstring).

    ``W W^T = gain^2 I`` (wide) or ``W^T W = gain^2 I`` (tall) for ``activation="tanh"``; for
    ``"relu"`` the top-left quarter ``M`` satisfies it and ``W = [[M, -M], [-M, M]]``.

    Args:
        rows, cols: output and input features.
        degree: nonzeros per row of the wide ``min x max`` matrix; density ``degree / max``.
        gain: scale of the weights.
        activation: ``"tanh"`` (plain) or ``"relu"`` (mirrored).
        generator: CPU generator; all draws happen on the CPU, so results match across devices.
        blocks: ``"haar"`` (default) or ``"official"`` (``scipy.linalg.orth`` of uniform draws,
            as the authors' code; needs scipy).
        dtype, device: of the returned weight (the mask is bool on ``device``).

    Raises:
        ValueError: unsupported degree for this shape (the message lists the possible ones), an
            unknown ``blocks``.
        ImportError: ``blocks="official"`` without scipy (names the extra to install).

    Example:
        >>> w, m = sao_matrix(8, 8, 2)
        >>> bool(torch.allclose(w @ w.T, torch.eye(8, dtype=w.dtype)))
        True
    """
    rows, cols = check_positive_int(rows, "rows"), check_positive_int(cols, "cols")
    degree = check_positive_int(degree, "degree")
    activation = _check_activation(activation)
    blocks = _check_choice(blocks, "blocks", SAO_BLOCKS)
    gain = _check_gain(gain)
    generator = check_generator(generator)
    shape = (rows, cols)
    if degree not in sao_degrees(shape, activation):
        raise ValueError(_unsupported_message(shape, f"degree={degree}", activation))
    if activation == "relu":
        half, half_mask = _plain(rows // 2, cols // 2, degree // 2, generator, blocks)
        weight, mask = _mirror(half), half_mask.repeat(2, 2)  # support of the mirror: 2x2 tiles
    else:
        weight, mask = _plain(rows, cols, degree, generator, blocks)
    return (gain * weight).to(dtype=dtype, device=device), mask.to(device=device)


def _dense_orthogonal(rows: int, cols: int, generator: torch.Generator | None) -> Tensor:
    big, small = max(rows, cols), min(rows, cols)
    g = torch.randn(big, small, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)  # (big, small)
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
    return q if rows > cols else q.T  # (rows, cols)


def sao_(
    tensor: Tensor,
    density: float | None = None,
    *,
    degree: int | None = None,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    activation: SaoActivation = "tanh",
    fallback: bool = False,
    blocks: SaoBlocks = "haar",
) -> Tensor:
    """Fill ``tensor`` in place with an SAO weight; return its bool mask.

    `Sparsity-Aware Orthogonal Initialization of Deep Neural Networks` - Esguerra et al. (2023),
    IEEE Access, doi:10.1109/ACCESS.2023.3295344. Linear: ``W W^T = gain^2 I`` on the smaller
    side with a block-regular support of degree ``d = density * max(c_out, c_in)``. Conv
    (odd kernels): the centre tap holds that matrix, other taps 0, the mask keeps whole kernels.

    Args:
        tensor: (c_out, c_in) or (c_out, c_in, *kernel) weight, filled in place.
        density: target density; must equal ``degree / max(c_out, c_in)`` for a supported degree.
        degree: alternative to ``density`` (give exactly one).
        gain: scale of the weights.
        generator: CPU generator for every random draw.
        activation: ``"tanh"`` (plain; use it for any non-ReLU activation) or ``"relu"``
            (mirrored ``[[M, -M], [-M, M]]``).
        fallback: when SAO cannot build the request, fill a dense (delta-)orthogonal layer with an
            all-True mask (density 1) and warn, instead of raising.
        blocks: ``"haar"`` (default) or ``"official"`` (the authors' ``scipy.linalg.orth`` of
            uniform draws; needs scipy); see the module docstring.

    Returns:
        Bool mask of ``tensor``'s shape on its device; its density is exactly ``degree / c``.

    Raises:
        TypeError: ``tensor`` not a floating tensor; bad types of the options.
        ValueError: unsupported density/degree (message lists the possible degrees and
            densities), bad shape, even kernel size, both or neither of density and degree,
            an unknown ``blocks``.
        ImportError: ``blocks="official"`` without scipy (names the extra to install).

    Example:
        >>> w = torch.empty(128, 128)
        >>> mask = sao_(w, 0.125, generator=torch.Generator().manual_seed(0))
    """
    shape = _check_tensor(tensor)
    if not isinstance(fallback, bool):
        raise TypeError(f"fallback must be a bool, got {type(fallback).__name__}: {fallback!r}")
    activation = _check_activation(activation)
    blocks = _check_choice(blocks, "blocks", SAO_BLOCKS)
    gain = _check_gain(gain)
    generator = check_generator(generator)
    rows, cols = _matrix_shape(shape)
    if tensor.numel() == 0:
        warnings.warn(f"sao_: weight of shape {shape} has no elements; nothing to initialize",
                      stacklevel=2)
        return torch.zeros(shape, dtype=torch.bool, device=tensor.device)
    wanted, request = _resolve_degree(shape, density, degree, activation)

    if wanted is None:
        if not fallback:
            raise ValueError(_unsupported_message(shape, request, activation))
        warnings.warn(f"SAO cannot build {request} for weight shape {shape} "
                      f"(activation={activation!r}); initialized dense orthogonal (density 1.0) "
                      f"because fallback=True", stacklevel=2)
        return _dense_(tensor, gain, generator)
    matrix, matrix_mask = sao_matrix(rows, cols, wanted, gain=gain, activation=activation,
                                     generator=generator, blocks=blocks)
    return _fill(tensor, matrix, matrix_mask)


def _check_tensor(tensor: object) -> tuple[int, ...]:
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        raise TypeError(f"tensor must be a floating-point torch.Tensor, got "
                        f"{getattr(tensor, 'dtype', type(tensor).__name__)}")
    shape = tuple(tensor.shape)
    _matrix_shape(shape)
    kernel = shape[2:]
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"SAO-delta needs odd kernel sizes (a centre tap), got kernel {kernel} "
                         f"in weight shape {shape}")
    return shape


def _fill(tensor: Tensor, matrix: Tensor, matrix_mask: Tensor) -> Tensor:
    """Write the channel matrix into ``tensor`` (at the centre tap of a conv); return the mask
    (whole kernels for a conv)."""
    shape = tuple(tensor.shape)
    kernel = shape[2:]
    with torch.no_grad():
        if not kernel:
            tensor.copy_(matrix.to(tensor.dtype))
            return matrix_mask.to(tensor.device)
        full = torch.zeros(shape, dtype=torch.float64)  # (c_out, c_in, *k)
        centre = (slice(None), slice(None), *(k // 2 for k in kernel))
        full[centre] = matrix
        tensor.copy_(full.to(tensor.dtype))
    view = shape[:2] + (1,) * len(kernel)
    return matrix_mask.view(view).expand(shape).contiguous().to(tensor.device)


def _dense_(tensor: Tensor, gain: float, generator: torch.Generator | None) -> Tensor:
    """Dense (delta-)orthogonal ``tensor`` at ``gain``; an all-True mask."""
    rows, cols = _matrix_shape(tuple(tensor.shape))
    return _fill(tensor, gain * _dense_orthogonal(rows, cols, generator),
                 torch.ones(rows, cols, dtype=torch.bool))


def sao_layers_(
    tensors: list[Tensor],
    densities: list[float],
    *,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    activation: SaoActivation = "tanh",
    fallback: bool = False,
    names: Sequence[str] | None = None,
    non_square: SaoNonSquare = "dense",
    blocks: SaoBlocks = "haar",
) -> list[Tensor]:
    """Initialize a network's layers (in forward order) with SAO; return their masks.

    ``non_square="dense"`` (default, the paper's official code; module docstring): a layer whose
    channel matrix is not square (``c_out != c_in``; an MLP's input and output layers, a CNN's
    input convolution and classifier) is initialized dense (delta-)orthogonal at ``gain`` with
    an all-True mask, whatever its entry of ``densities``; only the square layers are SAO.
    ``non_square="sparse"``: every layer is SAO at its density.

    With ``activation="relu"`` the first layer uses the plain construction: its input is the data,
    not a ReLU output, so the mirrored pairing does not apply (as in the paper's experiments).

    Args:
        tensors: prunable weights in forward order, filled in place.
        densities: one density per tensor.
        gain, generator, activation, fallback, blocks: as in :func:`sao_`.
        names: layer names used in errors and warnings (default: ``"layer <index>"``).
        non_square: ``"dense"`` or ``"sparse"``, above.

    Raises:
        ValueError: length mismatch; an unknown ``non_square`` or ``blocks``; any layer SAO
            cannot build (unless ``fallback``), naming the layer.

    Example:
        >>> ws = [torch.empty(64, 64) for _ in range(3)]
        >>> masks = sao_layers_(ws, [0.25] * 3, activation="relu")
    """
    tensors, densities = list(tensors), list(densities)
    non_square = _check_choice(non_square, "non_square", SAO_NON_SQUARE)
    blocks = _check_choice(blocks, "blocks", SAO_BLOCKS)
    if len(tensors) != len(densities):
        raise ValueError(f"got {len(tensors)} tensors but {len(densities)} densities")
    labels = [f"layer {i}" for i in range(len(tensors))] if names is None else [
        f"layer {name!r}" for name in names]
    if len(labels) != len(tensors):
        raise ValueError(f"got {len(tensors)} tensors but {len(labels)} names")
    gain = _check_gain(gain)
    generator = check_generator(generator)
    masks = []
    said: dict[tuple[str, type], list[str]] = {}  # one warning per message, naming its layers
    for i, (t, d) in enumerate(zip(tensors, densities, strict=True)):
        layer_act = "tanh" if i == 0 else activation
        try:
            if non_square == "dense" and isinstance(t, Tensor) and t.dim() >= 2 and \
                    t.shape[0] != t.shape[1]:
                _check_tensor(t)
                masks.append(_dense_(t, gain, generator))
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                masks.append(sao_(t, d, gain=gain, generator=generator, activation=layer_act,
                                  fallback=fallback, blocks=blocks))
        except ValueError as err:
            raise ValueError(f"{labels[i]}: {err}") from None
        for w in caught:
            said.setdefault((str(w.message), w.category), []).append(labels[i])
    for (message, category), where in said.items():
        shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
        warnings.warn(f"{shown}: {message}", category, stacklevel=2)
    return masks
