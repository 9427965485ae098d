"""The array module ``xp`` the simulator runs on (NumPy, or CuPy with the same code) and the copy back to the host."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def get_array_module(backend: str = "numpy") -> ModuleType:
    """Array module for ``backend`` in {'numpy', 'cupy', 'auto'}; CuPy is imported only when asked."""
    return resolve_backend(backend)[0]


def resolve_backend(backend: str = "numpy") -> tuple[ModuleType, str]:
    """The array module for ``backend`` and a line for the job's log saying which one runs and, under 'auto',
    why (CuPy missing, no device, a CUDA error): a fallback to NumPy is never silent."""
    if backend == "numpy":
        return np, "backend numpy (asked for)"
    if backend == "cupy":
        import cupy  # noqa: PLC0415 - only on request

        return cupy, f"backend cupy (asked for): {_device_line(cupy)}"
    if backend == "auto":
        try:
            import cupy  # noqa: PLC0415
        except Exception as exc:  # noqa: BLE001 - not installed, or a broken CUDA install: use NumPy
            return np, f"backend numpy (auto: CuPy not importable: {type(exc).__name__}: {exc})"
        try:
            n = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as exc:  # noqa: BLE001 - no driver, no device
            return np, f"backend numpy (auto: CuPy {cupy.__version__} found no usable GPU: {exc})"
        if n > 0:
            return cupy, f"backend cupy (auto: {_device_line(cupy)})"
        return np, f"backend numpy (auto: CuPy {cupy.__version__} sees no GPU)"
    raise ValueError(f"backend must be 'numpy', 'cupy' or 'auto', got {backend!r}")


def _device_line(cupy: ModuleType) -> str:
    try:
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props.get("name"), bytes) else props.get("name")
        return f"CuPy {cupy.__version__} on GPU {dev.id} ({name})"
    except Exception:  # noqa: BLE001 - a description only
        return f"CuPy {getattr(cupy, '__version__', '?')}"


def to_numpy(array: Any) -> np.ndarray:
    """Host NumPy copy of an xp array (no-op for NumPy)."""
    get = getattr(array, "get", None)
    return np.asarray(get() if callable(get) else array)


def default_block_pixels(xp: ModuleType) -> int:
    """Pixels per work block: small on the CPU (cache-sized temporaries), large on a GPU (enough parallel work)."""
    return 1 << 15 if xp is np else 1 << 22
