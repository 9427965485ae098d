"""Logging for workflow scripts: messages to the rule's log file and stderr; errors logged before they propagate.

SIGTERM (Snakemake cancelling a job, SLURM's scancel or time limit) becomes SystemExit inside ``logged``, so the
writers' cleanup runs (braggflow.io.atomic_path removes its temporary file) instead of the process vanishing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def sigterm_exits(program: str | None = None) -> Iterator[None]:
    """Inside, SIGTERM raises SystemExit(128 + 15), so writers clean up (stdlib only: DIALS' Python uses it too).
    ``program``: say so on stderr under that name."""
    def terminate(signum, _frame):
        if program:
            print(f"{program}: terminated by signal {signum}: partial output removed", file=sys.stderr)
        raise SystemExit(128 + signum)

    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGTERM, terminate) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def logged(log_path: str | Path, name: str = "braggflow") -> Iterator[logging.Logger]:
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    handlers = [logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)]
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    try:
        with sigterm_exits():
            yield logger
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    except SystemExit as exc:
        logger.error("terminated (exit status %s): partial outputs removed", exc.code)
        raise
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
