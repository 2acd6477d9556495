"""Optional imports: one guard for every optional dependency of the core.

A broken install raises anything (``RuntimeError`` from an ABI mismatch, ``OSError`` from a
missing shared library), not only ``ImportError``; each is turned into one ``ImportError`` that
names what failed and the extra that installs it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["import_optional"]


def import_optional(module: str, attr: str | None = None, *, user: str, package: str,
                    extra: str, pip_name: str, alternative: str = "") -> Any:
    """Return ``module`` (or its attribute ``attr``), or raise a clear ``ImportError``.

    Args:
        module: dotted module name, e.g. ``"scipy.linalg"``.
        attr: an attribute of the module to return instead of the module.
        user: what needs it, e.g. ``"dataset 'digits'"``.
        package: the package as people know it, e.g. ``"scikit-learn"`` (and what for).
        extra: the orthosparse extra that installs it.
        pip_name: the name ``pip install`` takes.
        alternative: text appended to the message (another way to do without it).
    """
    try:
        found = __import__(module, fromlist=["_"])  # the submodule itself
        return getattr(found, attr) if attr is not None else found
    except Exception as exc:  # not only ImportError: a broken install raises anything
        raise ImportError(
            f"{user} needs {package}, which failed to import ({type(exc).__name__}: {exc}); "
            f"install the {extra} extra: pip install 'orthosparse[{extra}]' (or pip install "
            f"{pip_name}){alternative}"
        ) from exc
