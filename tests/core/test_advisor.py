"""The advisor: the Pareto frontier and the recommendation on constructed figures, the refusals, and a
real advice on the demo model's F16 base (llama.cpp's quantizer, real KLD and speed) whose second
run measures nothing new."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.bench.history import HistoryStore
from app.quality.eval_types import EvalSettings
from app.quant import advisor as advisor_module
from app.quant.advisor import (
    AdviceError,
    AdviceRequest,
    Advisor,
    CandidateFigures,
    CandidateRow,
    exclusions,
    pareto_frontier,
    recommend,
)
from app.quant.measuring import EvalStep, LocalEvalRunner
from app.quant.plan import f16_base_request
from app.quant.quantize import quantize
from cli.main import main as cli_main

TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "resources", "eval", "python-docs-excerpt.txt")
MiB = 1024 * 1024


def figures(name: str, size_mib: float, kld: float, tg: float) -> CandidateFigures:
    return CandidateFigures(
        type_name=name,
        with_imatrix=False,
        file_bytes=int(size_mib * MiB),
        tensor_data_bytes=int(size_mib * MiB),
        bits_per_weight=4.0,
        mean_kld=kld,
        kld_uncertainty=None,
        same_top_p=0.9,
        ppl=20.0,
        ppl_uncertainty=None,
        pp_tokens_per_s=500.0,
        tg_tokens_per_s=tg,
        tg_std=None,
    )


def row(f: CandidateFigures, memory_mib: float, max_mib: float | None, min_tg: float | None) -> CandidateRow:
    memory = int(memory_mib * MiB)
    limit = None if max_mib is None else int(max_mib * MiB)
    return CandidateRow(f, memory, False, exclusions(memory, f.tg_tokens_per_s, limit, min_tg), False)


# ---- the frontier and the pick, on constructed figures -------------------------------------------
def test_the_frontier_keeps_exactly_the_points_no_other_dominates() -> None:
    points = [
        (100.0, 0.01, 50.0),  # A: best KLD
        (80.0, 0.05, 60.0),  # B: smaller and faster than A, worse KLD: on it
        (90.0, 0.06, 55.0),  # C: B is smaller, better and faster: dominated
        (80.0, 0.05, 60.0),  # D: equal to B: neither dominates the other
        (60.0, 0.20, 59.0),  # E: smallest: on it
        (100.0, 0.01, 49.0),  # F: A is as large, as good and faster: dominated
    ]
    assert pareto_frontier(points) == (True, True, False, True, True, False)
    assert pareto_frontier([]) == ()
    assert pareto_frontier([(1.0, 1.0, 1.0)]) == (True,)


def test_the_pick_is_the_lowest_kld_within_both_limits() -> None:
    rows = [
        row(figures("Q8_0", 140, 0.001, 30), 200, 150, 40),  # too big and too slow
        row(figures("Q6_K", 130, 0.004, 45), 180, 150, 40),  # too big
        row(figures("Q4_K_M", 100, 0.03, 50), 140, 150, 40),  # fits: the pick
        row(figures("Q3_K_M", 90, 0.08, 52), 130, 150, 40),  # fits, worse KLD
    ]
    pick, verdict = recommend(rows, 150 * MiB, 40, 4096)
    assert pick is rows[2]
    assert verdict.startswith("Recommended: Q4_K_M") and "150 MiB" in verdict and "40 tokens/s" in verdict
    assert rows[0].excluded_by == ("memory 200 MiB > 150 MiB", "tg 30.0 < 40 t/s")


def test_nothing_meeting_the_constraints_is_said_with_what_excluded_what() -> None:
    rows = [
        row(figures("Q8_0", 140, 0.001, 30), 200, 120, 60),
        row(figures("Q4_K_M", 100, 0.03, 50), 110, 120, 60),
    ]
    pick, verdict = recommend(rows, 120 * MiB, 60, 4096)
    assert pick is None
    assert verdict.startswith("Nothing meets the constraints")
    assert "the memory limit excluded Q8_0" in verdict and "needs 110 MiB" in verdict
    assert "the speed floor excluded Q8_0, Q4_K_M" in verdict and "generates 50.0 t/s" in verdict


# ---- refusals before anything is measured ---------------------------------------------------------
class CountingRunner(LocalEvalRunner):
    def __init__(self) -> None:
        super().__init__(n_threads=2)
        self.steps: list[EvalStep] = []

    def run(self, step: EvalStep, on_progress: Any = None) -> Any:
        self.steps.append(step)
        return super().run(step, on_progress)


def test_a_calibration_text_with_the_evaluation_texts_content_is_refused(
    demo_model: str, tmp_path: Path
) -> None:
    copy = tmp_path / "calibration.txt"  # another name, the same content: compared by hash
    shutil.copyfile(TEXT, copy)
    runner = CountingRunner()
    advisor = Advisor(
        AdviceRequest(demo_model, TEXT, calibration=str(copy)),
        runner,
        store=HistoryStore(str(tmp_path / "h.db")),
    )
    with pytest.raises(AdviceError, match="same content as the evaluation text"):
        advisor.run()
    assert runner.steps == []


def test_bad_limits_are_refused(demo_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = HistoryStore(str(tmp_path / "h.db"))
    with pytest.raises(AdviceError, match="memory limit"):
        Advisor(AdviceRequest(demo_model, TEXT, max_memory_bytes=0), LocalEvalRunner(), store=store).run()
    with pytest.raises(AdviceError, match="needs an importance matrix"):
        Advisor(AdviceRequest(demo_model, TEXT, types=("IQ2_XS",)), LocalEvalRunner(), store=store).run()
    assert cli_main(["advise", demo_model, "--max-memory", "lots"]) == 2
    assert "--max-memory 'lots' is not a size" in capsys.readouterr().err
    assert cli_main(["advise", demo_model, "--max-memory=-1GiB"]) == 2
    assert "is not a size" in capsys.readouterr().err
    assert cli_main(["advise", demo_model, "--min-tg=-3"]) == 2
    assert "--min-tg must be a number of 0 or more" in capsys.readouterr().err
    assert cli_main(["advise", demo_model, "--calibration", TEXT, "--text", TEXT, "--types", "Q8_0"]) == 1
    assert "same content as the evaluation text" in capsys.readouterr().err


# ---- a real advice, then the same advice from the history -------------------------------------------
def test_an_advice_measures_each_candidate_once_and_reuses_it(
    demo_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = quantize(f16_base_request(demo_model, str(tmp_path / "demo.F16.gguf"), n_threads=2)).output_path
    store = HistoryStore(str(tmp_path / "history.db"))
    request = AdviceRequest(
        base,
        TEXT,
        types=("Q8_0", "Q4_K_M"),
        settings=EvalSettings(n_ctx=128, n_chunks=2, n_threads=2),
        speed_prompt=32,
        speed_gen=8,
        speed_repetitions=1,
        n_threads=2,
        n_ctx=512,
    )
    work = tmp_path / "work"
    work.mkdir()
    first = Advisor(request, CountingRunner(), store=store, work_folder=str(work)).run()
    assert (first.measured, first.reused) == (2, 0)
    by_type = {r.figures.type_name: r for r in first.rows}
    q8, q4 = by_type["Q8_0"].figures, by_type["Q4_K_M"].figures
    assert q4.file_bytes < q8.file_bytes and 0 < q8.mean_kld < q4.mean_kld  # Q8_0 is nearly lossless
    assert q8.tg_tokens_per_s > 0 and q4.pp_tokens_per_s > 0 and q4.ppl > 1
    assert by_type["Q4_K_M"].on_frontier  # the smaller can never be dominated by the larger
    assert first.pick is by_type["Q8_0"]  # no limits: the lowest KLD
    assert os.listdir(work) == []  # candidates and base log-probabilities removed

    # The second advice: nothing quantized, nothing measured, the same figures.
    def no_quantizing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the second advice quantized")

    monkeypatch.setattr(advisor_module, "run_quantize", no_quantizing)
    runner = CountingRunner()
    tight = AdviceRequest(**{**request.__dict__, "max_memory_bytes": by_type["Q4_K_M"].memory_bytes})
    second = Advisor(tight, runner, store=store, work_folder=str(work)).run()
    assert (second.measured, second.reused) == (0, 2) and runner.steps == []
    assert {r.figures for r in second.rows} == {q8, q4}
    assert second.pick is not None and second.pick.figures == q4  # Q8_0 no longer fits
    assert "memory" in " ".join(e for r in second.rows if r.figures == q8 for e in r.excluded_by)

    impossible = AdviceRequest(**{**request.__dict__, "min_tg": 1e9})
    third = Advisor(impossible, runner, store=store, work_folder=str(work)).run()
    assert third.pick is None and third.verdict.startswith("Nothing meets the constraints")
    assert "the speed floor excluded" in third.verdict and runner.steps == []
    assert "→" not in third.table() and third.table().count("|\n") == 4  # header, rule, two rows


def test_ctrl_c_during_an_advice_leaves_no_temporary_file(demo_model: str, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "XDG_DATA_HOME": str(tmp_path / "data")}
    # Five candidates, so that the run is still far from its end when the signal lands, however far this
    # reader lags behind the command's output.
    command = [sys.executable, "-m", "cli", "advise", demo_model, "--allow-requantize",
               "--types", "Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q3_K_M", "--chunks", "2", "--eval-ctx", "128",
               "-t", "2"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # waits for the quantizer to be at work
        seen.append(line)
        if "quantizing" in line:
            break
    assert any("quantizing" in line for line in seen), "".join(seen[-20:])
    assert any(p.name.startswith("llamascope-advise-") for p in temp.iterdir())
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait() == 130, rest[-2000:]
    assert "Stopped" in rest
    assert list(temp.iterdir()) == []  # the work folder, the base's log-probabilities, the candidate
