"""The quantization workflow's decisions on the demo model's real header, then a whole comparison run
with the demo model, llama.cpp's quantizer and real evaluations."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest

from app.quality.compare import SpeedResult, measure_speed
from app.quality.eval_text import load_text
from app.quality.eval_types import EvalError, EvalSettings, KLDivergenceResult, PerplexityResult
from app.quality.kl_divergence import evaluate_kl_divergence
from app.quality.perplexity import evaluate_perplexity
from app.quant.plan import QuantizeRequest, QuantizeResult
from app.quant.quantize import quantize
from app.quant.workflow import (
    KLDivergenceStep,
    Outcome,
    PerplexityStep,
    QuantizeStep,
    QuantWorkflow,
    QueueState,
    SpeedStep,
    Step,
    base_logits_path,
)

SETTINGS = EvalSettings(n_ctx=128, n_chunks=2, n_threads=2)
TEXT = "default"


# ---- results as the evaluations report them (the decisions need their figures, not llama.cpp) ----
def ppl_result(model: str, ppl: float = 20.0, logits_file: str | None = None) -> PerplexityResult:
    return PerplexityResult(
        model_path=os.path.abspath(model),
        text_name=TEXT,
        text_sha256="t1",
        n_ctx=SETTINGS.n_ctx,
        n_chunks=2,
        n_tokens_text=10_000,
        n_scored=2 * SETTINGS.scored_per_chunk,
        ppl=ppl,
        ppl_uncertainty=0.5,
        mean_nll=math.log(ppl),
        running_ppl=(ppl,),
        chunk_ppl=(ppl,),
        tokens_per_s=1000.0,
        elapsed_s=0.5,
        add_bos=False,
        logits_file=os.path.abspath(logits_file) if logits_file else None,
    )


def kld_result(
    model: str, logits_file: str, kld: float, ppl: float = 21.0, ppl_base: float = 20.0
) -> KLDivergenceResult:
    fields: dict[str, object] = {f.name: 0.0 for f in dataclasses.fields(KLDivergenceResult)}
    fields.update(
        model_path=os.path.abspath(model),
        base_model="base",
        logits_file=logits_file,
        n_ctx=SETTINGS.n_ctx,
        n_chunks=2,
        n_scored=2 * SETTINGS.scored_per_chunk,
        ppl=ppl,
        ppl_uncertainty=None,
        ppl_base=ppl_base,
        ln_ppl_ratio=math.log(ppl / ppl_base),
        kld_mean=kld,
        kld_uncertainty=0.001,
        same_top_p=0.9,
        delta_p_percentiles=(),
        running_kld=(kld,),
    )
    return KLDivergenceResult(**fields)  # type: ignore[arg-type]


def speed_result(model: str, tg: float = 50.0) -> SpeedResult:
    return SpeedResult(os.path.abspath(model), 256, 32, 2, 3, 400.0, 4.0, tg, 1.0)


def quantize_result(source: str, output: str, type_name: str = "Q4_0") -> QuantizeResult:
    size = os.path.getsize(output)
    return QuantizeResult(
        source_path=os.path.abspath(source),
        output_path=os.path.abspath(output),
        type_name=type_name,
        source_bytes=os.path.getsize(source),
        output_bytes=size,
        bits_per_weight=4.5,
        n_tensors=272,
        elapsed_s=1.0,
        quantize_s=0.8,
        source_quantized_type="Q4_1",
        dequantized_copy=False,
        warnings=(),
    )


def other_file(demo_model: str, folder: Path, name: str) -> str:
    """Another model file for the workflow to tell apart: the demo model under another name."""
    path = folder / name
    os.symlink(demo_model, path)
    return str(path)


def saved(path: str | None) -> str:
    """The base's log-probabilities on disk, as the perplexity run leaves them."""
    assert path is not None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"logits")
    return path


@pytest.fixture()
def workflow(tmp_path: Path) -> QuantWorkflow:
    return QuantWorkflow(str(tmp_path / "kld-base"))


def measured_base(workflow: QuantWorkflow, model: str) -> str:
    step = workflow.measure_base(model, TEXT, SETTINGS)
    workflow.record(ppl_result(model, logits_file=saved(step.save_logits)))
    workflow.record(speed_result(model))
    assert workflow.base == os.path.abspath(model) and not workflow.running
    return saved(step.save_logits)


# ---- decisions ----------------------------------------------------------------------------------
def test_a_base_is_measured_then_timed_and_is_the_base_once_its_log_probabilities_are_saved(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    step = workflow.measure_base(demo_model, TEXT, SETTINGS)
    stem = Path(demo_model).stem
    assert step == PerplexityStep(
        demo_model, TEXT, SETTINGS, save_logits=str(tmp_path / "kld-base" / f"{stem}.c128.kld")
    )
    assert workflow.running and workflow.base is None  # not until its log-probabilities are saved

    result = ppl_result(demo_model, ppl=18.5, logits_file=saved(step.save_logits))
    assert workflow.record(result) == SpeedStep(demo_model)
    assert workflow.base == os.path.abspath(demo_model)
    assert workflow.base_logits == os.path.abspath(step.save_logits or "")
    assert workflow.base_result is result
    assert workflow.record(speed_result(demo_model, tg=61.0)) is None
    assert not workflow.running

    assert workflow.comparison is not None
    (row,) = workflow.comparison.rows
    assert row.is_base and row.type_name == "Q4_1" and row.path == os.path.abspath(demo_model)
    assert row.ppl == 18.5 and row.delta_ppl_percent == 0.0 and row.tg_tokens_per_s == 61.0
    assert row.file_bytes == os.path.getsize(demo_model)
    # The base against itself: KL(p || p) = 0, its own top token every time, so a score of 100.
    assert row.mean_kld == 0.0 and row.same_top_p_percent == 100.0 and row.quality_score == 100.0


def test_a_variant_is_measured_against_the_base_by_kl_divergence_then_timed(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    logits = measured_base(workflow, demo_model)
    variant = other_file(demo_model, tmp_path, "variant.gguf")

    step = workflow.measure(variant, TEXT, SETTINGS)
    assert step == KLDivergenceStep(variant, os.path.abspath(logits), SETTINGS)
    assert workflow.record(kld_result(variant, logits, kld=0.05)) == SpeedStep(variant)
    assert workflow.record(speed_result(variant, tg=70.0)) is None

    assert workflow.comparison is not None
    base_row, row = workflow.comparison.rows
    assert base_row.is_base and base_row.path == os.path.abspath(demo_model)
    assert not row.is_base and row.path == os.path.abspath(variant)
    assert row.mean_kld == 0.05 and row.quality_score == pytest.approx(100 * math.exp(-0.05))
    assert row.delta_ppl_percent == pytest.approx(5.0)  # 21 against 20, over the same tokens
    assert row.tg_tokens_per_s == 70.0
    assert workflow.base == os.path.abspath(demo_model)  # measuring a variant leaves the base alone


def test_without_a_usable_base_a_file_gets_its_perplexity(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    variant = other_file(demo_model, tmp_path, "variant.gguf")
    assert workflow.measure(variant, TEXT, SETTINGS) == PerplexityStep(variant, TEXT, SETTINGS)  # no base

    workflow.failed()
    logits = measured_base(workflow, demo_model)
    # The base itself: KL divergence against its own log-probabilities would only say 0.
    assert workflow.measure(demo_model, TEXT, SETTINGS) == PerplexityStep(demo_model, TEXT, SETTINGS)
    # The same file under a relative name is still the base.
    relative = os.path.relpath(demo_model)
    assert workflow.measure(relative, TEXT, SETTINGS) == PerplexityStep(relative, TEXT, SETTINGS)
    # The cache was cleaned: nothing to compare against any more.
    os.remove(logits)
    assert workflow.measure(variant, TEXT, SETTINGS) == PerplexityStep(variant, TEXT, SETTINGS)


def test_a_file_that_is_not_there_is_refused_at_once_and_a_moved_base_is_noted(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    base = other_file(demo_model, tmp_path, "base.gguf")
    logits = measured_base(workflow, base)
    assert workflow.base_note is None
    os.rename(base, tmp_path / "moved.gguf")
    # The base's old path: refused before any step, and nothing starts.
    for ask in (workflow.measure, workflow.measure_base):
        with pytest.raises(EvalError, match="moved, renamed or deleted"):
            ask(base, TEXT, SETTINGS)
        assert not workflow.running
    # Another file is still measured against the saved log-probabilities; the note says so.
    assert "has moved or been deleted since it was measured" in (workflow.base_note or "")
    assert workflow.measure(demo_model, TEXT, SETTINGS) == KLDivergenceStep(
        demo_model, os.path.abspath(logits), SETTINGS
    )
    workflow.failed()
    os.remove(logits)
    assert "log-probabilities are gone" in (workflow.base_note or "")
    assert workflow.measure(demo_model, TEXT, SETTINGS) == PerplexityStep(demo_model, TEXT, SETTINGS)


def test_a_failed_base_measurement_keeps_the_previous_base_and_ends_the_workflow(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    logits = measured_base(workflow, demo_model)
    other = other_file(demo_model, tmp_path, "other.gguf")
    step = workflow.measure_base(other, TEXT, SETTINGS)
    assert step.save_logits is not None and step.save_logits != logits
    workflow.failed()  # e.g. the text is too short, or the user pressed Cancel

    assert not workflow.running
    assert workflow.base == os.path.abspath(demo_model) and workflow.base_logits == os.path.abspath(logits)
    # A result arriving late (a job started elsewhere) is recorded but starts nothing.
    assert workflow.record(speed_result(other)) is None
    assert not workflow.running
    assert workflow.comparison is not None
    assert [r.path for r in workflow.comparison.rows] == [os.path.abspath(demo_model), os.path.abspath(other)]
    assert workflow.comparison.rows[1].tg_tokens_per_s == 50.0


def test_a_result_that_does_not_answer_the_current_step_does_not_move_the_workflow_on(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    logits = measured_base(workflow, demo_model)
    variant = other_file(demo_model, tmp_path, "variant.gguf")
    step = workflow.measure(variant, TEXT, SETTINGS)
    assert isinstance(step, KLDivergenceStep)

    assert workflow.record(speed_result(variant)) is None  # the wrong kind
    assert workflow.record(kld_result(demo_model, logits, kld=0.0)) is None  # the wrong model
    assert workflow.current == step and workflow.running
    assert workflow.record(kld_result(variant, logits, kld=0.02)) == SpeedStep(variant)


def test_quantizing_only_adds_the_new_file_unmeasured(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    out = other_file(demo_model, tmp_path, "demo.Q4_0.gguf")
    request = QuantizeRequest(demo_model, "Q4_0", out, allow_requantize=True)
    assert workflow.quantize(request) == QuantizeStep(request)
    assert workflow.record(quantize_result(demo_model, out)) is None
    assert not workflow.running

    assert workflow.comparison is not None
    (row,) = workflow.comparison.rows  # no base yet: the first file stands in for it
    assert row.label == "Q4_0 (requantized from Q4_1)" and row.ppl is None and row.mean_kld is None

    # Measured, then written again under the same name: the old figures were of another file.
    workflow.measure(out, TEXT, SETTINGS)
    workflow.record(ppl_result(out))
    assert workflow.comparison.rows[0].ppl == 20.0
    workflow.quantize(request)
    workflow.record(quantize_result(demo_model, out))
    assert workflow.comparison.rows[0].ppl is None


def test_a_file_that_cannot_be_read_is_refused_and_changes_nothing(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    step = workflow.measure(demo_model, TEXT, SETTINGS)
    with pytest.raises(EvalError):
        workflow.record(ppl_result(str(tmp_path / "gone.gguf")))
    assert workflow.current == step and workflow.comparison is None and workflow.variants == ()


def test_compare_measures_the_base_then_quantizes_and_measures_each_variant(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    outs = [str(tmp_path / "demo.Q4_0.gguf"), str(tmp_path / "demo.Q8_0.gguf")]
    requests = [
        QuantizeRequest(demo_model, t, o, allow_requantize=True)
        for t, o in zip(("Q4_0", "Q8_0"), outs, strict=True)
    ]
    logits = base_logits_path(str(tmp_path / "kld-base"), demo_model, SETTINGS)
    klds = {outs[0]: 0.08, outs[1]: 0.004}

    def answer(step: Step) -> Outcome:  # what running each step would report
        if isinstance(step, PerplexityStep):
            return ppl_result(step.model_path, logits_file=saved(step.save_logits))
        if isinstance(step, QuantizeStep):
            out = step.request.output or ""
            os.symlink(demo_model, out)
            return quantize_result(demo_model, out, step.request.type_name)
        if isinstance(step, KLDivergenceStep):
            return kld_result(step.model_path, step.logits_file, klds[step.model_path])
        return speed_result(step.model_path)

    steps: list[Step] = []
    step: Step | None = workflow.compare(demo_model, requests, TEXT, SETTINGS)
    while step is not None:
        steps.append(step)
        step = workflow.record(answer(step))

    assert steps == [
        PerplexityStep(demo_model, TEXT, SETTINGS, save_logits=logits),
        SpeedStep(demo_model),
        QuantizeStep(requests[0]),
        KLDivergenceStep(outs[0], os.path.abspath(logits), SETTINGS),
        SpeedStep(outs[0]),
        QuantizeStep(requests[1]),
        KLDivergenceStep(outs[1], os.path.abspath(logits), SETTINGS),
        SpeedStep(outs[1]),
    ]
    assert workflow.comparison is not None
    rows = workflow.comparison.rows
    assert [r.path for r in rows] == [os.path.abspath(p) for p in (demo_model, *outs)]
    assert [r.mean_kld for r in rows] == [0.0, 0.08, 0.004]  # the base against itself: 0
    assert all(r.tg_tokens_per_s is not None for r in rows)


def test_a_failed_quantization_ends_a_comparison(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    requests = [QuantizeRequest(demo_model, "Q4_0", str(tmp_path / "a.gguf"))]
    step = workflow.compare(demo_model, requests, TEXT, SETTINGS)
    assert isinstance(step, PerplexityStep)
    assert workflow.record(ppl_result(demo_model, logits_file=saved(step.save_logits))) == SpeedStep(
        demo_model
    )
    assert workflow.record(speed_result(demo_model)) == QuantizeStep(requests[0])
    workflow.failed()  # e.g. requantizing without permission
    assert not workflow.running and workflow.current is None
    assert workflow.base == os.path.abspath(demo_model)


def test_without_a_real_base_the_stand_in_row_has_no_made_up_kld(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    out = other_file(demo_model, tmp_path, "demo.Q4_0.gguf")
    workflow.measure(out, TEXT, SETTINGS)
    workflow.record(ppl_result(out))
    assert workflow.comparison is not None
    (row,) = workflow.comparison.rows  # the first file stands in; nothing was compared with it
    assert row.mean_kld is None and row.quality_score is None


def queue_of_three(demo_model: str, tmp_path: Path) -> tuple[list[QuantizeRequest], list[str]]:
    outs = [str(tmp_path / f"demo.{t}.gguf") for t in ("Q8_0", "Q4_0", "Q5_0")]
    requests = [
        QuantizeRequest(demo_model, t, o, allow_requantize=True)
        for t, o in zip(("Q8_0", "Q4_0", "Q5_0"), outs, strict=True)
    ]
    return requests, outs


def test_a_queue_runs_each_quantization_in_turn_and_survives_a_failure(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    requests, outs = queue_of_three(demo_model, tmp_path)
    assert workflow.quantize_queue(requests) == QuantizeStep(requests[0])
    assert [i.state for i in workflow.queue] == [QueueState.RUNNING, QueueState.QUEUED, QueueState.QUEUED]

    os.symlink(demo_model, outs[0])
    first = quantize_result(demo_model, outs[0], "Q8_0")
    assert workflow.record(first) == QuantizeStep(requests[1])
    assert [i.state for i in workflow.queue] == [QueueState.DONE, QueueState.RUNNING, QueueState.QUEUED]
    assert workflow.queue[0].result is first

    # The second fails (e.g. the disk is full): it is marked so, and the third runs all the same.
    assert workflow.failed("No space left on the device.") == QuantizeStep(requests[2])
    assert workflow.queue[1].state is QueueState.FAILED
    assert workflow.queue[1].reason == "No space left on the device."
    assert workflow.queue[2].state is QueueState.RUNNING

    os.symlink(demo_model, outs[2])
    assert workflow.record(quantize_result(demo_model, outs[2], "Q5_0")) is None
    assert [i.state for i in workflow.queue] == [QueueState.DONE, QueueState.FAILED, QueueState.DONE]
    assert not workflow.running
    assert workflow.comparison is not None
    assert [r.path for r in workflow.comparison.rows] == [os.path.abspath(outs[0]), os.path.abspath(outs[2])]


def test_cancel_stops_the_running_quantization_and_the_rest_of_the_queue(
    workflow: QuantWorkflow, demo_model: str, tmp_path: Path
) -> None:
    requests, _outs = queue_of_three(demo_model, tmp_path)
    workflow.quantize_queue(requests)
    workflow.cancel_queue()
    assert [i.state for i in workflow.queue] == [
        QueueState.RUNNING,
        QueueState.CANCELLED,
        QueueState.CANCELLED,
    ]
    assert workflow.failed("Quantization cancelled; no file was written.", cancelled=True) is None
    assert [i.state for i in workflow.queue] == [QueueState.CANCELLED] * 3
    assert not workflow.running
    with pytest.raises(ValueError):
        workflow.quantize_queue([])


# ---- end to end: the demo model, llama.cpp's quantizer, real evaluations ------------------------
def test_a_whole_comparison_with_the_demo_model(demo_model: str, tmp_path: Path) -> None:
    workflow = QuantWorkflow(str(tmp_path / "kld-base"))
    out = str(tmp_path / "demo.Q8_0.gguf")
    request = QuantizeRequest(demo_model, "Q8_0", out, allow_requantize=True, n_threads=2)
    text = load_text(TEXT)

    def run(step: Step) -> Outcome:
        if isinstance(step, QuantizeStep):
            return quantize(step.request)
        if isinstance(step, PerplexityStep):
            if step.save_logits is not None:
                os.makedirs(os.path.dirname(step.save_logits), exist_ok=True)
            return evaluate_perplexity(step.model_path, text, step.settings, save_logits=step.save_logits)
        if isinstance(step, KLDivergenceStep):
            return evaluate_kl_divergence(step.model_path, step.logits_file, step.settings)
        # One repetition instead of the step's three: this test checks the flow, not the figures.
        return measure_speed(
            step.model_path, n_prompt=step.n_prompt, n_gen=step.n_gen, repetitions=1, n_threads=2
        )

    kinds: list[type] = []
    step: Step | None = workflow.compare(demo_model, [request], TEXT, SETTINGS)
    while step is not None:
        kinds.append(type(step))
        step = workflow.record(run(step))

    assert kinds == [PerplexityStep, SpeedStep, QuantizeStep, KLDivergenceStep, SpeedStep]
    assert workflow.base == os.path.abspath(demo_model)
    assert workflow.base_logits is not None and os.path.getsize(workflow.base_logits) > 0
    assert workflow.comparison is not None
    base, variant = workflow.comparison.rows
    assert base.is_base and base.type_name == "Q4_1" and base.ppl is not None and base.ppl > 1
    assert base.quality_score == 100.0 and variant.quality_score is not None
    assert variant.quality_score < base.quality_score
    assert variant.path == os.path.abspath(out) and variant.type_name == "Q8_0"
    assert variant.label == "Q8_0 (requantized from Q4_1)"
    assert variant.compression < 1  # Q8_0 is bigger than the Q4_1 it was made from
    # Q8_0 keeps Q4_1's weights almost exactly: the two predict nearly alike.
    assert variant.mean_kld is not None and 0 <= variant.mean_kld < 0.05
    assert variant.quality_score is not None and 95 < variant.quality_score <= 100
    assert variant.delta_ppl_percent is not None and abs(variant.delta_ppl_percent) < 5
    assert base.tg_tokens_per_s and variant.tg_tokens_per_s and variant.pp_tokens_per_s
