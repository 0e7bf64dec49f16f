"""The one table of every load and sampling setting: label, tooltip, kind and allowed range.

Validation (app.model.settings) and the GUI's settings form both read `FIELD_SPECS`, so a range
or a help text is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]

FieldKind = Literal["int", "float", "bool", "choice", "strings"]

# ggml_type enum values (ggml.h); llama-cpp-python takes the cache types as these integers.
GGML_TYPE_IDS: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}

CACHE_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

UNQUANTIZED_CACHE_TYPES: frozenset[str] = frozenset({"f32", "f16", "bf16"})

# llama_cpp.LLAMA_DEFAULT_SEED; spelled out so this module never imports llama_cpp.
LLAMA_DEFAULT_SEED = 0xFFFFFFFF
MAX_N_CTX = 1_048_576


@dataclass(frozen=True)
class Problem:
    """One validation finding: errors block loading, warnings only inform."""

    field: str
    message: str
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


@dataclass(frozen=True)
class FieldSpec:
    """Label, tooltip and allowed values of one setting; read by validation and by the GUI."""

    name: str
    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str | int, ...] | None = None
    kind: FieldKind = "int"
    minimum_exclusive: bool = False  # the minimum itself is not allowed (repeat_penalty > 0)
    step: float | None = None  # spin box step for floats
    special_values: tuple[tuple[int | float, str], ...] = ()  # e.g. ((-1, "all"),) for spin box text
    choice_labels: tuple[str, ...] = ()  # display text per choice, same order as `choices`

    def range_text(self) -> str:
        """The allowed values in words, e.g. "between 1 and 1048576"."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        lo = _num(self.minimum)
        hi = _num(self.maximum)
        if self.minimum_exclusive:
            return f"greater than {lo} and at most {hi}"
        return f"between {lo} and {hi}"

    def type_error(self, value: object) -> str | None:
        """A message if `value` is not of this field's type (bools are not numbers here)."""
        if self.kind == "choice":
            assert self.choices is not None
            ok = all(isinstance(value, type(c)) and not isinstance(value, bool) for c in self.choices)
        elif self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "strings":
            ok = isinstance(value, tuple) and all(isinstance(s, str) for s in value)
        elif self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            return None
        expected = {
            "choice": "",
            "bool": "",
            "strings": "a list of strings",
            "int": "a whole number ",
            "float": "a number ",
        }[self.kind]
        if self.kind != "strings":
            expected += self.range_text()
        return f"{self.name} must be {expected} (got {value!r})"

    def range_error(self, value: object) -> str | None:
        """A message if `value` (of the right type) is outside the allowed range or choices."""
        if self.kind == "choice":
            assert self.choices is not None
            if value in self.choices:
                return None
            return f"{self.name} must be {self.range_text()} (got {value!r})"
        if self.kind not in ("int", "float"):
            return None
        assert isinstance(value, int | float) and self.minimum is not None and self.maximum is not None
        too_low = value <= self.minimum if self.minimum_exclusive else value < self.minimum
        if too_low or value > self.maximum or value != value:  # value != value catches NaN
            return f"{self.name} must be {self.range_text()} (got {_num(value)})"
        return None

    def check(self, value: object) -> str | None:
        """An error message if `value` has the wrong type or is out of range, else None."""
        return self.type_error(value) or self.range_error(value)


def _num(x: float | None) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


def _int(name: str, label: str, help: str, lo: int, hi: int, **kw: Any) -> FieldSpec:
    return FieldSpec(name, label, help, lo, hi, kind="int", **kw)


def _float(name: str, label: str, help: str, lo: float, hi: float, step: float, **kw: Any) -> FieldSpec:
    return FieldSpec(name, label, help, lo, hi, kind="float", step=step, **kw)


def _bool(name: str, label: str, help: str) -> FieldSpec:
    return FieldSpec(name, label, help, kind="bool")


def _choice(name: str, label: str, help: str, choices: tuple[str | int, ...], **kw: Any) -> FieldSpec:
    return FieldSpec(name, label, help, choices=choices, kind="choice", **kw)


# Upper bounds that llama.cpp does not impose are chosen well above any real use, so that they only
# catch typos and give the GUI's spin boxes a finite range.
_MAX_THREADS = 1024
_MAX_GPU_LAYERS = 1024  # more than any GGUF's block count; any value above n_layer means "all"

_CACHE_HELP = (
    "Data type of the {which} cache. f16 is llama.cpp's default; q8_0 halves the cache with little "
    "quality loss, q4 types quarter it with more. {extra}"
)

_SPECS: tuple[FieldSpec, ...] = (
    # Load settings: passed to llama_cpp.Llama(...)
    _int(
        "n_ctx",
        "Context size",
        "Tokens the KV cache holds (prompt + reply). Memory grows linearly "
        "with it; going past the model's training context degrades quality.",
        1,
        MAX_N_CTX,
    ),
    _int(
        "n_threads",
        "Threads (generation)",
        "CPU threads for generating tokens. Physical cores "
        "is usually best; hyper-threads rarely help because generation is memory-bound.",
        1,
        _MAX_THREADS,
    ),
    _int(
        "n_threads_batch",
        "Threads (prompt)",
        "CPU threads for prompt processing (batches), which is compute-bound and can use all logical cores.",
        1,
        _MAX_THREADS,
    ),
    _int("n_batch", "Batch size", "Maximum prompt tokens submitted per llama_decode call.", 1, MAX_N_CTX),
    _int(
        "n_ubatch",
        "Micro-batch size",
        "Tokens computed per step inside a batch; the compute "
        "buffer grows with it. Must not exceed the batch size.",
        1,
        MAX_N_CTX,
    ),
    _int(
        "n_gpu_layers",
        "GPU layers",
        "Transformer layers to offload to the GPU; 0 = CPU only, -1 = all (including the output layer).",
        -1,
        _MAX_GPU_LAYERS,
        special_values=((-1, "all"),),
    ),
    _bool(
        "use_mmap",
        "Memory-map the model",
        "Map the model file instead of reading it: loads faster and lets the OS share and evict the pages.",
    ),
    _bool(
        "use_mlock",
        "Lock model in RAM",
        "Pin the weights in RAM so the OS cannot swap them out; may need a raised memlock limit.",
    ),
    _bool("numa", "NUMA optimizations", "Distribute work across NUMA nodes (multi-socket machines)."),
    _bool(
        "flash_attn",
        "Flash attention",
        "Fused attention kernel: smaller compute buffer, and required for a quantized V cache.",
    ),
    _choice("type_k", "K cache type", _CACHE_HELP.format(which="K", extra=""), CACHE_TYPES),
    _choice(
        "type_v",
        "V cache type",
        _CACHE_HELP.format(which="V", extra="Quantized types (all but f32, f16, bf16) need flash attention."),
        CACHE_TYPES,
    ),
    _bool("offload_kqv", "Offload KV cache", "Keep the KV cache of offloaded layers on the GPU."),
    _int(
        "seed",
        "Seed",
        "Random seed for sampling; -1 = a new random seed each load. Use a fixed "
        "value of 1 or more for reproducible output.",
        -1,
        2**32 - 1,
        special_values=((-1, "random"),),
    ),
    # Sampling settings: passed to Llama.create_completion(...)
    _float(
        "temperature",
        "Temperature",
        "Randomness: 0 = always the most likely token, higher = more varied.",
        0.0,
        5.0,
        0.05,
    ),
    _float(
        "top_p",
        "Top-p",
        "Sample only from the most likely tokens whose probabilities add up to this; 1 = disabled.",
        0.0,
        1.0,
        0.01,
    ),
    # Vocabularies top out around 262k tokens; a larger top_k behaves exactly like 0.
    _int(
        "top_k",
        "Top-k",
        "Sample only from the k most likely tokens; 0 = disabled.",
        0,
        1_000_000,
        special_values=((0, "off"),),
    ),
    _float(
        "min_p",
        "Min-p",
        "Drop tokens less likely than this fraction of the top token's probability; 0 = disabled.",
        0.0,
        1.0,
        0.01,
    ),
    _float(
        "typical_p",
        "Typical-p",
        "Locally typical sampling: keep the tokens whose surprise is "
        "closest to the expected surprise, up to this probability mass; 1 = disabled.",
        0.0,
        1.0,
        0.01,
    ),
    _float(
        "repeat_penalty",
        "Repeat penalty",
        "Penalize recently used tokens; 1 = disabled, below 1 encourages repetition.",
        0.0,
        5.0,
        0.05,
        minimum_exclusive=True,
    ),
    _float(
        "presence_penalty",
        "Presence penalty",
        "Penalize any token already present in the text (OpenAI-style); 0 = disabled.",
        -2.0,
        2.0,
        0.05,
    ),
    _float(
        "frequency_penalty",
        "Frequency penalty",
        "Penalize tokens in proportion to how often they appeared (OpenAI-style); 0 = disabled.",
        -2.0,
        2.0,
        0.05,
    ),
    _choice(
        "mirostat_mode",
        "Mirostat",
        "Adaptive sampling that targets a constant surprise (tau); "
        "replaces top-k, top-p, min-p and typical-p when on.",
        (0, 1, 2),
        choice_labels=("off", "Mirostat", "Mirostat 2.0"),
    ),
    _float(
        "mirostat_tau",
        "Mirostat tau",
        "Target surprise (entropy); lower = more focused text.",
        0.0,
        20.0,
        0.1,
    ),
    _float("mirostat_eta", "Mirostat eta", "Learning rate of Mirostat's feedback loop.", 0.0, 1.0, 0.01),
    _int("max_tokens", "Max new tokens", "Stop after generating this many tokens.", 1, MAX_N_CTX),
    FieldSpec("stop", "Stop strings", "Generation stops when any of these strings appears.", kind="strings"),
)

FIELD_SPECS: dict[str, FieldSpec] = {spec.name: spec for spec in _SPECS}
