"""The one memory check on every path that loads a model: the benchmark runner (each configuration of a
sweep, before anything loads), the evaluations, the tuner's trials, the engine host beside a loaded
model, and the command line (`bench`, `eval`) refusing with the numbers and no traceback."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.bench import runner as runner_module
from app.bench.runner import BenchPlan, BenchTest, run_benchmark
from app.llama.driver import CancelFlag
from app.model import memory as memory_module
from app.model.gguf_info import inspect_model
from app.model.memory import InsufficientMemoryError, Verdict, estimate_memory
from app.model.model_info import ModelInfo
from app.model.settings import LoadSettings
from app.quality import eval_model as eval_model_module
from app.quality.compare import measure_speed
from app.quality.eval_text import load_text
from app.quality.eval_types import EvalSettings
from app.quality.kl_divergence import evaluate_against_base, evaluate_kl_divergence
from app.quality.multiple_choice import run_benchmark_file
from app.quality.perplexity import evaluate_perplexity
from app.tune import session as session_module
from app.tune.results import TrialStatus, TuneConfig
from app.tune.session import Tuner
from app.tune.space import MachineFacts, SearchSpace

MIB = 1 << 20
GIB = 1 << 30
RESOURCES = Path(__file__).resolve().parents[2] / "resources" / "eval"
TEXT = str(RESOURCES / "python-docs-excerpt.txt")
HELLASWAG = str(RESOURCES / "hellaswag_sample.jsonl")
# Reads a whole line of a benchmark's or an evaluation's refusal: the needed total and its three parts.
NUMBERS = re.compile(
    r"needs [\d.]+ [KMGTP]iB \(weights [\d.]+ [KMGTP]?i?B \+ KV cache [\d.]+ [KMGTP]?i?B \+ compute "
    r"[\d.]+ [KMGTP]?i?B\) of [\d.]+ [KMGTP]?i?B available: will not fit"
)


def settings(**changes: Any) -> LoadSettings:
    return dataclasses.replace(LoadSettings(n_threads=1, n_threads_batch=1), **changes)


@pytest.fixture
def little_ram(monkeypatch: pytest.MonkeyPatch) -> int:
    """This process sees 1 MiB of available RAM: no model fits, whatever this machine has."""
    monkeypatch.setattr(memory_module, "_available_ram_bytes", lambda: MIB)
    return MIB


# ---- the benchmark runner ---------------------------------------------------------------------------


def test_every_distinct_configuration_of_a_sweep_is_checked_before_anything_loads(
    demo_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, ...]] = []
    real_check, real_model = runner_module.check_memory, runner_module.LlamaModel

    def check(model: ModelInfo, load: LoadSettings, **kwargs: Any) -> Any:
        events.append(("check", str(load.n_ctx), str(load.n_batch), load.type_k))
        return real_check(model, load, **kwargs)

    def loading(*args: Any, **kwargs: Any) -> Any:
        events.append(("load",))
        return real_model(*args, **kwargs)

    monkeypatch.setattr(runner_module, "check_memory", check)
    monkeypatch.setattr(runner_module, "LlamaModel", loading)
    # tg8 and tg16 both get llama-bench's smallest context (16 cells): one configuration, one check.
    tests = (BenchTest(n_prompt=32), BenchTest(n_gen=8), BenchTest(n_gen=16), BenchTest(16, 8, 16))
    plan = BenchPlan(
        models=(demo_model,),
        tests=tests,
        base=settings(n_ubatch=16),
        sweep=(("n_batch", (16, 32)), ("type_k", ("f16", "q8_0"))),
        repetitions=1,
        warmup=False,
    )
    results = run_benchmark(plan)
    assert len(results) == len(plan.instances()) == 16
    checks = [e[1:] for e in events if e[0] == "check"]
    # n_ctx as llama-bench sizes it: n_prompt + n_gen + n_depth, at least 16
    expected = {(str(n_ctx), str(b), k) for n_ctx in (32, 16, 40) for b in (16, 32) for k in ("f16", "q8_0")}
    assert len(checks) == len(expected) == 12 and set(checks) == expected
    first_load = events.index(("load",))
    assert all(e[0] == "check" for e in events[:first_load]) and len(events[:first_load]) == 12


def test_a_sweep_with_one_impossible_configuration_is_refused_before_any_load(
    demo_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_module, "_available_ram_bytes", lambda: 8 * GIB)
    loads: list[object] = []
    monkeypatch.setattr(runner_module, "LlamaModel", lambda *a, **k: loads.append(a))
    plan = BenchPlan(
        models=(demo_model,),
        tests=(BenchTest(n_prompt=32), BenchTest(n_prompt=1_000_000)),
        base=settings(n_ubatch=256),
        sweep=(("n_batch", (256, 512)),),
        repetitions=1,
    )
    with pytest.raises(InsufficientMemoryError) as info:
        run_benchmark(plan)
    message = str(info.value)
    assert "benchmark SmolLM2-135M-Instruct.Q4_1.gguf pp1000000 (n_ctx 1000000, n_batch 256" in message
    assert NUMBERS.search(message) and "of 8.0 GiB available" in message
    assert "(1 more of the plan's 4 configurations would not fit either)" in message
    assert loads == []


def test_the_override_runs_what_the_check_refuses(demo_model: str, little_ram: int) -> None:
    plan = BenchPlan(models=(demo_model,), tests=(BenchTest(n_gen=4),), base=settings(), repetitions=1)
    with pytest.raises(InsufficientMemoryError, match="of 1.0 MiB available"):
        run_benchmark(plan)
    results = run_benchmark(dataclasses.replace(plan, override_memory=True))
    assert len(results) == 1 and results[0].samples_ns


# ---- the evaluations ---------------------------------------------------------------------------------


@pytest.fixture
def model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the full model loads the evaluations make (vocabulary-only loads go through)."""
    loads: list[str] = []
    real = eval_model_module.LlamaModel

    def loading(path: str, **kwargs: Any) -> Any:
        if not kwargs.get("vocab_only"):
            loads.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(eval_model_module, "LlamaModel", loading)
    return loads


@pytest.fixture(scope="module")
def kld_base(demo_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("kld") / "base.logits")
    evaluate_perplexity(demo_model, load_text(TEXT), EvalSettings(n_ctx=64, n_chunks=1), save_logits=path)
    return path


def _evaluations(demo_model: str, kld_base: str) -> dict[str, Callable[..., Any]]:
    small = EvalSettings(n_ctx=64, n_chunks=1)
    text = load_text(TEXT)
    return {
        "perplexity": lambda **kw: evaluate_perplexity(demo_model, text, small, **kw),
        "kl divergence": lambda **kw: evaluate_kl_divergence(demo_model, kld_base, small, **kw),
        "base and variants": lambda **kw: evaluate_against_base(demo_model, [demo_model], text, small, **kw),
        "multiple choice": lambda **kw: run_benchmark_file(demo_model, HELLASWAG, "hellaswag", **kw),
        "speed": lambda **kw: measure_speed(demo_model, n_prompt=16, n_gen=4, repetitions=1, **kw),
    }


@pytest.mark.parametrize(
    "name", ["perplexity", "kl divergence", "base and variants", "multiple choice", "speed"]
)
def test_every_evaluation_is_refused_before_it_loads_the_model(
    demo_model: str, kld_base: str, name: str, little_ram: int, model_loads: list[str]
) -> None:
    with pytest.raises(InsufficientMemoryError) as info:
        _evaluations(demo_model, kld_base)[name]()
    assert "Not enough memory to evaluate SmolLM2-135M-Instruct.Q4_1.gguf" in str(info.value)
    assert NUMBERS.search(str(info.value)) and "of 1.0 MiB available" in str(info.value)
    assert model_loads == []


def test_an_overridden_evaluation_runs(demo_model: str, little_ram: int, model_loads: list[str]) -> None:
    result = evaluate_perplexity(
        demo_model, load_text(TEXT), EvalSettings(n_ctx=64, n_chunks=1), override_memory=True
    )
    assert result.n_chunks == 1 and result.ppl > 1
    assert len(model_loads) == 1


# ---- the tuner --------------------------------------------------------------------------------------


class _Measure:
    """Scores every configuration 10 t/s; records what it was asked to measure."""

    def __init__(self) -> None:
        self.calls: list[LoadSettings] = []

    def __call__(
        self,
        load: LoadSettings,
        *,
        repetitions: int,
        keep_going: Callable[[float | None], bool],
        cancel: CancelFlag,
    ) -> list[float]:
        self.calls.append(load)
        return [10.0 + i for i in range(repetitions)]


SPACE = SearchSpace(
    n_threads=(1, 2),
    n_threads_batch=(1,),
    n_batch=(256,),
    n_ubatch=(256,),
    flash_attn=(True,),
    type_k=("f16", "q8_0"),
    type_v=("f16", "q8_0"),
)


def _tuner(
    model: ModelInfo,
    tmp_path: Path,
    measure: Any,
    machine: MachineFacts,
    space: SearchSpace = SPACE,
    **config: Any,
) -> Tuner:
    settings_ = {"warmup_s": 0.0, "compare_rounds": 1, "seed": 0, "n_trials": 4, **config}
    return Tuner(
        model,
        "tg:4",
        space=space,
        base=settings(n_ctx=4096, n_batch=256, n_ubatch=256, flash_attn=True),
        measure=measure,
        config=TuneConfig(**settings_),
        storage_path=str(tmp_path / "tune.sqlite3"),
        machine=machine,
    )


def _machine_without_room_for_f16(model: ModelInfo) -> MachineFacts:
    f16 = estimate_memory(
        model, settings(n_ctx=4096, n_batch=256, n_ubatch=256, flash_attn=True), available_ram_bytes=64 * GIB
    )
    return MachineFacts(logical_cores=2, has_gpu=False, available_ram_bytes=f16.total_ram_bytes - 1)


def test_each_trial_is_checked_and_an_impossible_one_is_recorded_as_refused(
    demo_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = inspect_model(demo_model)
    purposes: list[str] = []
    real = session_module.check_memory

    def check(*args: Any, purpose: str = "", **kwargs: Any) -> Any:
        purposes.append(purpose)
        return real(*args, purpose=purpose, **kwargs)

    monkeypatch.setattr(session_module, "check_memory", check)
    measure = _Measure()
    result = _tuner(model, tmp_path, measure, _machine_without_room_for_f16(model)).run()
    checked = {int(p.removeprefix("run trial ")) for p in purposes if p.startswith("run trial ")}
    new_settings = [t for t in result.trials if t.state is not TrialStatus.DUPLICATE]
    assert checked == {t.label for t in new_settings}  # every trial with new settings, once (counted from 1)
    refused = [t for t in result.trials if t.state is TrialStatus.SKIPPED]
    assert refused and all(t.reason.startswith("refused: would not fit in memory: needs ") for t in refused)
    # f16 K and V is the one combination that does not fit: refused, never measured
    assert all(
        t.settings is not None and (t.settings.type_k, t.settings.type_v) == ("f16", "f16") for t in refused
    )
    assert measure.calls and not any((c.type_k, c.type_v) == ("f16", "f16") for c in measure.calls)


def test_the_tuner_override_measures_what_the_check_refuses(demo_model: str, tmp_path: Path) -> None:
    model = inspect_model(demo_model)
    measure = _Measure()
    result = _tuner(
        model, tmp_path, measure, _machine_without_room_for_f16(model), override_memory=True
    ).run()
    assert not [t for t in result.trials if t.state is TrialStatus.SKIPPED]
    assert any((c.type_k, c.type_v) == ("f16", "f16") for c in measure.calls)


def test_a_trial_the_benchmark_runner_refuses_is_recorded_as_refused_not_failed(
    demo_model: str, tmp_path: Path, little_ram: int
) -> None:
    # The session's own check passes (the machine facts say 64 GiB); the runner reads 1 MiB.
    model = inspect_model(demo_model)
    machine = MachineFacts(logical_cores=2, has_gpu=False, available_ram_bytes=64 * GIB)
    space = dataclasses.replace(SPACE, n_threads=(1,), type_k=("q8_0",), type_v=("q8_0",))
    result = _tuner(model, tmp_path, None, machine, space, n_trials=1).run()
    assert [t.state for t in result.trials] == [TrialStatus.SKIPPED]
    assert "of 1.0 MiB available" in result.trials[0].reason


# ---- the engine host, beside a loaded model ----------------------------------------------------------


def test_an_evaluation_in_the_host_beside_a_loaded_model_is_refused_and_the_model_stays(
    demo_model: str,
) -> None:
    from app.engine.client import Engine
    from app.engine.jobs import host_call

    engine = Engine()
    try:
        engine.load(demo_model, settings(n_ctx=256)).result(timeout=300)
        # 2^31 cells of KV cache: tens of TiB, more than any machine has.
        huge = EvalSettings(n_ctx=1 << 31)
        future = engine.run_exclusive(
            lambda _cancel: host_call(
                engine, "app.quality.perplexity:evaluate_perplexity", demo_model, load_text(TEXT), huge
            )
        )
        exc = future.exception(timeout=300)
        assert isinstance(exc, InsufficientMemoryError), exc
        assert exc.estimate.verdict is Verdict.WONT_FIT and NUMBERS.search(str(exc))
        assert engine.loaded is not None and engine.loaded.model.path == inspect_model(demo_model).path
    finally:
        engine.shutdown()


def test_a_loaded_model_notes_its_mapped_weights_until_it_is_unloaded(
    demo_model: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from app.engine.core import EngineCore

    monkeypatch.setattr(memory_module, "_available_ram_bytes", lambda: 16 * GIB)
    other = str(tmp_path / "another.gguf")
    core = EngineCore(threading.Event())
    try:
        loaded = core.load(demo_model, settings(n_ctx=256))
        weights = loaded.estimate.weights_ram_bytes
        assert weights > 0
        assert memory_module.available_ram_for(other) == 16 * GIB - weights
        assert memory_module.available_ram_for(demo_model) == 16 * GIB
    finally:
        core.unload()
    assert memory_module.available_ram_for(other) == 16 * GIB


# ---- the command line ------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def _assert_refused(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "Not enough memory to " in result.stderr and NUMBERS.search(result.stderr), result.stderr
    assert "(--override-memory)" in result.stderr


def test_cli_bench_refuses_a_million_token_prompt_before_loading(demo_model: str) -> None:
    args = ["bench", "-p", "1000000", "--no-history", "--no-telemetry"]
    # `bench -p 1000000` needs ~39 GiB with the demo model. On a machine with more RAM, the compute
    # buffer (n_ubatch x n_ctx x 9 heads x 4 bytes) is raised until it cannot fit either.
    model = inspect_model(demo_model)
    ubatch = 512
    while (
        estimate_memory(model, settings(n_ctx=1_000_000, n_batch=max(512, ubatch), n_ubatch=ubatch)).verdict
        is not Verdict.WONT_FIT
    ):
        ubatch *= 2
    if ubatch > 512:
        args += ["-b", str(ubatch), "-ub", str(ubatch)]
    result = _cli(*args)
    _assert_refused(result)
    assert "pp1000000 (n_ctx 1000000" in result.stderr
    assert "loading" not in result.stderr  # the runner's first progress line: nothing was loaded


def test_cli_eval_refuses_a_ten_million_token_context_before_loading(demo_model: str) -> None:
    model = inspect_model(demo_model)
    n_ctx = 10_000_000  # ~234 GiB with the demo model; ten times more where that would fit
    while (
        estimate_memory(model, settings(n_ctx=n_ctx, n_batch=n_ctx, flash_attn=True)).verdict
        is not Verdict.WONT_FIT
    ):
        n_ctx *= 10
    result = _cli("eval", demo_model, "--ppl", TEXT, "--ctx", str(n_ctx))
    _assert_refused(result)
    assert f"evaluate SmolLM2-135M-Instruct.Q4_1.gguf with a context of {n_ctx} tokens" in result.stderr
