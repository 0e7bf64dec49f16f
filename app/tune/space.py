"""What the auto-tuner searches: the objective, the search space, and pruning it to this machine.

The space is a list of candidate values per tunable `LoadSettings` field. `prune` removes what this
machine, this build or the objective makes pointless, and says why for each removal: threads above the
logical cores, GPU layers without a GPU, a quantized V cache without flash attention, batch sizes a
prompt of the objective's length cannot tell apart, and values that fit in memory in no combination.
Everything here is pure computation over plain data, so the GUI can show and edit a space cheaply.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.llama.devices import LlamaDevice, gpu_devices
from app.model.fields import FIELD_SPECS, UNQUANTIZED_CACHE_TYPES
from app.model.memory import Verdict, estimate_memory
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings, count_logical_cores, preset_for_model

log = logging.getLogger(__name__)

# Ordered numbers: the TPE sampler learns which region is good. The rest are few, unordered choices
# that the tuner walks as a grid (the way llama-optimus treats flash attention and tensor overrides).
NUMERIC_PARAMS: tuple[str, ...] = ("n_threads", "n_threads_batch", "n_batch", "n_ubatch", "n_gpu_layers")
CATEGORICAL_PARAMS: tuple[str, ...] = ("flash_attn", "type_k", "type_v", "use_mmap", "use_mlock", "numa")
TUNABLE_PARAMS: tuple[str, ...] = NUMERIC_PARAMS + CATEGORICAL_PARAMS
# The parameters estimate_memory depends on (threads, mmap, mlock and NUMA do not change the estimate).
MEMORY_PARAMS: tuple[str, ...] = ("n_batch", "n_ubatch", "n_gpu_layers", "flash_attn", "type_k", "type_v")

ObjectiveKind = Literal["tg", "pp", "mix"]

DEFAULT_TG_TOKENS = 32  # short tests keep a trial to seconds; tg:N / pp:N ask for more
DEFAULT_PP_TOKENS = 128
DEFAULT_MIX = (512, 128)  # a chat turn: a 512-token prompt, a 128-token answer

# A full enumeration of the memory-relevant combinations costs ~20 µs each; above this, only the
# per-trial check guards memory.
_MAX_MEMORY_COMBINATIONS = 50_000


class TuneError(Exception):
    """The tuner cannot run as asked; the message says why."""


@dataclass(frozen=True)
class Objective:
    """What "fastest" means, as a workload: process `prompt_tokens`, then generate `gen_tokens`.

    With no prompt tokens it is generation speed (llama-bench's tg N), with no generated tokens prompt
    speed (pp N); with both it is the whole workload's speed, (P + G) / (t_prompt + t_gen), which is
    maximal exactly when 1 / (P / pp_tokens_per_s + G / tg_tokens_per_s) is: the time a chat turn takes.
    Generation in a mix is measured after the prompt (llama-bench's tg G @ dP), as it runs in a chat.
    """

    prompt_tokens: int = 0
    gen_tokens: int = DEFAULT_TG_TOKENS

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.gen_tokens < 0:
            raise TuneError("objective token counts must not be negative")
        if self.prompt_tokens == 0 and self.gen_tokens == 0:
            raise TuneError("an objective needs prompt or generated tokens")

    @property
    def kind(self) -> ObjectiveKind:
        if self.prompt_tokens == 0:
            return "tg"
        if self.gen_tokens == 0:
            return "pp"
        return "mix"

    @property
    def key(self) -> str:
        """llama-bench's test label: tg32, pp128, pp512+tg128."""
        parts = ([f"pp{self.prompt_tokens}"] if self.prompt_tokens else []) + (
            [f"tg{self.gen_tokens}"] if self.gen_tokens else []
        )
        return "+".join(parts)

    @property
    def spec(self) -> str:
        """The text `parse` reads back: tg:32, pp:128, mix:512,128."""
        if self.kind == "tg":
            return f"tg:{self.gen_tokens}"
        if self.kind == "pp":
            return f"pp:{self.prompt_tokens}"
        return f"mix:{self.prompt_tokens},{self.gen_tokens}"

    @property
    def label(self) -> str:
        return {
            "tg": f"generation tokens/s (tg{self.gen_tokens})",
            "pp": f"prompt tokens/s (pp{self.prompt_tokens})",
            "mix": f"workload tokens/s ({self.prompt_tokens}-token prompt + {self.gen_tokens} generated)",
        }[self.kind]

    def score(self, prompt_s: float, gen_s: float) -> float:
        """Tokens per second of the workload from its two measured times (0 when no time passed)."""
        total_s = (prompt_s if self.prompt_tokens else 0.0) + (gen_s if self.gen_tokens else 0.0)
        return (self.prompt_tokens + self.gen_tokens) / total_s if total_s > 0 else 0.0

    @classmethod
    def parse(cls, text: str) -> Objective:
        """Read tg, tg:64, pp, pp:512, mix or mix:512,128."""
        spec = text.strip().lower()
        m = re.fullmatch(r"(tg|pp|mix)(?::(\d+)(?:,(\d+))?)?", spec)
        if not m:
            raise TuneError(
                f"objective {text!r}: use tg, tg:N, pp, pp:N or mix:PROMPT,GEN (e.g. mix:512,128)"
            )
        kind, first, second = m.group(1), m.group(2), m.group(3)
        if kind != "mix" and second is not None:
            raise TuneError(f"objective {text!r}: {kind} takes one number ({kind}:N)")
        if kind == "tg":
            return cls(0, int(first) if first else DEFAULT_TG_TOKENS)
        if kind == "pp":
            return cls(int(first) if first else DEFAULT_PP_TOKENS, 0)
        if first is None:
            return cls(*DEFAULT_MIX)
        if second is None:
            raise TuneError(f"objective {text!r}: mix takes two numbers, mix:PROMPT,GEN")
        return cls(int(first), int(second))


def config_key(load: LoadSettings) -> tuple[Any, ...]:
    """The tunable part of a configuration: two settings with the same key measure the same thing."""
    return tuple(getattr(load, name) for name in TUNABLE_PARAMS)


def _is_valid(load: LoadSettings) -> bool:
    # llama.cpp refuses a quantized V cache without flash attention (see LoadSettings.problems).
    return load.flash_attn or load.type_v in UNQUANTIZED_CACHE_TYPES


@dataclass(frozen=True)
class SearchSpace:
    """Candidate values per tunable LoadSettings field; a field with one value is fixed, not tuned.

    Two rules hold for every configuration drawn from it, as in llama.cpp: n_ubatch is clamped to n_batch,
    and a quantized V cache needs flash attention (combinations that break it are never tried).
    """

    n_threads: tuple[int, ...]
    n_threads_batch: tuple[int, ...]
    n_batch: tuple[int, ...] = (512,)
    n_ubatch: tuple[int, ...] = (512,)
    n_gpu_layers: tuple[int, ...] = (0,)
    flash_attn: tuple[bool, ...] = (False, True)
    type_k: tuple[str, ...] = ("f16", "q8_0")
    type_v: tuple[str, ...] = ("f16", "q8_0")
    use_mmap: tuple[bool, ...] = (True,)
    use_mlock: tuple[bool, ...] = (False,)
    numa: tuple[bool, ...] = (False,)

    def __post_init__(self) -> None:
        for name in TUNABLE_PARAMS:
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values:
                raise TuneError(f"{name}: give at least one candidate value (as a tuple)")
            if len(set(values)) != len(values):
                raise TuneError(f"{name}: candidate values repeat: {values}")
            for value in values:
                message = FIELD_SPECS[name].check(value)
                if message is not None:
                    raise TuneError(message)

    # ---- reading -----------------------------------------------------------------------------
    def values(self, name: str) -> tuple[Any, ...]:
        if name not in TUNABLE_PARAMS:
            raise TuneError(f"{name} is not tunable; choose from {', '.join(TUNABLE_PARAMS)}")
        return tuple(getattr(self, name))

    @property
    def tuned(self) -> tuple[str, ...]:
        """Parameters with more than one candidate, in TUNABLE_PARAMS order."""
        return tuple(name for name in TUNABLE_PARAMS if len(self.values(name)) > 1)

    @property
    def fixed(self) -> dict[str, Any]:
        """Parameters with a single candidate, and that value."""
        return {name: self.values(name)[0] for name in TUNABLE_PARAMS if len(self.values(name)) == 1}

    def with_values(self, name: str, values: Sequence[Any]) -> SearchSpace:
        """A copy with `name`'s candidates replaced (duplicates dropped, order kept)."""
        self.values(name)
        return dataclasses.replace(self, **{name: tuple(dict.fromkeys(values))})

    def to_dict(self) -> dict[str, list[Any]]:
        return {name: list(self.values(name)) for name in TUNABLE_PARAMS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[Any]]) -> SearchSpace:
        unknown = [k for k in data if k not in TUNABLE_PARAMS]
        if unknown:
            raise TuneError(f"not tunable: {', '.join(unknown)}")
        return cls(**{k: tuple(v) for k, v in data.items()})

    def fingerprint(self) -> str:
        """A short hash of the candidates; a different space is a different study."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]

    # ---- configurations ----------------------------------------------------------------------
    def configure(self, base: LoadSettings, params: Mapping[str, Any]) -> LoadSettings | None:
        """`base` with the fixed values and `params` applied, n_ubatch clamped to n_batch as llama.cpp
        does; None when the combination is not allowed (a quantized V cache without flash attention)."""
        load = dataclasses.replace(base, **{**self.fixed, **dict(params)})
        if load.n_ubatch > load.n_batch:
            load = dataclasses.replace(load, n_ubatch=load.n_batch)
        return load if _is_valid(load) else None

    def categorical_combinations(self) -> list[dict[str, Any]]:
        """Every allowed combination of the tuned categorical parameters (those with 2+ values)."""
        names = [n for n in CATEGORICAL_PARAMS if n in self.tuned]
        combos = []
        for values in itertools.product(*(self.values(n) for n in names)):
            combo = dict(zip(names, values, strict=True))
            flash = combo.get("flash_attn", self.values("flash_attn")[0])
            type_v = combo.get("type_v", self.values("type_v")[0])
            if flash or type_v in UNQUANTIZED_CACHE_TYPES:
                combos.append(combo)
        return combos

    def numeric_point_count(self) -> int:
        """Distinct effective numeric points (n_ubatch above n_batch counts as n_batch)."""
        batch_pairs = {(b, min(u, b)) for b in self.n_batch for u in self.n_ubatch}
        return len(self.n_threads) * len(self.n_threads_batch) * len(batch_pairs) * len(self.n_gpu_layers)

    def count(self) -> int:
        """Distinct allowed configurations."""
        return self.numeric_point_count() * len(self.categorical_combinations())

    def configurations(self, base: LoadSettings) -> Iterator[LoadSettings]:
        """Every distinct allowed configuration over `base` (for exhaustive grids; can be huge)."""
        seen: set[tuple[Any, ...]] = set()
        names = list(TUNABLE_PARAMS)
        for values in itertools.product(*(self.values(n) for n in names)):
            load = self.configure(base, dict(zip(names, values, strict=True)))
            if load is None:
                continue
            key = config_key(load)
            if key not in seen:
                seen.add(key)
                yield load


@dataclass(frozen=True)
class MachineFacts:
    """What pruning needs to know about this machine and build; `detect()` reads them.

    `available_ram_bytes` None means estimate_memory reads it (psutil); `available_vram_bytes` None
    means unknown (offloaded layers then count as TIGHT, never as "will not fit").
    """

    logical_cores: int
    has_gpu: bool
    mlock_supported: bool = True
    numa_nodes: int = 1
    available_ram_bytes: int | None = None
    available_vram_bytes: int | None = None

    @classmethod
    def detect(cls, devices: Callable[[], tuple[LlamaDevice, ...] | None] | None = None) -> MachineFacts:
        """Calls llama.cpp (build facts, its device list): run it off the GUI thread. `devices` gives
        llama.cpp's device list (default: the installed build's, read now)."""
        has_gpu, free_vram = _llama_gpus(devices)
        return cls(
            logical_cores=count_logical_cores(),
            has_gpu=has_gpu,
            mlock_supported=_build_mlock(),
            numa_nodes=count_numa_nodes(),
            available_ram_bytes=read_available_ram_bytes(),
            available_vram_bytes=free_vram,
        )


def _build_mlock() -> bool:
    """Whether the llama.cpp build supports mlock; True if unreadable (a trial then finds out)."""
    try:
        from app.llama.runtime import build_info

        return build_info().mlock
    except Exception:  # a broken llama-cpp-python install: tune the CPU settings only
        return True


def _llama_gpus(
    devices: Callable[[], tuple[LlamaDevice, ...] | None] | None = None,
) -> tuple[bool, int | None]:
    """(a GPU llama.cpp can offload to, free memory summed over its GPUs or None if unknown).

    The GPUs are llama.cpp's own device list (app.llama.devices), the list the hardware report and
    its advice use: Metal, Vulkan and ROCm GPUs count as much as CUDA ones. llama.cpp splits layers
    across all of them, so their free memory is summed. An unreadable list means no GPU: the CPU
    settings are tuned and nothing is offloaded on a guess.
    """
    try:
        if devices is None:
            from app.llama.facts import current_devices

            devices = current_devices
        found = devices()
    except Exception as exc:  # a broken llama-cpp-python install: tune the CPU settings only
        log.warning("llama.cpp's device list not readable: %s", exc)
        return False, None
    gpus = gpu_devices(found or ())
    frees = [g.memory_free_bytes for g in gpus if g.memory_free_bytes is not None]
    return bool(gpus), (sum(frees) if frees else None)


def detect_has_gpu() -> bool:
    return _llama_gpus()[0]


def count_numa_nodes(root: str = "/") -> int:
    """NUMA nodes from /sys/devices/system/node/online ("0", "0-1", "0,2"); 1 where unknown."""
    try:
        with open(os.path.join(root, "sys/devices/system/node/online"), encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return 1
    count = 0
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            count += int(hi) - int(lo) + 1
        elif part.strip():
            count += 1
    return max(count, 1)


def read_available_ram_bytes() -> int | None:
    """Available RAM now (psutil), None when it cannot be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or failing: estimate_memory will try again and report
        return None


def default_search_space(
    model_info: ModelInfo,
    *,
    logical_cores: int | None = None,
    has_gpu: bool | None = None,
    base: LoadSettings | None = None,
) -> SearchSpace:
    """Every value worth trying on a machine like this one, before `prune` (which explains removals).

    Threads 1 … logical cores, batch sizes around llama.cpp's 512 up to the context, both cache types
    llama.cpp users pick (f16, q8_0), flash attention on/off, mmap, mlock and NUMA on/off, and GPU
    layers 0 … all when a GPU can be used. `base` (default: the model's preset) supplies n_ctx and its
    own values are always among the candidates, so the preset itself is a point of the space.
    """
    cores = logical_cores if logical_cores is not None else count_logical_cores()
    base = base or preset_for_model(model_info, logical_cores=cores)[0]
    gpu = has_gpu if has_gpu is not None else detect_has_gpu()
    threads = tuple(range(1, max(cores, 1) + 1))
    n_batch = tuple(sorted({v for v in (64, 128, 256, 512, 1024, 2048) if v <= base.n_ctx} | {base.n_batch}))
    n_ubatch = tuple(sorted({v for v in (64, 128, 256, 512) if v <= max(n_batch)} | {base.n_ubatch}))
    if not gpu:
        n_gpu_layers: tuple[int, ...] = (0,)
    elif model_info.n_layer:
        # n_layer + 1 also puts the output layer on the GPU: llama.cpp's "all".
        n_gpu_layers = tuple(range(0, model_info.n_layer + 2))
    else:
        n_gpu_layers = (0, -1)
    return SearchSpace(
        n_threads=_with(threads, base.n_threads),
        n_threads_batch=_with(threads, base.n_threads_batch),
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        n_gpu_layers=n_gpu_layers,
        flash_attn=(False, True),
        type_k=("f16", "q8_0"),
        type_v=("f16", "q8_0"),
        use_mmap=(True, False),
        use_mlock=(False, True),
        numa=(False, True),
    )


def _with(values: tuple[int, ...], extra: int) -> tuple[int, ...]:
    return values if extra in values else tuple(sorted((*values, extra)))


def _one_per_prompt(values: tuple[int, ...], prompt_tokens: int, preferred: int) -> tuple[int, ...]:
    """Values below the prompt length, plus one value that takes the whole prompt in one piece.

    Every value >= the prompt length behaves the same on that prompt; the representative is `preferred`
    (the base value) when it is one of them, so a longer real prompt keeps the user's batch size.
    """
    below = [v for v in values if v < prompt_tokens]
    whole = [v for v in values if v >= prompt_tokens]
    if not whole:
        return tuple(below)
    keep = preferred if preferred in whole else min(whole)
    return tuple(sorted({*below, keep}))


def prune(
    space: SearchSpace,
    model_info: ModelInfo,
    *,
    objective: Objective | None = None,
    base: LoadSettings | None = None,
    machine: MachineFacts | None = None,
) -> tuple[SearchSpace, tuple[str, ...]]:
    """Remove what this machine, build and objective make pointless; returns (space, why, one line each).

    `machine` defaults to `MachineFacts.detect()` (calls llama.cpp: not on the GUI thread), `base` to the
    model's preset (it gives n_ctx, which the memory check uses). When no configuration fits in memory
    at all, the memory-relevant candidates are left as they are and a note says so; the tuner refuses
    to start on such a space.
    """
    machine = machine or MachineFacts.detect()
    base = base or preset_for_model(model_info, logical_cores=machine.logical_cores)[0]
    notes: list[str] = []
    out = space

    def keep(name: str, values: Sequence[Any], why: str) -> None:
        nonlocal out
        old = out.values(name)
        wanted = list(values)
        new = tuple(v for v in old if v in wanted) + tuple(v for v in dict.fromkeys(wanted) if v not in old)
        if new != old:
            removed = [v for v in old if v not in new]
            if removed:
                notes.append(f"{name}: dropped {_fmt_values(removed)}: {why}")
            else:
                notes.append(f"{name}: now {_fmt_values(new)}: {why}")
            out = out.with_values(name, new)

    # Machine and build.
    for name in ("n_threads", "n_threads_batch"):
        fine = [v for v in out.values(name) if v <= machine.logical_cores]
        keep(
            name,
            fine or [machine.logical_cores],
            f"above the {machine.logical_cores} logical cores, extra threads only compete",
        )
    if not machine.has_gpu and any(v != 0 for v in out.n_gpu_layers):
        keep("n_gpu_layers", [0], "no GPU that this llama.cpp build can offload to")
    elif model_info.n_layer and any(v < 0 or v > model_info.n_layer + 1 for v in out.n_gpu_layers):
        # -1 and anything above n_layer + 1 all mean "every layer and the output layer".
        everything = model_info.n_layer + 1
        keep(
            "n_gpu_layers",
            sorted({min(v, everything) if v >= 0 else everything for v in out.n_gpu_layers}),
            f"the model has {model_info.n_layer} layers; {everything} already offloads all of them",
        )
    if not machine.mlock_supported:
        keep("use_mlock", [False], "this llama.cpp build cannot lock memory")
    if machine.numa_nodes <= 1:
        keep("numa", [False], "one NUMA node: there is nothing to distribute across")
    if True not in out.flash_attn:
        keep(
            "type_v",
            [v for v in out.type_v if v in UNQUANTIZED_CACHE_TYPES] or ["f16"],
            "a quantized V cache needs flash attention, which is off",
        )

    # The context: llama.cpp clamps n_batch to n_ctx and n_ubatch to n_batch.
    if any(v > base.n_ctx for v in out.n_batch):
        keep(
            "n_batch",
            [v for v in out.n_batch if v <= base.n_ctx] or [base.n_ctx],
            f"above n_ctx {base.n_ctx}, llama.cpp clamps it to n_ctx",
        )
    top_batch = max(out.n_batch)
    if any(v > top_batch for v in out.n_ubatch):
        keep(
            "n_ubatch",
            sorted({min(v, top_batch) for v in out.n_ubatch}),
            f"above the largest n_batch ({top_batch}), llama.cpp clamps it to n_batch",
        )

    # The objective: parameters that cannot change its score are fixed at the base value.
    if objective is not None:
        if objective.prompt_tokens == 0:
            why = "generation only: single-token decodes use n_threads and no batching"
            for name in ("n_threads_batch", "n_batch", "n_ubatch"):
                keep(name, [getattr(base, name)], why)
        else:
            p = objective.prompt_tokens
            keep(
                "n_batch",
                _one_per_prompt(out.n_batch, p, base.n_batch),
                f"with a {p}-token prompt every n_batch >= {p} runs it in one batch",
            )
            keep(
                "n_ubatch",
                _one_per_prompt(out.n_ubatch, p, base.n_ubatch),
                f"with a {p}-token prompt every n_ubatch >= {p} computes it in one step",
            )
        if objective.gen_tokens == 0:
            keep("n_threads", [base.n_threads], "prompt only: batches run on n_threads_batch")

    # Memory: drop values that fit in no combination of the others.
    out, memory_notes = _prune_memory(out, model_info, base, machine)
    notes.extend(memory_notes)
    return out, tuple(notes)


def _memory_combinations(
    space: SearchSpace, base: LoadSettings
) -> Iterator[tuple[dict[str, Any], LoadSettings]]:
    """(candidate values, the settings they make) for every allowed memory-relevant combination."""
    names = MEMORY_PARAMS
    for values in itertools.product(*(space.values(n) for n in names)):
        chosen = dict(zip(names, values, strict=True))
        load = space.configure(base, chosen)
        if load is not None:
            yield chosen, load


def fits_in_memory(model_info: ModelInfo, load: LoadSettings, machine: MachineFacts) -> bool:
    """estimate_memory's verdict is not WONT_FIT (TIGHT is tried: the estimate is conservative)."""
    estimate = estimate_memory(
        model_info,
        load,
        available_ram_bytes=machine.available_ram_bytes,
        available_vram_bytes=machine.available_vram_bytes,
    )
    return estimate.verdict is not Verdict.WONT_FIT


def _prune_memory(
    space: SearchSpace, model_info: ModelInfo, base: LoadSettings, machine: MachineFacts
) -> tuple[SearchSpace, list[str]]:
    total = 1
    for name in MEMORY_PARAMS:
        total *= len(space.values(name))
    if total > _MAX_MEMORY_COMBINATIONS:
        return space, [f"memory: {total} combinations are too many to check up front; each trial is checked"]
    if machine.available_ram_bytes is None:
        # Read the available RAM once, not once per combination.
        machine = dataclasses.replace(machine, available_ram_bytes=read_available_ram_bytes())
    fitting: dict[str, set[Any]] = {name: set() for name in MEMORY_PARAMS}
    any_fit = False
    for chosen, load in _memory_combinations(space, base):
        if fits_in_memory(model_info, load, machine):
            any_fit = True
            # The candidate, not the effective value: n_ubatch 512 that fits as 128 (clamped to
            # n_batch 128) is still a candidate worth keeping.
            for name in MEMORY_PARAMS:
                fitting[name].add(chosen[name])
    if not any_fit:
        estimate = estimate_memory(
            model_info,
            base,
            available_ram_bytes=machine.available_ram_bytes,
            available_vram_bytes=machine.available_vram_bytes,
        )
        return space, [f"memory: no configuration fits (n_ctx {base.n_ctx}; the base {estimate.summary()})"]
    notes = []
    out = space
    for name in MEMORY_PARAMS:
        old = out.values(name)
        new = tuple(v for v in old if v in fitting[name])
        if new and new != old:
            removed = [v for v in old if v not in new]
            notes.append(
                f"{name}: dropped {_fmt_values(removed)}: would not fit in memory with n_ctx {base.n_ctx}"
            )
            out = out.with_values(name, new)
    return out, notes


def _fmt_values(values: Sequence[Any]) -> str:
    def one(v: Any) -> str:
        return ("on" if v else "off") if isinstance(v, bool) else str(v)

    if len(values) > 8:
        return ", ".join(one(v) for v in values[:3]) + f", … ({len(values)} values)"
    return ", ".join(one(v) for v in values)
