"""The array module ``xp`` the simulator runs on (NumPy, or CuPy with the same code) and the copy back to the host."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def get_array_module(backend: str = "numpy") -> ModuleType:
    """Array module for ``backend`` in {'numpy', 'cupy', 'auto'}; CuPy is imported only when asked."""
    if backend == "numpy":
        return np
    if backend == "cupy":
        import cupy  # noqa: PLC0415 - only on request

        return cupy
    if backend == "auto":
        try:
            import cupy  # noqa: PLC0415

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy
        except Exception:  # noqa: BLE001 - any CuPy/CUDA failure means: use NumPy
            pass
        return np
    raise ValueError(f"backend must be 'numpy', 'cupy' or 'auto', got {backend!r}")


def to_numpy(array: Any) -> np.ndarray:
    """Host NumPy copy of an xp array (no-op for NumPy)."""
    get = getattr(array, "get", None)
    return np.asarray(get() if callable(get) else array)


def default_block_pixels(xp: ModuleType) -> int:
    """Pixels per work block: small on the CPU (cache-sized temporaries), large on a GPU (enough parallel work)."""
    return 1 << 15 if xp is np else 1 << 22
