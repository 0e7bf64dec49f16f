"""This machine's memory bandwidth, and generation speed as a share of it (the roofline).

Token generation is usually memory-bound: every generated token reads all the weights and the
KV cache once. So the ceiling on tokens/s is bandwidth ÷ bytes read per token, and
"efficiency" = bytes read per token × tokens/s ÷ bandwidth. Bandwidth is measured once with a
large-array copy (numpy, arrays far larger than any CPU cache; a copy reads and writes each
byte, so 2 × size bytes move per copy) and cached per machine.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np

from app.model.memory import bytes_per_element
from app.model.model_info import ModelInfo

_COPY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Bandwidth:
    bytes_per_s: float
    measured_at: str
    method: str = "numpy copy of 256 MiB, best of 5 (read + write counted)"


def measure_bandwidth(repetitions: int = 5, size_bytes: int = _COPY_BYTES) -> Bandwidth:
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page first: page faults are not bandwidth
    best = float("inf")
    for _ in range(repetitions):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return Bandwidth(2 * src.nbytes / best, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _cache_path() -> str:
    import platformdirs

    from app.telemetry.hardware import hardware_fingerprint

    folder = platformdirs.user_cache_dir("LlamaScope", appauthor=False)
    return os.path.join(folder, f"bandwidth-{hardware_fingerprint()}.json")


def cached_bandwidth(*, measure_if_missing: bool = True) -> Bandwidth | None:
    """The cached measurement for this machine; measured (about a second) and cached if missing."""
    path = _cache_path()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return Bandwidth(float(data["bytes_per_s"]), str(data["measured_at"]), str(data["method"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not measure_if_missing:
        return None
    result = measure_bandwidth()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result.__dict__, f)
    os.replace(tmp, path)
    return result


def bytes_per_token(model: ModelInfo, context_tokens: int, type_k: str = "f16", type_v: str = "f16") -> int:
    """Bytes one generated token reads: all weights + the K and V of every token in the context."""
    kv = 0
    if model.n_layer and model.n_embd_k_gqa and model.n_embd_v_gqa:
        per_token = model.n_embd_k_gqa * bytes_per_element(type_k) + model.n_embd_v_gqa * bytes_per_element(
            type_v
        )
        kv = int(model.n_layer * context_tokens * per_token)
    return model.tensor_data_bytes + kv


def roofline_efficiency(
    model: ModelInfo,
    tokens_per_s: float,
    bandwidth_bytes_per_s: float,
    *,
    context_tokens: int,
    type_k: str = "f16",
    type_v: str = "f16",
) -> float:
    """Generation speed as a fraction of the memory-bandwidth limit (0.0 … about 1.0)."""
    return bytes_per_token(model, context_tokens, type_k, type_v) * tokens_per_s / bandwidth_bytes_per_s
