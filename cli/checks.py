"""Argument checks the commands share: thread counts, output files, numbers a user can mistype.

Each check returns a message naming the flag and what to give instead, or None; the command
prints it and exits with the usage code before anything is loaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from functools import cache

# llama.cpp keeps counts such as n_ctx and n_threads in 32-bit integers; past this a number would wrap.
MAX_UINT32 = 2**32 - 1


@cache
def logical_cores() -> int:
    from app.model.settings import count_logical_cores

    return count_logical_cores()


def threads_help(what: str, default: str) -> str:
    """The one rule for every --threads, in the help text: more threads than logical cores are refused."""
    return (
        f"{what} (default: {default}); at most this machine's {logical_cores()} logical cores: "
        "more are refused, as they only compete for the same cores"
    )


def threads_error(values: int | Iterable[int] | None, flag: str = "--threads") -> str | None:
    """A message when a thread count is below 1 or above the logical cores (refused, never clamped:
    a measurement must run with the count that was asked for, or not at all)."""
    if values is None:
        return None
    cores = logical_cores()
    for value in (values,) if isinstance(values, int) else values:
        if value < 1:
            return f"{flag} must be at least 1 (got {value})"
        if value > cores:
            return (
                f"{flag} {value} is more than this machine's {cores} logical cores; extra threads only "
                f"compete for the same cores: use 1 to {cores}"
            )
    return None


def positive_number_error(value: float | None, flag: str, *, allow_zero: bool = False) -> str | None:
    """A message for NaN, infinity, or a number below zero (or at zero unless allowed)."""
    if value is None:
        return None
    if math.isnan(value) or math.isinf(value):
        return f"{flag} must be a finite number (got {value})"
    if value < 0 or (value == 0 and not allow_zero):
        return f"{flag} must be {'0 or more' if allow_zero else 'more than 0'} (got {value:g})"
    return None


def input_file_error(path: str, flag: str, what: str) -> str | None:
    """A message when `path` is not a readable file: missing, a folder, unreadable."""
    if not os.path.exists(path):
        return f"{flag}: {path} does not exist"
    if os.path.isdir(path):
        return f"{flag}: {path} is a folder; give the {what} file"
    if not os.path.isfile(path):  # a device such as /dev/zero would be read without end
        return f"{flag}: {path} is not a regular file (a device, pipe or socket); give the {what} file"
    if not os.access(path, os.R_OK):
        return f"{flag}: {path} cannot be read (permission denied)"
    return None


def output_file_error(path: str, flag: str) -> str | None:
    """A message when a file cannot be written at `path`: its folder is missing, not a folder, or not
    writable (read-only), or `path` itself is a folder."""
    target = os.path.abspath(path)
    if os.path.isdir(target):
        return f"{flag}: {path} is a folder; give a file name in it"
    folder = os.path.dirname(target)
    if not os.path.exists(folder):
        return f"{flag}: the folder {folder} does not exist; create it first or choose another"
    if not os.path.isdir(folder):
        return f"{flag}: {folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{flag}: the folder {folder} is read-only for you; choose a folder you can write to"
    if os.path.exists(target) and not os.path.isfile(target):
        return f"{flag}: {path} is not a regular file (a device, pipe or socket); give a file name"
    if os.path.exists(target) and not os.access(target, os.W_OK):
        return f"{flag}: {path} exists and is read-only"
    return None
