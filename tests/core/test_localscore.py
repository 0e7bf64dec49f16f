"""LocalScore (app.bench.localscore): its arithmetic against hand-computed values, capping, the history,
a real quick run of the demo model through the engine host, and the command line's messages."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.bench.history import SCHEMA_VERSION, HistoryStore
from app.bench.localscore import (
    LOCALSCORE_TESTS,
    ScorePlan,
    ScoreRun,
    ScoreShape,
    ShapeResult,
    as_printed,
    cap_shape,
    headline,
    localscore,
    run_from_record,
    run_localscore,
    run_to_record,
    score_shapes,
    summarize,
)

WAIT_S = 600  # a real run on a loaded machine: a limit for a hang, never for slowness

# ---- LocalScore's definitions ---------------------------------------------------------------------


def test_the_nine_tests_are_localscores_and_all_fit_the_demo_models_context() -> None:
    assert LOCALSCORE_TESTS == (
        (1024, 16),
        (4096, 256),
        (2048, 256),
        (2048, 768),
        (1024, 1024),
        (1280, 3072),
        (384, 1152),
        (64, 1024),
        (16, 1536),
    )
    shapes = score_shapes(8192)  # the demo model's n_ctx_train
    assert not any(s.capped for s in shapes)
    assert max(s.n_ctx for s in shapes) == 4352  # (4096, 256) and (1280, 3072)
    assert [s.name for s in shapes][:2] == ["pp1024+tg16", "pp4096+tg256"]


def test_the_score_against_hand_computed_values() -> None:
    # Nine tests; means: prompt (100 + ... + 900) / 9 = 500 t/s, generation (10 + ... + 90) / 9 = 50 t/s,
    # TTFT (20 + ... + 180) / 9 = 100 ms. Score = 10 · ∛(500 · 50 · 1000 / 100) = 10 · ∛250000
    # = 10 · 62.996052494743... = 629.96052494743...
    figures = [(100.0 * k, 10.0 * k, 20.0 * k) for k in range(1, 10)]
    summary = summarize(figures)
    assert (summary.avg_prompt_tps, summary.avg_gen_tps, summary.avg_ttft_ms) == (500.0, 50.0, 100.0)
    assert summary.score == pytest.approx(629.96052494743, abs=1e-9)
    assert summary.shown == 629  # LocalScore truncates: (int)629.96 is 629, not 630
    assert summary.n_tests == 9

    # The means are arithmetic, and the cube root is of the product of the three means (not a mean of
    # per-test scores): prompt 1000 and 3000 t/s average 2000, not √(1000·3000) = 1732.05.
    two = summarize([(1000.0, 40.0, 50.0), (3000.0, 20.0, 150.0)])
    assert (two.avg_prompt_tps, two.avg_gen_tps, two.avg_ttft_ms) == (2000.0, 30.0, 100.0)
    # 10 · ∛(2000 · 30 · 1000 / 100) = 10 · ∛600000 = 10 · 84.3432665301749 = 843.432665301749
    assert two.score == pytest.approx(843.432665301749, abs=1e-9)
    per_test = (localscore(1000.0, 40.0, 50.0) + localscore(3000.0, 20.0, 150.0)) / 2
    assert abs(per_test - two.score) > 1.0

    # pow(x, 1.0 / 3.0) is not an exact cube root: parts whose product is exactly 1e6 (500 · 20 ·
    # 1000 / 10) give 99.99999999999997 · 10 = 999.9999999999998, which LocalScore shows as 999.
    exact = summarize([(500.0, 20.0, 10.0)])
    assert exact.score == 999.9999999999998
    assert exact.shown == 999
    assert localscore(500.0, 20.0, 10.0) == math.pow(1e6, 1.0 / 3.0) * 10


def test_a_tests_figures_from_its_timings() -> None:
    shape = ScoreShape(1024, 16, 1024, 16)
    result = ShapeResult(
        shape=shape,
        prompt_ns=(1_024_000_000, 512_000_000),  # 1000 and 2000 prompt t/s
        gen_ns=(160_000_000, 320_000_000),  # 100 and 50 generation t/s
        ttft_ns=(1_000_000_001, 1_000_000_002),  # uint64 mean 1_000_000_001 (the .5 truncated)
        total_ns=(1_184_000_000, 832_000_000),
    )
    # test::avg_ts: the mean of the rates, (1000 + 2000) / 2 = 1500, not 2048 tokens / 1.536 s = 1333.33.
    assert result.prompt_tps == 1500.0
    assert result.gen_tps == 75.0
    assert result.ttft_ms == 1000.000001
    assert result.prompt_tps_stddev == pytest.approx(math.sqrt(500_000))
    assert result.printed == (1500.0, 75.0, 1000.000001)
    # Through std::to_string: six decimals.
    assert as_printed(1 / 3) == 0.333333
    assert as_printed(2 / 3) == 0.666667
    assert ShapeResult(shape, (3,), (3,), (3,), (3,)).printed == (
        as_printed(1024e9 / 3),
        as_printed(16e9 / 3),
        3e-6,
    )
    with pytest.raises(ValueError):
        ShapeResult(shape, (1, 2), (1,), (1,), (1,))


def test_power_gives_tokens_per_second_per_watt_and_none_without_it() -> None:
    base = ShapeResult(ScoreShape(64, 1024, 64, 1024), (640_000_000,), (10_240_000_000,), (1,), (1,))
    assert base.prompt_tps_per_watt is None and base.gen_tps_per_watt is None
    powered = ShapeResult(
        ScoreShape(64, 1024, 64, 1024), (640_000_000,), (10_240_000_000,), (1,), (1,), mean_power_watts=20.0
    )
    assert powered.prompt_tps_per_watt == 100.0 / 20.0  # 64 tokens in 0.64 s
    assert powered.gen_tps_per_watt == 100.0 / 20.0  # 1024 tokens in 10.24 s


def test_tests_beyond_the_context_are_capped_keeping_their_ratio() -> None:
    # 4096 + 256 = 4352 > 1024: the prompt gets 4096 · 1024 // 4352 = 963 tokens, generation the other 61.
    capped = cap_shape(4096, 256, 1024)
    assert (capped.n_prompt, capped.n_gen, capped.capped, capped.name) == (963, 61, True, "pp963+tg61")
    assert cap_shape(16, 1536, 64) == ScoreShape(1, 63, 16, 1536)  # at least one prompt token
    assert not cap_shape(1024, 1024, 2048).capped
    assert [s.capped for s in score_shapes(2048)] == [
        False,
        True,
        True,
        True,
        False,
        True,
        False,
        False,
        False,
    ]


def _run(shapes: tuple[ShapeResult, ...], **kw: object) -> ScoreRun:
    fields: dict[str, object] = dict(
        model_path="m.gguf",
        model_name="m",
        model_type="llama 135M Q4_1",
        model_size=1,
        n_ctx_train=8192,
        max_ctx=None,
        repetitions=1,
        quick=True,
        n_threads=2,
        n_gpu_layers=0,
        n_batch=2048,
        n_ubatch=512,
        type_k="f16",
        type_v="f16",
        flash_attn=False,
        build="0",
        backends="CPU",
        cpu_info="cpu",
        gpu_info="",
        test_time="2026-01-01T00:00:00Z",
        shapes=shapes,
    )
    fields.update(kw)
    return ScoreRun(**fields)  # type: ignore[arg-type]


def _synthetic_tests(limit: int | None) -> tuple[ShapeResult, ...]:
    # Every test: prompt 1000 t/s, generation 50 t/s, TTFT = the prompt time + 20 ms.
    out = []
    for s in score_shapes(limit):
        prompt_ns = s.n_prompt * 1_000_000
        out.append(ShapeResult(s, (prompt_ns,), (s.n_gen * 20_000_000,), (prompt_ns + 20_000_000,), (1,)))
    return tuple(out)


def test_only_a_complete_uncapped_run_is_called_a_localscore() -> None:
    full = _run(_synthetic_tests(None))
    assert full.comparable and full.kind == "LocalScore"
    assert headline(full).startswith(f"LocalScore {full.summary.shown} ")  # type: ignore[union-attr]
    capped = _run(_synthetic_tests(1024), max_ctx=1024)
    assert capped.capped and not capped.comparable and capped.kind == "capped score"
    text = headline(capped)
    assert text.startswith("capped score, not comparable")
    assert not re.search(r"LocalScore \d", text)
    stopped = _run(_synthetic_tests(None)[:4], stopped=True)
    assert stopped.summary is None and stopped.kind == "no score"
    assert headline(stopped).startswith("no score: 4 of 9 tests")
    assert run_from_record(json.loads(json.dumps(run_to_record(capped)))) == capped


def test_the_history_keeps_the_tests_and_the_score(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    assert store.schema_version() == SCHEMA_VERSION
    run = _run(_synthetic_tests(None))
    run_id = store.start_run("localscore", "m.gguf", {})
    for test in run.shapes:
        store.add_score_test(run_id, test)
    assert store.score_run(run_id) is None  # not ended yet: the tests are there, the score not
    store.add_score(run_id, run)
    store.finish_run(run_id)
    assert store.score_run(run_id) == run
    assert store.score_tests(run_id) == list(run.shapes)
    assert store.run(run_id).n_results == 9
    assert store.run(run_id).build == "0"
    import sqlite3

    with sqlite3.connect(store.path) as conn:
        row = conn.execute(
            "SELECT kind, score, comparable FROM localscores WHERE run_id = ?", (run_id,)
        ).fetchone()
    assert row == ("LocalScore", run.summary.score, 1)  # type: ignore[union-attr]
    store.delete_run(run_id)
    assert store.score_tests(run_id) == []


# ---- real runs of the demo model ------------------------------------------------------------------


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"), XDG_STATE_HOME=str(tmp_path / "state"))
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_a_real_quick_capped_score_adds_up_by_localscores_formula(demo_model: str, tmp_path: Path) -> None:
    """`score --quick` on the demo model, capped to 64 tokens so that it takes seconds: labelled capped,
    and its score is the formula of its parts."""
    done = _cli(["score", demo_model, "--quick", "--max-ctx", "64", "-t", "1", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = json.loads(done.stdout)
    assert out["kind"] == "capped score" and out["capped"] and not out["comparable"]
    results = out["results"]
    assert len(results) == 9 and all(r["repetitions"] == 1 for r in results)
    assert all(r["n_prompt"] + r["n_gen"] <= 64 and r["capped_from"] for r in results)
    # The parts, recomputed here from the per-test figures as LocalScore's JSON holds them.
    printed = [
        (float(f"{r['prompt_tps']:.6f}"), float(f"{r['gen_tps']:.6f}"), float(f"{r['ttft_ms']:.6f}"))
        for r in results
    ]
    avg_p = sum(p for p, _, _ in printed) / 9
    avg_g = sum(g for _, g, _ in printed) / 9
    avg_t = sum(t for _, _, t in printed) / 9
    summary = out["results_summary"]
    assert summary["avg_prompt_tps"] == pytest.approx(avg_p, rel=1e-12)
    assert summary["avg_gen_tps"] == pytest.approx(avg_g, rel=1e-12)
    assert summary["avg_ttft_ms"] == pytest.approx(avg_t, rel=1e-12)
    assert summary["performance_score"] == pytest.approx(
        10 * (avg_p * avg_g * 1000 / avg_t) ** (1 / 3), rel=1e-12
    )
    assert summary["shown_score"] == int(summary["performance_score"])
    # Each repetition's timings: TTFT holds the whole prompt and the first generated token.
    for test in out["run"]["shapes"]:
        for prompt, gen, ttft, total in zip(
            test["prompt_ns"], test["gen_ns"], test["ttft_ns"], test["total_ns"], strict=True
        ):
            assert prompt < ttft <= total and prompt + gen <= total
    # Kept in the history, and shown again from there.
    stored = re.search(r"stored as run (\d+)", done.stderr)
    assert stored, done.stderr
    shown = _cli(["score", "--run", stored.group(1), "--json"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["results_summary"] == summary
    text = _cli(["score", "--run", stored.group(1)], tmp_path).stdout
    assert "capped score, not comparable" in text and not re.search(r"^LocalScore \d", text, re.M)


def test_a_stopped_run_keeps_its_finished_tests_and_has_no_score(demo_model: str) -> None:
    cancel = threading.Event()
    seen: list[ShapeResult] = []

    def on_shape(result: ShapeResult) -> None:
        seen.append(result)
        if len(seen) == 2:
            cancel.set()

    plan = ScorePlan.quick_plan(demo_model, max_ctx=32, n_threads=1)
    run = run_localscore(plan, cancel=cancel, on_shape=on_shape)
    assert run.stopped and len(run.shapes) == 2 and run.shapes == tuple(seen)
    assert run.summary is None and headline(run).startswith("no score: 2 of 9 tests")


# ---- the command line's messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment", "code"),
    [
        (["--quick", "-r", "3"], "give --quick or -r, not both", 2),
        (["-r", "0"], "-r must be between 1 and 1000", 2),
        (["-r", "many"], "invalid int value: 'many'", 2),
        (["--max-ctx", "8"], "--max-ctx must be at least 16", 2),
        (["--max-ctx", "100000"], "above the model's training context (8,192 tokens)", 2),
        (["-t", "0"], "-t must be at least 1", 2),
        (["-t", "100000"], "logical cores", 2),
        (["{missing}"], "not found", 1),
        (["--run", "424242"], "there is no run 424242", 1),
        (["--run", "1", "--quick"], "--run shows a stored run", 2),
    ],
)
def test_bad_input_gets_a_message(args: list[str], fragment: str, code: int, tmp_path: Path) -> None:
    args = [a.replace("{missing}", str(tmp_path / "missing.gguf")) for a in args]
    done = _cli(["score", *args], tmp_path)
    assert done.returncode == code, (done.returncode, done.stderr)
    assert fragment.lower() in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "failed unexpectedly" not in done.stderr


def test_a_run_that_is_not_a_localscore_is_named(tmp_path: Path) -> None:
    os.makedirs(tmp_path / "data" / "LlamaScope")
    store = HistoryStore(str(tmp_path / "data" / "LlamaScope" / "history.sqlite3"))
    run_id = store.start_run("benchmark", "m.gguf", {})
    done = _cli(["score", "--run", str(run_id)], tmp_path)
    assert done.returncode == 1
    assert f"run {run_id} is a benchmark run, not a LocalScore run" in done.stderr
