"""The table of EOI backends: every implementation behind one interface, chosen by name.

docs/design.md §5 (EOI backends). A backend is one function::

    build(problem: Problem, draws: Draws) -> (weight, mask)

``problem`` (:class:`orthosparse.eoi.problem.Problem`) is already validated; ``draws``
(:class:`orthosparse.eoi.stream.Draws`) is the shared random stream. It returns ``weight`` in
``problem.compute_dtype`` and the bool ``mask``, both ``(n_mat, rows, cols)`` on
``problem.device`` (``weight`` may be a view of a working buffer: the generator copies it into
the caller's dtype). Same problem and stream: the same mask as the oracle, values equal up to
rounding, and the stream consumed by whole chunks up to the same one (the generator ends in the
same state). ``tests/test_eoi.py`` checks every registered backend against the oracle by name.

=================  ==========================================================================
name               what it runs
=================  ==========================================================================
compiled           numba: one in-order pass per matrix scans and rotates (CPU); elsewhere as
                   ``compiled-layered``. Needs numba. ``auto`` when numba loads.
compiled-layered   numba scan, then the layered torch passes on ``problem.device`` (the GPU
                   route, reachable on the CPU by this name)
arrays             numpy/torch array passes, route by size (``arrays.route_for``); ``auto``
                   without numba
arrays-dense       its small-problem route: sequential scan, dense 2x2 matmuls per layer
arrays-segments    sequential scan, then the layered torch segment passes
arrays-bitset      bitset support pass, then the segment passes (no Python per rotation)
reference          the oracle, one rotation at a time (slow; CPU, then moved)
=================  ==========================================================================

Adding a backend, e.g. a GPU kernel in ``eoi/gpu.py``: write ``build(problem, draws)`` there
(read the chunks of ``draws`` on the CPU and copy them to the device; scan and rotate there), add
one line below, ``BACKENDS.register("gpu", Backend(gpu.build, "...", devices=("cuda",)))``, with
an ``unavailable`` function if it needs an optional package (it says why the backend cannot load
here), and put its name first in ``AUTO_ORDER`` to make it the default on its devices. The oracle
tests pick it up from the table; nothing else changes.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from .._registry import Registry
from . import arrays, reference
from .problem import Problem
from .stream import Draws

__all__ = ["AUTO_ORDER", "BACKENDS", "BACKEND_ENV", "Backend", "default_backend",
           "list_backends", "load_compiled", "select"]

Build = Callable[[Problem, Draws], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Backend:
    """One row of the table: the build function, where it runs and whether it can load here."""

    build: Build
    summary: str
    devices: tuple[str, ...] | None = None  # device types it runs on; None: every device
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run here, or None

    def runs_on(self, device: torch.device) -> bool:
        return self.devices is None or device.type in self.devices


BACKEND_ENV = "ORTHOSPARSE_EOI_BACKEND"
"""Environment variable: the backend ``backend="auto"`` uses (a name from the table, or
``auto``, the default); read on every call."""


@functools.cache
def load_compiled() -> tuple[ModuleType | None, str | None]:
    """``(module, None)``: :mod:`orthosparse.eoi.compiled` loaded; ``(None, why)`` when numba is
    not installed or cannot load the kernel (then also a warning, once per process)."""
    try:
        from . import compiled
    except Exception as err:
        if isinstance(err, ModuleNotFoundError) and err.name == "numba":
            return None, "numba is not installed (pip install numba, or the [fast] extra)"
        # installed but unusable: e.g. an unsupported numpy, a missing llvmlite, no writable
        # cache directory (set NUMBA_CACHE_DIR); the array passes give the same matrices
        why = f"numba is installed but the kernel cannot be loaded ({type(err).__name__}: {err})"
        warnings.warn(f"the compiled EOI kernel cannot be loaded ({type(err).__name__}: {err}); "
                      f"EOI uses its array passes", stacklevel=2)
        return None, why
    return compiled, None


def _numba_unavailable() -> str | None:
    return load_compiled()[1]


def _compiled(problem: Problem, draws: Draws):
    return load_compiled()[0].build(problem, draws)


def _compiled_layered(problem: Problem, draws: Draws):
    return load_compiled()[0].build_layered(problem, draws)


BACKENDS: Registry[Backend] = Registry("EOI backend")
BACKENDS.register("compiled", Backend(
    _compiled, "numba scan and in-place rotations (CPU); elsewhere as compiled-layered",
    unavailable=_numba_unavailable))
BACKENDS.register("compiled-layered", Backend(
    _compiled_layered, "numba scan, then the layered torch passes on the device",
    unavailable=_numba_unavailable))
BACKENDS.register("arrays", Backend(arrays.build, "numpy/torch array passes, route by size"))
BACKENDS.register("arrays-dense", Backend(
    functools.partial(arrays.build, route="dense"), "sequential scan, dense layer matmuls"))
BACKENDS.register("arrays-segments", Backend(
    functools.partial(arrays.build, route="segments"), "sequential scan, torch segment passes"))
BACKENDS.register("arrays-bitset", Backend(
    functools.partial(arrays.build, route="bitset"), "bitset support and segment passes"))
BACKENDS.register("reference", Backend(reference.build, "the oracle: one rotation at a time"))

AUTO_ORDER = ("compiled", "arrays")
"""``backend="auto"``: the first of these that runs on the device and loads here."""


def list_backends(available_only: bool = False) -> list[str]:
    """Names of the EOI backends (sorted); with ``available_only``, those that can run here."""
    names = BACKENDS.names()
    if available_only:
        names = [n for n in names if BACKENDS.get(n).unavailable() is None]
    return names


def select(name: str, device: torch.device) -> tuple[str, Backend]:
    """Resolve a ``backend=`` argument for ``device``: ``"auto"`` (or the name in
    ``ORTHOSPARSE_EOI_BACKEND``) picks from :data:`AUTO_ORDER`; a name gets that backend.

    Raises:
        ValueError: an unknown name (in the argument or the environment variable), or a backend
            that does not run on ``device``.
        TypeError: a name that is not a string.
        RuntimeError: a backend asked for by name that cannot load here (numba missing).
    """
    if name == "auto":
        name = os.environ.get(BACKEND_ENV, "auto").strip() or "auto"
        if name != "auto" and name not in BACKENDS:
            raise ValueError(f"environment variable {BACKEND_ENV}={name!r} must be 'auto' or "
                             f"an EOI backend: {', '.join(BACKENDS.names())}")
    if name == "auto":
        for candidate in AUTO_ORDER:
            backend = BACKENDS.get(candidate)
            if backend.runs_on(device) and backend.unavailable() is None:
                return candidate, backend
        raise AssertionError(f"no EOI backend in {AUTO_ORDER} runs on {device}")
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}: {name!r}")
    try:
        backend = BACKENDS.get(name)
    except ValueError:
        raise ValueError(f"unknown EOI backend {name!r}; choose 'auto' or one of: "
                         f"{', '.join(BACKENDS.names())}") from None
    if not backend.runs_on(device):
        raise ValueError(f"EOI backend {name!r} runs on {', '.join(backend.devices)}, "
                         f"not on {device}")
    why = backend.unavailable()
    if why is not None:
        raise RuntimeError(f"EOI backend {name!r} cannot run here: {why}")
    return name, backend


def default_backend(device: torch.device | str = "cpu") -> str:
    """The backend ``backend="auto"`` uses on ``device`` now (the environment variable
    ``ORTHOSPARSE_EOI_BACKEND`` included), e.g. ``"compiled"`` or ``"arrays"``."""
    return select("auto", torch.device(device))[0]
