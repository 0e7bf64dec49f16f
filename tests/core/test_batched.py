"""llama-batched-bench's view of pg tests, t/s against depth, and llama-bench's `-o sql`."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import subprocess
from pathlib import Path

import pytest

from app.bench.batched import (
    batched_tables,
    depth_series,
    depth_table,
    pg_figures,
    pg_table,
    result_pg_figures,
)
from app.bench.export import SQL_COLUMNS, dumps, from_record, loads, to_record, to_sql
from app.bench.runner import BenchError, BenchPlan, BenchResult, BenchTest, run_benchmark
from app.llama.tools import find_tool
from app.model.settings import LoadSettings


def _result(**kw: object) -> BenchResult:
    fields: dict[str, object] = dict(
        model_filename="/models/m.gguf",
        model_type="llama 256M Q4_1",
        model_size=96_576_768,
        model_n_params=134_515_008,
        n_batch=512,
        n_ubatch=512,
        n_threads=2,
        type_k="f16",
        type_v="f16",
        n_gpu_layers=0,
        flash_attn=0,
        use_mmap=True,
        n_prompt=100,
        n_gen=20,
        n_depth=0,
        test_time="2026-01-01T00:00:00Z",
        samples_ns=(2_000_000_000, 3_000_000_000),
        cpu_info="cpu",
        gpu_info="",
        backends="CPU",
        build="0.3.36",
        samples_pp_ns=(500_000_000, 1_000_000_000),
    )
    fields.update(kw)
    return BenchResult(**fields)  # type: ignore[arg-type]


# ---- the arithmetic ---------------------------------------------------------------------------
def test_batched_bench_figures_by_hand() -> None:
    """PP 100, TG 20, two repetitions: 2 s with the prompt done at 0.5 s, 3 s with it done at 1 s.
    Repetition 1: T_PP 0.5, T_TG 1.5, T 2; S_PP 200, S_TG 13.333, S 60.
    Repetition 2: T_PP 1.0, T_TG 2.0, T 3; S_PP 100, S_TG 10, S 40.
    Means and sample standard deviations (n - 1) of those."""
    f = pg_figures(100, 20, 0, (2_000_000_000, 3_000_000_000), (500_000_000, 1_000_000_000))
    half_root2 = math.sqrt(2) / 2  # sd of two values d apart is d / sqrt(2)
    assert (f.t_pp_s.mean, f.t_pp_s.stdev) == pytest.approx((0.75, 0.5 * half_root2))
    assert (f.s_pp_ts.mean, f.s_pp_ts.stdev) == pytest.approx((150.0, 100 * half_root2))
    assert (f.t_tg_s.mean, f.t_tg_s.stdev) == pytest.approx((1.75, 0.5 * half_root2))
    assert (f.s_tg_ts.mean, f.s_tg_ts.stdev) == pytest.approx((35 / 3, (40 / 3 - 10) * half_root2))
    assert (f.t_s.mean, f.t_s.stdev) == pytest.approx((2.5, half_root2))
    assert (f.s_ts.mean, f.s_ts.stdev) == pytest.approx((50.0, 20 * half_root2))
    assert (f.ttft_ms.mean, f.ttft_ms.stdev) == pytest.approx((750.0, 500 * half_root2))
    assert f.n_kv == 120 and f.n_repetitions == 2
    assert pg_figures(100, 20, 512, (2_000_000_000,), (500_000_000,)).n_kv == 632  # depth filled first


def test_the_total_speed_is_llama_bench_s_t_s() -> None:
    r = _result()
    f = result_pg_figures(r)
    assert f is not None
    assert f.s_ts.mean == pytest.approx(r.avg_ts) and f.s_ts.stdev == pytest.approx(r.stddev_ts)


def test_one_repetition_gives_batched_bench_s_printed_row() -> None:
    """llama-batched-bench -npp 128 -ntg 32 -npl 1 -t 2 on the demo model printed (JSONL)
    "t_pp": 0.690792, "speed_pp": 185.294556, "t_tg": 2.069664, "speed_tg": 15.461447,
    "t": 2.760456, "speed": 57.961437 (its float32 arithmetic: 6 significant digits)."""
    f = pg_figures(128, 32, 0, (2_760_456_000,), (690_792_000,))
    assert f.t_pp_s.mean == pytest.approx(0.690792, rel=1e-6)
    assert f.s_pp_ts.mean == pytest.approx(185.294556, rel=1e-6)
    assert f.t_tg_s.mean == pytest.approx(2.069664, rel=1e-6)
    assert f.s_tg_ts.mean == pytest.approx(15.461447, rel=1e-6)
    assert f.t_s.mean == pytest.approx(2.760456, rel=1e-6)
    assert f.s_ts.mean == pytest.approx(57.961437, rel=1e-6)
    assert f.s_pp_ts.stdev == 0.0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((0, 20, 0, (1,), (1,)), "need a pg test"),
        ((100, 20, 0, (2, 3), (1,)), "1 prompt times for 2 repetitions"),
        ((100, 20, 0, (2,), (2,)), "repetition 1: its prompt took 2 ns of 2 ns"),
        ((100, 20, 0, (2,), (0,)), "must be positive"),
    ],
)
def test_inconsistent_times_are_refused_with_a_reason(args: tuple, fragment: str) -> None:
    with pytest.raises(BenchError, match=fragment):
        pg_figures(*args)


def test_only_pg_results_with_prompt_times_have_figures() -> None:
    assert result_pg_figures(_result(n_prompt=0, samples_pp_ns=())) is None
    assert result_pg_figures(_result(samples_pp_ns=())) is None  # llama-bench's record has none
    assert pg_table([_result(n_gen=0, samples_pp_ns=())]) == ""


# ---- records, tables --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_prompt_times_round_trip_through_the_exports(fmt: str) -> None:
    r = _result()
    (back,) = loads(dumps([r], fmt))
    assert back.samples_pp_ns == r.samples_pp_ns
    record = to_record(r)
    assert record["t_pp"] == pytest.approx(0.75) and record["speed_tg"] == pytest.approx(35 / 3)
    assert record["speed"] == pytest.approx(r.avg_ts)


def test_csv_carries_the_prompt_times_and_batched_bench_means() -> None:
    import csv
    import io

    (row,) = csv.DictReader(io.StringIO(dumps([_result()], "csv")))
    assert json.loads(row["samples_pp_ns"]) == [500_000_000, 1_000_000_000]
    assert float(row["speed_pp"]) == pytest.approx(150.0)


def test_a_bad_prompt_time_in_a_record_is_named() -> None:
    record = to_record(_result())
    record["samples_pp_ns"] = [500_000_000]
    with pytest.raises(BenchError, match="samples_pp_ns: 1 prompt times for 2 repetitions"):
        from_record(record)
    record["samples_pp_ns"] = [500_000_000, "x"]
    with pytest.raises(BenchError, match=r"samples_pp_ns\[1\] must be a positive whole number"):
        from_record(record)


def test_pg_table_lists_batched_bench_s_columns() -> None:
    text = pg_table([_result(), _result(n_threads=4)])
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header == ["config", "PP", "TG", "B", "depth", "N_KV"] + [
        "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "T s", "S t/s"
    ]  # fmt: skip
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells == [
        "threads=2",
        "100",
        "20",
        "1",
        "0",
        "120",
        "0.750 ± 0.354",
        "150.00 ± 70.71",
        "1.750 ± 0.354",
        "11.67 ± 2.36",
        "2.500 ± 0.707",
        "50.00 ± 14.14",
    ]


def test_depth_table_puts_each_series_in_a_column() -> None:
    results = [
        _result(n_prompt=0, n_gen=8, n_depth=d, samples_ns=(ns,), samples_pp_ns=())
        for d, ns in ((0, 100_000_000), (512, 200_000_000))
    ] + [_result(n_prompt=16, n_gen=0, n_depth=0, samples_ns=(100_000_000,), samples_pp_ns=())]
    text = depth_table(results)
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["depth", "tg8 t/s", "pp16 t/s"]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["0", "80.00 ± 0.00", "160.00 ± 0.00"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == ["512", "40.00 ± 0.00", "n/a"]
    assert depth_table(results[:1]) == ""  # one depth: nothing to tabulate


# ---- real runs on the demo model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_run(demo_model: str) -> list[BenchResult]:
    """pg 32,8 and tg 8 at depths 0 and 64, two repetitions, one thread."""
    plan = BenchPlan(
        models=(demo_model,),
        tests=tuple(BenchTest(n_prompt=p, n_gen=8, n_depth=d) for d in (0, 64) for p in (32, 0)),
        base=LoadSettings(n_threads=1, n_threads_batch=1, n_batch=512, flash_attn=False),
        repetitions=2,
    )
    return run_benchmark(plan)


def test_a_real_pg_run_times_its_prompt_inside_each_repetition(pg_run: list[BenchResult]) -> None:
    pg = [r for r in pg_run if r.n_prompt]
    assert [r.test.name for r in pg] == ["pp32+tg8", "pp32+tg8 @ d64"]
    for r in pg:
        assert len(r.samples_pp_ns) == len(r.samples_ns) == 2
        assert all(0 < p < s for p, s in zip(r.samples_pp_ns, r.samples_ns, strict=True))
        f = result_pg_figures(r)
        assert f is not None
        assert f.s_ts.mean == pytest.approx(r.avg_ts)
        expected_pp = [32e9 / p for p in r.samples_pp_ns]
        assert f.s_pp_ts.mean == pytest.approx(sum(expected_pp) / 2)
        assert f.n_kv == r.n_depth + 40
    assert all(r.samples_pp_ns == () for r in pg_run if not r.n_prompt)  # tg tests have none
    # llama-bench's model_type is llama.cpp's own description (llama-bench printed this for the demo model)
    assert {r.model_type for r in pg_run} == {"llama 256M Q4_1"}
    text = batched_tables(pg_run)
    assert "llama-batched-bench" in text and "t/s against KV-cache depth" in text


def test_a_real_depth_sweep_tabulates_by_depth(pg_run: list[BenchResult]) -> None:
    series = {s.label: s for s in depth_series(pg_run)}
    assert list(series) == ["pp32+tg8", "tg8"]
    by_name = {r.test.name: r for r in pg_run}
    assert [(p.depth, p.avg_ts) for p in series["tg8"].points] == [
        (0, by_name["tg8"].avg_ts),
        (64, by_name["tg8 @ d64"].avg_ts),
    ]
    rows = depth_table(pg_run).splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["0", "64"]
    assert f"{by_name['tg8 @ d64'].avg_ts:.2f} ± {by_name['tg8 @ d64'].stddev_ts:.2f}" in rows[1]


# ---- llama-bench's SQL ------------------------------------------------------------------------------
def _load(sql: str, conn: sqlite3.Connection | None = None) -> sqlite3.Connection:
    conn = conn or sqlite3.connect(":memory:")
    conn.executescript(sql)
    return conn


def test_sql_round_trip_through_sqlite(pg_run: list[BenchResult]) -> None:
    quoted = dataclasses.replace(pg_run[0], model_filename="/models/it's here.gguf")
    results = [*pg_run, quoted]
    conn = _load(to_sql(results))
    columns = [(row[1], row[2]) for row in conn.execute("PRAGMA table_info(llama_bench)")]
    assert columns == list(SQL_COLUMNS)
    rows = conn.execute(
        "SELECT model_filename, n_prompt, n_gen, n_depth, avg_ns, avg_ts, stddev_ts, typeof(n_prompt), "
        "typeof(avg_ts), build_commit, load_mode, flash_attn FROM llama_bench"
    ).fetchall()
    assert len(rows) == len(results)
    for r, row in zip(results, rows, strict=True):
        assert row[:5] == (r.model_filename, r.n_prompt, r.n_gen, r.n_depth, r.avg_ns)
        assert row[5] == pytest.approx(r.avg_ts, abs=1e-6) and row[6] == pytest.approx(r.stddev_ts, abs=1e-6)
        assert row[7:] == ("integer", "real", "0.3.36", "mmap", 0)
    # The same SQL again adds rows to the table it created (llama-bench's CREATE TABLE IF NOT EXISTS).
    _load(to_sql(results), conn)
    assert conn.execute("SELECT COUNT(*) FROM llama_bench").fetchone()[0] == 2 * len(results)


def _llama_bench() -> str:
    path = find_tool("llama-bench")
    if path is None:
        pytest.skip("llama-bench is not built: run `make llama-tools` (`make test` builds it first)")
    return str(path)


# compare-llama-bench.py (llama.cpp scripts/, in llama-cpp-python 0.3.36's sdist): the properties it
# pairs a baseline row with a compared row by, and its query (LlamaBenchDataSQLite3._get_rows_llama_bench).
COMPARE_KEY_PROPERTIES = [
    "cpu_info", "gpu_info", "backends", "n_gpu_layers", "n_cpu_moe", "tensor_buft_overrides",
    "model_filename", "model_type", "n_batch", "n_ubatch", "embeddings", "cpu_mask", "cpu_strict", "poll",
    "n_threads", "type_k", "type_v", "load_mode", "no_kv_offload", "split_mode", "main_gpu",
    "tensor_split", "flash_attn", "n_prompt", "n_gen", "n_depth", "fit_target", "fit_min_ctx",
]  # fmt: skip


def _compare_rows(conn: sqlite3.Connection, baseline: str, compare: str) -> list[tuple]:
    properties = ["model_type"]
    averages = ["tb.n_prompt", "tb.n_gen", "tb.n_depth", "AVG(tb.avg_ts)", "AVG(tc.avg_ts)"]
    select = ", ".join([f"tb.{p}" for p in properties] + averages)
    equal = " AND ".join(
        [f"tb.{p} = tc.{p}" for p in COMPARE_KEY_PROPERTIES]
        + [f"tb.build_commit = '{baseline}'", f"tc.build_commit = '{compare}'"]
    )
    group = ", ".join([f"tb.{p}" for p in properties] + ["tb.n_gen", "tb.n_prompt", "tb.n_depth"])
    query = (
        f"SELECT {select} FROM llama_bench tb JOIN llama_bench tc ON {equal} "
        f"GROUP BY {group} ORDER BY {group};"
    )
    return conn.execute(query).fetchall()


def test_llamascope_sql_sits_beside_llama_bench_s_and_pairs_with_it(demo_model: str) -> None:
    """llama-bench's own `-o sql` and LlamaScope's go into one database in either order, and
    compare-llama-bench.py's query pairs LlamaScope's row with llama-bench's row of the same test and
    settings: every property it compares by agrees."""
    tool = _llama_bench()
    args = "-p 0 -n 0 -pg 16,2 -r 1 -t 1 -b 512 -ub 512 -fa 0 -ngl 0 -lm mmap -o sql".split()
    done = subprocess.run(
        [tool, "-m", demo_model, *args], capture_output=True, text=True, check=True, timeout=600
    )
    theirs = done.stdout
    plan = BenchPlan(
        models=(demo_model,),
        tests=(BenchTest(n_prompt=16, n_gen=2),),
        base=LoadSettings(n_threads=1, n_threads_batch=1, n_batch=512, n_ubatch=512, flash_attn=False),
        repetitions=1,
    )
    ours_results = run_benchmark(plan)
    ours = to_sql(ours_results)
    # The same table: LlamaScope's CREATE TABLE is llama-bench's, character for character.
    assert ours.split(");\n")[0] == theirs.split(");\n")[0]
    for first, second in ((theirs, ours), (ours, theirs)):
        conn = _load(second, _load(first))
        builds = sorted(b for (b,) in conn.execute("SELECT build_commit FROM llama_bench"))
        assert len(builds) == 2
        baseline = next(b for b in builds if b != ours_results[0].build)
        rows = _compare_rows(conn, baseline, ours_results[0].build)
        assert len(rows) == 1, "compare-llama-bench.py's query pairs no rows: a property differs"
        model_type, n_prompt, n_gen, n_depth, theirs_ts, ours_ts = rows[0]
        assert (model_type, n_prompt, n_gen, n_depth) == ("llama 256M Q4_1", 16, 2, 0)
        assert ours_ts == pytest.approx(ours_results[0].avg_ts, abs=1e-6)
        assert theirs_ts > 0


def test_sql_export_writes_a_file(tmp_path: Path, pg_run: list[BenchResult]) -> None:
    from app.bench.export import export

    path = tmp_path / "bench.sql"
    export(pg_run, str(path))
    conn = _load(path.read_text(encoding="utf-8"))
    assert conn.execute("SELECT COUNT(*) FROM llama_bench").fetchone()[0] == len(pg_run)
