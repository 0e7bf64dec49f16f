"""Load settings recommended for this machine (and the selected model): threads, batches, GPU layers.

The rules follow how llama.cpp spends its time. Token generation is memory-bound, so threads on
hyper-thread siblings only compete: one thread per physical core. Prompt processing is
compute-bound and gains from every logical core. Batch sizes are llama.cpp's defaults where a GPU
takes the layers (n_batch 2048, n_ubatch 512) and the Model Config presets' on the CPU. GPU layers
are the most that llama.cpp's own memory accounting (`app.model.memory`) fits in free VRAM with a margin,
on the GPUs llama.cpp's own device list names (the hardware report's `gpus`): a Metal, Vulkan or ROCm
GPU counts as much as a CUDA one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from app.common.formatting import format_bytes
from app.model.memory import estimate_memory
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings, preset_for_model
from app.telemetry.hardware import HardwareReport, simd_text

MIB = 1024 * 1024
# The CUDA context and cuBLAS workspace are allocated at load time and are not in any estimate;
# they take a few hundred MiB. The margin also leaves room for the desktop on a display GPU.
VRAM_MARGIN_MIN_BYTES = 512 * MIB
VRAM_MARGIN_FRACTION = 0.05
GPU_N_BATCH = 2048  # llama.cpp's defaults (common.h)
GPU_N_UBATCH = 512
ALL_LAYERS = -1  # LoadSettings' "all (including the output layer)"

LOAD_VALUE_FIELDS = ("n_threads", "n_threads_batch", "n_batch", "n_ubatch", "n_gpu_layers")


@dataclass(frozen=True)
class Recommendation:
    """Recommended load settings with the reason for each, for the Optimization box."""

    n_threads: int
    n_threads_batch: int
    n_batch: int
    n_ubatch: int
    n_gpu_layers: int  # -1 = all
    gpu_layers_text: str  # what the figure means, or why it is 0 ("no GPU, CPU only", "select a model")
    simd_text: str
    reasons: tuple[tuple[str, str], ...]  # (field, why)

    def load_values(self) -> dict[str, int]:
        """The figures as LoadSettings field values, for "Apply to Model Config"."""
        return {name: getattr(self, name) for name in LOAD_VALUE_FIELDS}

    def reason(self, field_name: str) -> str:
        return dict(self.reasons).get(field_name, "")


def vram_margin_bytes(total_bytes: int | None) -> int:
    return max(VRAM_MARGIN_MIN_BYTES, int(VRAM_MARGIN_FRACTION * (total_bytes or 0)))


def gpu_layers_that_fit(model: ModelInfo, load: LoadSettings, budget_bytes: int) -> int:
    """The most layers (ALL_LAYERS when the output layer fits too) whose VRAM estimate fits `budget_bytes`.

    The estimate grows with the layer count, so a bisection finds the largest count that fits.
    """
    n_layer = model.n_layer or 0
    if n_layer <= 0 or budget_bytes <= 0:
        return 0

    def vram(k: int) -> int:
        estimate = estimate_memory(
            model,
            dataclasses.replace(load, n_gpu_layers=k),
            available_ram_bytes=1 << 62,
            available_vram_bytes=budget_bytes,
        )
        return estimate.total_vram_bytes

    if vram(n_layer + 1) <= budget_bytes:
        return ALL_LAYERS
    lo, hi = 0, n_layer  # vram(lo) fits (0 bytes), vram(hi + 1) does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if vram(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def recommend(
    report: HardwareReport,
    model: ModelInfo | None = None,
    *,
    free_vram_bytes: Sequence[int | None] | None = None,
) -> Recommendation:
    """Recommended settings; `free_vram_bytes` per GPU of `report.gpus`, in its order, when fresher
    figures than the report's are known (None in it: that GPU's free memory is unknown)."""
    cpu = report.cpu
    physical, logical = max(1, cpu.physical_cores), max(1, cpu.logical_cores)
    reasons = [
        ("n_threads", f"{physical} physical cores: generation is memory-bound, hyper-threads only compete"),
        ("n_threads_batch", f"{logical} logical cores: prompt processing is compute-bound and uses them all"),
    ]
    if model is not None:
        base = preset_for_model(model, logical_cores=logical, physical_cores=physical)[0]
    else:
        base = LoadSettings(n_threads=physical, n_threads_batch=logical)
    n_gpu_layers, gpu_text = _gpu_layers(report, model, base, free_vram_bytes)
    if n_gpu_layers != 0:
        n_batch, n_ubatch = GPU_N_BATCH, GPU_N_UBATCH
        if model and model.context_length:
            n_batch = min(n_batch, model.context_length)
        n_ubatch = min(n_ubatch, n_batch)
        reasons.append(("n_batch", "llama.cpp's default for GPU offload: large batches keep the GPU busy"))
    else:
        n_batch, n_ubatch = base.n_batch, min(base.n_ubatch, base.n_batch)
        why = "CPU prompt processing gains little beyond 512-token batches"
        if n_batch < 512:
            why += "; halved for a large model to shrink the compute buffer"
        reasons.append(("n_batch", why))
    reasons.append(("n_ubatch", "micro-batch: the compute buffer grows with it"))
    reasons.append(("n_gpu_layers", gpu_text))
    return Recommendation(
        n_threads=physical,
        n_threads_batch=logical,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        n_gpu_layers=n_gpu_layers,
        gpu_layers_text=gpu_text,
        simd_text=simd_text(cpu.features_build or cpu.features_cpu),
        reasons=tuple(reasons),
    )


def _gpu_layers(
    report: HardwareReport,
    model: ModelInfo | None,
    base: LoadSettings,
    free_vram_bytes: Sequence[int | None] | None,
) -> tuple[int, str]:
    if report.devices is None:
        return 0, f"GPUs unknown: {report.devices_error or 'llama.cpp could not be asked'}"
    if not report.gpus:
        if report.unused_gpus:
            return 0, "this llama.cpp build has no backend for the GPU present (see the notes)"
        return 0, "no GPU that llama.cpp can use, CPU only"
    if model is None:
        return 0, "select a model"
    if not model.n_layer:
        return 0, "the model's layer count is unknown"
    if free_vram_bytes is not None and len(free_vram_bytes) == len(report.gpus):
        frees = list(free_vram_bytes)
    else:  # none fresher, or read for another list of GPUs: the report's own figures
        frees = [g.memory_free_bytes for g in report.gpus]
    known = [(f, g) for f, g in zip(frees, report.gpus, strict=True) if f is not None]
    if not known:
        return 0, "free VRAM unknown"
    free = sum(f for f, _ in known)
    margin = sum(vram_margin_bytes(g.memory_total_bytes) for _, g in known)
    layers = gpu_layers_that_fit(model, base, free - margin)
    # An integrated GPU (Apple silicon, an APU) has no VRAM of its own: it shares the host's memory.
    memory = "GPU memory" if all(g.kind == "IGPU" for _, g in known) else "VRAM"
    where = f"{format_bytes(free)} free {memory}" + (f" on {len(known)} GPUs" if len(known) > 1 else "")
    if layers == ALL_LAYERS:
        what = f"all {model.n_layer} layers and the output layer fit"
    else:
        what = f"{layers} of {model.n_layer} layers fit"
    return layers, f"{what} in {where} (margin {format_bytes(margin)}, n_ctx {base.n_ctx})"
