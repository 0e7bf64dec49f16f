"""Mozilla LocalScore, measured the way LocalScore measures it and scored the way it scores.

Source: github.com/Mozilla-Ocho/llamafile, folder `localscore/` (read at commit cfa861a6, June 2025).
Every definition below names the file and function it follows:

- The nine tests, (prompt, generated) tokens: `localscore.cpp` get_baseline_test_configs().
- Each test runs in a fresh context of exactly n_prompt + n_gen cells (`localscore.cpp`
  run_baseline_tests), n_batch 2048, n_ubatch 512, an F16 KV cache, flash attention off, every
  layer on the GPU (n_gpu_layers 9999) and one thread count for prompt and generation
  (`cmd.cpp` cmd_params_defaults, cmd_params::to_llama_cparams; `benchmark.cpp` test::test_prompt).
  LocalScore runs 1 repetition by default (--reps N, --extended = 4, --long = 16). Its thread count is
  llamafile's cpu_get_num_math(), the physical (performance) cores; LlamaScope's default is the
  physical cores, and -t sets it.
- One warm-up before all tests: 1024 prompt + 16 generated tokens in a context of its own
  (`localscore.cpp` perform_warmup, warmup_run).
- A repetition (`benchmark.cpp` test::run): the KV cache cleared; the prompt as random token ids
  (BOS first when the vocabulary adds one) in n_batch-sized llama_decode calls, then one
  llama_synchronize (test::test_prompt); then n_gen single-token llama_decode calls, each
  synchronized, starting from BOS (test::test_gen). Nothing is sampled.
- Prompt t/s of a test: the arithmetic mean over its repetitions of n_prompt / prompt time
  (test::avg_ts(PROMPT_TPS), test::get_ts). Generation t/s: the same with n_gen / generation time,
  the generation interval holding all n_gen decodes (test::avg_ts(GEN_TPS)).
- TTFT of a repetition: from the start of the repetition (before the prompt) to the end of the first
  generated token's llama_decode + llama_synchronize, so prompt processing plus one decode and no
  sampling (test::test_gen). TTFT of a test: the integer mean of those nanoseconds (utils::avg on
  uint64_t truncates), divided by 1e6 for milliseconds (test::ttft, test::get_values).
- The per-test figures reach the score through LocalScore's JSON, written with std::to_string, so
  rounded to 6 decimals (test::get_values, json_printer::print_test), then parsed again
  (`localscore.cpp` process_and_submit_results).
- The score (`localscore.cpp` getResultsSummary): the arithmetic means over the tests of prompt
  t/s, generation t/s and TTFT ms, then
  score = pow(avg_prompt_tps * avg_gen_tps * (1000 / avg_ttft_ms), 1.0 / 3.0) * 10,
  shown truncated to a whole number ((int) in displayResults). The cube root is the geometric mean
  of the three parts; the means inside it are arithmetic.
- Power (`benchmark.cpp` test::get_power, test::get_tps_watt): the mean power over a test's
  repetitions, and t/s per watt = t/s / W. LocalScore measures it on macOS only (powersampler.cpp
  getPowerSampler); here it comes from LlamaScope's telemetry (RAPL, NVML) where measured, else n/a.

What LlamaScope adds, never inside the score: shapes larger than the model's training context (or a
smaller cap asked for) are capped and labelled, and a score over capped shapes is "capped score, not
comparable", never a LocalScore; telemetry beside each test.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.bench.runner import BenchError, model_type
from app.common.formatting import fmt
from app.common.markdown import markdown_table
from app.common.stats import stdev
from app.llama import runtime as llama_runtime
from app.llama.build_check import require_working_build
from app.llama.devices import gpu_devices, gpu_info_text
from app.llama.driver import CancelFlag, DriverCancelled, DriverError, LlamaContext, LlamaModel
from app.llama.facts import current_devices
from app.model.gguf_info import inspect_model
from app.model.memory import check_memory
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings, count_physical_cores
from app.telemetry.hardware import cpu_info

# localscore.cpp get_baseline_test_configs(), in its order.
LOCALSCORE_TESTS: tuple[tuple[int, int], ...] = (
    (1024, 16),  # 64:1 title generation
    (4096, 256),  # 16:1 content summarization
    (2048, 256),  # 8:1 lots of code to fix
    (2048, 768),  # 3:1 standard code chat
    (1024, 1024),  # 1:1 code back and forth
    (1280, 3072),  # 1:3 reasoning over code
    (384, 1152),  # 1:3 code gen with back and forth
    (64, 1024),  # 1:16 code gen/ideation
    (16, 1536),  # 1:96 QA, storytelling, reasoning
)
WARMUP_TEST = (1024, 16)  # localscore.cpp perform_warmup
N_BATCH = 2048  # cmd.cpp cmd_params_defaults
N_UBATCH = 512
KV_CACHE_TYPE = "f16"  # llamafile picks BF16 on CPUs with AVX512_BF16; upstream llama.cpp's default is F16
LOCALSCORE_DEFAULT_REPETITIONS = 1  # cmd.cpp: reps 1; --extended 4, --long 16
# LlamaScope's default: three repetitions give each test a spread (and `compare` its minimum);
# --quick runs LocalScore's own single repetition.
DEFAULT_REPETITIONS = 3
QUICK_REPETITIONS = LOCALSCORE_DEFAULT_REPETITIONS
MIN_CONTEXT = 16  # the smallest cap: one prompt token and a handful generated is no test at all
SOURCE = "Mozilla-Ocho/llamafile localscore/ (commit cfa861a6)"


class ScoreError(BenchError):
    """LocalScore cannot run as asked; the message says why."""


@dataclass(frozen=True)
class ScoreShape:
    """One LocalScore test: the tokens it runs, and LocalScore's own when they were capped."""

    n_prompt: int
    n_gen: int
    requested_prompt: int
    requested_gen: int

    @property
    def capped(self) -> bool:
        return (self.n_prompt, self.n_gen) != (self.requested_prompt, self.requested_gen)

    @property
    def n_ctx(self) -> int:
        """The context LocalScore gives the test: exactly its tokens (localscore.cpp run_baseline_tests)."""
        return self.n_prompt + self.n_gen

    @property
    def name(self) -> str:
        """benchmark.cpp test::test's name, "pp1024+tg16"."""
        return f"pp{self.n_prompt}+tg{self.n_gen}"

    @property
    def requested_name(self) -> str:
        return f"pp{self.requested_prompt}+tg{self.requested_gen}"


def cap_shape(n_prompt: int, n_gen: int, n_ctx: int | None) -> ScoreShape:
    """The test (n_prompt, n_gen), shrunk to `n_ctx` tokens when it needs more, keeping its ratio of
    prompt to generated tokens (a 1:3 test stays 1:3) and at least one of each."""
    if n_ctx is None or n_prompt + n_gen <= n_ctx:
        return ScoreShape(n_prompt, n_gen, n_prompt, n_gen)
    if n_ctx < 2:
        raise ScoreError(f"a context of {n_ctx} tokens holds no test (at least {MIN_CONTEXT})")
    prompt = max(1, n_prompt * n_ctx // (n_prompt + n_gen))  # < n_ctx since n_gen >= 1
    return ScoreShape(prompt, n_ctx - prompt, n_prompt, n_gen)


def score_shapes(n_ctx_limit: int | None) -> tuple[ScoreShape, ...]:
    """LocalScore's nine tests, each capped to `n_ctx_limit` tokens (None: as LocalScore runs them)."""
    return tuple(cap_shape(p, g, n_ctx_limit) for p, g in LOCALSCORE_TESTS)


def context_limit(n_ctx_train: int | None, max_ctx: int | None) -> int | None:
    """The most tokens a test may use: the model's training context, or a smaller cap asked for."""
    limits = [n for n in (n_ctx_train, max_ctx) if n]
    return min(limits) if limits else None


# ---- the arithmetic, exactly as LocalScore does it ----------------------------------------------
def as_printed(value: float) -> float:
    """A figure as it reaches getResultsSummary: std::to_string's "%f" (6 decimals), parsed back."""
    return float(f"{value:.6f}")


def _c_mean(values: Sequence[float]) -> float:
    """utils::avg on doubles: a left-to-right sum divided by the count (Python's sum() of floats
    compensates rounding since 3.12, which C's std::accumulate does not)."""
    total = 0.0
    for v in values:
        total += v
    return total / len(values)


def localscore(avg_prompt_tps: float, avg_gen_tps: float, avg_ttft_ms: float) -> float:
    """localscore.cpp getResultsSummary, operation for operation:
    pow(avg_prompt_tps * avg_gen_tps * (1000 / avg_ttft_ms), 1.0 / 3.0) * 10.

    pow with the double nearest 1/3 is not an exact cube root: parts whose product is 1e6 score
    999.9999999999998, which LocalScore shows as 999."""
    if avg_ttft_ms <= 0 or avg_prompt_tps <= 0 or avg_gen_tps <= 0:
        raise ValueError("LocalScore needs positive prompt t/s, generation t/s and TTFT")
    return math.pow(avg_prompt_tps * avg_gen_tps * (1000 / avg_ttft_ms), 1.0 / 3.0) * 10


@dataclass(frozen=True)
class ScoreSummary:
    """getResultsSummary's LocalScoreResultsSummary: the three means and the score."""

    avg_prompt_tps: float
    avg_gen_tps: float
    avg_ttft_ms: float
    score: float  # performance_score, unrounded (as LocalScore submits it)
    n_tests: int

    @property
    def shown(self) -> int:
        """The score as LocalScore shows it: (int) truncates toward zero (displayResults)."""
        return int(self.score)


def summarize(figures: Sequence[tuple[float, float, float]]) -> ScoreSummary:
    """The score of per-test (prompt t/s, generation t/s, TTFT ms) as they appear in LocalScore's JSON."""
    if not figures:
        raise ValueError("no tests to score")
    avg_prompt = _c_mean([f[0] for f in figures])
    avg_gen = _c_mean([f[1] for f in figures])
    avg_ttft = _c_mean([f[2] for f in figures])
    return ScoreSummary(
        avg_prompt, avg_gen, avg_ttft, localscore(avg_prompt, avg_gen, avg_ttft), len(figures)
    )


@dataclass(frozen=True)
class ShapeResult:
    """One test's repetitions: the timings LocalScore keeps (benchmark.cpp test's intervals) and
    LlamaScope's telemetry over them."""

    shape: ScoreShape
    prompt_ns: tuple[int, ...]  # prompt_intervals
    gen_ns: tuple[int, ...]  # gen_intervals
    ttft_ns: tuple[int, ...]  # time_to_first_token
    total_ns: tuple[int, ...]  # test_intervals
    complete: bool = True  # False when stopped before all repetitions ran
    mean_power_watts: float | None = None  # None: no power source measured it
    energy_joules: float | None = None
    mean_cpu_percent: float | None = None
    throttled: bool = False

    def __post_init__(self) -> None:
        counts = {len(self.prompt_ns), len(self.gen_ns), len(self.ttft_ns), len(self.total_ns)}
        if len(counts) != 1 or not self.prompt_ns:
            raise ValueError("a test result needs the same number (at least one) of every timing")
        if min(*self.prompt_ns, *self.gen_ns, *self.ttft_ns, *self.total_ns) <= 0:
            raise ValueError("timings must be positive")

    @property
    def repetitions(self) -> int:
        return len(self.total_ns)

    @property
    def prompt_tps_samples(self) -> tuple[float, ...]:
        """test::get_ts(PROMPT_TPS): 1e9 * n_prompt / ns per repetition."""
        return tuple(1e9 * self.shape.n_prompt / t for t in self.prompt_ns)

    @property
    def gen_tps_samples(self) -> tuple[float, ...]:
        return tuple(1e9 * self.shape.n_gen / t for t in self.gen_ns)

    @property
    def prompt_tps(self) -> float:
        """test::avg_ts(PROMPT_TPS)."""
        return _c_mean(self.prompt_tps_samples)

    @property
    def gen_tps(self) -> float:
        """test::avg_ts(GEN_TPS)."""
        return _c_mean(self.gen_tps_samples)

    @property
    def ttft_ms(self) -> float:
        """test::ttft() / 1e6: the mean in whole nanoseconds (uint64 division), in milliseconds."""
        return (sum(self.ttft_ns) // len(self.ttft_ns)) / 1e6

    @property
    def prompt_tps_stddev(self) -> float:
        return stdev(self.prompt_tps_samples)

    @property
    def gen_tps_stddev(self) -> float:
        return stdev(self.gen_tps_samples)

    @property
    def ttft_ms_stddev(self) -> float:
        return stdev([t / 1e6 for t in self.ttft_ns])

    @property
    def prompt_tps_per_watt(self) -> float | None:
        """test::get_tps_watt(PROMPT_TPS); None where power was not measured."""
        return self.prompt_tps / self.mean_power_watts if self.mean_power_watts else None

    @property
    def gen_tps_per_watt(self) -> float | None:
        return self.gen_tps / self.mean_power_watts if self.mean_power_watts else None

    @property
    def printed(self) -> tuple[float, float, float]:
        """(prompt_tps, gen_tps, ttft_ms) as LocalScore's JSON holds them, for the score."""
        return as_printed(self.prompt_tps), as_printed(self.gen_tps), as_printed(self.ttft_ms)


@dataclass(frozen=True)
class ScoreRun:
    """A LocalScore run: its settings, the model and machine, and each test as it finished."""

    model_path: str
    model_name: str
    model_type: str
    model_size: int
    n_ctx_train: int | None
    max_ctx: int | None  # a cap asked for, below the training context (None: none)
    repetitions: int
    quick: bool
    n_threads: int
    n_gpu_layers: int
    n_batch: int
    n_ubatch: int
    type_k: str
    type_v: str
    flash_attn: bool
    build: str
    backends: str
    cpu_info: str
    gpu_info: str
    test_time: str
    shapes: tuple[ShapeResult, ...] = ()
    stopped: bool = False

    @property
    def planned(self) -> tuple[ScoreShape, ...]:
        return score_shapes(context_limit(self.n_ctx_train, self.max_ctx))

    @property
    def complete(self) -> bool:
        """All nine tests ran all their repetitions."""
        return len(self.shapes) == len(LOCALSCORE_TESTS) and all(s.complete for s in self.shapes)

    @property
    def capped(self) -> bool:
        return any(s.capped for s in self.planned) or any(s.shape.capped for s in self.shapes)

    @property
    def comparable(self) -> bool:
        """A LocalScore: all nine tests complete at LocalScore's own sizes."""
        return self.complete and not self.capped

    @property
    def summary(self) -> ScoreSummary | None:
        """The score of a complete run (capped or not); None while tests are missing."""
        if not self.complete:
            return None
        return summarize([s.printed for s in self.shapes])

    @property
    def kind(self) -> str:
        """What the score may be called: "LocalScore", "capped score" or "no score"."""
        if not self.complete:
            return "no score"
        return "LocalScore" if not self.capped else "capped score"


ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ScorePlan:
    """What `run_localscore` runs. `max_ctx` caps every test below the model's training context."""

    model: str
    repetitions: int = DEFAULT_REPETITIONS
    quick: bool = False  # a label: --quick chose QUICK_REPETITIONS
    n_threads: int = dataclasses.field(default_factory=count_physical_cores)
    n_gpu_layers: int | None = None  # None: all layers when llama.cpp lists a GPU, else 0 (LocalScore's 9999)
    max_ctx: int | None = None
    warmup: bool = True
    seed: int = 1  # std::rand() without srand() starts from seed 1
    override_memory: bool = False

    def __post_init__(self) -> None:
        if self.repetitions < 1:
            raise ScoreError("repetitions must be at least 1")
        if self.n_threads < 1:
            raise ScoreError("threads must be at least 1")
        if self.max_ctx is not None and self.max_ctx < MIN_CONTEXT:
            raise ScoreError(f"the context cap must be at least {MIN_CONTEXT} tokens (got {self.max_ctx})")

    @classmethod
    def quick_plan(cls, model: str, **kwargs: Any) -> ScorePlan:
        return cls(model, repetitions=QUICK_REPETITIONS, quick=True, **kwargs)

    def load_settings(self, n_ctx: int, n_gpu_layers: int) -> LoadSettings:
        """LocalScore's context settings (cmd.cpp) for a test of `n_ctx` tokens."""
        return LoadSettings(
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_batch=N_BATCH,
            n_ubatch=N_UBATCH,
            n_gpu_layers=n_gpu_layers,
            use_mmap=True,
            flash_attn=False,
            type_k=KV_CACHE_TYPE,
            type_v=KV_CACHE_TYPE,
        )


def check_plan(plan: ScorePlan, info: ModelInfo) -> tuple[ScoreShape, ...]:
    """The tests this plan runs on this model; refuses a cap above the training context."""
    if plan.max_ctx is not None and info.context_length and plan.max_ctx > info.context_length:
        raise ScoreError(
            f"the context cap {plan.max_ctx:,} is above the model's training context "
            f"({info.context_length:,} tokens), to which the tests are capped anyway"
        )
    return score_shapes(context_limit(info.context_length, plan.max_ctx))


class _ScoreRunner:
    """Runs a plan on one thread: one model load, a context per test, as localscore_cli does."""

    def __init__(
        self,
        plan: ScorePlan,
        cancel: CancelFlag,
        on_progress: ProgressCallback | None,
        on_shape: Callable[[ShapeResult], None] | None,
        sampler: Any | None,
    ) -> None:
        self.plan = plan
        self.cancel = cancel
        self.on_progress = on_progress
        self.on_shape = on_shape
        self.sampler = sampler
        self.lc = llama_runtime.llama()
        self.rng = random.Random(plan.seed)
        self.done = 0
        self.total = 0

    def _progress(self, what: str) -> None:
        if self.on_progress is not None:
            self.on_progress(self.done, self.total, what)

    def run(self) -> ScoreRun:
        plan = self.plan
        info = inspect_model(plan.model)
        shapes = check_plan(plan, info)
        limit = context_limit(info.context_length, plan.max_ctx)
        devices = current_devices() or ()
        n_gpu_layers = plan.n_gpu_layers
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu_devices(devices) else 0
        largest = max(s.n_ctx for s in shapes)
        check_memory(
            info,
            plan.load_settings(largest, n_gpu_layers),
            override=plan.override_memory,
            purpose=f"LocalScore of {os.path.basename(plan.model)} (largest test: {largest:,} tokens)",
        )
        build = llama_runtime.build_info()
        run = ScoreRun(
            model_path=plan.model,
            model_name=info.display_name,
            model_type=model_type(info),
            model_size=info.tensor_data_bytes,
            n_ctx_train=info.context_length or None,
            max_ctx=plan.max_ctx,
            repetitions=plan.repetitions,
            quick=plan.quick,
            n_threads=plan.n_threads,
            n_gpu_layers=n_gpu_layers,
            n_batch=N_BATCH,
            n_ubatch=N_UBATCH,
            type_k=KV_CACHE_TYPE,
            type_v=KV_CACHE_TYPE,
            flash_attn=False,
            build=build.llama_cpp_python_version,
            backends=",".join(b for b in build.backends if b != "CPU") or "CPU",
            cpu_info=cpu_info(),
            gpu_info=gpu_info_text(devices),
            test_time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )
        self.total = (1 if plan.warmup else 0) + len(shapes) * plan.repetitions
        self._progress(f"loading {os.path.basename(plan.model)}")
        require_working_build(ScoreError)
        try:
            model = LlamaModel(
                plan.model,
                n_gpu_layers=n_gpu_layers,
                use_mmap=True,
                progress=lambda _f: not self.cancel.is_set(),
            )
        except DriverCancelled:
            return dataclasses.replace(run, stopped=True)
        except DriverError as exc:
            raise ScoreError(str(exc)) from None
        results: list[ShapeResult] = []
        try:
            if plan.warmup and not self.cancel.is_set():
                warm = cap_shape(*WARMUP_TEST, limit)
                self._progress(f"warm-up: {warm.name}")
                self._test(model, warm, n_gpu_layers, repetitions=1, record=False)
                self.done += 1
            for shape in shapes:
                if self.cancel.is_set():
                    break
                result = self._test(model, shape, n_gpu_layers, repetitions=plan.repetitions, record=True)
                if result is None:
                    break
                results.append(result)
                if self.on_shape is not None:
                    self.on_shape(result)
                if not result.complete:
                    break
        except DriverCancelled:
            pass
        finally:
            model.close()
        stopped = self.cancel.is_set() or len(results) < len(shapes) or not all(r.complete for r in results)
        return dataclasses.replace(run, shapes=tuple(results), stopped=stopped)

    def _ids(self, model: LlamaModel, n: int) -> list[int]:
        """Random ids, BOS first when the vocabulary adds one (test_prompt's first batch and test_gen's
        first token alike); drawn before the clock starts."""
        ids = [self.rng.randrange(model.n_vocab) for _ in range(n)]
        if ids and model.add_bos:
            ids[0] = model.bos
        return ids

    def _test(
        self, model: LlamaModel, shape: ScoreShape, n_gpu_layers: int, *, repetitions: int, record: bool
    ) -> ShapeResult | None:
        """benchmark.cpp test::run on a fresh context of shape.n_ctx cells."""
        settings = self.plan.load_settings(shape.n_ctx, n_gpu_layers)
        try:
            ctx = LlamaContext.for_settings(model, settings, cancel=self.cancel)
        except DriverError as exc:
            raise ScoreError(f"{shape.name}: {exc}") from None
        prompt_ns: list[int] = []
        gen_ns: list[int] = []
        ttft_ns: list[int] = []
        total_ns: list[int] = []
        recorder: Any = None
        summary: Any = None
        synchronize = self.lc.llama_synchronize
        is_set = self.cancel.is_set
        try:
            recorder = self._start_recorder() if record else None
            for rep in range(repetitions):
                if is_set():
                    break
                ctx.clear(data=False)
                prompt = self._ids(model, shape.n_prompt)
                gen = self._ids(model, shape.n_gen)
                handle = ctx.handle
                decode_one = ctx.decode_one
                ctx.watch_for_abort(True)  # a prompt batch polls the cancel flag inside llama.cpp
                t_start = time.perf_counter_ns()
                ctx.decode(prompt)
                synchronize(handle)
                t_prompt_end = time.perf_counter_ns()
                ctx.watch_for_abort(False)  # between tokens instead: polling per node costs speed
                first = 0
                t_gen_start = time.perf_counter_ns()
                for i, token in enumerate(gen):
                    if is_set():
                        raise DriverCancelled("Cancelled between generated tokens.")
                    decode_one(token)
                    synchronize(handle)
                    if i == 0:
                        first = time.perf_counter_ns()
                t_end = time.perf_counter_ns()
                prompt_ns.append(t_prompt_end - t_start)
                gen_ns.append(t_end - t_gen_start)
                ttft_ns.append(first - t_start)
                total_ns.append(t_end - t_start)
                if record:
                    self.done += 1
                    self._progress(f"{shape.name}: repetition {rep + 1}/{repetitions}")
        except DriverCancelled:
            pass  # the repetition that was running is dropped; finished ones are kept
        except DriverError as exc:
            raise ScoreError(f"{shape.name}: {exc}") from None
        finally:
            if recorder is not None:
                summary = recorder.stop()
            ctx.close()
        if not record or not total_ns:
            return None
        telemetry: dict[str, Any] = {}
        if summary is not None:
            telemetry = telemetry_fields(summary)
        return ShapeResult(
            shape=shape,
            prompt_ns=tuple(prompt_ns),
            gen_ns=tuple(gen_ns),
            ttft_ns=tuple(ttft_ns),
            total_ns=tuple(total_ns),
            complete=len(total_ns) == repetitions,
            **telemetry,
        )

    def _start_recorder(self) -> Any:
        if self.sampler is None:
            return None
        from app.telemetry.energy import TelemetryRecorder

        recorder = TelemetryRecorder(self.sampler)
        recorder.start()
        return recorder


def telemetry_fields(summary: Any) -> dict[str, Any]:
    """ShapeResult's hardware fields from a TelemetrySummary of a test's repetitions."""
    return {
        "mean_power_watts": summary.mean_power_watts,
        "energy_joules": summary.energy_joules,
        "mean_cpu_percent": summary.mean_cpu_percent,
        "throttled": bool(summary.throttled),
    }


def run_localscore(
    plan: ScorePlan,
    *,
    cancel: CancelFlag | None = None,
    on_progress: ProgressCallback | None = None,
    on_shape: Callable[[ShapeResult], None] | None = None,
    sampler: Any | None = None,
) -> ScoreRun:
    """Run LocalScore's warm-up and nine tests on the calling thread (in LlamaScope: the engine host,
    through app.engine.jobs.host_localscore). `cancel` stops it within a fraction of a second; the
    tests that finished are kept and the run is `stopped` (no score). `sampler` (a running
    app.telemetry Sampler) adds power and CPU load per test. The memory check runs first."""
    import threading

    runner = _ScoreRunner(plan, cancel or threading.Event(), on_progress, on_shape, sampler)
    return runner.run()


# ---- records (the history) and text (the command line, the window) -------------------------------
def shape_to_record(result: ShapeResult) -> dict[str, Any]:
    record = dataclasses.asdict(result)
    record["shape"] = dataclasses.asdict(result.shape)
    for name in ("prompt_ns", "gen_ns", "ttft_ns", "total_ns"):
        record[name] = list(record[name])
    return record


def shape_from_record(record: dict[str, Any]) -> ShapeResult:
    data = dict(record)
    data["shape"] = ScoreShape(**data["shape"])
    for name in ("prompt_ns", "gen_ns", "ttft_ns", "total_ns"):
        data[name] = tuple(int(v) for v in data[name])
    return ShapeResult(**data)


def run_to_record(run: ScoreRun) -> dict[str, Any]:
    record = {f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name != "shapes"}
    record["shapes"] = [shape_to_record(s) for s in run.shapes]
    return record


def run_from_record(record: dict[str, Any]) -> ScoreRun:
    data = dict(record)
    data["shapes"] = tuple(shape_from_record(s) for s in data.get("shapes", ()))
    return ScoreRun(**data)


def formula_text(summary: ScoreSummary) -> str:
    """The score with its parts, as LocalScore's formula."""
    return (
        f"10 · ∛({summary.avg_prompt_tps:.2f} prompt t/s · {summary.avg_gen_tps:.2f} generation t/s · "
        f"1000 / {summary.avg_ttft_ms:.2f} ms TTFT) = {summary.score:.4f}"
    )


def headline(run: ScoreRun) -> str:
    """What the run scored, in words: a LocalScore only when all nine tests ran at LocalScore's sizes."""
    summary = run.summary
    if summary is None:
        return f"no score: {len(run.shapes)} of {len(LOCALSCORE_TESTS)} tests finished (stopped)"
    if run.capped:
        capped = [s for s in run.planned if s.capped]
        limit = context_limit(run.n_ctx_train, run.max_ctx)
        return (
            f"capped score, not comparable: {summary.score:.1f} ({len(capped)} of {len(run.planned)} "
            f"tests were capped to a context of {limit:,} tokens; not a LocalScore)"
        )
    reps = f"{run.repetitions} repetition{'s' if run.repetitions != 1 else ''}"
    return f"LocalScore {summary.shown} ({reps} per test{', quick' if run.quick else ''})"


def score_table(run: ScoreRun) -> str:
    """The tests as a markdown table: t/s ± standard deviation, TTFT, power and t/s per watt."""
    rows = []
    for s in run.shapes:
        notes = []
        if s.shape.capped:
            notes.append(f"capped from {s.shape.requested_name}")
        if not s.complete:
            notes.append(f"stopped after {s.repetitions} rep.")
        if s.throttled:
            notes.append("throttled")
        # One repetition has no spread: "± 0.00" would claim a precision nobody measured.
        spread = s.repetitions > 1
        rows.append(
            [
                s.shape.name,
                f"{s.prompt_tps:.2f}" + (f" ± {s.prompt_tps_stddev:.2f}" if spread else ""),
                f"{s.gen_tps:.2f}" + (f" ± {s.gen_tps_stddev:.2f}" if spread else ""),
                f"{s.ttft_ms:.2f}",
                fmt(s.mean_power_watts, ".1f"),
                fmt(s.prompt_tps_per_watt, ".2f"),
                fmt(s.gen_tps_per_watt, ".2f"),
                ", ".join(notes),
            ]
        )
    return markdown_table(
        ["test", "prompt t/s", "gen t/s", "TTFT ms", "power W", "prompt t/s/W", "gen t/s/W", "note"],
        rows,
        align=["left", "right", "right", "right", "right", "right", "right", "left"],
    )


def report_text(run: ScoreRun) -> str:
    """The command line's report: what ran, the table, the score and its parts."""
    lines = [
        f"LocalScore tests of {os.path.basename(run.model_path)} ({run.model_type}): {run.repetitions} "
        f"repetition{'s' if run.repetitions != 1 else ''} each{' (--quick)' if run.quick else ''}, "
        f"{run.n_threads} thread{'s' if run.n_threads != 1 else ''}, n_batch {run.n_batch}, "
        f"n_ubatch {run.n_ubatch}, "
        f"KV {run.type_k}, flash attention off, {'all' if run.n_gpu_layers < 0 else run.n_gpu_layers} GPU "
        f"layers, {run.backends}",
        "",
        score_table(run).rstrip("\n"),
        "",
        headline(run),
    ]
    summary = run.summary
    if summary is not None:
        lines.append(f"  = {formula_text(summary)}")
        lines.append(
            "  (means over the tests are arithmetic, as LocalScore's getResultsSummary takes them; "
            "LocalScore shows the score truncated to a whole number)"
        )
    return "\n".join(lines) + "\n"
