"""Benchmark runner, statistics, exports and the SQLite history."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.bench.export import dumps, load_llama_bench, loads, to_record
from app.bench.history import _MIGRATIONS, SCHEMA_VERSION, HistoryError, HistoryStore
from app.bench.runner import (
    MAX_VALUES,
    BenchError,
    BenchPlan,
    BenchResult,
    BenchTest,
    build_tests,
    parse_values,
    run_benchmark,
)
from app.common.markdown import markdown_table
from app.common.stats import mean, stdev, student_t_two_sided_p, welch
from app.model.fingerprint import fingerprint_v1, model_fingerprint
from app.model.settings import LoadSettings

# ---- statistics against reference values (SciPy 1.16, scipy.stats.ttest_ind(equal_var=False)) -------


def test_mean_and_sample_standard_deviation() -> None:
    assert mean([2, 4, 4, 4, 5, 5, 7, 9]) == 5
    assert stdev([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(2.138089935299395)
    assert stdev([3.0]) == 0.0


def test_student_t_against_table_values() -> None:
    assert student_t_two_sided_p(2.0, 5) == pytest.approx(0.10193947882985835, rel=1e-9)
    assert student_t_two_sided_p(1.0, 30) == pytest.approx(0.3253086154260302, rel=1e-9)
    assert student_t_two_sided_p(0.0, 7) == pytest.approx(1.0)


def test_welch_against_scipy() -> None:
    c = welch([10.1, 10.3, 9.8, 10.0, 10.2], [10.6, 10.9, 10.4, 10.8, 11.0, 10.7])
    assert c.t_statistic == pytest.approx(5.303111051339614, rel=1e-9)  # SciPy reports A − B: −5.303
    assert c.dof == pytest.approx(8.932763333636528, rel=1e-9)
    assert c.p_value == pytest.approx(0.0005042365278934793, rel=1e-7)
    assert c.significant
    assert c.diff_percent == pytest.approx((10.733333333 - 10.08) / 10.08 * 100, rel=1e-6)
    noise = welch([100, 102, 98, 101], [100.5, 99, 101, 102])
    assert noise.p_value == pytest.approx(0.736250655225026, rel=1e-7)
    assert not noise.significant
    assert welch([1.0], [2.0]).p_value is None


# ---- plans ------------------------------------------------------------------------------------------


def test_value_lists_and_ranges() -> None:
    assert parse_values("1,2,4") == (1, 2, 4)
    assert parse_values("1-4") == (1, 2, 3, 4)
    assert parse_values("2-8+3") == (2, 5, 8)
    assert parse_values("1-64*4") == (1, 4, 16, 64)
    assert parse_values("0,1", bool) == (False, True)
    assert parse_values("f16,q8_0", str) == ("f16", "q8_0")
    with pytest.raises(BenchError):
        parse_values("8-1")
    with pytest.raises(BenchError):
        parse_values("x")


def test_a_range_past_the_limit_is_refused_before_it_is_expanded() -> None:
    assert len(parse_values(f"1-{MAX_VALUES}")) == MAX_VALUES
    assert parse_values("1-1000000000*10") == tuple(10**k for k in range(10))  # counted, not listed
    for text in (f"1-{MAX_VALUES + 1}", "1-100000000", "1-99999999999999999999999999", "1-600,1-600"):
        with pytest.raises(BenchError, match=f"at most {MAX_VALUES:,}"):
            parse_values(text)


def test_test_names_as_llama_bench_prints_them() -> None:
    assert BenchTest(n_prompt=512).name == "pp512"
    assert BenchTest(n_gen=128).name == "tg128"
    assert BenchTest(n_prompt=512, n_gen=128).name == "pp512+tg128"
    assert BenchTest(n_gen=128, n_depth=512).name == "tg128 @ d512"
    with pytest.raises(BenchError):
        BenchTest()


def test_sweeps_expand_to_every_combination() -> None:
    tests = build_tests([512], [128], [(256, 32)], [0, 1024])
    assert [t.name for t in tests] == [
        "pp512",
        "tg128",
        "pp256+tg32",
        "pp512 @ d1024",
        "tg128 @ d1024",
        "pp256+tg32 @ d1024",
    ]
    plan = BenchPlan(
        models=("a.gguf", "b.gguf"),
        tests=tests[:2],
        sweep=(("n_threads", (1, 2, 4)), ("flash_attn", (False, True)), ("n_batch", (512,))),
    )
    instances = plan.instances()
    assert len(instances) == 2 * 3 * 2 * 2
    assert plan.swept_fields == ("n_threads", "flash_attn")
    assert {(m, s.n_threads, s.flash_attn, t.name) for m, s, t in instances} == {
        (m, t_, fa, n)
        for m in ("a.gguf", "b.gguf")
        for t_ in (1, 2, 4)
        for fa in (False, True)
        for n in ("pp512", "tg128")
    }
    with pytest.raises(BenchError):
        BenchPlan(models=("a",), tests=tests, sweep=(("temperature", (1,)),))


# ---- the real runner on the demo model --------------------------------------------------------------


def _plan(demo_model: str, **kw) -> BenchPlan:  # type: ignore[no-untyped-def]
    base = LoadSettings(n_threads=1, n_threads_batch=1)
    defaults = dict(
        models=(demo_model,), tests=(BenchTest(n_prompt=32), BenchTest(n_gen=8)), base=base, repetitions=2
    )
    defaults.update(kw)
    return BenchPlan(**defaults)  # type: ignore[arg-type]


def test_a_real_short_benchmark(demo_model: str) -> None:
    progress: list[tuple[int, int]] = []
    results = run_benchmark(_plan(demo_model), on_progress=lambda d, t, w: progress.append((d, t)))
    assert [r.test.name for r in results] == ["pp32", "tg8"]
    for r in results:
        assert len(r.samples_ns) == 2 and all(s > 0 for s in r.samples_ns)
        assert r.avg_ts == pytest.approx(mean([1e9 * r.test.n_tokens / s for s in r.samples_ns]))
        assert r.complete
        assert r.model_type == "llama 256M Q4_1"  # llama.cpp's llama_model_desc, as llama-bench records it
        assert r.model_n_params == 134_515_008
        assert r.n_threads == 1
        assert r.backends == "CPU"
    assert progress[-1][0] == progress[-1][1] == 2 * (2 + 1)  # 2 tests × (warm-up + 2 repetitions)


def test_progress_names_the_test_and_repetition_running_and_moves_once_per_repetition(
    demo_model: str,
) -> None:
    progress: list[tuple[int, int, str]] = []
    run_benchmark(_plan(demo_model, repetitions=3), on_progress=lambda d, t, w: progress.append((d, t, w)))
    steps = [(d, w.split(" — ")[0]) for d, _t, w in progress if not w.startswith(("loading", "starting"))]
    assert steps == [
        (0, "pp32 · warm-up · test 1 of 2"),
        (1, "pp32 · repetition 1 of 3 · test 1 of 2"),
        (2, "pp32 · repetition 2 of 3 · test 1 of 2"),
        (3, "pp32 · repetition 3 of 3 · test 1 of 2"),
        (4, "pp32 · 3 of 3 repetitions done · test 1 of 2"),
        (4, "tg8 · warm-up · test 2 of 2"),
        (5, "tg8 · repetition 1 of 3 · test 2 of 2"),
        (6, "tg8 · repetition 2 of 3 · test 2 of 2"),
        (7, "tg8 · repetition 3 of 3 · test 2 of 2"),
        (8, "tg8 · 3 of 3 repetitions done · test 2 of 2"),
    ]
    assert {t for _d, t, _w in progress} == {8}  # 2 tests × (warm-up + 3 repetitions)
    assert all(
        w.split(" — ")[1].startswith(os.path.basename(demo_model)) for _d, _t, w in progress[1:] if " — " in w
    )


def test_cancel_between_repetitions_keeps_what_finished(demo_model: str) -> None:
    cancel = threading.Event()

    def on_progress(done: int, total: int, what: str) -> None:
        if "repetition 2 of" in what:  # said when repetition 1 has finished and 2 starts
            cancel.set()

    plan = _plan(demo_model, tests=(BenchTest(n_gen=4), BenchTest(n_prompt=16)), repetitions=5)
    results = run_benchmark(plan, cancel=cancel, on_progress=on_progress)
    assert len(results) == 1
    assert results[0].test.name == "tg4"
    assert len(results[0].samples_ns) == 1
    assert not results[0].complete


def test_depth_fills_the_cache_before_timing(demo_model: str) -> None:
    results = run_benchmark(_plan(demo_model, tests=(BenchTest(n_gen=4, n_depth=64),), repetitions=1))
    assert results[0].test.name == "tg4 @ d64"
    assert results[0].n_depth == 64


def test_one_load_serves_the_instances_that_differ_only_in_context_settings(demo_model: str) -> None:
    seen: list[str] = []
    sweep = (("use_mmap", (True, False)), ("n_ubatch", (256, 512)))
    plan = _plan(demo_model, tests=(BenchTest(n_prompt=16),), sweep=sweep, repetitions=1, warmup=False)
    results = run_benchmark(plan, on_progress=lambda d, t, what: seen.append(what.split()[0]))
    assert [(r.use_mmap, r.n_ubatch) for r in results] == [
        (True, 256),
        (True, 512),
        (False, 256),
        (False, 512),
    ]
    # n_ubatch is a context setting: a new context on the loaded model; use_mmap needs a new load.
    assert [w for w in seen if w in ("loading", "starting")] == ["loading", "starting"] * 2


class _PollCountingFlag:
    """A cancel flag that counts how often it is polled once armed, and says when that reached `polls`.
    Armed as the timed repetitions start; from then on the runner polls it once per generated token and
    llama.cpp once per graph node of a prompt batch, so a Stop made then lands inside a repetition."""

    def __init__(self, polls: int) -> None:
        self.event = threading.Event()
        self.armed = False
        self.polls = 0
        self.target = polls
        self.reached = threading.Event()

    def is_set(self) -> bool:
        if self.armed:
            self.polls += 1
            if self.polls == self.target:
                self.reached.set()
        return self.event.is_set()


class _RepetitionsStart:
    """Stands in for a telemetry Sampler: the runner starts recording right before a test's timed
    repetitions, the moment this test needs to know."""

    def __init__(self, flag: _PollCountingFlag) -> None:
        self.flag = flag

    def add_listener(self, listener: object) -> None:
        self.flag.armed = True

    def remove_listener(self, listener: object) -> None:
        pass


def _stop_when_polled(plan: BenchPlan, polls: int) -> tuple[list[BenchResult], float]:
    """Run `plan`; once its timed repetitions have polled the cancel flag `polls` times, press Stop
    from another thread. Returns the results and the seconds from the Stop to the run's return."""
    flag = _PollCountingFlag(polls)
    stopped_at: list[float] = []
    run_over = threading.Event()

    def press_stop() -> None:
        flag.reached.wait(timeout=300)
        if not run_over.is_set():
            stopped_at.append(time.monotonic())
            flag.event.set()

    stopper = threading.Thread(target=press_stop)
    stopper.start()
    try:
        results = run_benchmark(plan, cancel=flag, sampler=_RepetitionsStart(flag))
        returned_at = time.monotonic()
    finally:
        run_over.set()
        flag.reached.set()  # never leave the stopper waiting, whatever happened
        stopper.join()
    assert stopped_at, f"the run ended before it polled the cancel flag {polls} times (only {flag.polls})"
    return results, returned_at - stopped_at[0]


def test_stop_inside_a_long_prompt_repetition_ends_within_a_second(demo_model: str) -> None:
    """pp2048 on one thread takes seconds per repetition. 50 polls in, llama.cpp is inside the first
    batch (it polls once per graph node); the Stop must end the run within a second."""
    from app.llama import runtime as llama_runtime

    mark = llama_runtime.log_mark()
    plan = _plan(demo_model, tests=(BenchTest(n_prompt=2048),), repetitions=2, warmup=False)
    results, seconds = _stop_when_polled(plan, polls=50)
    assert seconds < 1.0
    assert results == []  # the only repetition that ran was cut short: nothing to report
    assert any("failed to decode, ret = 2" in line for line in llama_runtime.log_since(mark))  # aborted


def test_stop_inside_a_long_generation_repetition_ends_within_a_second(demo_model: str) -> None:
    plan = _plan(demo_model, tests=(BenchTest(n_gen=512),), repetitions=2, warmup=False)
    results, seconds = _stop_when_polled(plan, polls=4)  # the loop's own check, then a poll per token
    assert seconds < 1.0
    assert results == []  # 512 tokens take seconds: a result would mean the repetition ran out


def test_ctrl_c_on_the_main_thread_stops_inside_a_prompt(demo_model: str) -> None:
    """Called on the main thread (a script such as benchmarks/bench_accuracy.py), Python runs the
    SIGINT handler inside llama.cpp's abort callback, where ctypes would swallow a KeyboardInterrupt
    and the run would go on. Ctrl+C must stop the run within a second, then raise KeyboardInterrupt."""
    flag = _PollCountingFlag(polls=50)
    pressed_at: list[float] = []
    run_over = threading.Event()

    def press_ctrl_c() -> None:
        flag.reached.wait(timeout=300)
        if not run_over.is_set():
            pressed_at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        plan = _plan(demo_model, tests=(BenchTest(n_prompt=2048),), repetitions=2, warmup=False)
        with pytest.raises(KeyboardInterrupt):
            run_benchmark(plan, cancel=flag, sampler=_RepetitionsStart(flag))
        raised_at = time.monotonic()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run put it back
    finally:
        run_over.set()
        flag.reached.set()
        presser.join()
        signal.signal(signal.SIGINT, previous)
    assert pressed_at and raised_at - pressed_at[0] < 1.0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job would ignore Ctrl+C


def test_ctrl_c_stops_the_command_line_benchmark_inside_a_prompt(demo_model: str, tmp_path: Path) -> None:
    """Ctrl+C a second into a prompt batch that takes tens of seconds: the command ends at once, as
    cancelled, with no traceback."""
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))
    args = ["bench", demo_model, "-p", "16,8192", "-n", "0", "-r", "2", "-t", "1", "--no-warmup"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args, "--no-telemetry", "-o", "jsonl"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""  # pp16 is done; pp8192 starts
        assert json.loads(first)["n_prompt"] == 16
        # A second into pp8192's first batch (context creation takes milliseconds; the batch, on one
        # thread, tens of seconds): the user presses Ctrl+C while llama.cpp is computing.
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGINT)
        pressed = time.monotonic()
        _out, err = proc.communicate(timeout=300)
        seconds = time.monotonic() - pressed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err  # the command's "cancelled"
    assert seconds < 5.0  # process exit included; one pp8192 repetition takes far longer
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def _plain_rates(model: str, n_prompt: int, n_gen: int, reps: int) -> tuple[float, float]:
    """The best pp and tg tokens/s of `reps` runs of the same decode calls made through
    llama-cpp-python's Llama, the way the runner measured before it moved to app.llama.driver."""
    import random

    from app.llama import runtime as llama_runtime

    lc = llama_runtime.llama()
    llama = lc.Llama(
        model_path=model, n_ctx=max(n_prompt, n_gen), n_threads=1, n_threads_batch=1, verbose=False
    )
    try:
        ctx = llama.ctx
        n_vocab = llama.n_vocab()
        rng = random.Random(1)

        def pp() -> float:
            ids = (lc.llama_token * n_prompt)(*(rng.randrange(n_vocab) for _ in range(n_prompt)))
            lc.llama_memory_clear(lc.llama_get_memory(ctx), False)
            t0 = time.perf_counter_ns()
            assert lc.llama_decode(ctx, lc.llama_batch_get_one(ids, n_prompt)) == 0
            lc.llama_synchronize(ctx)
            return 1e9 * n_prompt / (time.perf_counter_ns() - t0)

        def tg() -> float:
            tokens = [(lc.llama_token * 1)(rng.randrange(n_vocab)) for _ in range(n_gen)]
            lc.llama_memory_clear(lc.llama_get_memory(ctx), False)
            t0 = time.perf_counter_ns()
            for token in tokens:
                assert lc.llama_decode(ctx, lc.llama_batch_get_one(token, 1)) == 0
                lc.llama_synchronize(ctx)
            return 1e9 * n_gen / (time.perf_counter_ns() - t0)

        pp(), tg()  # warm-up, as the runner does
        return max(pp() for _ in range(reps)), max(tg() for _ in range(reps))
    finally:
        llama.close()


def test_speeds_on_the_driver_agree_with_the_previous_way(demo_model: str) -> None:
    plan = _plan(demo_model, tests=(BenchTest(n_prompt=64), BenchTest(n_gen=16)), repetitions=3)
    # Best repetitions, not means: other work on the machine only ever slows a repetition down.
    pp, tg = (max(r.samples_ts) for r in run_benchmark(plan))
    plain_pp, plain_tg = _plain_rates(demo_model, 64, 16, 3)
    assert 0 < tg < pp  # a batch of 64 is far cheaper per token than 16 single-token decodes
    # The same order of magnitude as the same calls made through Llama (generous: the machine is shared).
    assert plain_pp / 3 < pp < plain_pp * 3
    assert plain_tg / 3 < tg < plain_tg * 3


def test_plans_and_results_cross_a_process_boundary() -> None:
    """Plain picklable data in and out, so a run can move to a worker process unchanged."""
    plan = _plan("/m/model.gguf", sweep=(("n_threads", (1, 2)),))
    assert pickle.loads(pickle.dumps(plan)) == plan
    result = _result(throttled=True, mean_cpu_percent=50.0)
    assert pickle.loads(pickle.dumps(result)) == result


# ---- exports and imports ----------------------------------------------------------------------------


def _result(**kw) -> BenchResult:  # type: ignore[no-untyped-def]
    fields = dict(
        model_filename="/m/model.gguf",
        model_type="llama 135M Q4_1",
        model_size=96_573_849,
        model_n_params=134_515_008,
        n_batch=512,
        n_ubatch=512,
        n_threads=2,
        type_k="f16",
        type_v="f16",
        n_gpu_layers=0,
        flash_attn=False,
        use_mmap=True,
        n_prompt=512,
        n_gen=0,
        n_depth=0,
        test_time="2026-11-21T10:00:00Z",
        samples_ns=(1_000_000_000, 1_250_000_000),
        cpu_info="Test CPU",
        gpu_info="",
        backends="CPU",
        build="0.3.36",
    )
    fields.update(kw)
    return BenchResult(**fields)  # type: ignore[arg-type]


def test_record_has_llama_bench_fields_and_derived_speeds() -> None:
    record = to_record(_result())
    for name in (
        "model_filename",
        "model_type",
        "model_size",
        "model_n_params",
        "n_batch",
        "n_ubatch",
        "n_threads",
        "type_k",
        "type_v",
        "n_gpu_layers",
        "flash_attn",
        "use_mmap",
        "n_prompt",
        "n_gen",
        "n_depth",
        "test_time",
        "avg_ns",
        "stddev_ns",
        "avg_ts",
        "stddev_ts",
        "samples_ns",
        "samples_ts",
        "cpu_info",
        "gpu_info",
        "backends",
    ):
        assert name in record
    assert record["samples_ts"] == [512.0, 409.6]
    assert record["avg_ts"] == pytest.approx(460.8)
    assert record["avg_ns"] == 1_125_000_000


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_export_import_round_trip(fmt: str) -> None:
    original = [_result(), _result(n_prompt=0, n_gen=128, samples_ns=(2_000_000_000,), throttled=True)]
    back = loads(dumps(original, fmt), source="llamascope")
    assert back == original


def test_csv_and_markdown() -> None:
    results = [_result(n_threads=1), _result(n_threads=2)]
    csv_text = dumps(results, "csv")
    header = csv_text.splitlines()[0].split(",")
    assert header[:5] == ["build_commit", "build_number", "cpu_info", "gpu_info", "backends"]
    assert len(csv_text.splitlines()) == 3
    md = dumps(results, "md", swept=("n_threads",))
    header = [c.strip() for c in md.splitlines()[0].split("|")[1:-1]]
    assert header == [
        "model",
        "size",
        "params",
        "backend",
        "threads",
        "test",
        "t/s",
        "CV",
        "steal",
        "other load",
        "flags",
    ]
    assert len(md.splitlines()) == 4
    assert "pp512" in md and "460.80 ± 72.41" in md


def test_markdown_tables_align_escape_and_refuse_ragged_rows() -> None:
    padded = markdown_table(
        ["name", "n", "mid", "left"],
        [["a", "12", "x", "y"], ["long|name", "3", "", "z"]],
        align=["default", "right", "center", "left"],
    )
    assert padded == (
        "| name       |  n | mid | left |\n"
        "| ---------- | -: | :-: | :--- |\n"
        "| a          | 12 |  x  | y    |\n"
        "| long\\|name |  3 |     | z    |\n"
    )
    compact = markdown_table(["a", "b"], [["1", "two\nlines"]], align=["default", "right"], pad=False)
    assert compact == "| a | b |\n|---|--:|\n| 1 | two lines |\n"
    assert markdown_table(["only"], []) == "| only |\n| ---- |\n"
    with pytest.raises(ValueError, match="row of 1 cells"):
        markdown_table(["a", "b"], [["1"]])
    with pytest.raises(ValueError, match="alignments"):
        markdown_table(["a", "b"], [], align=["right"])


def test_a_pipe_in_a_benchmark_field_does_not_shift_the_columns() -> None:
    md = dumps([_result(backends="CPU|BLAS")], "md")
    lines = md.splitlines()
    unescaped = [line.replace("\\|", "").count("|") for line in lines]
    assert unescaped == [12, 12, 12] and "CPU\\|BLAS" in lines[2]


def test_import_llama_bench_json(tmp_path: Path) -> None:
    # As `llama-bench -o json` writes it (fields trimmed to those it always prints).
    sample = [
        {
            "build_commit": "abc1234",
            "build_number": 6000,
            "cpu_info": "AMD Ryzen 9 7950X",
            "gpu_info": "",
            "backends": "CPU",
            "model_filename": "models/smollm2.gguf",
            "model_type": "llama ?B Q4_1",
            "model_size": 96573849,
            "model_n_params": 134515008,
            "n_batch": 2048,
            "n_ubatch": 512,
            "n_threads": 16,
            "cpu_mask": "0x0",
            "cpu_strict": False,
            "poll": 50,
            "type_k": "f16",
            "type_v": "f16",
            "n_gpu_layers": 99,
            "split_mode": "layer",
            "main_gpu": 0,
            "no_kv_offload": False,
            "flash_attn": 0,
            "tensor_split": "0.00",
            "use_mmap": True,
            "embeddings": False,
            "n_prompt": 512,
            "n_gen": 0,
            "n_depth": 0,
            "test_time": "2026-11-01T12:00:00Z",
            "avg_ns": 250000000,
            "stddev_ns": 10000000,
            "avg_ts": 2048.5,
            "stddev_ts": 80.1,
            "samples_ns": [240000000, 260000000],
            "samples_ts": [2133.33, 1969.23],
        }
    ]
    path = tmp_path / "llama-bench.json"
    path.write_text(json.dumps(sample))
    (result,) = load_llama_bench(str(path))
    assert result.source == "llama-bench"
    assert result.n_threads == 16 and result.n_batch == 2048
    assert result.samples_ns == (240_000_000, 260_000_000)
    assert result.avg_ts == pytest.approx((512e9 / 240e6 + 512e9 / 260e6) / 2)
    jsonl = tmp_path / "llama-bench.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in sample * 2))
    assert len(load_llama_bench(str(jsonl))) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BenchError):
        load_llama_bench(str(bad))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\xff\xfe[{}]", "not UTF-8 text (byte 0 is 0xff)"),
        (b'[{"model_filename": "m", "n_prompt": 1, "samples_ns": [Infinity]}]', "samples_ns[0] is infinite"),
        (b'[{"model_filename": "m", "n_prompt": 1, "samples_ns": [1e400]}]', "such as 1e400"),
        (b'[{"model_filename": "m", "n_prompt": 1, "avg_ns": NaN}]', "avg_ns is NaN"),
        (b'[{"model_filename": "m", "n_prompt": 1e400}]', "n_prompt is infinite"),
        (b'[{"model_filename": "m", "n_prompt": 1, "max_temp_c": -Infinity}]', "max_temp_c is infinite"),
        (b'[{"model_filename": "m", "n_prompt": -5}]', "n_prompt is -5"),
        (b'[{"model_filename": "m", "n_prompt": 1, "samples_ns": [0]}]', "samples_ns[0] is 0"),
        (
            b'[{"model_filename": "m", "n_prompt": 1, "n_threads": "many"}]',
            "n_threads must be a whole number",
        ),
        (b'[{"model_filename": ["m"], "n_prompt": 1}]', "model_filename must be a string, not a list"),
        (b'[{"model_filename": "m"}]', "a test needs prompt or generated tokens"),
        (b'[{"n_prompt": 1}]', "record 1: not a benchmark record: it has no model_filename"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'[{"model_filename": "m", "n_prompt": ' + b"9" * 5000 + b"}]", "more than 4,300 digits"),
        (b'{"model_filename": "m", "n_prompt": 1}\n{"model_filename": "m", ', "line 2 is not JSON"),
        (b"[1, 2]", "record 1: each benchmark record must be a JSON object"),
        (b"", "holds no benchmark records"),
    ],
)
def test_a_bad_import_names_the_file_and_the_problem(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "llama-bench.json"
    path.write_bytes(content)
    with pytest.raises(BenchError) as info:
        load_llama_bench(str(path))
    assert str(info.value).startswith("llama-bench.json") and fragment in str(info.value)


def test_an_import_that_is_not_a_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no such file"):
        load_llama_bench(str(tmp_path / "missing.json"))
    with pytest.raises(BenchError, match="is a folder"):
        load_llama_bench(str(tmp_path))


# ---- history ---------------------------------------------------------------------------------------


def test_an_unknown_run_id_is_an_error_naming_it(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    with pytest.raises(HistoryError, match="no run 7 .the history is empty"):
        store.run(7)
    run = store.start_run("benchmark", "/m/model.gguf", {})
    assert store.run(run).model_path == "/m/model.gguf"
    with pytest.raises(HistoryError, match=f"no run 99999 .run ids go up to {run}"):
        store.run(99999)
    with pytest.raises(HistoryError, match="no run 99999"):
        store.compare(99999)


def test_history_store_and_compare(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    a = store.start_run("benchmark", "/m/model.gguf", {"repetitions": 4})
    store.add_result(a, _result(samples_ns=(1_000_000_000, 1_010_000_000, 990_000_000, 1_005_000_000)))
    store.finish_run(a)
    b = store.start_run("benchmark", "/m/model.gguf", {"repetitions": 4})
    store.add_result(b, _result(samples_ns=(800_000_000, 805_000_000, 795_000_000, 810_000_000)))
    store.finish_run(b)
    runs = store.runs(model="model.gguf")
    assert [r.id for r in runs] == [b, a]
    assert runs[0].status == "finished" and runs[0].n_results == 1
    assert store.results(a)[0].samples_ns == (1_000_000_000, 1_010_000_000, 990_000_000, 1_005_000_000)
    (row,) = store.compare(a, b)
    assert row.test == "pp512"
    assert row.comparison.diff_percent == pytest.approx(25.0, abs=1.0)
    assert row.comparison.significant
    assert [v for _, v, _ in store.metric_over_time("pp512")] == pytest.approx(
        [store.results(a)[0].avg_ts, store.results(b)[0].avg_ts]
    )
    with pytest.raises(HistoryError):
        store.compare(a, 9999)


def test_the_configurations_of_one_sweep_run_compare(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    run = store.start_run("benchmark", "/m/model.gguf", {"sweep": {"n_threads": [1, 2, 4]}})
    slow = (1_000_000_000, 1_010_000_000, 990_000_000)
    fast = (500_000_000, 505_000_000, 495_000_000)
    for threads, samples in ((1, slow), (2, fast), (4, slow)):
        store.add_result(run, _result(n_threads=threads, samples_ns=samples))
        store.add_result(run, _result(n_threads=threads, n_prompt=0, n_gen=16, samples_ns=samples))
    store.finish_run(run)
    rows = store.compare(run)  # one run: its configurations, each against the first
    assert [(r.test, r.config.split(" → ")[1].split()[0]) for r in rows] == [
        ("pp512", "t=2"),
        ("tg16", "t=2"),
        ("pp512", "t=4"),
        ("tg16", "t=4"),
    ]
    assert all(r.config.startswith("t=1 ") for r in rows)
    assert rows[0].comparison.diff_percent == pytest.approx(100.0, abs=2.0) and rows[0].comparison.significant
    assert abs(rows[2].comparison.diff_percent) < 1e-9 and not rows[2].comparison.significant
    single = store.start_run("benchmark", "/m/model.gguf", {})
    store.add_result(single, _result())
    with pytest.raises(HistoryError, match="one configuration"):
        store.compare(single)


def test_generations_are_stored(tmp_path: Path) -> None:
    from app.engine.types import RunStats, StopReason

    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    stats = RunStats(True, 10, 20, 0.05, 200.0, 100.0, 0.3, StopReason.EOS, "text", 30)
    run_id = store.add_generation("/m/model.gguf", {"n_ctx": 512}, stats)
    (gen,) = store.generations(run_id)
    assert gen["generated_tokens"] == 20 and gen["stop_reason"] == "eos"
    assert store.runs(kind="generation")[0].settings == {"n_ctx": 512}


def test_migration_from_schema_1_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(_MIGRATIONS[0] + "PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO runs (kind, created_at, model_path) "
        "VALUES ('benchmark', '2026-01-01T00:00:00Z', '/m.gguf')"
    )
    conn.execute(
        "INSERT INTO results (run_id, test, avg_ts, stddev_ts, record_json) "
        "VALUES (1, 'pp512', 460.8, 72.4, ?)",
        (json.dumps(to_record(_result())),),
    )
    conn.commit()
    conn.close()
    store = HistoryStore(str(path))
    assert store.schema_version() == SCHEMA_VERSION
    (run,) = store.runs()
    assert run.label == "" and run.n_results == 1
    assert store.results(run.id)[0].avg_ts == pytest.approx(460.8)


def test_the_fingerprint_sees_the_tensor_data_at_the_end(tmp_path: Path) -> None:
    """Two files alike in size and first MiB (the metadata) but not in their last bytes differ."""
    head = os.urandom(1 << 20)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(head + bytes(3 << 20) + b"weights A")
    b.write_bytes(head + bytes(3 << 20) + b"weights B")
    assert fingerprint_v1(a) == fingerprint_v1(b)  # why the scheme changed
    assert model_fingerprint(a) != model_fingerprint(b)
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    assert model_fingerprint(copy) == model_fingerprint(a) and len(str(model_fingerprint(a))) == 16
    small = tmp_path / "small.bin"  # under 2 MiB: hashed whole, the last byte counts too
    small.write_bytes(bytes(1_500_000) + b"x")
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(1_500_000) + b"y")
    assert model_fingerprint(small) != model_fingerprint(other)
    assert model_fingerprint(tmp_path / "missing.gguf") is None and model_fingerprint(tmp_path) is None


def test_migration_to_schema_3_recomputes_the_fingerprints_it_can(tmp_path: Path) -> None:
    """Old fingerprints (size and first MiB) become the current ones where the file at the path is
    still the one recorded; a file gone or changed since leaves the fingerprint unknown (NULL)."""
    kept, changed, gone = tmp_path / "kept.gguf", tmp_path / "changed.gguf", tmp_path / "gone.gguf"
    for f in (kept, changed, gone):
        f.write_bytes(f.name.encode() * 200_000)  # over 1 MiB: the two schemes differ
    old = {f.name: fingerprint_v1(f) for f in (kept, changed, gone)}
    path = tmp_path / "v2.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(f"{_MIGRATIONS[0]}{_MIGRATIONS[1]}PRAGMA user_version = 2;")
    rows = [(kept, old["kept.gguf"]), (kept, old["kept.gguf"]), (changed, old["changed.gguf"])]
    rows += [(gone, old["gone.gguf"]), (tmp_path / "imported.gguf", None)]
    for model, fingerprint in rows:
        conn.execute(
            "INSERT INTO runs (kind, created_at, model_path, model_fingerprint) "
            "VALUES ('benchmark', '2026-01-01T00:00:00Z', ?, ?)",
            (str(model), fingerprint),
        )
    conn.commit()
    conn.close()
    changed.write_bytes(b"requantized" * 200_000)
    gone.unlink()

    store = HistoryStore(str(path))
    assert store.schema_version() == SCHEMA_VERSION
    by_path: dict[str, set[str | None]] = {}
    for run in store.runs():
        by_path.setdefault(os.path.basename(run.model_path), set()).add(run.model_fingerprint)
    assert by_path == {
        "kept.gguf": {model_fingerprint(kept)},
        "changed.gguf": {None},
        "gone.gguf": {None},
        "imported.gguf": {None},
    }
    assert model_fingerprint(kept) != old["kept.gguf"]
    # A new run of the same file matches the converted ones.
    store.start_run("benchmark", str(kept), {})
    assert {r.model_fingerprint for r in store.runs() if r.model_path == str(kept)} == {
        model_fingerprint(kept)
    }


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(HistoryError, match="newer"):
        HistoryStore(str(path))


def test_a_run_killed_midway_leaves_a_readable_database(demo_model: str, tmp_path: Path) -> None:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "bench",
            demo_model,
            "-p",
            "0",
            "-n",
            "4",
            "-d",
            "0,8,16,24,32,40",
            "-r",
            "3",
            "-t",
            "1",
            "--no-telemetry",
            "-o",
            "jsonl",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""  # the first finished result, as it is stored
        assert first.strip(), "the benchmark produced no result"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    db = tmp_path / "data" / "LlamaScope" / "history.sqlite3"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    store = HistoryStore(str(db))
    (run,) = store.runs()
    assert run.status == "running"  # never finished: shown as interrupted
    results = store.results(run.id)
    assert 1 <= len(results) < 6
    assert results[0].test.name == "tg4" and len(results[0].samples_ns) == 3
    assert not math.isnan(results[0].avg_ts)
