"""How far a benchmark result can be trusted: CV, CPU steal, other processes' load, throttling, the
steady warm-up, comparisons that refuse too few repetitions, and llama-bench's defaults and settings."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.bench.export import dumps, from_record, loads, to_record
from app.bench.history import _MIGRATIONS, HistoryStore
from app.bench.runner import (
    DEFAULT_FLASH_ATTN,
    BenchError,
    BenchPlan,
    BenchTest,
    parse_flash_attn,
    run_benchmark,
)
from app.bench.trust import (
    MIN_REPETITIONS,
    SteadyRule,
    assess,
    coefficient_of_variation,
    compare_repetitions,
    repetitions_needed,
)
from app.model.settings import LoadSettings
from app.telemetry import cpu_load
from app.telemetry.cpu_load import (
    CpuLoadProbe,
    CpuLoadSample,
    MachineCpuTimes,
    ProcStatReader,
    cpu_load_between,
    parse_proc_stat,
    process_tree_cpu_s,
)
from app.telemetry.energy import summarize
from tests.core.test_bench import _result

# ---- /proc/stat and the CPU time of a window --------------------------------------------------------

# A 2-CPU VM's /proc/stat (the per-CPU lines and the rest trimmed): user nice system idle iowait irq
# softirq steal guest guest_nice, in ticks of 10 ms.
STAT_BEFORE = "cpu  1000 50 300 8000 100 0 20 30 0 0\ncpu0 500 25 150 4000 50 0 10 15 0 0\nintr 12345\n"


def _stat(user: int, system: int, idle: int, steal: int) -> str:
    return f"cpu  {user} 50 {system} {idle} 100 0 20 {steal} 0 0\nintr 1\n"


def _fake_proc(root: Path, text: str) -> None:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "stat").write_text(text)


def test_proc_stat_is_read_under_a_root_in_seconds(tmp_path: Path) -> None:
    _fake_proc(tmp_path, STAT_BEFORE)
    times = ProcStatReader(tmp_path, hz=100).read()
    assert times == MachineCpuTimes(10.0, 0.5, 3.0, 80.0, 1.0, 0.0, 0.2, 0.3)
    assert times.total_s == pytest.approx(95.0)
    assert times.busy_s == pytest.approx(13.7)  # user + nice + system + irq + softirq
    assert ProcStatReader(tmp_path / "elsewhere", hz=100).read() is None  # no such file: n/a


@pytest.mark.parametrize(
    ("text", "steal"),
    [
        ("cpu  1 2 3 4 5 6 7\n", None),  # a kernel without the steal column
        ("cpu  1 2 3 4\n", None),  # the four columns of the oldest kernels
        ("cpu0 1 2 3 4 5 6 7 8\n", "none"),  # no aggregate line
        ("cpu  1 2 x 4 5 6 7 8\n", "none"),  # garbage
        ("", "none"),
    ],
)
def test_proc_stat_without_steal_or_malformed(text: str, steal: str | None) -> None:
    times = parse_proc_stat(text, 100)
    if steal == "none":
        assert times is None
    else:
        assert times is not None and times.steal_s is None


def _sample(t: float, user: float, system: float, idle: float, steal: float | None, tree: float | None):  # type: ignore[no-untyped-def]
    return CpuLoadSample(t, MachineCpuTimes(user, 0.0, system, idle, 0.0, 0.0, 0.0, steal), tree)


def test_steal_and_other_load_of_a_window_by_hand() -> None:
    # 10 s on 2 CPUs = 20 CPU-s: 12 busy (10 user + 2 system), 6 idle, 2 stolen. LlamaScope used 9 of
    # the 12 busy seconds, so others used 3: 15 % of all CPU time, 0.3 CPUs.
    a = _sample(100.0, 50.0, 10.0, 40.0, 5.0, 30.0)
    b = _sample(110.0, 60.0, 12.0, 46.0, 7.0, 39.0)
    load = cpu_load_between(a, b, 2)
    assert load.wall_s == pytest.approx(10.0)
    assert load.steal_percent == pytest.approx(2 / 20 * 100)
    assert load.other_percent == pytest.approx(3 / 20 * 100)
    assert load.other_cpus == pytest.approx(0.3)
    assert load.tree_cpus == pytest.approx(0.9)
    assert load.note == ""


def test_a_window_without_steal_or_tree_or_long_enough_says_why() -> None:
    a = _sample(0.0, 50.0, 10.0, 40.0, None, 30.0)
    b = _sample(10.0, 60.0, 12.0, 48.0, None, 39.0)
    no_steal = cpu_load_between(a, b, 2)
    assert no_steal.steal_percent is None and no_steal.other_percent == pytest.approx(15.0)
    assert "steal time is not reported" in no_steal.note
    no_tree = cpu_load_between(_sample(0, 0, 0, 0, 0, None), _sample(10, 10, 2, 8, 0, None), 2)
    assert no_tree.other_percent is None and "own CPU time is not readable" in no_tree.note
    # 0.5 s on 2 CPUs is 1 CPU-s, under MIN_WINDOW_CPU_S: the ticks would dominate.
    short = cpu_load_between(_sample(0, 0, 0, 0, 0, 0), _sample(0.5, 0.5, 0.1, 0.4, 0.0, 0.3), 2)
    assert short.steal_percent is None and short.other_percent is None
    assert "too short (0.50 s)" in short.note
    unreadable = cpu_load_between(CpuLoadSample(0, None, 1.0), CpuLoadSample(5, None, 2.0), 2)
    assert unreadable.other_percent is None and "not readable" in unreadable.note


def test_tick_rounding_never_makes_other_load_negative() -> None:
    a = _sample(0.0, 10.0, 0.0, 0.0, 0.0, 0.0)
    b = _sample(2.0, 13.99, 0.0, 0.01, 0.0, 4.0)  # the tree read 4.0 s, the machine 3.99 busy
    assert cpu_load_between(a, b, 2).other_percent == 0.0


def test_the_probe_reads_a_fake_proc_tree_and_a_tree_function(tmp_path: Path) -> None:
    clock = iter([0.0, 10.0])
    trees = iter([30.0, 39.0])
    probe = CpuLoadProbe(
        4242, root=tmp_path, tree=lambda pid: next(trees) if pid == 4242 else None, clock=lambda: next(clock)
    )
    _fake_proc(tmp_path, _stat(5000, 1000, 4000, 500))
    start = probe.sample()
    _fake_proc(tmp_path, _stat(6000, 1200, 4600, 700))  # +10 s user, +2 system, +6 idle, +2 steal
    load = probe.between(start, probe.sample())
    assert load.steal_percent == pytest.approx(10.0) and load.other_percent == pytest.approx(15.0)


def test_the_process_tree_counts_its_children() -> None:
    """A busy child is part of this process's tree: its CPU time is ours, not other load."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        before = process_tree_cpu_s(os.getpid())
        assert before is not None
        deadline = time.monotonic() + 120
        while psutil.Process(child.pid).cpu_times().user < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the child's CPU time: the condition is that it has run
        child_cpu = psutil.Process(child.pid).cpu_times()
        after = process_tree_cpu_s(os.getpid())
        assert after is not None and after - before >= child_cpu.user * 0.5
    finally:
        child.kill()
        child.wait()
    assert process_tree_cpu_s(child.pid) is None  # gone: n/a, not an error


# ---- the verdict --------------------------------------------------------------------------------------


def test_coefficient_of_variation_by_hand() -> None:
    assert coefficient_of_variation([100.0, 110.0, 90.0]) == pytest.approx(10.0)  # sd 10 over mean 100
    assert coefficient_of_variation([5.0]) is None
    assert coefficient_of_variation([0.0, 0.0]) is None


def test_a_clean_result_is_not_flagged_and_says_its_figures() -> None:
    r = _result(
        samples_ns=(1_000_000_000, 1_010_000_000, 990_000_000),
        steal_percent=0.4,
        other_cpu_percent=3.0,
        other_cpus=0.06,
        throttle_events=0,
        cpu_freq_min_mhz=3000.0,
        cpu_freq_max_mhz=3000.0,
        warmup_runs=1,
    )
    verdict = assess(r)
    assert not verdict.noisy and verdict.cell == "ok" and verdict.reasons == ()
    assert "steal: 0.4 %" in verdict.details and "CPU clock: 3,000 MHz" in verdict.details
    assert "throttling: no" in verdict.details


@pytest.mark.parametrize(
    ("fields", "flag", "words"),
    [
        ({"samples_ns": (1_000_000_000, 1_500_000_000)}, "CV 28.3 % > 5 %", "the 2 repetitions disagree"),
        ({"steal_percent": 3.5}, "steal 3.5 % > 2 %", "host took 3.5 % of the CPU time"),
        ({"other_cpu_percent": 48.0, "other_cpus": 0.96}, "other load 48 % > 10 %", "0.96 CPUs' worth"),
        (
            {"throttled": True, "throttle_events": 3, "throttle_detail": "CPU: thermal (3 new events)"},
            "throttled",
            "the hardware throttled (CPU: thermal (3 new events))",
        ),
        ({"warmup_runs": 10, "warmup_steady": False}, "warm-up not steady", "did not settle: 10 runs"),
    ],
)
def test_each_rule_flags_and_says_why(fields: dict, flag: str, words: str) -> None:
    quiet = {"samples_ns": (1_000_000_000, 1_001_000_000)}
    verdict = assess(_result(**{**quiet, **fields}))
    assert verdict.noisy and verdict.flags == (flag,)
    assert words in verdict.reasons[0]
    assert verdict.cell.startswith("⚠ ")


def test_at_the_limits_nothing_is_flagged_and_n_a_flags_nothing() -> None:
    at_limits = _result(samples_ns=(1_000_000_000, 1_000_000_000), steal_percent=2.0, other_cpu_percent=10.0)
    assert not assess(at_limits).noisy
    unknown = _result(samples_ns=(1_000_000_000,), cpu_load_note="the run was too short")
    verdict = assess(unknown)
    assert not verdict.noisy
    assert "CV: n/a (needs 2+ repetitions)" in verdict.details
    assert "steal: n/a (the run was too short)" in verdict.details


def test_the_cpu_clock_and_throttle_detail_come_from_the_snapshots() -> None:
    from app.telemetry.snapshot import DeviceVerdict, Snapshot, ThrottleVerdict

    def snap(t: float, mhz: float, throttling: bool) -> Snapshot:
        verdict = DeviceVerdict(
            "CPU",
            ThrottleVerdict.UNKNOWN if throttling else ThrottleVerdict.NOT_THROTTLING,
            "clock 1800 MHz is 51 % of its 3500 MHz maximum under 100 % load" if throttling else "ok",
        )
        return Snapshot(
            t, t, 0.5, 100.0, (), mhz, 3500.0, None, None, None, None, None, None, None, (), (), (),
            None, None, None, (verdict,),
        )  # fmt: skip

    summary = summarize([snap(1, 3400, False), snap(2, 1800, True), snap(3, 3000, False)])
    assert (summary.cpu_freq_min_mhz, summary.cpu_freq_max_mhz, summary.cpu_freq_limit_mhz) == (
        1800,
        3400,
        3500,
    )
    assert summary.throttled and summary.throttle_detail.startswith("CPU: unknown cause (clock 1800 MHz")


# ---- warm-up until steady ---------------------------------------------------------------------------


def test_the_steady_rule() -> None:
    rule = SteadyRule(window=3, tolerance_percent=3.0, max_runs=10, max_seconds=60.0)
    assert not rule.steady([100.0, 100.0])  # fewer runs than the window
    assert rule.spread_percent([50.0, 90.0, 100.0, 101.0]) == pytest.approx(11.0)  # (101 - 90) / 100
    assert rule.steady([50.0, 80.0, 100.0, 101.0, 102.0])  # (102 - 100) / 101 = 2 %
    assert not rule.steady([100.0, 104.0, 100.0])  # 4 %
    assert rule.over(10, 1.0) and rule.over(3, 60.0) and not rule.over(9, 59.9)


# ---- comparisons ---------------------------------------------------------------------------------


def test_two_repetitions_a_side_are_never_called_significant() -> None:
    a, b = [100.0, 102.0], [190.0, 194.0]  # a huge difference, but one degree of freedom a side
    c = compare_repetitions(a, b)
    assert c.p_value is not None and c.p_value < 0.05  # the t-test alone would call it significant
    assert not c.significant
    assert c.refused is not None and c.verdict() == c.refused
    assert "2 and 2 repetitions" in c.refused and f"at least {MIN_REPETITIONS} a side" in c.refused
    assert c.repetitions_needed == MIN_REPETITIONS
    judged = compare_repetitions([100.0, 102.0, 101.0], [190.0, 194.0, 192.0])
    assert judged.significant and judged.refused is None


def test_how_many_repetitions_a_difference_needs_by_hand() -> None:
    # Means 100 and 105, both sample variances 25 (pooled 25): 2 (1.95996 + 0.84162)^2 * 25 / 25 = 15.7.
    a, b = [95.0, 100.0, 105.0], [100.0, 105.0, 110.0]
    assert repetitions_needed(a, b) == math.ceil(2 * (1.959964 + 0.841621) ** 2 * 25 / 25)
    assert repetitions_needed([100.0, 100.0], [100.0, 100.0]) is None  # no difference to find
    assert repetitions_needed([100.0], [110.0]) is None  # no spread to go by
    # [95, 105] and [100, 110]: sample variances 50 (pooled 50), means 5 apart: 2 (2.8016)^2 * 50 / 25 = 31.4.
    c = compare_repetitions([95.0, 105.0], [100.0, 110.0])
    assert not c.significant and c.repetitions_needed == 32
    assert "(-r 32); about 32 a side would tell a difference of +5.0 % from this spread" in c.verdict()


def _store_run(store: HistoryStore, samples: tuple[int, ...]) -> int:
    run = store.start_run("benchmark", "/m/model.gguf", {})
    store.add_result(run, _result(samples_ns=samples))
    store.finish_run(run)
    return run


def test_compare_with_two_repetitions_refuses_in_the_store_and_on_the_command_line(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "data" / "LlamaScope" / "history.sqlite3"))
    a = _store_run(store, (1_000_000_000, 1_010_000_000))
    b = _store_run(store, (500_000_000, 505_000_000))
    (row,) = store.compare(a, b)
    assert row.comparison.diff_percent == pytest.approx(100.0, abs=1.0)
    assert not row.comparison.significant and "not judged" in row.comparison.verdict()
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))
    out = subprocess.run(
        [sys.executable, "-m", "cli", "compare", str(a), str(b)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "not judged: 2 and 2 repetitions; significance needs at least 3 a side (-r 3)" in out.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "cli", "compare", str(a), str(b), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    (record,) = json.loads(as_json.stdout)
    assert record["significant"] is False and record["repetitions_needed"] == 3
    assert (record["repetitions_a"], record["repetitions_b"]) == (2, 2)


# ---- records, history ----------------------------------------------------------------------------


def test_the_trust_fields_are_exported_beside_llama_bench_fields_and_read_back() -> None:
    r = _result(
        samples_ns=(1_000_000_000, 1_500_000_000),
        flash_attn=-1,
        flash_attn_used=True,
        steal_percent=2.5,
        other_cpu_percent=40.0,
        other_cpus=0.8,
        cpu_freq_min_mhz=2000.0,
        cpu_freq_max_mhz=3000.0,
        warmup_runs=4,
        warmup_steady=True,
    )
    record = to_record(r)
    assert record["flash_attn"] == -1 and record["n_batch"] == 512  # llama-bench's own, unchanged
    assert record["cv_percent"] == pytest.approx(r.cv_percent) and record["noisy"] is True
    assert record["noise_reasons"].startswith("the 2 repetitions disagree")
    assert list(record)[:3] == ["build_commit", "build_number", "cpu_info"]  # llama-bench's order
    assert loads(dumps([r], "json"), source="llamascope") == [r]
    header = dumps([r], "csv").splitlines()[0].split(",")
    assert {"cv_percent", "steal_percent", "other_cpu_percent", "noisy", "noise_reasons"} <= set(header)
    md = dumps([r], "md")
    assert "|     CV |" in md and "⚠ CV 28.3 % > 5 %; steal 2.5 % > 2 %; other load 40 % > 10 %" in md


@pytest.mark.parametrize(
    ("value", "expected"), [(-1, -1), (0, 0), (1, 1), (True, 1), (False, 0), ("auto", -1), ("true", 1)]
)
def test_flash_attn_as_every_llama_bench_version_wrote_it(value: object, expected: int) -> None:
    record = to_record(_result())
    record["flash_attn"] = value
    assert from_record(record).flash_attn == expected


def test_a_bad_flash_attn_is_named() -> None:
    record = {**to_record(_result()), "flash_attn": 2}
    with pytest.raises(BenchError, match="flash_attn is 2"):
        from_record(record)
    assert parse_flash_attn("0,1,auto") == (0, 1, -1) and parse_flash_attn("on,off") == (1, 0)
    with pytest.raises(BenchError, match="'2' is not 0 or 1 .flash attention off, on. or auto"):
        parse_flash_attn("2")


def test_the_history_keeps_the_trust_columns(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    run = store.start_run("benchmark", "/m/model.gguf", {})
    store.add_result(
        run, _result(samples_ns=(1_000_000_000, 1_500_000_000), steal_percent=0.5, other_cpu_percent=40.0)
    )
    conn = sqlite3.connect(tmp_path / "h.sqlite3")
    row = conn.execute(
        "SELECT cv_percent, steal_percent, other_cpu_percent, throttled, noisy, noise_reasons FROM results"
    ).fetchone()
    conn.close()
    assert row[0] == pytest.approx(28.28, abs=0.01) and row[1:5] == (0.5, 40.0, 0, 1)
    assert "other processes used 40 % of all CPU time" in row[5]
    (back,) = store.results(run)
    assert back.other_cpu_percent == 40.0 and back.steal_percent == 0.5


def test_migration_to_schema_5_fills_the_trust_columns_of_stored_results(tmp_path: Path) -> None:
    path = tmp_path / "v4.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(f"{_MIGRATIONS[0]}{_MIGRATIONS[1]}PRAGMA user_version = 3;")
    conn.executescript(f"{_MIGRATIONS[3]}PRAGMA user_version = 4;")
    conn.execute(
        "INSERT INTO runs (kind, created_at, model_path) VALUES ('benchmark', '2026-01-01T00:00:00Z', '/m')"
    )
    old = to_record(_result(samples_ns=(1_000_000_000, 1_100_000_000, 900_000_000), throttled=True))
    for key in ("steal_percent", "other_cpu_percent", "other_cpus", "cv_percent", "noisy", "noise_reasons"):
        old.pop(key)  # a record written before they existed
    conn.execute(
        "INSERT INTO results (run_id, test, avg_ts, stddev_ts, record_json) VALUES (1, 'pp512', 1, 1, ?)",
        (json.dumps(old),),
    )
    conn.commit()
    conn.close()
    store = HistoryStore(str(path))
    assert store.schema_version() >= 5
    conn = sqlite3.connect(path)
    cv, steal, throttled, noisy = conn.execute(
        "SELECT cv_percent, steal_percent, throttled, noisy FROM results"
    ).fetchone()
    conn.close()
    assert cv == pytest.approx(10.0, rel=0.02) and steal is None and throttled == 1 and noisy == 1


# ---- real runs on the demo model ----------------------------------------------------------------


@pytest.fixture()
def short_windows_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo model's tests take fractions of a second; let the window split CPU time from 5 ticks."""
    monkeypatch.setattr(cpu_load, "MIN_WINDOW_CPU_S", 0.05)


def _plan(demo_model: str, **kw) -> BenchPlan:  # type: ignore[no-untyped-def]
    base = LoadSettings(n_threads=1, n_threads_batch=1)
    defaults = dict(models=(demo_model,), tests=(BenchTest(n_prompt=64),), base=base, repetitions=3)
    defaults.update(kw)
    return BenchPlan(**defaults)  # type: ignore[arg-type]


def test_a_real_short_benchmark_fills_the_trust_fields(demo_model: str, short_windows_measured: None) -> None:
    plan = _plan(demo_model, sweep=(("flash_attn", (DEFAULT_FLASH_ATTN,)), ("n_batch", (2048,))))
    (r,) = run_benchmark(plan)
    assert r.flash_attn == -1 and r.flash_attn_used is True  # auto, resolved on by llama.cpp on the CPU
    assert r.n_batch == 2048 and r.load_mode == "mmap" and to_record(r)["load_mode"] == "mmap"
    assert r.split_mode == "layer" and r.repack is True and r.poll == 50 and r.lazy_mode == "auto"
    assert r.cv_percent is not None and r.cv_percent >= 0
    assert r.other_cpu_percent is not None and 0 <= r.other_cpu_percent <= 100, r.cpu_load_note
    if sys.platform.startswith("linux"):
        assert r.steal_percent is not None and 0 <= r.steal_percent <= 100
    assert r.warmup_runs == 1 and r.warmup_steady is None


@pytest.fixture()
def busy_loop_elsewhere() -> Iterator[int]:
    """A busy loop outside this process's tree (its parent exits at once, so it is reparented), as
    another program on the machine would be. Yields its pid once it has used CPU time."""
    code = (
        "import subprocess, sys;"
        "p = subprocess.Popen([sys.executable, '-c', 'while True: pass'], start_new_session=True,"
        " stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
        "print(p.pid)"
    )
    pid = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    try:
        process = psutil.Process(pid)
        deadline = time.monotonic() + 120
        while process.cpu_times().user < 0.2 and time.monotonic() < deadline:
            time.sleep(0.02)  # polling its CPU time: the condition is that it runs
        assert os.getpid() not in [p.pid for p in process.parents()]
        yield pid
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


def test_a_busy_loop_elsewhere_is_other_load_and_flags_the_row(
    demo_model: str, short_windows_measured: None, busy_loop_elsewhere: int
) -> None:
    (r,) = run_benchmark(_plan(demo_model, tests=(BenchTest(n_gen=16),)))
    assert r.other_cpu_percent is not None and r.other_cpu_percent > 10, r
    verdict = assess(r)
    assert verdict.noisy and any(f.startswith("other load") for f in verdict.flags)


def test_warm_up_until_steady_runs_full_repetitions_and_records_them(demo_model: str) -> None:
    progress: list[str] = []
    plan = _plan(demo_model, tests=(BenchTest(n_gen=4),), repetitions=2, warmup_until_steady=True)
    (r,) = run_benchmark(plan, on_progress=lambda d, t, what: progress.append(what))
    warmups = [w for w in progress if "warm-up run" in w]
    assert r.warmup_runs == len(warmups) and 3 <= r.warmup_runs <= 10
    assert r.warmup_steady is not None
    spread = re.search(r"within ([0-9.]+) %", warmups[-1])
    assert r.warmup_steady == (spread is not None and float(spread.group(1)) <= 3.0)
    assert len(r.samples_ns) == 2


def test_the_command_line_runs_llama_bench_defaults_and_records_them(demo_model: str, tmp_path: Path) -> None:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "bench",
            demo_model,
            "-p",
            "32",
            "-n",
            "0",
            "-r",
            "2",
            "-t",
            "1",
            "-o",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (record,) = json.loads(out.stdout)
    assert (record["n_batch"], record["n_ubatch"], record["flash_attn"]) == (2048, 512, -1)
    assert record["flash_attn_used"] is True
    for name in ("cpu_mask", "poll", "split_mode", "load_mode", "repack", "no_kv_offload", "fit_target"):
        assert name in record
    assert "cv_percent" in record and "noise_reasons" in record
    # Measured in the engine host, LlamaScope's own tree is the command's: figures or why they are n/a.
    assert record["other_cpu_percent"] is not None or record["cpu_load_note"]
    if record["other_cpu_percent"] is not None:
        assert 0 <= record["other_cpu_percent"] <= 100
