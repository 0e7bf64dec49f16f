"""A benchmark runner that measures what llama-bench measures, the way llama-bench measures it.

Tests: `pp N` (N prompt tokens decoded in n_batch-sized batches), `tg N` (N single-token
decodes), `pg N,M` (both in one timed run) and depth `d` (the KV cache filled with d tokens
first, untimed). Tokens are random ids (BOS first), prepared before the clock starts; nothing
is sampled or detokenized, exactly as in llama-bench's test_prompt/test_gen. Each test runs a
warm-up, then R timed repetitions from a cleared cache; a sample's speed is
(n_prompt + n_gen) / time, and the result is the mean ± sample standard deviation of those.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import os
import platform
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app import llama_runtime
from app.build_check import require_working_build
from app.gguf_info import inspect_model
from app.model_info import ModelInfo
from app.settings import LoadSettings
from app.stats import mean, stdev

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


def parse_values(text: str, kind: type = int) -> tuple[Any, ...]:
    """llama-bench list syntax: "1,2,4", ranges "1-8", "1-8+2" (step), "1-64*2" (multiply)."""
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
    return tuple(out)


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

    def __post_init__(self) -> None:
        if self.repetitions < 1:
            raise BenchError("repetitions must be at least 1")
        for name, values in self.sweep:
            if name not in SWEEPABLE:
                raise BenchError(f"{name} cannot be swept; choose from {', '.join(SWEEPABLE)}")
            if not values:
                raise BenchError(f"no values for {name}")

    @property
    def swept_fields(self) -> tuple[str, ...]:
        return tuple(name for name, values in self.sweep if len(values) > 1)

    def instances(self) -> list[tuple[str, LoadSettings, BenchTest]]:
        """Every (model, settings, test) to run, models outermost as llama-bench orders them."""
        names = [name for name, _ in self.sweep]
        combos = list(itertools.product(*(values for _, values in self.sweep))) or [()]
        out = []
        for model in self.models:
            for combo in combos:
                load = dataclasses.replace(self.base, **dict(zip(names, combo, strict=False)))
                for test in self.tests:
                    out.append((model, load, test))
        return out


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
    flash_attn: bool
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


ProgressCallback = Callable[[int, int, str], None]  # (done steps, total steps, what is running)


def cpu_info() -> str:
    """The CPU model string, as llama-bench reports it (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "n/a"


def model_type(info: ModelInfo) -> str:
    """llama.cpp's model description: architecture, size label, file type ("llama 135M Q4_1")."""
    size = info.size_label or f"{info.n_params / 1e9:.1f}B"
    return f"{info.architecture or 'unknown'} {size} {info.file_type or ''}".strip()


class _Runner:
    """Runs a plan on one thread; owns at most one llama.cpp model at a time."""

    def __init__(
        self,
        plan: BenchPlan,
        cancel: threading.Event,
        on_progress: ProgressCallback | None,
        on_result: Callable[[BenchResult], None] | None,
        sampler: Any | None,
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
        instances = plan.instances()
        self.total_steps = sum(plan.repetitions + (1 if plan.warmup else 0) for _ in instances)
        self.done_steps = 0

    def _progress(self, what: str) -> None:
        if self.on_progress is not None:
            self.on_progress(self.done_steps, self.total_steps, what)

    def run(self) -> list[BenchResult]:
        results: list[BenchResult] = []
        infos: dict[str, ModelInfo] = {}
        for model_path, load, test in self.plan.instances():
            if self.cancel.is_set():
                break
            info = infos.get(model_path) or infos.setdefault(model_path, inspect_model(model_path))
            result = self._run_instance(model_path, info, load, test)
            if result is not None:
                results.append(result)
                if self.on_result is not None:
                    self.on_result(result)
        return results

    def _run_instance(
        self, model_path: str, info: ModelInfo, load: LoadSettings, test: BenchTest
    ) -> BenchResult | None:
        n_ctx = max(test.n_prompt + test.n_gen + test.n_depth, 16)
        settings = dataclasses.replace(load, n_ctx=n_ctx, n_threads_batch=load.n_threads)
        settings.validate()
        label = f"{os.path.basename(model_path)} {test.name} (t={load.n_threads}, b={load.n_batch})"
        self._progress(f"loading {label}")
        require_working_build(BenchError)
        llama = self.lc.Llama(model_path=model_path, verbose=False, **settings.to_llama_kwargs())
        try:
            ctx = llama.ctx
            vocab = self.lc.llama_model_get_vocab(llama.model)
            self.lc.llama_set_n_threads(ctx, load.n_threads, load.n_threads)
            n_batch = min(load.n_batch, n_ctx)
            if self.plan.warmup:
                self._clear(ctx)
                if test.n_prompt:
                    self._decode_prompt(ctx, self._prompt_batches(vocab, test.n_prompt, n_batch))
                if test.n_gen:
                    self._decode_gen(ctx, self._gen_tokens(vocab, 1))
                self.done_steps += 1
                self._progress(f"warm-up done: {label}")
            recorder = self._start_recorder()
            samples: list[int] = []
            for rep in range(self.plan.repetitions):
                if self.cancel.is_set():
                    break
                self._clear(ctx)
                if test.n_depth:
                    self._decode_prompt(ctx, self._prompt_batches(vocab, test.n_depth, n_batch))
                prompt = self._prompt_batches(vocab, test.n_prompt, n_batch, first=not test.n_depth)
                gen = self._gen_tokens(vocab, test.n_gen, first=not (test.n_depth or test.n_prompt))
                t0 = time.perf_counter_ns()
                if prompt:
                    self._decode_prompt(ctx, prompt)
                if gen:
                    self._decode_gen(ctx, gen)
                samples.append(time.perf_counter_ns() - t0)
                self.done_steps += 1
                self._progress(f"{label}: repetition {rep + 1}/{self.plan.repetitions}")
            summary = recorder.stop() if recorder is not None else None
        finally:
            llama.close()
        if not samples:
            return None
        return self._result(model_path, info, load, test, samples, summary)

    # ---- llama-bench's test_prompt / test_gen -------------------------------------------------
    def _clear(self, ctx: Any) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(ctx), False)

    def _random_ids(self, vocab: Any, n: int, first: bool) -> list[int]:
        n_vocab = self.lc.llama_vocab_n_tokens(vocab)
        ids = [self.rng.randrange(n_vocab) for _ in range(n)]
        if first and ids and self.lc.llama_vocab_get_add_bos(vocab):
            ids[0] = self.lc.llama_vocab_bos(vocab)
        return ids

    def _prompt_batches(self, vocab: Any, n: int, n_batch: int, first: bool = True) -> list[Any]:
        """ctypes token arrays of at most n_batch ids, built before timing starts."""
        ids = self._random_ids(vocab, n, first)
        chunks = [ids[i : i + n_batch] for i in range(0, n, n_batch)]
        return [(self.lc.llama_token * len(chunk))(*chunk) for chunk in chunks]

    def _gen_tokens(self, vocab: Any, n: int, first: bool = True) -> list[Any]:
        ids = self._random_ids(vocab, n, first)
        return [(self.lc.llama_token * 1)(t) for t in ids]

    def _decode_prompt(self, ctx: Any, batches: Sequence[Any]) -> None:
        for arr in batches:
            rc = self.lc.llama_decode(ctx, self.lc.llama_batch_get_one(arr, len(arr)))
            if rc != 0:
                raise BenchError(f"llama_decode failed on a prompt batch (code {rc})")
        self.lc.llama_synchronize(ctx)

    def _decode_gen(self, ctx: Any, tokens: Sequence[Any]) -> None:
        for arr in tokens:
            rc = self.lc.llama_decode(ctx, self.lc.llama_batch_get_one(arr, 1))
            if rc != 0:
                raise BenchError(f"llama_decode failed on a generation step (code {rc})")
            self.lc.llama_synchronize(ctx)

    # ---- telemetry and the result record ------------------------------------------------------
    def _start_recorder(self) -> Any:
        if self.sampler is None:
            return None
        from app.telemetry import TelemetryRecorder

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
    ) -> BenchResult:
        telemetry: dict[str, Any] = {}
        if summary is not None:
            n_tokens = test.n_tokens * len(samples)
            telemetry = {
                "mean_cpu_percent": summary.mean_cpu_percent,
                "peak_rss_bytes": summary.peak_rss_bytes,
                "mean_power_watts": summary.mean_power_watts,
                "energy_joules": summary.energy_joules,
                "joules_per_token": (summary.energy_joules / n_tokens) if summary.energy_joules else None,
                "max_temp_c": summary.max_temp_c,
                "throttle_events": summary.throttle_events,
                "throttled": bool(summary.throttled),
            }
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
            flash_attn=load.flash_attn,
            use_mmap=load.use_mmap,
            n_prompt=test.n_prompt,
            n_gen=test.n_gen,
            n_depth=test.n_depth,
            test_time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            samples_ns=tuple(samples),
            cpu_info=self.cpu,
            gpu_info="",
            backends=",".join(b for b in self.build.backends if b != "CPU") or "CPU",
            build=self.build.llama_cpp_python_version,
            complete=len(samples) == self.plan.repetitions,
            **telemetry,
        )


def run_benchmark(
    plan: BenchPlan,
    *,
    cancel: threading.Event | None = None,
    on_progress: ProgressCallback | None = None,
    on_result: Callable[[BenchResult], None] | None = None,
    sampler: Any | None = None,
) -> list[BenchResult]:
    """Run every test of the plan on the calling thread; returns the finished results.

    `cancel` is checked between repetitions: a cancelled run returns what finished, and a test
    stopped part-way keeps its finished repetitions with `complete=False`. `sampler` (a running
    app.telemetry.Sampler) adds the hardware figures of each test's timed repetitions.
    """
    return _Runner(plan, cancel or threading.Event(), on_progress, on_result, sampler).run()


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
