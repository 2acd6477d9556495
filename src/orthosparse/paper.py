"""Constants of the EOI paper's experiments, in one place for the core, the presets and the demo.

`Sparser, Better, Deeper, Stronger: Improving Static Sparse Training with Exact Orthogonal
Initialization` - Nowak et al. (2024), arXiv 2406.01755 (docs/design.md §3).

The 1000-layer tanh networks (the ``mlp-1000`` and ``cnn-1000`` presets) use weight variance
``sigma_w^2 = 1.05`` and bias variance ``sigma_b^2 = 2e-5``: a point near the edge of chaos of a
tanh network (the mean-field critical line, where the mean squared singular value of each layer's
Jacobian is 1, so signals neither explode nor vanish with depth; `Dynamical Isometry and a Mean
Field Theory of CNNs` - Xiao et al. (2018), arXiv 1806.05393). An orthogonal weight with gain
``g`` has ``W W^T = g^2 I``, the role of ``sigma_w^2``; biases are drawn from
``N(0, bias_std^2)``:

    gain     = sqrt(sigma_w^2) = sqrt(1.05) = 1.02470  -> 1.0247
    bias_std = sqrt(sigma_b^2) = sqrt(2e-5) = 0.004472 -> 0.00448

``0.00448`` is the value the presets have always used (``0.00448^2 = 2.007e-5``, 0.2% above
``sqrt(2e-5)``); it is kept so recorded results stay comparable.

Example:
    >>> from orthosparse.paper import DEEP_TANH_BIAS_STD, DEEP_TANH_GAIN
    >>> sparsify(model, 0.125, gain=DEEP_TANH_GAIN, bias_std=DEEP_TANH_BIAS_STD)
"""

__all__ = ["DEEP_TANH_BIAS_STD", "DEEP_TANH_GAIN"]

DEEP_TANH_GAIN = 1.0247
"""Weight gain of the 1000-layer tanh networks: ``sqrt(sigma_w^2)``, ``sigma_w^2 = 1.05``."""

DEEP_TANH_BIAS_STD = 0.00448
"""Bias standard deviation of the 1000-layer tanh networks: ``sqrt(sigma_b^2)``,
``sigma_b^2 = 2e-5``."""
