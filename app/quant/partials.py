"""The hidden files a quantization writes into, and the sweep of those that a crash left behind.

A quantization writes ".NAME.<8 hex digits>.partial" beside its output and renames it into place
when it has succeeded (app.quant.quantize). If LlamaScope dies mid-way (kill -9, a crash of the
window, a power cut), the file stays: on a 70B model, tens of GB in a folder the user chose.

Two things find such files again:
- `remove_stale_partials(output)`: the next quantization to the same output name looks beside it.
- `PartialRegistry`: every job records its file in a small registry in the user data folder (one
  JSON file per job, so two LlamaScopes never rewrite each other's entries) and removes the entry
  when the file is renamed or deleted. `sweep_leftover_partials()`, run when the window starts and
  when the CLI quantizes, deletes the files whose owning process is gone.

A file that another running LlamaScope is writing is never deleted: on POSIX its job holds an
advisory lock (flock) on it for as long as it may write, and the sweeps delete only a file they
can lock; the registry's sweep also skips every entry whose owner process is still alive. On
Windows, a file that another process has open cannot be deleted, which is lock enough.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from app.common.json_store import read_json_dict, write_json_atomic

try:
    import fcntl  # POSIX: advisory locks mark a temporary file as in use
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
REGISTRY_FOLDER_NAME = "partials"
# A process's start time as psutil reads it is rounded differently by platform; within this it is
# the same process, not a later one that got the same pid.
_SAME_START_S = 0.01


def partial_name(output_path: str) -> str:
    """A fresh hidden temporary name beside `output_path` (".NAME.<8 hex digits>.partial")."""
    folder, name = os.path.split(output_path)
    return os.path.join(folder, f".{name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def is_partial_name(path: str) -> bool:
    """Whether `path` is named as LlamaScope names its quantizations' temporary files."""
    entry = os.path.basename(path)
    if not (entry.startswith(".") and entry.endswith(PARTIAL_SUFFIX)):
        return False
    stem = entry[1 : -len(PARTIAL_SUFFIX)]
    output_name, _, tag = stem.rpartition(".")
    return bool(output_name) and _is_hex8(tag)


def try_lock(fd: int) -> bool:
    """An exclusive advisory lock on an open file, without waiting (always True without fcntl)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def still_named(fd: int, path: str) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def remove_if_unused(path: str) -> bool:
    """Delete a temporary file unless a running job holds it; True when it was deleted.

    POSIX: only a file this process can lock (no job holds it). Windows: deleting fails while the
    writing process has the file open.
    """
    if fcntl is None:
        try:
            os.remove(path)
        except OSError:
            return False
        return True
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        if try_lock(fd) and still_named(fd, path):
            os.remove(path)
            return True
    except OSError:
        pass  # not ours to delete: leave it
    finally:
        os.close(fd)
    return False


def remove_stale_partials(output_path: str) -> list[str]:
    """Delete the temporary files that quantizations into `output_path` left behind when
    LlamaScope itself was killed mid-way; returns their paths.

    Only LlamaScope's own names (".NAME.<8 hex digits>.partial" beside the output) are touched,
    and only when no running job holds the file (see `remove_if_unused`).
    """
    folder, name = os.path.split(output_path)
    prefix = f".{name}."
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return []
    removed = []
    for entry in entries:
        tag = entry[len(prefix) : -len(PARTIAL_SUFFIX)]
        if not (entry.startswith(prefix) and entry.endswith(PARTIAL_SUFFIX) and _is_hex8(tag)):
            continue
        path = os.path.join(folder, entry)
        if remove_if_unused(path):
            removed.append(path)
    return removed


def _is_hex8(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)


# ---- the registry of files being written ---------------------------------------------------------
def default_registry_folder() -> Path:
    """<user data dir>/LlamaScope/partials, per platformdirs."""
    import platformdirs

    return Path(platformdirs.user_data_dir("LlamaScope", appauthor=False)) / REGISTRY_FOLDER_NAME


@dataclass(frozen=True)
class PartialEntry:
    """One temporary file being written, and the process that owns it."""

    partial: str  # absolute path of the hidden file
    pid: int  # the process running the job (the window or the CLI), not the quantizer child
    pid_started_s: float | None  # its start time (epoch s), to tell it from a later process of that pid
    entry_file: Path  # the registry file that records it


def _process_start_s(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _owner_alive(pid: int, started_s: float | None) -> bool:
    """Whether the process that registered an entry still runs (a reused pid does not count)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if started_s is None:
            return True  # unknown start time: assume the owner, never delete what it may write
        return abs(float(process.create_time()) - started_s) < _SAME_START_S
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        return True  # cannot tell (access denied): leave its file alone


class PartialRegistry:
    """The temporary files LlamaScope's jobs are writing, one small JSON file each."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or default_registry_folder()

    def register(self, partial_path: str) -> PartialEntry | None:
        """Record that this process writes `partial_path`; None when the record cannot be kept
        (a read-only user folder): the job runs anyway, only a crash's leftover is not swept."""
        pid = os.getpid()
        entry = PartialEntry(
            partial=os.path.abspath(partial_path),
            pid=pid,
            pid_started_s=_process_start_s(pid),
            entry_file=self.folder / f"{pid}-{secrets.token_hex(4)}.json",
        )
        record = {"partial": entry.partial, "pid": entry.pid, "pid_started_s": entry.pid_started_s}
        return entry if write_json_atomic(entry.entry_file, record) else None

    def unregister(self, entry: PartialEntry | None) -> None:
        """The file was renamed into place or deleted: forget it."""
        if entry is None:
            return
        try:
            entry.entry_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", entry.entry_file, exc)

    def entries(self) -> list[PartialEntry]:
        """Every readable entry; damaged ones are deleted (they name nothing that can be checked)."""
        try:
            files = sorted(self.folder.glob("*.json"))
        except OSError:
            return []
        found = []
        for path in files:
            raw = read_json_dict(path)
            partial, pid, started = raw.get("partial"), raw.get("pid"), raw.get("pid_started_s")
            if (
                not isinstance(partial, str)
                or not isinstance(pid, int)
                or isinstance(pid, bool)
                or not (started is None or isinstance(started, (int, float)))
            ):
                log.warning("removing the unreadable record %s", path)
                self.unregister(PartialEntry("", 0, None, path))
                continue
            found.append(PartialEntry(partial, pid, None if started is None else float(started), path))
        return found

    def sweep(self) -> list[str]:
        """Delete the temporary files of jobs whose process is gone; returns their paths.

        An entry whose owner still runs is left alone, and so is a file that some job holds
        (another LlamaScope's, under a name that happens to be recorded) or that is not named
        as LlamaScope names its temporary files (a damaged or edited record).
        """
        removed = []
        for entry in self.entries():
            if _owner_alive(entry.pid, entry.pid_started_s):
                continue
            if not is_partial_name(entry.partial):
                log.warning(
                    "%s names %s, not a quantization's temporary file", entry.entry_file, entry.partial
                )
                self.unregister(entry)
                continue
            if not os.path.lexists(entry.partial):
                self.unregister(entry)  # renamed into place or deleted before the crash
                continue
            if remove_if_unused(entry.partial):
                removed.append(entry.partial)
                self.unregister(entry)
        return removed


def sweep_leftover_partials(registry: PartialRegistry | None = None) -> list[str]:
    """Delete what quantizations that LlamaScope did not live to finish left behind, wherever it
    is; returns the deleted paths. Never raises: a sweep that fails leaves files, nothing worse."""
    try:
        removed = (registry or PartialRegistry()).sweep()
    except Exception:  # a start-up chore must not stop the window or the command
        log.exception("the sweep of leftover temporary files failed")
        return []
    for path in removed:
        log.info("removed %s, left by a quantization that did not finish", path)
    return removed
