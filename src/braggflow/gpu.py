"""One GPU per job when several jobs share a node (profiles/perlmutter-node: local executor, gpu=4).

Snakemake's local executor counts GPUs as a resource but does not say which device a job gets. A job claims a
free device by taking a non-blocking lock on /tmp/braggflow-gpu-<uid>-<i>.lock and sets CUDA_VISIBLE_DEVICES
before CuPy or PyTorch start CUDA. The lock is released when the process exits. Where the scheduler already
chose (SLURM sets CUDA_VISIBLE_DEVICES), nothing changes.
"""

from __future__ import annotations

import fcntl
import glob
import os
import tempfile
from pathlib import Path

_HELD: list = []  # open lock files, kept for the life of the process


def visible_device_count() -> int:
    """NVIDIA devices on this node, from /dev (no CUDA initialisation)."""
    return len(glob.glob("/dev/nvidia[0-9]*"))


def claim_gpu(n_devices: int | None = None, lock_dir: str | Path | None = None) -> int | None:
    """Claim a free device index and make it the only visible one; None where nothing is to choose."""
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return None
    n = visible_device_count() if n_devices is None else n_devices
    if n <= 1:
        return None
    lock_dir = Path(lock_dir or tempfile.gettempdir())
    for i in range(n):
        fh = open(lock_dir / f"braggflow-gpu-{os.getuid()}-{i}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        _HELD.append(fh)
        os.environ["CUDA_VISIBLE_DEVICES"] = str(i)
        return i
    raise RuntimeError(f"all {n} GPUs of this node are claimed by other braggflow jobs (locks in {lock_dir}); "
                       "the workflow's gpu resource should not allow more jobs than devices")
