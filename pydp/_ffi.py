"""The compiled fast-path module: ``ffi`` and ``lib`` for the rest of pydp (cffi API mode)."""

try:
    from pydp._pydp import ffi, lib  # noqa: F401
except ImportError as exc:  # pragma: no cover - a source checkout without a build
    raise ImportError(
        "pydp's compiled module is missing: install the package (pip install .) "
        "or build it (cmake -S . -B build && cmake --build build)"
    ) from exc

__all__ = ["ffi", "lib"]
