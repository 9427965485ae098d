"""Argument types of braggflow's command-line programs (standard library only: DIALS' Python imports it)."""

from __future__ import annotations

import argparse


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value
