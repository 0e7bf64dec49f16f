"""Memory estimate before loading a model, following llama.cpp's own accounting.

Three parts, each split between RAM and VRAM the way llama.cpp places them:

* weights: the GGUF's tensor data (exact size; only the CPU/GPU split is approximate),
* KV cache: exact for llama.cpp's standard cache (sliding-window layers are not modelled),
* compute buffer: an *estimate* of the scratch memory for one micro-batch. The real value is known
  only after loading: llama.cpp logs it as "CPU compute buffer size = ... MiB" (and per GPU backend).

No fixed runtime overhead is added: the available RAM we compare against is measured while this
process is already running, so its own footprint is accounted for.
"""

from __future__ import annotations

import enum
import os
import threading
from dataclasses import dataclass

from app.common.formatting import format_bytes
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings

# (type_size, block_size) of the KV cache types, from ggml's type traits: a block of `block_size`
# elements takes `type_size` bytes (q8_0: 32 int8 + one f16 scale = 34 bytes).
_CACHE_TYPE_LAYOUT: dict[str, tuple[int, int]] = {
    "f32": (4, 1),
    "f16": (2, 1),
    "bf16": (2, 1),
    "q8_0": (34, 32),
    "q4_0": (18, 32),
    "q4_1": (20, 32),
    "q5_0": (22, 32),
    "q5_1": (24, 32),
    "iq4_nl": (18, 32),
}

# llama.cpp rounds the context up to a multiple of 256 cells (GGML_PAD(n_ctx, 256) in llama-context.cpp;
# older versions padded to 32 without flash attention, so this is at most 255 cells conservative).
KV_PADDING = 256

# Activations per token alive at once in one layer, in units of n_embd f32 values: the FFN's gate and
# up projections (each n_ff wide, and n_ff is 2.7-4 x n_embd in llama-style models) plus the residual
# stream and the normed input. ModelInfo has no n_ff, so 8 x n_embd stands in for them.
_ACTIVATION_WIDTH_PER_EMBD = 8
_F32_BYTES = 4

TIGHT_FRACTION = 0.8  # above this share of the available memory the verdict is TIGHT


class Verdict(enum.Enum):
    """Whether the estimate fits the available memory; members are ordered best to worst."""

    FITS = "fits"
    TIGHT = "tight"
    WONT_FIT = "will not fit"

    @property
    def label(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        return _VERDICT_ORDER.index(self)


_VERDICT_ORDER = (Verdict.FITS, Verdict.TIGHT, Verdict.WONT_FIT)


def bytes_per_element(cache_type: str) -> float:
    """Average bytes per element of a KV cache type (q8_0: 34/32)."""
    type_size, block_size = _CACHE_TYPE_LAYOUT[cache_type]
    return type_size / block_size


def _row_bytes(cache_type: str, n_elements: int) -> int:
    # ggml_row_size: whole blocks only; KV rows are multiples of the block size in practice.
    type_size, block_size = _CACHE_TYPE_LAYOUT[cache_type]
    return -(-n_elements // block_size) * type_size


def padded_n_ctx(n_ctx: int) -> int:
    """The KV cache size llama.cpp actually allocates for a requested n_ctx."""
    return -(-n_ctx // KV_PADDING) * KV_PADDING


def kv_cache_bytes_per_layer(model: ModelInfo, load: LoadSettings) -> int | None:
    """K plus V bytes of one layer, or None when the GGUF lacks the attention shape."""
    if model.n_embd_k_gqa is None or model.n_embd_v_gqa is None:
        return None
    n_cells = padded_n_ctx(load.n_ctx)
    return _row_bytes(load.type_k, model.n_embd_k_gqa * n_cells) + _row_bytes(
        load.type_v, model.n_embd_v_gqa * n_cells
    )


def kv_cache_bytes(model: ModelInfo, load: LoadSettings) -> int | None:
    """n_layer x n_ctx x (n_embd_k_gqa x bytes(type_k) + n_embd_v_gqa x bytes(type_v))."""
    per_layer = kv_cache_bytes_per_layer(model, load)
    if per_layer is None or model.n_layer is None:
        return None
    return model.n_layer * per_layer


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed in RAM and VRAM, what is available, and the verdict."""

    weights_ram_bytes: int
    weights_vram_bytes: int
    kv_cache_ram_bytes: int
    kv_cache_vram_bytes: int
    compute_ram_bytes: int  # estimate; see the module docstring
    compute_vram_bytes: int  # estimate
    total_ram_bytes: int
    total_vram_bytes: int
    available_ram_bytes: int | None
    available_vram_bytes: int | None
    verdict: Verdict  # the worse of ram_verdict and vram_verdict
    ram_verdict: Verdict
    vram_verdict: Verdict | None  # None when nothing is offloaded
    n_gpu_layers_effective: int  # repeating layers placed on the GPU
    output_on_gpu: bool
    notes: tuple[str, ...] = ()

    @property
    def uses_vram(self) -> bool:
        return self.vram_verdict is not None

    def summary(self) -> str:
        """One line in human units, e.g. "needs 1.9 GiB (weights 1.2 GiB + KV cache 512 MiB + compute
        180 MiB) of 3.1 GiB available: fits"."""
        ram = _part_summary(
            self.total_ram_bytes,
            self.weights_ram_bytes,
            self.kv_cache_ram_bytes,
            self.compute_ram_bytes,
            self.available_ram_bytes,
            self.ram_verdict,
        )
        if self.vram_verdict is None:
            text = ram
        else:
            vram = _part_summary(
                self.total_vram_bytes,
                self.weights_vram_bytes,
                self.kv_cache_vram_bytes,
                self.compute_vram_bytes,
                self.available_vram_bytes,
                self.vram_verdict,
            )
            text = f"RAM {ram}; VRAM {vram}"
        if self.notes:
            text += " (" + "; ".join(self.notes) + ")"
        return text


def _part_summary(
    total: int, weights: int, kv: int, compute: int, available: int | None, verdict: Verdict
) -> str:
    need = (
        f"needs {format_bytes(total)} (weights {format_bytes(weights)} + KV cache {format_bytes(kv)}"
        f" + compute {format_bytes(compute)})"
    )
    where = f"of {format_bytes(available)} available" if available is not None else "of unknown available"
    return f"{need} {where}: {verdict.label}"


def verdict_for(total_bytes: int, available_bytes: int) -> Verdict:
    """WONT_FIT above the available bytes, TIGHT above 80% of them, else FITS."""
    if total_bytes > available_bytes:
        return Verdict.WONT_FIT
    if total_bytes > TIGHT_FRACTION * available_bytes:
        return Verdict.TIGHT
    return Verdict.FITS


def _available_ram_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_memory(
    model: ModelInfo,
    load: LoadSettings,
    *,
    available_ram_bytes: int | None = None,
    available_vram_bytes: int | None = None,
) -> MemoryEstimate:
    """Estimate RAM and VRAM for loading `model` with validated `load`; available RAM defaults to psutil's.

    Placement follows llama.cpp: with n_gpu_layers = k the last min(k, n_layer) repeating layers go to
    the GPU, and the output layer only when k >= n_layer + 1 (or -1 = all). Weights are split simply:
    the output matrix is taken as vocab x n_embd at the model's average bits per weight, the rest is
    spread evenly over the layers (token embeddings, which llama.cpp keeps on the CPU, fall into that
    rest, so the split is off by at most one embedding matrix). With mmap the weight pages are file
    backed and the OS could evict them, but they are counted anyway: evicted weights mean paging.
    """
    notes: list[str] = []
    n_layer = model.n_layer if model.n_layer and model.n_layer > 0 else None
    k = load.n_gpu_layers

    # --- placement
    if n_layer is None:
        offloaded = 0
        output_on_gpu = False
        if k != 0:
            notes.append("layer count unknown: counting all weights in RAM")
    elif k < 0 or k >= n_layer + 1:
        offloaded, output_on_gpu = n_layer, True
    else:
        offloaded, output_on_gpu = k, False
    cpu_layers = (n_layer or 0) - offloaded

    # --- weights
    total_weights = model.tensor_data_bytes
    output_bytes = 0
    if model.vocab_size and model.n_embd and model.bits_per_weight > 0:
        output_bytes = min(total_weights, int(model.vocab_size * model.n_embd * model.bits_per_weight / 8))
    repeating_bytes = total_weights - output_bytes
    weights_vram = (repeating_bytes * offloaded // n_layer if n_layer else 0) + (
        output_bytes if output_on_gpu else 0
    )
    weights_ram = total_weights - weights_vram

    # --- KV cache: per layer, on the GPU for offloaded layers when offload_kqv
    kv_per_layer = kv_cache_bytes_per_layer(model, load)
    if kv_per_layer is None or n_layer is None:
        kv_per_layer = 0
        notes.append("KV cache unknown: the GGUF lacks the attention shape")
    kv_gpu_layers = offloaded if load.offload_kqv else 0
    kv_vram = kv_per_layer * kv_gpu_layers
    kv_ram = kv_per_layer * ((n_layer or 0) - kv_gpu_layers)

    # --- compute buffer (estimate)
    compute_ram, compute_vram = _compute_bytes(model, load, cpu_layers, offloaded, output_on_gpu, notes)

    total_ram = weights_ram + kv_ram + compute_ram
    total_vram = weights_vram + kv_vram + compute_vram
    available_ram = available_ram_bytes if available_ram_bytes is not None else _available_ram_bytes()
    ram_verdict = verdict_for(total_ram, available_ram)

    vram_verdict: Verdict | None = None
    if k != 0 and (offloaded > 0 or output_on_gpu):
        if available_vram_bytes is None:
            vram_verdict = Verdict.TIGHT
            notes.append("VRAM unknown: without a usable GPU the offloaded part stays in RAM")
        else:
            vram_verdict = verdict_for(total_vram, available_vram_bytes)
    verdict = max(ram_verdict, vram_verdict or Verdict.FITS, key=lambda v: v.rank)

    return MemoryEstimate(
        weights_ram_bytes=weights_ram,
        weights_vram_bytes=weights_vram,
        kv_cache_ram_bytes=kv_ram,
        kv_cache_vram_bytes=kv_vram,
        compute_ram_bytes=compute_ram,
        compute_vram_bytes=compute_vram,
        total_ram_bytes=total_ram,
        total_vram_bytes=total_vram,
        available_ram_bytes=available_ram,
        available_vram_bytes=available_vram_bytes,
        verdict=verdict,
        ram_verdict=ram_verdict,
        vram_verdict=vram_verdict,
        n_gpu_layers_effective=offloaded,
        output_on_gpu=output_on_gpu,
        notes=tuple(notes),
    )


def _compute_bytes(
    model: ModelInfo,
    load: LoadSettings,
    cpu_layers: int,
    gpu_layers: int,
    output_on_gpu: bool,
    notes: list[str],
) -> tuple[int, int]:
    """Estimated (RAM, VRAM) compute buffers for the worst-case micro-batch llama.cpp reserves.

    llama.cpp sizes the buffer by building the graph for one full micro-batch with every token as an
    output, then letting ggml-alloc reuse memory between tensors that are not alive together. The two
    biggest tensors are the logits (n_ubatch x n_vocab f32) and one layer's attention scores
    (n_ubatch x n_ctx x n_head f32; with flash attention only a mask of one head's size), and they are
    never alive at the same time, so the buffer is about the larger of them plus the activations.
    """
    n_batch = min(load.n_batch, load.n_ctx)  # llama.cpp clamps n_batch to n_ctx, n_ubatch to n_batch
    n_ubatch = min(load.n_ubatch, n_batch)
    n_cells = padded_n_ctx(load.n_ctx)
    if not model.vocab_size:
        notes.append("vocabulary size unknown: logits not counted")
    logits = n_ubatch * (model.vocab_size or 0) * _F32_BYTES
    heads = 1 if load.flash_attn else (model.n_head or 0)
    attention = n_ubatch * n_cells * heads * _F32_BYTES
    activations = n_ubatch * (model.n_embd or 0) * _ACTIVATION_WIDTH_PER_EMBD * _F32_BYTES

    def on_device(has_layers: bool, has_output: bool) -> int:
        if not has_layers and not has_output:
            return 0
        return max(attention if has_layers else 0, logits if has_output else 0) + activations

    # A model whose layer count is unknown is treated as running entirely on the CPU.
    cpu_has_layers = cpu_layers > 0 or model.n_layer is None
    return on_device(cpu_has_layers, not output_on_gpu), on_device(gpu_layers > 0, output_on_gpu)


class InsufficientMemoryError(Exception):
    """The estimate says the model will not fit; carries the estimate and what was to be run.

    The message gives the numbers (needed against available, in RAM and VRAM where it applies),
    names the largest part on the side that does not fit and what makes that part smaller."""

    def __init__(self, estimate: MemoryEstimate, purpose: str = "") -> None:
        super().__init__(refusal_message(estimate, purpose))
        self.estimate = estimate
        self.purpose = purpose


def _largest_part(estimate: MemoryEstimate) -> str:
    """Which part dominates on the side that does not fit, and what makes it smaller."""
    on_vram = estimate.vram_verdict is Verdict.WONT_FIT and estimate.ram_verdict is not Verdict.WONT_FIT
    parts = (
        (
            estimate.weights_vram_bytes if on_vram else estimate.weights_ram_bytes,
            "the weights are the largest part: a smaller quantization of the model needs less"
            + (", and so do fewer GPU layers" if on_vram else ""),
        ),
        (
            estimate.kv_cache_vram_bytes if on_vram else estimate.kv_cache_ram_bytes,
            "the KV cache is the largest part: it grows with the context size, and a quantized cache "
            "type makes it smaller",
        ),
        (
            estimate.compute_vram_bytes if on_vram else estimate.compute_ram_bytes,
            "the compute buffer is the largest part: it grows with the context size and n_ubatch, and "
            "flash attention makes it smaller",
        ),
    )
    return max(parts, key=lambda part: part[0])[1]


def refusal_message(estimate: MemoryEstimate, purpose: str = "") -> str:
    """The refusal: "Not enough memory to <purpose>: needs … of … available: will not fit; <the largest
    part and what makes it smaller>; override to load anyway"."""
    what = f" to {purpose}" if purpose else ""
    return (
        f"Not enough memory{what}: {estimate.summary()}; {_largest_part(estimate)}; override to load anyway"
    )


def check_fits(estimate: MemoryEstimate, *, override: bool, purpose: str = "") -> None:
    """Raise InsufficientMemoryError when the verdict is WONT_FIT, unless `override`."""
    if estimate.verdict is Verdict.WONT_FIT and not override:
        raise InsufficientMemoryError(estimate, purpose)


# ---- models this process keeps loaded --------------------------------------------------------------
# psutil's "available" (Linux MemAvailable) counts the page cache as available, and the pages of a
# model loaded with mmap (and not mlock) are page cache: a model the engine host keeps loaded would
# look as if it took no RAM for its weights, and a second model measured beside it (an evaluation,
# a benchmark) would be let in to evict them. Its KV cache and compute buffers are ordinary
# allocations, already missing from "available"; so are weights read without mmap, and locked ones.
# So whoever keeps a model loaded notes its mapped weights here, and the check takes them off.
_mapped_lock = threading.Lock()
_mapped_weights: dict[int, tuple[str, int]] = {}  # id(owner) -> (real path, mapped weight bytes)


def note_loaded_model(owner: object, path: str, load: LoadSettings, estimate: MemoryEstimate) -> None:
    """`owner` keeps the model at `path` loaded with `load`; until `forget_loaded_model(owner)`, checks
    for other files count its mapped weights as taken."""
    mapped = estimate.weights_ram_bytes if load.use_mmap and not load.use_mlock else 0
    with _mapped_lock:
        _mapped_weights[id(owner)] = (os.path.realpath(path), mapped)


def forget_loaded_model(owner: object) -> None:
    with _mapped_lock:
        _mapped_weights.pop(id(owner), None)


def available_ram_for(model_path: str, *, replacing: object | None = None) -> int:
    """RAM available for loading `model_path`: psutil's figure minus the mapped weights of the models
    this process keeps loaded. A model of the same file shares its pages, so it is not taken off; nor
    is the model of `replacing`, which is freed before the new one loads."""
    path = os.path.realpath(model_path)
    with _mapped_lock:
        held = sum(
            n_bytes
            for owner, (held_path, n_bytes) in _mapped_weights.items()
            if held_path != path and (replacing is None or owner != id(replacing))
        )
    return max(0, _available_ram_bytes() - held)


def check_memory(
    model: ModelInfo,
    load: LoadSettings,
    *,
    override: bool = False,
    purpose: str = "",
    available_ram_bytes: int | None = None,
    available_vram_bytes: int | None = None,
    replacing: object | None = None,
) -> MemoryEstimate:
    """The memory check every path that loads a model calls first: estimate, then refuse with the numbers
    (InsufficientMemoryError) when it will not fit, unless `override`. Returns the estimate.

    Used by the engine's load (generate, the window's Load), the benchmark runner (once per distinct
    configuration of a sweep, before anything loads), the evaluations (perplexity, KL divergence,
    multiple choice, speed: app.quality.eval_model) and the tuner (each trial's settings). The window's
    evaluations run those same functions in the engine host, where the model the window has loaded
    stays loaded: its KV cache and buffers are already missing from the available RAM, and its mapped
    weights are taken off here (`note_loaded_model`). `available_ram_bytes` None reads it now
    (`available_ram_for`); `available_vram_bytes` None means unknown (offloaded layers are then TIGHT,
    never refused); `replacing` is the owner whose model this load replaces.
    """
    if available_ram_bytes is None:
        available_ram_bytes = available_ram_for(model.path, replacing=replacing)
    estimate = estimate_memory(
        model, load, available_ram_bytes=available_ram_bytes, available_vram_bytes=available_vram_bytes
    )
    check_fits(estimate, override=override, purpose=purpose)
    return estimate
