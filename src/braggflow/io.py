"""Atomic output: write to a temporary file beside the target, rename on success.

A failed writer leaves neither a partial target nor the temporary file behind. A writer killed outright
(SIGKILL, a node lost) cannot clean up: its temporary file names the host and process, and the next writer of
the same target removes those whose process is gone. Targets get the permissions the user's umask gives
(mkstemp's 0600 would hide every result from collaborators on a shared file system).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _host() -> str:
    return socket.gethostname().split(".")[0] or "host"


def _tmp_prefix(target: Path, host: str) -> str:
    return f".{target.name}.{host}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove temporary files of ``target`` left on this host by writers whose process is gone; returns them."""
    target = Path(target)
    prefix = _tmp_prefix(target, _host())
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.iterdir():
        if not (p.name.startswith(prefix) and p.name.endswith(".tmp")):
            continue
        pid = p.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process's umask: what open() would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(target, _host())}{os.getpid()}.", suffix=".tmp",
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks), hex."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
