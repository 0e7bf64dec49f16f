"""Load and sampling settings for llama.cpp: validation, the reload rule, and the presets.

Every field's label, tooltip and range come from one table, `FIELD_SPECS` (app.model.fields):
validation reads it, and the GUI builds its spin boxes and combo boxes from it, so a range is
never written twice.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app.model.fields import (
    FIELD_SPECS,
    GGML_TYPE_IDS,
    LLAMA_DEFAULT_SEED,
    UNQUANTIZED_CACHE_TYPES,
    FieldSpec,
    Problem,
)
from app.model.model_info import ModelInfo, SizeClass


def count_physical_cores() -> int:
    """Physical CPU cores (psutil), falling back to the logical count when psutil cannot tell."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:  # psutil is a dependency, but the core must still work without it
        n = None
    return n or os.cpu_count() or 1


def count_logical_cores() -> int:
    """Logical CPU cores (hardware threads)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=True)
    except ImportError:
        n = None
    return n or os.cpu_count() or 1


class SettingsError(ValueError):
    """An invalid setting; `field` names it and the message states the allowed range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    @classmethod
    def from_problem(cls, problem: Problem) -> SettingsError:
        return cls(problem.field, problem.message)


class UnknownSettingsWarning(UserWarning):
    """`from_dict` ignored keys it does not know (e.g. a profile written by a newer version)."""


_S = TypeVar("_S", bound="_SettingsBase")


class _SettingsBase:
    """Shared dict conversion and per-field checks; the subclasses are frozen dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Plain TOML/JSON-friendly values (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def unknown_keys(cls, data: Mapping[str, Any]) -> list[str]:
        """Keys of `data` that are not fields of this class."""
        names = set(cls.field_names())
        return [str(k) for k in data if k not in names]

    @classmethod
    def from_dict(cls: type[_S], data: Mapping[str, Any]) -> _S:
        """Build from plain values; missing keys take defaults, unknown keys are ignored with an
        `UnknownSettingsWarning` (see `unknown_keys`), a wrong type raises SettingsError.

        Ranges are not checked here, so a caller can still show every problem: call `validate()`.
        """
        unknown = cls.unknown_keys(data)
        if unknown:
            warnings.warn(
                f"{cls.__name__}: ignoring unknown keys {', '.join(sorted(unknown))}",
                UnknownSettingsWarning,
                stacklevel=2,
            )
        kwargs: dict[str, Any] = {}
        for name in cls.field_names():
            if name in data:
                kwargs[name] = _coerce(FIELD_SPECS[name], data[name])
        return cls(**kwargs)  # type: ignore[call-arg]

    def _field_problems(self) -> tuple[list[Problem], set[str]]:
        problems: list[Problem] = []
        bad: set[str] = set()
        for name in self.field_names():
            message = FIELD_SPECS[name].check(getattr(self, name))
            if message is not None:
                problems.append(Problem(name, message))
                bad.add(name)
        return problems, bad


def _coerce(spec: FieldSpec, value: Any) -> Any:
    """Convert a plain value (from TOML or JSON) to the field's type, or raise SettingsError.

    Only a wrong type is fatal here; range errors are left for `validate()`.
    """
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif spec.kind == "choice" and isinstance(value, str):
        value = value.strip().lower()  # "Q8_0" in a hand-edited profile means q8_0
    elif spec.kind == "strings" and isinstance(value, list):
        value = tuple(value)
    message = spec.type_error(value)
    if message is not None:
        raise SettingsError(spec.name, message)
    return value


def _raise_first_error(problems: list[Problem]) -> list[Problem]:
    for problem in problems:
        if problem.is_error:
            raise SettingsError.from_problem(problem)
    return problems


@dataclass(frozen=True)
class LoadSettings(_SettingsBase):
    """Keyword arguments of `llama_cpp.Llama(...)`; all need a model reload when changed."""

    n_ctx: int = 4096
    n_threads: int = field(default_factory=count_physical_cores)
    n_threads_batch: int = field(default_factory=count_logical_cores)
    n_batch: int = 512
    n_ubatch: int = 512
    n_gpu_layers: int = 0  # -1 = all
    use_mmap: bool = True
    use_mlock: bool = False
    numa: bool = False
    flash_attn: bool = False
    type_k: str = "f16"
    type_v: str = "f16"
    offload_kqv: bool = True
    seed: int = -1  # -1 = random

    def problems(self, model: ModelInfo | None = None, *, logical_cores: int | None = None) -> list[Problem]:
        """Every error and warning, in field order; `model` enables the checks against the GGUF."""
        problems, bad = self._field_problems()
        if not bad & {"n_batch", "n_ubatch"} and self.n_ubatch > self.n_batch:
            problems.append(
                Problem("n_ubatch", f"n_ubatch ({self.n_ubatch}) must not exceed n_batch ({self.n_batch})")
            )
        if not bad & {"type_v", "flash_attn"} and self.type_v not in UNQUANTIZED_CACHE_TYPES:
            if not self.flash_attn:
                problems.append(
                    Problem(
                        "type_v",
                        f"type_v {self.type_v} (a quantized V cache) requires flash_attn; "
                        f"turn flash_attn on or use one of f32, f16, bf16",
                    )
                )
        if "seed" not in bad and self.seed == 0:
            # llama-cpp-python does `seed or LLAMA_DEFAULT_SEED`, so 0 silently means random.
            problems.append(
                Problem(
                    "seed", "seed 0 means random in llama-cpp-python; use 1 or higher to reproduce", "warning"
                )
            )
        cores = logical_cores if logical_cores is not None else count_logical_cores()
        for name in ("n_threads", "n_threads_batch"):
            value = getattr(self, name)
            if name not in bad and value > cores:
                problems.append(
                    Problem(
                        name,
                        f"{name} {value} is above the {cores} logical cores: extra threads only compete",
                        "warning",
                    )
                )
        if model is not None and model.context_length and "n_ctx" not in bad:
            if self.n_ctx > model.context_length:
                problems.append(
                    Problem(
                        "n_ctx",
                        f"n_ctx {self.n_ctx} is above the model's training context {model.context_length}: "
                        f"quality will degrade past it",
                        "warning",
                    )
                )
        if not bad & {"n_ctx", "n_batch"} and self.n_batch > self.n_ctx:
            problems.append(
                Problem(
                    "n_batch",
                    f"n_batch {self.n_batch} is above n_ctx {self.n_ctx}: llama.cpp clamps it to n_ctx",
                    "warning",
                )
            )
        return problems

    def validate(self, model: ModelInfo | None = None, *, logical_cores: int | None = None) -> list[Problem]:
        """Raise SettingsError for the first error; return the warnings."""
        return _raise_first_error(self.problems(model, logical_cores=logical_cores))

    def to_llama_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `llama_cpp.Llama(model_path, **kwargs)` (llama-cpp-python 0.3.x)."""
        return {
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads_batch,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "n_gpu_layers": self.n_gpu_layers,
            "use_mmap": self.use_mmap,
            "use_mlock": self.use_mlock,
            "numa": self.numa,
            "flash_attn": self.flash_attn,
            "offload_kqv": self.offload_kqv,
            "seed": LLAMA_DEFAULT_SEED if self.seed == -1 else self.seed,
            "type_k": GGML_TYPE_IDS[self.type_k],
            "type_v": GGML_TYPE_IDS[self.type_v],
        }


# Every LoadSettings field is baked into the llama_model / llama_context when Llama() is constructed,
# and llama-cpp-python has no setter for them on a live instance, so changing any of them means a
# reload. (llama.cpp could change n_threads in place via llama_set_n_threads, but Llama keeps its own
# copy, so we reload for that too rather than let the two disagree.)
RELOAD_FIELDS: frozenset[str] = frozenset(LoadSettings.field_names())


def needs_reload(old: LoadSettings, new: LoadSettings) -> list[str]:
    """Names of the fields that differ, in field order; non-empty means the model must be reloaded."""
    return [
        name
        for name in LoadSettings.field_names()
        if name in RELOAD_FIELDS and getattr(old, name) != getattr(new, name)
    ]


@dataclass(frozen=True)
class SamplingSettings(_SettingsBase):
    """Keyword arguments of `Llama.create_completion(...)`; they apply per request, no reload."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40  # 0 = disabled
    min_p: float = 0.05
    typical_p: float = 1.0  # 1 = off
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    max_tokens: int = 256
    stop: tuple[str, ...] = ()

    def problems(self, load: LoadSettings | None = None) -> list[Problem]:
        """Every error and warning; `load` enables the check of max_tokens against n_ctx."""
        problems, bad = self._field_problems()
        if "stop" not in bad:
            for i, s in enumerate(self.stop):
                if not s:
                    problems.append(Problem("stop", f"stop[{i}] must not be an empty string"))
        if "mirostat_mode" not in bad and self.mirostat_mode != 0:
            problems.append(
                Problem(
                    "mirostat_mode",
                    f"mirostat_mode {self.mirostat_mode} replaces top_k, top_p, min_p and typical_p: "
                    "they are ignored",
                    "warning",
                )
            )
        if load is not None and "max_tokens" not in bad and isinstance(load.n_ctx, int):
            if self.max_tokens > load.n_ctx:
                problems.append(
                    Problem(
                        "max_tokens",
                        f"max_tokens {self.max_tokens} is above n_ctx {load.n_ctx}: "
                        f"generation stops when the context is full",
                        "warning",
                    )
                )
        return problems

    def validate(self, load: LoadSettings | None = None) -> list[Problem]:
        """Raise SettingsError for the first error; return the warnings."""
        return _raise_first_error(self.problems(load))

    def to_llama_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `Llama.create_completion(prompt, **kwargs)`."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "typical_p": self.typical_p,
            "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "mirostat_mode": self.mirostat_mode,
            "mirostat_tau": self.mirostat_tau,
            "mirostat_eta": self.mirostat_eta,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
        }


LOAD_FIELDS: tuple[str, ...] = LoadSettings.field_names()

SAMPLING_FIELDS: tuple[str, ...] = SamplingSettings.field_names()

# (n_ctx, n_batch) per size class. Only LARGE differs: a 7B+ model's KV cache costs ~0.5 MiB per
# token in f16 (vs. ~20-100 KiB for the smaller classes), so halving the context saves gigabytes, and a
# smaller batch shrinks the compute buffer on the machines most likely to be short of RAM.
_PRESET_SHAPES: dict[SizeClass, tuple[int, int]] = {
    SizeClass.TINY: (4096, 512),
    SizeClass.SMALL: (4096, 512),
    SizeClass.MEDIUM: (4096, 512),
    SizeClass.LARGE: (2048, 256),
}


def preset_for(
    size_class: SizeClass, *, logical_cores: int | None = None, physical_cores: int | None = None
) -> tuple[LoadSettings, SamplingSettings]:
    """Starting settings for a model of this size class.

    TINY, SMALL and MEDIUM share llama.cpp-like defaults (4096-token context, batch 512): their KV
    cache and compute buffer fit comfortably in a few GiB. LARGE (>= 7B) halves the context and the
    batch, because at that size the KV cache (~1 GiB per 2048 tokens in f16) competes with multi-GiB
    weights, and keeps use_mlock off so a tight machine pages instead of failing to lock. Generation
    threads use the physical cores (token generation is memory-bound, hyper-threads do not help), prompt
    threads use all logical cores. Sampling settings are the same for every class.
    """
    n_ctx, n_batch = _PRESET_SHAPES[size_class]
    physical = physical_cores if physical_cores is not None else count_physical_cores()
    logical = logical_cores if logical_cores is not None else count_logical_cores()
    load = LoadSettings(
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=min(512, n_batch),
        n_threads=physical,
        n_threads_batch=max(logical, physical),
        use_mlock=False,
    )
    return load, SamplingSettings()


def preset_for_model(
    model: ModelInfo, *, logical_cores: int | None = None, physical_cores: int | None = None
) -> tuple[LoadSettings, SamplingSettings]:
    """`preset_for(model.size_class)`, with n_ctx (and the batch sizes) clamped to the training context."""
    load, sampling = preset_for(model.size_class, logical_cores=logical_cores, physical_cores=physical_cores)
    if model.context_length and load.n_ctx > model.context_length:
        n_ctx = model.context_length
        n_batch = min(load.n_batch, n_ctx)
        load = dataclasses.replace(load, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=min(load.n_ubatch, n_batch))
    return load, sampling
