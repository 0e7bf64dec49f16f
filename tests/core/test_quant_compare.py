"""The comparison table: like-for-like figures only, the quality score, exports, and speed."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pickle
from pathlib import Path

import pytest

from app.quality.compare import (
    VariantMeasurement,
    build_comparison,
    export_comparison,
    measure_speed,
    quality_score,
    variant_from_file,
)
from app.quality.eval_types import EvalCancelled, KLDivergenceResult, PerplexityResult
from app.quant.plan import QuantizeRequest
from app.quant.quantize import quantize


def ppl_result(
    ppl: float, *, text_sha256: str = "t1", n_ctx: int = 512, n_chunks: int = 10
) -> PerplexityResult:
    return PerplexityResult(
        model_path="m.gguf",
        text_name="text",
        text_sha256=text_sha256,
        n_ctx=n_ctx,
        n_chunks=n_chunks,
        n_tokens_text=10_000,
        n_scored=n_chunks * 255,
        ppl=ppl,
        ppl_uncertainty=0.1,
        mean_nll=math.log(ppl),
        running_ppl=(ppl,),
        chunk_ppl=(ppl,),
        tokens_per_s=100.0,
        elapsed_s=1.0,
        add_bos=False,
        logits_file=None,
    )


def kld_result(ppl: float, ppl_base: float, kld: float, same_top: float) -> KLDivergenceResult:
    fields = {f.name: 0.0 for f in dataclasses.fields(KLDivergenceResult)}
    fields.update(
        model_path="q.gguf",
        base_model="base",
        logits_file="b.logits",
        n_ctx=512,
        n_chunks=10,
        n_scored=2550,
        ppl=ppl,
        ppl_base=ppl_base,
        ln_ppl_ratio=math.log(ppl / ppl_base),
        kld_mean=kld,
        same_top_p=same_top,
        delta_p_percentiles=(),
        running_kld=(kld,),
        ppl_uncertainty=None,
        kld_uncertainty=0.001,
    )
    return KLDivergenceResult(**fields)  # type: ignore[arg-type]


def variant(label: str, size: int, **kwargs: object) -> VariantMeasurement:
    return VariantMeasurement(
        path=f"/m/{label}.gguf",
        label=label,
        type_name=label,
        file_bytes=size,
        bits_per_weight=size * 8 / 1e9,
        **kwargs,
    )  # type: ignore[arg-type]


def test_quality_score_definition() -> None:
    assert quality_score(0.0) == 100.0
    assert quality_score(0.05) == pytest.approx(100 * math.exp(-0.05))
    assert quality_score(None) is None


def test_rows_compare_like_with_like() -> None:
    base = variant("F16", 2_000_000_000, perplexity=ppl_result(10.0))
    q4 = variant("Q4_K_M", 500_000_000, kld=kld_result(10.5, 10.0, 0.04, 0.9))
    q8 = variant("Q8_0", 1_000_000_000, perplexity=ppl_result(10.02))
    other_text = variant("Q6_K", 800_000_000, perplexity=ppl_result(10.01, text_sha256="t2"))
    bare = variant("Q5_K_M", 700_000_000)
    rows = {r.label: r for r in build_comparison(base, [q4, q8, other_text, bare]).rows}

    assert rows["F16"].is_base and rows["F16"].compression == 1.0 and rows["F16"].delta_ppl_percent == 0.0
    assert rows["Q4_K_M"].compression == 4.0
    assert rows["Q4_K_M"].delta_ppl_percent == pytest.approx(5.0)
    assert rows["Q4_K_M"].same_top_p_percent == pytest.approx(90.0)
    assert rows["Q4_K_M"].quality_score == pytest.approx(100 * math.exp(-0.04))
    assert rows["Q8_0"].delta_ppl_percent == pytest.approx(0.2)
    assert rows["Q8_0"].quality_score is None  # no KLD measured: no score
    assert rows["Q6_K"].ppl == 10.01 and rows["Q6_K"].delta_ppl_percent is None  # another text
    assert rows["Q5_K_M"].ppl is None and rows["Q5_K_M"].pp_tokens_per_s is None


def test_exports(tmp_path: Path) -> None:
    base = variant("F16", 2_000_000_000, perplexity=ppl_result(10.0))
    q4 = variant("Q4_K_M", 500_000_000, kld=kld_result(10.5, 10.0, 0.04, 0.9))
    comparison = build_comparison(base, [q4])

    data = json.loads(comparison.to_json())
    assert data["rows"][1]["quality_score"] == pytest.approx(100 * math.exp(-0.04))
    assert data["rows"][0]["mean_kld"] is None and "exp(-mean KLD" in data["quality_score_definition"]

    rows = list(csv.DictReader(io.StringIO(comparison.to_csv())))
    assert rows[1]["label"] == "Q4_K_M" and float(rows[1]["compression"]) == 4.0 and rows[0]["mean_kld"] == ""

    md = comparison.to_markdown()
    assert md.splitlines()[0].startswith("| Variant | Type | Size")
    assert "| Q4_K_M |" in md and "4.00×" in md and "+5.00" in md and "n/a" in md

    for ext in ("csv", "json", "md"):
        path = export_comparison(comparison, str(tmp_path / f"cmp.{ext}"))
        assert Path(path).read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="csv, .json or .md"):
        export_comparison(comparison, str(tmp_path / "cmp.xlsx"))


def test_variant_from_a_requantized_file_says_where_it_came_from(demo_model: str, tmp_path: Path) -> None:
    out = quantize(QuantizeRequest(demo_model, "Q8_0", str(tmp_path / "d.Q8_0.gguf"), allow_requantize=True))
    v = variant_from_file(out.output_path)
    assert v.label == "Q8_0 (from Q4_1)" and v.type_name == "Q8_0"
    assert v.file_bytes == out.output_bytes
    # the job reports llama.cpp's own tally of the tensor bytes it wrote (to 0.01 MiB)
    assert v.bits_per_weight == pytest.approx(out.bits_per_weight, rel=1e-4)
    demo = variant_from_file(demo_model)
    assert demo.label == "Q4_1"
    row = build_comparison(demo, [v]).rows[1]
    assert row.compression == pytest.approx(demo.file_bytes / v.file_bytes)


def test_speed_is_measured(demo_model: str) -> None:
    r = measure_speed(demo_model, n_prompt=64, n_gen=8, repetitions=2, n_threads=2)
    assert r.pp_tokens_per_s > 0 and r.tg_tokens_per_s > 0
    assert r.pp_std is not None and r.tg_std is not None and r.repetitions == 2
    row = build_comparison(variant_from_file(demo_model, speed=r), []).rows[0]
    assert row.pp_tokens_per_s == r.pp_tokens_per_s and row.tg_tokens_per_s == r.tg_tokens_per_s
    assert pickle.loads(pickle.dumps(r)) == r  # plain data: a worker process could return it


def test_speed_cancel(demo_model: str) -> None:
    import threading

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EvalCancelled):
        measure_speed(demo_model, n_prompt=16, n_gen=2, repetitions=1, cancel=cancel)
