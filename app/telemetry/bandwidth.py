"""This machine's memory bandwidth, and generation speed as a share of it (the roofline).

Token generation on the CPU is usually memory-bound: every generated token reads all the weights
and the KV cache once. So the ceiling on tokens/s is bandwidth ÷ bytes read per token, and the
share of it reached = tokens/s ÷ that ceiling.

The bandwidth is measured the way STREAM measures it: the triad a[i] = b[i] + s·c[i] over float64
arrays far larger than the CPU caches, counted as STREAM counts it (two 8-byte reads and one 8-byte
write per element, 24 bytes; the write-allocate read a CPU may add is not counted), the best of a
few repetitions. A multi-channel machine needs several cores to draw its bandwidth, so the triad
runs on one thread and on all the CPUs this process may use, each thread on its own slice; numpy's
ufuncs release the GIL, so the threads run in parallel in native code. The arrays are first
written by the threads that use them, so each page sits on its thread's NUMA node.

Each thread walks its slice in blocks of BLOCK_ELEMENTS: numpy has no fused multiply-add ufunc, so
a block is computed as a = s·c, then a += b. The block of `a` stays in the core's L2 cache between
the two passes, so the memory traffic is the triad's: b and c read once, a written once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from app.common.formatting import format_rate
from app.model.memory import bytes_per_element
from app.model.model_info import ModelInfo

log = logging.getLogger(__name__)

MIB = 1024 * 1024
ITEM_BYTES = 8  # float64
# STREAM's count for the triad: b and c read, a written (the write-allocate read is not counted).
TRIAD_STREAMS = 3
TRIAD_SCALAR = 3.0
MIN_ARRAY_BYTES = 128 * MIB
# STREAM's rule: each array at least four times the size of all last-level caches together, so
# that what is measured is memory, not cache.
LLC_FACTOR = 4
BLOCK_ELEMENTS = 64 * 1024  # 512 KiB: fits the L2 cache of current x86 and ARM cores
REPETITIONS = 5
CACHE_VERSION = 2  # the cache file of the single-thread numpy copy was version 1 (no number)


class BandwidthError(RuntimeError):
    """The bandwidth could not be measured (too little memory, a wrong result)."""


def triad_bytes(n_elements: int, item_bytes: int = ITEM_BYTES) -> int:
    """Bytes one triad pass over `n_elements` moves, as STREAM counts them (2 reads + 1 write)."""
    return TRIAD_STREAMS * item_bytes * n_elements


def bytes_per_second(bytes_moved: int, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"a measured time must be positive, not {seconds}")
    return bytes_moved / seconds


@dataclass(frozen=True)
class Bandwidth:
    """One measurement: the triad on all threads (the roofline's figure) and on one thread."""

    bytes_per_s: float  # all threads
    single_thread_bytes_per_s: float
    threads: int
    array_bytes: int  # each of the three arrays
    repetitions: int  # best of
    measured_at: str  # UTC, ISO 8601
    last_level_cache_bytes: int | None = None  # all instances together; None if unknown
    kernel: str = "triad"

    @property
    def method(self) -> str:
        """What was measured, in words (the tooltip's text)."""
        return (
            f"STREAM triad a = b + {TRIAD_SCALAR:g}·c on float64 arrays of "
            f"{self.array_bytes // MIB} MiB each "
            f"(3 arrays, {TRIAD_STREAMS * ITEM_BYTES} bytes counted per element: 2 reads + 1 write), "
            f"in native code (numpy), best of {self.repetitions}: "
            f"{format_rate(self.bytes_per_s)} on {self.threads} threads, "
            f"{format_rate(self.single_thread_bytes_per_s)} on 1 thread (1 GiB/s = 1,073,741,824 bytes/s); "
            f"measured {self.measured_at}"
        )

    def to_json(self) -> dict[str, Any]:
        return {"version": CACHE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bandwidth:
        if data.get("version") != CACHE_VERSION:
            raise ValueError("written by another version")
        llc = data.get("last_level_cache_bytes")
        return cls(
            bytes_per_s=float(data["bytes_per_s"]),
            single_thread_bytes_per_s=float(data["single_thread_bytes_per_s"]),
            threads=int(data["threads"]),
            array_bytes=int(data["array_bytes"]),
            repetitions=int(data["repetitions"]),
            measured_at=str(data["measured_at"]),
            last_level_cache_bytes=None if llc is None else int(llc),
            kernel=str(data["kernel"]),
        )


# ---- measuring ---------------------------------------------------------------------------------


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), which may be fewer than the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def last_level_cache_bytes(root: str = "/") -> int | None:
    """All last-level cache instances together (sysfs), None where sysfs does not say."""
    from app.telemetry.sysfs import cpu_dirs, read_cpu_caches

    caches = [c for c in read_cpu_caches(root) if c.kind != "Instruction"]
    if not caches:
        return None
    top = max(c.level for c in caches)
    llc = next(c for c in caches if c.level == top)
    cpus = len(cpu_dirs(root)) or os.cpu_count() or 1
    # One instance per group of CPUs sharing it: two per machine with two sockets, one per CCX...
    instances = max(1, cpus // llc.shared_by_cpus) if llc.shared_by_cpus else 1
    return llc.size_bytes * instances


def array_bytes_for(llc_bytes: int | None) -> int:
    """Bytes per array: at least MIN_ARRAY_BYTES and LLC_FACTOR × the last-level caches, whole blocks."""
    wanted = max(MIN_ARRAY_BYTES, LLC_FACTOR * (llc_bytes or 0))
    block = BLOCK_ELEMENTS * ITEM_BYTES
    return -(-wanted // block) * block


def _slices(n: int, parts: int) -> list[slice]:
    """`parts` contiguous slices of range(n), each a whole number of blocks except the last."""
    blocks = -(-n // BLOCK_ELEMENTS)
    per = -(-blocks // parts)
    return [
        slice(i * per * BLOCK_ELEMENTS, min(n, (i + 1) * per * BLOCK_ELEMENTS))
        for i in range(parts)
        if i * per * BLOCK_ELEMENTS < n
    ]


def _triad(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    for i in range(0, len(a), BLOCK_ELEMENTS):
        block = a[i : i + BLOCK_ELEMENTS]
        np.multiply(c[i : i + BLOCK_ELEMENTS], TRIAD_SCALAR, out=block)
        np.add(block, b[i : i + BLOCK_ELEMENTS], out=block)


def _run_threads(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray], parts: Sequence[slice], repetitions: int
) -> float:
    """The best time, in seconds, of `repetitions` triads, each over all `parts` in parallel (one
    thread per part). The threads wait at a barrier before each pass, so a pass is timed from the
    moment all of them are released to the moment the last one is done."""
    a, b, c = arrays
    start = threading.Barrier(len(parts) + 1)
    finish = threading.Barrier(len(parts) + 1)
    failures: list[BaseException] = []

    def work(part: slice) -> None:
        mine = (a[part], b[part], c[part])
        try:
            for _ in range(repetitions):
                start.wait()
                _triad(*mine)
                finish.wait()
        except threading.BrokenBarrierError:
            pass  # another thread failed: its exception is the one reported
        except BaseException as exc:  # noqa: BLE001 (handed to the measuring thread)
            failures.append(exc)
            start.abort()
            finish.abort()

    workers = [
        threading.Thread(target=work, args=(p,), name=f"llamascope-triad-{i}", daemon=True)
        for i, p in enumerate(parts)
    ]
    for w in workers:
        w.start()
    best = float("inf")
    try:
        for _ in range(repetitions):
            start.wait()
            t0 = time.perf_counter()
            finish.wait()
            best = min(best, time.perf_counter() - t0)
    except threading.BrokenBarrierError:
        pass
    finally:
        for w in workers:
            w.join()
    if failures:
        raise BandwidthError(f"the triad failed: {failures[0]}") from failures[0]
    return best


def _first_touch(arrays: tuple[np.ndarray, np.ndarray, np.ndarray], parts: Sequence[slice]) -> None:
    """Write every page by the thread that will use it (Linux puts a page on the NUMA node of the
    CPU that first writes it; page faults are not bandwidth either)."""
    a, b, c = arrays

    def fill(part: slice) -> None:
        a[part] = 0.0
        b[part] = 1.0
        c[part] = 2.0

    workers = [threading.Thread(target=fill, args=(p,), daemon=True) for p in parts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _check(a: np.ndarray, parts: Sequence[slice]) -> None:
    """STREAM checks its results; so does this, at every slice's ends."""
    expected = 1.0 + TRIAD_SCALAR * 2.0
    for p in parts:
        for i in (p.start, p.stop - 1):
            if a[i] != expected:
                raise BandwidthError(f"the triad computed {a[i]} at element {i}, not {expected}")


def measure_bandwidth(
    repetitions: int = REPETITIONS,
    *,
    threads: int | None = None,
    array_bytes: int | None = None,
    llc_bytes: int | None = None,
) -> Bandwidth:
    """Measure the triad on one thread and on `threads` (default: every usable CPU); about a second.

    `array_bytes` (per array) defaults to the larger of MIN_ARRAY_BYTES and LLC_FACTOR × the
    last-level caches (`llc_bytes`, read from sysfs by default)."""
    if llc_bytes is None:
        llc_bytes = last_level_cache_bytes()
    size = array_bytes or array_bytes_for(llc_bytes)
    n = size // ITEM_BYTES
    if n < BLOCK_ELEMENTS:
        raise BandwidthError(f"arrays of {size} bytes are smaller than one block")
    n_threads = max(1, threads or usable_cpus())
    available = _available_ram_bytes()
    if available is not None and 3 * size > available // 2:
        raise BandwidthError(
            f"the triad needs 3 × {size // MIB} MiB and only {available // MIB} MiB of memory is available"
        )
    try:
        arrays = (np.empty(n), np.empty(n), np.empty(n))
    except MemoryError:
        raise BandwidthError(f"not enough memory for three arrays of {size // MIB} MiB") from None
    parts = _slices(n, n_threads)
    _first_touch(arrays, parts)
    moved = triad_bytes(n)
    all_threads = bytes_per_second(moved, _run_threads(arrays, parts, repetitions))
    _check(arrays[0], parts)
    one = [slice(0, n)]
    single = bytes_per_second(moved, _run_threads(arrays, one, repetitions))
    _check(arrays[0], one)
    return Bandwidth(
        bytes_per_s=all_threads,
        single_thread_bytes_per_s=single,
        threads=len(parts),
        array_bytes=n * ITEM_BYTES,
        repetitions=repetitions,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        last_level_cache_bytes=llc_bytes,
    )


def _available_ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 (psutil failing: measure anyway, as before)
        return None


def _cache_path() -> str:
    import platformdirs

    from app.telemetry.hardware import hardware_fingerprint

    folder = platformdirs.user_cache_dir("LlamaScope", appauthor=False)
    return os.path.join(folder, f"bandwidth-v{CACHE_VERSION}-{hardware_fingerprint()}.json")


def cached_bandwidth(*, measure_if_missing: bool = True) -> Bandwidth | None:
    """The cached measurement for this machine; measured (about a second) and cached if missing."""
    path = _cache_path()
    try:
        with open(path, encoding="utf-8") as f:
            return Bandwidth.from_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    if not measure_if_missing:
        return None
    result = measure_bandwidth()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result.to_json(), f)
        os.replace(tmp, path)
    except OSError as exc:  # a cache that cannot be written only costs a measurement next time
        log.info("bandwidth not cached: %s", exc)
    return result


# ---- the roofline ------------------------------------------------------------------------------


def bytes_per_token(model: ModelInfo, context_tokens: int, type_k: str = "f16", type_v: str = "f16") -> int:
    """Bytes one generated token reads: all weights + the K and V of every token in the context."""
    kv = 0
    if model.n_layer and model.n_embd_k_gqa and model.n_embd_v_gqa:
        per_token = model.n_embd_k_gqa * bytes_per_element(type_k) + model.n_embd_v_gqa * bytes_per_element(
            type_v
        )
        kv = int(model.n_layer * context_tokens * per_token)
    return model.tensor_data_bytes + kv


def roofline_bound_tokens_per_s(bytes_per_token: int, bandwidth_bytes_per_s: float) -> float:
    """The most tokens/s memory can feed: bandwidth ÷ bytes read per token."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes read per token must be positive, not {bytes_per_token}")
    return bandwidth_bytes_per_s / bytes_per_token


@dataclass(frozen=True)
class Roofline:
    """A generation's speed against the bandwidth bound."""

    tokens_per_s: float
    bound_tokens_per_s: float
    bytes_per_token: int
    last_level_cache_bytes: int | None = None

    @property
    def share(self) -> float:
        """tokens/s ÷ the bound, as measured: above 1.0 when the bound does not hold."""
        return self.tokens_per_s / self.bound_tokens_per_s

    @property
    def exceeds(self) -> bool:
        return self.tokens_per_s > self.bound_tokens_per_s

    @property
    def text(self) -> str:
        """The label: the share up to 100 %; past the bound, that it was passed, never "130 %"."""
        if self.exceeds:
            return f"over the bound: {self.tokens_per_s:.1f} t/s > {self.bound_tokens_per_s:.1f} t/s"
        return f"{self.share * 100:.0f} % of the bandwidth limit"

    @property
    def why(self) -> str:
        """Why the bound was passed ("" when it was not)."""
        if not self.exceeds:
            return ""
        if self.last_level_cache_bytes and self.bytes_per_token <= self.last_level_cache_bytes:
            return (
                f"the {self.bytes_per_token / MIB:.0f} MiB read per token fit in the CPU's last-level caches "
                f"({self.last_level_cache_bytes / MIB:.0f} MiB), so they are not read from memory each token"
            )
        return (
            "the bound counts every weight as read from memory for each token; it is passed when part "
            "of them stay in the CPU caches between tokens, or when this machine reads faster than it "
            "runs the triad's mix of reads and writes"
        )


def roofline(
    model: ModelInfo,
    tokens_per_s: float,
    bandwidth: Bandwidth,
    *,
    context_tokens: int,
    type_k: str = "f16",
    type_v: str = "f16",
) -> Roofline:
    per_token = bytes_per_token(model, context_tokens, type_k, type_v)
    return Roofline(
        tokens_per_s=tokens_per_s,
        bound_tokens_per_s=roofline_bound_tokens_per_s(per_token, bandwidth.bytes_per_s),
        bytes_per_token=per_token,
        last_level_cache_bytes=bandwidth.last_level_cache_bytes,
    )
