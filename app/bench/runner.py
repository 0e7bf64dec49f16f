"""A benchmark runner that measures what llama-bench measures, the way llama-bench measures it.

Tests: `pp N` (N prompt tokens decoded in n_batch-sized batches), `tg N` (N single-token
decodes), `pg N,M` (both in one timed run) and depth `d` (the KV cache filled with d tokens
first, untimed). Tokens are random ids (BOS first), prepared before the clock starts; nothing
is sampled or detokenized, exactly as in llama-bench's test_prompt/test_gen. Each test runs a
warm-up, then R timed repetitions from a cleared cache; a sample's speed is
(n_prompt + n_gen) / time, and the result is the mean ± sample standard deviation of those.
With `warmup_until_steady`, the warm-up is full repetitions until they agree (app.bench.trust's
SteadyRule). Over the timed repetitions the runner reads where the machine's CPU time went (steal,
other processes: app.telemetry.cpu_load), so each result says how far to trust it.

Defaults are llama-bench's: n_batch 2048, n_ubatch 512, flash attention "auto" (llama.cpp's
LLAMA_FLASH_ATTN_TYPE_AUTO, chosen through the context's flash_attn_type; a plan's flash_attn
values are llama-bench's -1 auto, 0 off, 1 on). Each result records every setting llama-bench's
JSON records, read from llama.cpp's default parameters where LlamaScope does not set them.

The model and its contexts come from app.llama.driver, llama.cpp's C API with nothing in
between: a prompt costs its llama_decode calls, a generated token one llama_decode and one
llama_synchronize. Instances that differ only in context settings (threads, batch, KV cache,
flash attention) share one model load and get a fresh context each, as in llama-bench.

Plans, results and progress are plain frozen data and the callbacks plain functions, so a run
can move to another process without changing them.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as _dt
import itertools
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from app.bench.trust import STEADY_RULE, coefficient_of_variation
from app.common.stats import mean, stdev
from app.llama import runtime as llama_runtime
from app.llama.build_check import require_working_build
from app.llama.devices import gpu_info_text
from app.llama.driver import CancelFlag, DriverCancelled, DriverError, LlamaContext, LlamaModel, init_numa
from app.llama.facts import current_devices
from app.model.gguf_info import inspect_model
from app.model.memory import InsufficientMemoryError, available_ram_for, check_memory
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings
from app.telemetry.cpu_load import CpuLoadProbe, CpuLoadSample, cpu_load_fields
from app.telemetry.hardware import cpu_info

# Parameters a plan can sweep: LoadSettings field -> llama-bench flag and its markdown header.
SWEEPABLE: dict[str, tuple[str, str]] = {
    "n_threads": ("-t", "threads"),
    "n_batch": ("-b", "n_batch"),
    "n_ubatch": ("-ub", "n_ubatch"),
    "flash_attn": ("-fa", "fa"),
    "type_k": ("-ctk", "type_k"),
    "type_v": ("-ctv", "type_v"),
    "n_gpu_layers": ("-ngl", "ngl"),
    "use_mmap": ("-mmp", "mmap"),
}


# llama-bench's defaults (tools/llama-bench/llama-bench.cpp, cmd_params_defaults), used by
# `llamascope bench` and the window's benchmark form alike.
DEFAULT_N_BATCH = 2048
DEFAULT_N_UBATCH = 512
FLASH_ATTN_AUTO = -1  # llama_flash_attn_type: -1 auto, 0 disabled, 1 enabled
DEFAULT_FLASH_ATTN = FLASH_ATTN_AUTO


class BenchError(Exception):
    """A benchmark could not run; the message says why."""


@dataclass(frozen=True)
class BenchTest:
    n_prompt: int = 0
    n_gen: int = 0
    n_depth: int = 0

    def __post_init__(self) -> None:
        if self.n_prompt < 0 or self.n_gen < 0 or self.n_depth < 0:
            raise BenchError("test sizes must not be negative")
        if self.n_prompt == 0 and self.n_gen == 0:
            raise BenchError("a test needs prompt or generated tokens")

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen

    @property
    def name(self) -> str:
        """llama-bench's label: pp512, tg128, pp512+tg128, with " @ d512" for a filled cache."""
        parts = ([f"pp{self.n_prompt}"] if self.n_prompt else []) + (
            [f"tg{self.n_gen}"] if self.n_gen else []
        )
        return "+".join(parts) + (f" @ d{self.n_depth}" if self.n_depth else "")


# A list or range longer than this is a typo (1-100000000 for 1-1000...), and each value is at least one
# benchmark run; expanding it would only fill memory.
MAX_VALUES = 1000


def parse_values(text: str, kind: type = int) -> tuple[Any, ...]:
    """llama-bench list syntax: "1,2,4", ranges "1-8", "1-8+2" (step), "1-64*2" (multiply).

    At most MAX_VALUES values: a longer list raises BenchError before it is expanded."""
    out: list[Any] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)(?:([+*])(\d+))?", part) if kind is int else None
        if m:
            first, last = int(m.group(1)), int(m.group(2))
            op, step = m.group(3) or "+", int(m.group(4) or 1)
            if last < first or step < 1 or (op == "*" and (step < 2 or first < 1)):
                raise BenchError(f"bad range {part!r}: use first-last, first-last+step or first-last*factor")
            count = (last - first) // step + 1 if op == "+" else _geometric_count(first, last, step)
            if len(out) + count > MAX_VALUES:
                what = (
                    f"the range {part!r} expands to {count:,} values"
                    if count > MAX_VALUES
                    else (f"{str(text)!r} expands to more than {MAX_VALUES:,} values")
                )
                raise BenchError(
                    f"{what}; a list holds at most {MAX_VALUES:,} (each value is a benchmark run): "
                    "use a step (1-8192+512) or a factor (1-8192*2)"
                )
            value = first
            while value <= last:
                out.append(value)
                value = value + step if op == "+" else value * step
        elif kind is bool:
            if part.lower() not in ("0", "1", "true", "false", "on", "off"):
                raise BenchError(f"{part!r} is not 0 or 1")
            out.append(part.lower() in ("1", "true", "on"))
        elif kind is int:
            try:
                out.append(int(part))
            except ValueError:
                raise BenchError(f"{part!r} is not a whole number or a range") from None
        else:
            out.append(part)
    if not out:
        raise BenchError(f"no values in {text!r}")
    if len(out) > MAX_VALUES:
        raise BenchError(f"{len(out):,} values in one list; at most {MAX_VALUES:,} are allowed")
    return tuple(out)


_FLASH_ATTN_WORDS = {"auto": -1, "-1": -1, "0": 0, "off": 0, "false": 0, "1": 1, "on": 1, "true": 1}


def parse_flash_attn(text: str) -> tuple[int, ...]:
    """llama-bench's -fa list: "auto", "on", "off", 0, 1 (or several, "0,1,auto") as -1/0/1."""
    out = []
    for part in (p.strip().lower() for p in str(text).split(",")):
        if not part:
            continue
        if part not in _FLASH_ATTN_WORDS:
            raise BenchError(f"{part!r} is not 0 or 1 (flash attention off, on) or auto (llama.cpp's choice)")
        out.append(_FLASH_ATTN_WORDS[part])
    if not out:
        raise BenchError(f"no values in {text!r}")
    return tuple(out)


def flash_attn_text(value: int | bool) -> str:
    """A flash attention setting as llama-bench's -fa takes it: "auto", "0" or "1"."""
    return "auto" if int(value) == FLASH_ATTN_AUTO else str(int(value))


def _geometric_count(first: int, last: int, factor: int) -> int:
    count, value = 0, first
    while value <= last:  # at most log2(last) steps: factor >= 2 and first >= 1
        count, value = count + 1, value * factor
    return count


@dataclass(frozen=True)
class BenchPlan:
    """Models × tests × every combination of the swept parameters, each run R times."""

    models: tuple[str, ...]
    tests: tuple[BenchTest, ...]
    base: LoadSettings = field(default_factory=LoadSettings)
    sweep: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (LoadSettings field, values)
    repetitions: int = 5
    warmup: bool = True
    seed: int = 0  # for the random token ids
    override_memory: bool = False  # run configurations the memory check says will not fit
    # Warm up with full repetitions until they agree (app.bench.trust.SteadyRule) instead of one run.
    warmup_until_steady: bool = False

    def __post_init__(self) -> None:
        if self.repetitions < 1:
            raise BenchError("repetitions must be at least 1")
        for name, values in self.sweep:
            if name not in SWEEPABLE:
                raise BenchError(f"{name} cannot be swept; choose from {', '.join(SWEEPABLE)}")
            if not values:
                raise BenchError(f"no values for {name}")
            if name == "flash_attn" and any(int(v) not in (-1, 0, 1) for v in values):
                raise BenchError("flash_attn takes -1 (auto), 0 (off) or 1 (on)")

    @property
    def swept_fields(self) -> tuple[str, ...]:
        return tuple(name for name, values in self.sweep if len(values) > 1)

    def runs(self) -> list[BenchInstance]:
        """Every test to run with its settings, models outermost as llama-bench orders them."""
        names = [name for name, _ in self.sweep]
        combos = list(itertools.product(*(values for _, values in self.sweep))) or [()]
        out = []
        for model in self.models:
            for combo in combos:
                chosen = dict(zip(names, combo, strict=False))
                fa = int(chosen.get("flash_attn", self.base.flash_attn))  # a bool is 0 or 1
                # LoadSettings holds a yes or no. Auto counts as on for its checks: llama.cpp's auto
                # turns flash attention on wherever the backend has the kernel (every CPU), and turns
                # it on for a quantized V cache, which needs it.
                chosen["flash_attn"] = fa != 0
                load = dataclasses.replace(self.base, **chosen)
                for test in self.tests:
                    out.append(BenchInstance(model, load, test, fa))
        return out

    def instances(self) -> list[tuple[str, LoadSettings, BenchTest]]:
        """Every (model, settings, test) to run; `runs()` adds the flash attention choice (auto)."""
        return [(r.model, r.load, r.test) for r in self.runs()]


@dataclass(frozen=True)
class BenchInstance:
    """One test of a plan: the model, its load settings, the test, and flash attention as llama-bench
    takes it (-1 auto, 0 off, 1 on; `load.flash_attn` is on for auto)."""

    model: str
    load: LoadSettings
    test: BenchTest
    flash_attn: int


@dataclass(frozen=True)
class BenchResult:
    """One test's result, with llama-bench's field names and LlamaScope's telemetry beside them."""

    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    type_k: str
    type_v: str
    n_gpu_layers: int
    flash_attn: int  # llama-bench's: -1 auto (llama.cpp chooses), 0 off, 1 on (a bool reads as 0/1)
    use_mmap: bool
    n_prompt: int
    n_gen: int
    n_depth: int
    test_time: str
    samples_ns: tuple[int, ...]
    cpu_info: str
    gpu_info: str
    backends: str
    build: str  # llama-cpp-python version (llama-bench: build_commit)
    complete: bool = True  # False when cancelled before all repetitions ran
    # Telemetry over the timed repetitions (None: no sampler or source not available).
    mean_cpu_percent: float | None = None
    peak_rss_bytes: int | None = None
    mean_power_watts: float | None = None
    energy_joules: float | None = None
    joules_per_token: float | None = None
    max_temp_c: float | None = None
    throttle_events: int | None = None
    throttled: bool = False
    source: str = "llamascope"  # "llama-bench" for imported records
    # The rest of llama-bench's settings, as its JSON records them. The runner reads them from
    # llama.cpp's default parameters (it changes none of them); an import keeps llama-bench's.
    build_number: int = 0
    cpu_mask: str = "0x0"
    cpu_strict: bool = False
    poll: int = 50
    n_cpu_moe: int = 0
    split_mode: str = "layer"
    main_gpu: int = 0
    no_kv_offload: bool = False
    devices: str = "auto"
    tensor_split: str = "0.00"
    tensor_buft_overrides: str = "none"
    load_mode: str = ""  # llama_load_mode_name: "mmap", "none", "mlock", "mmap+mlock"; "" = from use_mmap
    lazy_mode: str = "auto"
    embeddings: bool = False
    no_op_offload: int = 0
    no_host: bool = False
    repack: bool = True
    fit_target: int = 0
    fit_min_ctx: int = 0
    flash_attn_used: bool | None = None  # what flash_attn resolved to; None when not known
    # How far to trust the figures (app.bench.trust), over the timed repetitions: CPU time stolen by
    # a VM's host and used by other processes (app.telemetry.cpu_load; None = n/a, cpu_load_note says
    # why), the CPU clock's range (telemetry), and the warm-up that preceded them.
    steal_percent: float | None = None
    other_cpu_percent: float | None = None  # of all CPUs' time
    other_cpus: float | None = None  # the same in CPUs' worth
    cpu_load_note: str = ""
    cpu_freq_min_mhz: float | None = None
    cpu_freq_max_mhz: float | None = None
    cpu_freq_limit_mhz: float | None = None
    throttle_detail: str = ""
    warmup_runs: int | None = None  # None: not recorded (an import)
    warmup_steady: bool | None = None  # None: no steady warm-up was asked for
    # pg tests only: the prompt part of each repetition (llama-batched-bench's T_PP), in step with
    # samples_ns; app.bench.batched turns the two into batched-bench's figures. () otherwise.
    samples_pp_ns: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.load_mode:  # not recorded (an older record, a hand-made result): what use_mmap implies
            object.__setattr__(self, "load_mode", "mmap" if self.use_mmap else "none")

    @property
    def test(self) -> BenchTest:
        return BenchTest(self.n_prompt, self.n_gen, self.n_depth)

    @property
    def samples_ts(self) -> tuple[float, ...]:
        n = self.n_prompt + self.n_gen
        return tuple(1e9 * n / s for s in self.samples_ns if s > 0)

    @property
    def avg_ns(self) -> int:
        return int(mean(self.samples_ns)) if self.samples_ns else 0

    @property
    def stddev_ns(self) -> int:
        return int(stdev(self.samples_ns))

    @property
    def avg_ts(self) -> float:
        return mean(self.samples_ts) if self.samples_ts else 0.0

    @property
    def stddev_ts(self) -> float:
        return stdev(self.samples_ts)

    @property
    def cv_percent(self) -> float | None:
        """Coefficient of variation of the t/s samples, in per cent (None below 2 repetitions)."""
        return coefficient_of_variation(self.samples_ts)


ProgressCallback = Callable[[int, int, str], None]  # (done steps, total steps, what is running)


def model_type(info: ModelInfo) -> str:
    """llama.cpp's model description: architecture, size label, file type ("llama 135M Q4_1")."""
    size = info.size_label or f"{info.n_params / 1e9:.1f}B"
    return f"{info.architecture or 'unknown'} {size} {info.file_type or ''}".strip()


@dataclass(frozen=True)
class _ModelKey:
    """What a loaded model depends on: instances that agree on it share one load, as in llama-bench."""

    path: str
    n_gpu_layers: int
    use_mmap: bool
    use_mlock: bool


@dataclass(frozen=True)
class _StepText:
    """The progress text of one test instance: the test and its repetition first (what a person
    looks for, and what a terminal's line keeps when it cuts the end), then which test of how many,
    then the model and settings."""

    test: str
    repetitions: int
    number: int  # this instance, 1-based
    instances: int
    label: str  # model file, test and settings

    def _tail(self) -> str:
        which = f" · test {self.number} of {self.instances}" if self.instances > 1 else ""
        return f"{which} — {self.label}"

    def warmup(self, detail: str = "") -> str:
        return f"{self.test} · warm-up{' ' + detail if detail else ''}{self._tail()}"

    def repetition(self, k: int) -> str:
        return f"{self.test} · repetition {k} of {self.repetitions}{self._tail()}"

    def done(self) -> str:
        return f"{self.test} · {self.repetitions} of {self.repetitions} repetitions done{self._tail()}"


class _Runner:
    """Runs a plan on one thread; owns at most one llama.cpp model at a time."""

    def __init__(
        self,
        plan: BenchPlan,
        cancel: CancelFlag,
        on_progress: ProgressCallback | None,
        on_result: Callable[[BenchResult], None] | None,
        sampler: Any | None,
        own_tree_pid: int | None = None,
    ) -> None:
        self.plan = plan
        self.cancel = cancel
        self.on_progress = on_progress
        self.on_result = on_result
        self.sampler = sampler
        self.lc = llama_runtime.llama()
        self.rng = random.Random(plan.seed)
        self.build = llama_runtime.build_info()
        self.cpu = cpu_info()
        # llama-bench's gpu_info: the GPU devices of llama.cpp's own device list, read in place here.
        self.gpu = gpu_info_text(current_devices() or ())
        instances = plan.instances()
        warmup_steps = 1 if plan.warmup or plan.warmup_until_steady else 0
        self.total_steps = sum(plan.repetitions + warmup_steps for _ in instances)
        self.done_steps = 0
        self.n_instances = len(instances)
        self.instance_number = 0
        self.cpu_probe = CpuLoadProbe(own_tree_pid)
        self.llama_defaults = _llama_bench_defaults(self.lc)
        self._model: LlamaModel | None = None
        self._model_key: _ModelKey | None = None

    def _progress(self, what: str) -> None:
        if self.on_progress is not None:
            self.on_progress(self.done_steps, self.total_steps, what)

    def run(self, infos: dict[str, ModelInfo]) -> list[BenchResult]:
        results: list[BenchResult] = []
        try:
            for run in self.plan.runs():
                if self.cancel.is_set():
                    break
                model_path = run.model
                info = infos.get(model_path) or infos.setdefault(model_path, inspect_model(model_path))
                result = self._run_instance(model_path, info, run.load, run.test, run.flash_attn)
                if result is not None:
                    results.append(result)
                    if self.on_result is not None:
                        self.on_result(result)
        finally:
            self._unload()
        return results

    # ---- model and context ---------------------------------------------------------------------
    def _keep_loading(self, _fraction: float) -> bool:
        return not self.cancel.is_set()

    def _unload(self) -> None:
        model, self._model, self._model_key = self._model, None, None
        if model is not None:
            model.close()

    def _load(self, model_path: str, settings: LoadSettings, label: str) -> LlamaModel | None:
        """The model for these settings: the one already loaded when only context settings differ
        (llama-bench keeps it too), else a fresh load. None if the load was cancelled."""
        key = _ModelKey(model_path, settings.n_gpu_layers, settings.use_mmap, settings.use_mlock)
        if self._model is not None and self._model_key == key:
            self._progress(f"starting {label}")
            return self._model
        self._unload()
        self._progress(f"loading {label}")
        require_working_build(BenchError)
        if settings.numa:
            init_numa()
        try:
            self._model = LlamaModel(
                model_path,
                n_gpu_layers=settings.n_gpu_layers,
                use_mmap=settings.use_mmap,
                use_mlock=settings.use_mlock,
                progress=self._keep_loading,
            )
        except DriverCancelled:
            return None
        except DriverError as exc:
            raise BenchError(str(exc)) from None
        self._model_key = key
        return self._model

    def _run_instance(
        self, model_path: str, info: ModelInfo, load: LoadSettings, test: BenchTest, flash_attn: int
    ) -> BenchResult | None:
        settings = instance_settings(load, test)
        n_ctx = settings.n_ctx
        settings.validate()
        label = f"{os.path.basename(model_path)} {test.name} (t={load.n_threads}, b={load.n_batch})"
        self.instance_number += 1
        step = _StepText(test.name, self.plan.repetitions, self.instance_number, self.n_instances, label)
        model = self._load(model_path, settings, label)
        if model is None:
            return None
        try:
            ctx = LlamaContext.for_settings(
                model, settings, n_ctx=n_ctx, cancel=self.cancel, flash_attn_type=flash_attn
            )
        except DriverError as exc:
            raise BenchError(str(exc)) from None
        warmup: dict[str, Any] = {"warmup_runs": 0}
        cpu_start: CpuLoadSample | None = None
        cpu_end: CpuLoadSample | None = None
        samples: list[int] = []
        prompt_samples: list[int] = []
        recorder: Any = None
        summary: Any = None
        try:
            # Each progress call says what runs next, and `done` counts the steps (the warm-up, each
            # repetition) finished: the bar moves once per repetition, and the text names the one
            # running now ("pp512 · repetition 3 of 5"). app.tune.measure times repetitions by the
            # calls where `done` moved.
            if self.plan.warmup_until_steady:
                self._progress(step.warmup())
                runs, steady = self._warm_up_until_steady(ctx, model, test, step)
                warmup = {"warmup_runs": runs, "warmup_steady": steady}
                self.done_steps += 1
            elif self.plan.warmup:
                self._progress(step.warmup())
                warmup = {"warmup_runs": 1}
                ctx.clear(data=False)
                if test.n_prompt:
                    self._decode_prompt(ctx, self._random_ids(model, test.n_prompt, first=True))
                if test.n_gen:
                    self._decode_gen(ctx, self._random_ids(model, 1, first=True))
                self.done_steps += 1
            if self.plan.repetitions and not self.cancel.is_set():
                self._progress(step.repetition(1))
            recorder = self._start_recorder()
            cpu_start = self.cpu_probe.sample()
            for rep in range(self.plan.repetitions):
                if self.cancel.is_set():
                    break
                ctx.clear(data=False)
                if test.n_depth:
                    self._decode_prompt(ctx, self._random_ids(model, test.n_depth, first=True))
                prompt = self._random_ids(model, test.n_prompt, first=not test.n_depth)
                gen = self._random_ids(model, test.n_gen, first=not (test.n_depth or test.n_prompt))
                t0 = time.perf_counter_ns()
                if prompt:
                    self._decode_prompt(ctx, prompt)
                t_prompt = time.perf_counter_ns()  # batched-bench's t_pp_end: the prompt synchronized
                if gen:
                    self._decode_gen(ctx, gen)
                samples.append(time.perf_counter_ns() - t0)
                prompt_samples.append(t_prompt - t0)
                self.done_steps += 1
                self._progress(step.repetition(rep + 2) if rep + 1 < self.plan.repetitions else step.done())
        except DriverCancelled:
            pass  # Stop inside a repetition: that one is dropped, the finished ones are kept
        except DriverError as exc:
            raise BenchError(f"{label}: {exc}") from None
        finally:
            if cpu_start is not None:
                cpu_end = self.cpu_probe.sample()
            if recorder is not None:
                summary = recorder.stop()
            flash_attn_used = ctx.flash_attn_used
            ctx.close()
        if not samples:
            return None
        extra = {
            **warmup,
            "flash_attn": flash_attn,
            "flash_attn_used": flash_attn_used,
            **_load_settings_fields(self.lc, load),
            **self.llama_defaults,
        }
        if cpu_start is not None and cpu_end is not None:
            extra.update(cpu_load_fields(self.cpu_probe.between(cpu_start, cpu_end)))
        result = self._result(model_path, info, load, test, samples, summary, extra)
        if test.n_prompt and test.n_gen:
            result = dataclasses.replace(result, samples_pp_ns=tuple(prompt_samples))
        desc = self._model_desc(model)
        if desc:  # llama-bench's model_type: compare-llama-bench.py pairs rows by it
            result = dataclasses.replace(result, model_type=desc)
        return result

    def _model_desc(self, model: LlamaModel) -> str | None:
        """llama.cpp's own description of the loaded model (llama_model_desc), which llama-bench
        records as model_type: "llama 256M Q4_1" for the demo model, whose header says 135M."""
        buf = ctypes.create_string_buffer(256)
        n = int(self.lc.llama_model_desc(model.handle, buf, len(buf)))
        return buf.value.decode("utf-8", errors="replace").strip() if n > 0 else None

    def _warm_up_until_steady(
        self, ctx: LlamaContext, model: LlamaModel, test: BenchTest, step: _StepText
    ) -> tuple[int, bool]:
        """Full repetitions until the last few agree (app.bench.trust.SteadyRule) or a cap is reached;
        returns (runs, steady)."""
        rule = STEADY_RULE
        rates: list[float] = []
        started = time.monotonic()
        while not self.cancel.is_set():
            rates.append(1e9 * test.n_tokens / max(1, self._warmup_repetition(ctx, model, test)))
            spread = rule.spread_percent(rates)
            within = f", the last {rule.window} within {spread:.1f} %" if spread is not None else ""
            self._progress(step.warmup(f"run {len(rates)} done{within}"))
            if rule.steady(rates):
                return len(rates), True
            if rule.over(len(rates), time.monotonic() - started):
                return len(rates), False
        return len(rates), False

    def _warmup_repetition(self, ctx: LlamaContext, model: LlamaModel, test: BenchTest) -> int:
        """One repetition as the timed ones run it (cleared cache, depth, prompt, generation); its ns."""
        ctx.clear(data=False)
        if test.n_depth:
            self._decode_prompt(ctx, self._random_ids(model, test.n_depth, first=True))
        prompt = self._random_ids(model, test.n_prompt, first=not test.n_depth)
        gen = self._random_ids(model, test.n_gen, first=not (test.n_depth or test.n_prompt))
        t0 = time.perf_counter_ns()
        if prompt:
            self._decode_prompt(ctx, prompt)
        if gen:
            self._decode_gen(ctx, gen)
        return time.perf_counter_ns() - t0

    # ---- llama-bench's test_prompt / test_gen -------------------------------------------------
    def _random_ids(self, model: LlamaModel, n: int, first: bool) -> list[int]:
        """Random token ids, BOS first when they start the sequence and the vocabulary adds one.
        Drawn before the clock starts."""
        ids = [self.rng.randrange(model.n_vocab) for _ in range(n)]
        if first and ids and model.add_bos:
            ids[0] = model.bos
        return ids

    def _decode_prompt(self, ctx: LlamaContext, ids: Sequence[int]) -> None:
        """n_batch-sized llama_decode calls, then one synchronize (llama-bench's test_prompt)."""
        # A prompt batch can run for seconds: let llama.cpp poll the cancel flag inside it.
        ctx.watch_for_abort(True)
        ctx.decode(ids)
        self.lc.llama_synchronize(ctx.handle)

    def _decode_gen(self, ctx: LlamaContext, ids: Sequence[int]) -> None:
        """One-token llama_decode calls, each synchronized (llama-bench's test_gen)."""
        # Polled per graph node, the flag would cost generation a few per cent; a token takes
        # milliseconds, so checking between tokens stops it just as promptly.
        ctx.watch_for_abort(False)
        decode_one = ctx.decode_one
        synchronize = self.lc.llama_synchronize
        handle = ctx.handle
        is_set = self.cancel.is_set
        for token in ids:
            if is_set():
                raise DriverCancelled("Cancelled between generated tokens.")
            decode_one(token)
            synchronize(handle)

    # ---- telemetry and the result record ------------------------------------------------------
    def _start_recorder(self) -> Any:
        if self.sampler is None:
            return None
        from app.telemetry.energy import TelemetryRecorder

        recorder = TelemetryRecorder(self.sampler)
        recorder.start()
        return recorder

    def _result(
        self,
        model_path: str,
        info: ModelInfo,
        load: LoadSettings,
        test: BenchTest,
        samples: list[int],
        summary: Any,
        extra: dict[str, Any],
    ) -> BenchResult:
        telemetry = telemetry_fields(summary, test.n_tokens * len(samples)) if summary is not None else {}
        return BenchResult(
            model_filename=model_path,
            model_type=model_type(info),
            model_size=info.tensor_data_bytes,
            model_n_params=info.n_params,
            n_batch=load.n_batch,
            n_ubatch=load.n_ubatch,
            n_threads=load.n_threads,
            type_k=load.type_k,
            type_v=load.type_v,
            n_gpu_layers=load.n_gpu_layers,
            use_mmap=load.use_mmap,
            n_prompt=test.n_prompt,
            n_gen=test.n_gen,
            n_depth=test.n_depth,
            test_time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            samples_ns=tuple(samples),
            cpu_info=self.cpu,
            gpu_info=self.gpu,
            backends=",".join(b for b in self.build.backends if b != "CPU") or "CPU",
            build=self.build.llama_cpp_python_version,
            complete=len(samples) == self.plan.repetitions,
            **telemetry,
            **extra,
        )


def telemetry_fields(summary: Any, n_tokens: int) -> dict[str, Any]:
    """BenchResult's hardware fields from a TelemetrySummary of a test's timed repetitions."""
    return {
        "mean_cpu_percent": summary.mean_cpu_percent,
        "peak_rss_bytes": summary.peak_rss_bytes,
        "mean_power_watts": summary.mean_power_watts,
        "energy_joules": summary.energy_joules,
        "joules_per_token": (summary.energy_joules / n_tokens) if summary.energy_joules else None,
        "max_temp_c": summary.max_temp_c,
        "throttle_events": summary.throttle_events,
        "throttled": bool(summary.throttled),
        "throttle_detail": getattr(summary, "throttle_detail", ""),
        "cpu_freq_min_mhz": getattr(summary, "cpu_freq_min_mhz", None),
        "cpu_freq_max_mhz": getattr(summary, "cpu_freq_max_mhz", None),
        "cpu_freq_limit_mhz": getattr(summary, "cpu_freq_limit_mhz", None),
    }


_SPLIT_MODES = {0: "none", 1: "layer", 2: "row", 3: "tensor"}  # llama_split_mode
_LAZY_MODES = {0: "off", 1: "auto", 2: "on"}  # llama_lazy_mode, as llama-bench's lazy_mode_str


def _llama_bench_defaults(lc: Any) -> dict[str, Any]:
    """The llama-bench settings LlamaScope leaves at llama.cpp's defaults, read from them: the model
    and context default parameters, and ggml's default threadpool (ggml.c ggml_threadpool_params_init:
    no CPU mask, not strict, poll 50), which llama.cpp uses when no threadpool is attached."""
    model = lc.llama_model_default_params()
    context = lc.llama_context_default_params()
    return {
        "cpu_mask": "0x0",
        "cpu_strict": False,
        "poll": 50,
        "n_cpu_moe": 0,  # no expert tensors overridden onto the CPU
        "split_mode": _SPLIT_MODES.get(int(model.split_mode), str(model.split_mode)),
        "main_gpu": int(model.main_gpu),
        "devices": "auto",  # no device list: llama.cpp uses all
        "tensor_split": "0.00",  # no split given
        "tensor_buft_overrides": "none",
        "lazy_mode": _LAZY_MODES.get(int(model.lazy_mode), str(model.lazy_mode)),
        "embeddings": bool(context.embeddings),
        "no_op_offload": int(not context.op_offload),
        "no_host": bool(model.no_host),
        "repack": bool(model.use_extra_bufts),
        "fit_target": 0,  # llama-bench's -fitt: LlamaScope does not fit the model to memory
        "fit_min_ctx": 0,
    }


def _load_settings_fields(lc: Any, load: LoadSettings) -> dict[str, Any]:
    """The llama-bench settings that follow from LlamaScope's load settings: the load mode as
    app.llama.driver.LlamaModel asks for it, and KV offload."""
    mode = (
        lc.LLAMA_LOAD_MODE_MMAP_MLOCK
        if load.use_mmap and load.use_mlock
        else lc.LLAMA_LOAD_MODE_MLOCK
        if load.use_mlock
        else lc.LLAMA_LOAD_MODE_MMAP
        if load.use_mmap
        else lc.LLAMA_LOAD_MODE_NONE
    )
    name = lc.llama_load_mode_name(mode)
    return {
        "load_mode": name.decode() if isinstance(name, bytes) else str(name),
        "no_kv_offload": not load.offload_kqv,
    }


def instance_settings(load: LoadSettings, test: BenchTest) -> LoadSettings:
    """The settings one test runs with. The context is sized as llama-bench sizes it,
    n_prompt + n_gen + n_depth (at least 16 cells), and llama-bench's -t sets both thread counts: a
    prompt runs on n_threads too."""
    n_ctx = max(test.n_prompt + test.n_gen + test.n_depth, 16)
    return dataclasses.replace(load, n_ctx=n_ctx, n_threads_batch=load.n_threads)


def _configuration_text(
    model_path: str, settings: LoadSettings, test: BenchTest, flash_attn: int | None = None
) -> str:
    on_off = "on" if settings.flash_attn else "off"
    if flash_attn == FLASH_ATTN_AUTO:
        on_off = "auto"
    return (
        f"benchmark {os.path.basename(model_path)} {test.name} (n_ctx {settings.n_ctx}, n_batch "
        f"{settings.n_batch}, n_ubatch {settings.n_ubatch}, KV cache {settings.type_k}/{settings.type_v}, "
        f"flash attention {on_off}, {settings.n_gpu_layers} GPU layers)"
    )


def check_plan_memory(plan: BenchPlan, infos: dict[str, ModelInfo] | None = None) -> dict[str, ModelInfo]:
    """The memory check (app.model.memory.check_memory) for every distinct configuration of the plan,
    before anything loads: a sweep refuses at once, not after the configurations that fit have run.

    Each configuration is checked with the context it would get (`instance_settings`). The available
    RAM is read once per model file, before the runner loads anything. Refused configurations raise
    one InsufficientMemoryError: the first one's numbers and how many more would not fit, unless
    `plan.override_memory`. Returns the models' headers (read here anyway) for the runner.
    """
    infos = {} if infos is None else infos
    available: dict[str, int] = {}
    seen: set[tuple[str, LoadSettings]] = set()
    refused: list[InsufficientMemoryError] = []
    for run in plan.runs():
        model_path, load, test = run.model, run.load, run.test
        settings = instance_settings(load, test)
        if (model_path, settings) in seen:
            continue
        seen.add((model_path, settings))
        settings.validate()  # the estimate needs valid settings; the runner would refuse them anyway
        info = infos.get(model_path) or infos.setdefault(model_path, inspect_model(model_path))
        if model_path not in available:
            available[model_path] = available_ram_for(model_path)
        try:
            check_memory(
                info,
                settings,
                override=plan.override_memory,
                purpose=_configuration_text(model_path, settings, test, run.flash_attn),
                available_ram_bytes=available[model_path],
            )
        except InsufficientMemoryError as exc:
            refused.append(exc)
    if refused:
        first = refused[0]
        more = f" ({len(refused) - 1} more of the plan's {len(seen)} configurations would not fit either)"
        raise InsufficientMemoryError(first.estimate, first.purpose + (more if len(refused) > 1 else ""))
    return infos


def run_benchmark(
    plan: BenchPlan,
    *,
    cancel: CancelFlag | None = None,
    on_progress: ProgressCallback | None = None,
    on_result: Callable[[BenchResult], None] | None = None,
    sampler: Any | None = None,
    own_tree_pid: int | None = None,
) -> list[BenchResult]:
    """Run every test of the plan on the calling thread; returns the finished results.

    `cancel` (threading.Event, multiprocessing.Event, anything with is_set()) stops the run
    within a fraction of a second: llama.cpp polls it inside every prompt batch, generation
    checks it between tokens, and a load checks it between tensors. A cancelled run returns
    what finished; a test stopped part-way keeps its finished repetitions with
    `complete=False` and drops the one that was running. Called on the main thread, Ctrl+C
    stops the run the same way, then raises KeyboardInterrupt. `sampler` (a running
    app.telemetry.sampler.Sampler) adds the hardware figures of each test's timed repetitions.
    Before anything loads, every distinct configuration passes the memory check
    (`check_plan_memory`): one that will not fit raises InsufficientMemoryError with the numbers,
    unless `plan.override_memory`. `own_tree_pid` roots the process tree whose CPU time is
    LlamaScope's own (default: this process); everything else busy meanwhile is other load.
    """
    infos = check_plan_memory(plan)  # before llama.cpp allocates anything
    with _ctrl_c_as_stop(cancel or threading.Event()) as flag:
        return _Runner(plan, flag, on_progress, on_result, sampler, own_tree_pid).run(infos)


class AnyFlag:
    """A cancel flag that is set when any of its flags is."""

    def __init__(self, *flags: CancelFlag) -> None:
        self._flags = flags

    def is_set(self) -> bool:
        return any(flag.is_set() for flag in self._flags)


@contextlib.contextmanager
def _ctrl_c_as_stop(cancel: CancelFlag) -> Iterator[CancelFlag]:
    """On the main thread, make Ctrl+C a Stop, then raise KeyboardInterrupt once the run is over.

    Python runs signal handlers on the main thread in whatever Python code runs next, and during a
    prompt batch that is llama.cpp's abort callback: a KeyboardInterrupt raised there is swallowed
    by ctypes (which prints its traceback) and the run goes on, so Ctrl+C would not stop a script
    that runs a benchmark. A handler that only sets a flag is safe there, and the abort callback
    then sees the flag. Another thread, or a process with its own SIGINT handler (the engine host
    ignores SIGINT), is left alone.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield cancel
        return
    pressed = threading.Event()

    def on_ctrl_c(_signum: int, _frame: FrameType | None) -> None:
        pressed.set()

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield AnyFlag(cancel, pressed)
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed.is_set():
        raise KeyboardInterrupt


def build_tests(
    n_prompt: Iterable[int], n_gen: Iterable[int], pg: Iterable[tuple[int, int]], depths: Iterable[int]
) -> tuple[BenchTest, ...]:
    """llama-bench's test list: every -p, every -n, every -pg pair, each at every depth."""
    tests = []
    for d in depths:
        tests += [BenchTest(n_prompt=p, n_depth=d) for p in n_prompt if p > 0]
        tests += [BenchTest(n_gen=n, n_depth=d) for n in n_gen if n > 0]
        tests += [BenchTest(n_prompt=p, n_gen=n, n_depth=d) for p, n in pg]
    if not tests:
        raise BenchError("no tests: give -p, -n or -pg with non-zero sizes")
    return tuple(tests)
