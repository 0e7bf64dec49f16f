"""Compare the quantized variants of one model: size, quality and speed in one table.

Every figure in a row is either read from the file (type, size, bits per weight), measured by
LlamaScope (perplexity, KL divergence, speed) or None, shown as "n/a". Relative figures are
computed only when they compare like with like: ΔPPL % from a KL-divergence run (both
perplexities over the same tokens in one run) or from two perplexity runs on the same text,
context and chunk count; never across different texts.

Quality score (`quality_score`): 100 x exp(-mean KLD), where mean KLD is KL(base || variant) in
nats per token as llama-perplexity --kl-divergence reports it. exp(-KLD) is the geometric mean,
over the evaluated tokens weighted by the base model's own probabilities, of the ratio
p_variant(token) / p_base(token): 100 means the variant predicts exactly like the base, 95 means
it gives the base's likely tokens on (geometric) average 95 % of the base's probability. It is
chosen over ΔPPL because KLD compares the whole next-token distribution at every position, so
it cannot look good by accident (a variant can match the base's perplexity while disagreeing on
which tokens are likely), and over "same top p" because that ignores everything but the first
choice. Without a KLD measurement the score is None.

Speed (`measure_speed`) follows llama-bench: pp = tokens per second evaluating a 512-token batch
of random tokens from an empty cache; tg = tokens per second generating 64 tokens one at a time
(greedy: each next token is the argmax of the last logits), after a warm-up run; mean ± standard
deviation over `repetitions`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from app.common.formatting import NOT_AVAILABLE, format_bytes
from app.common.markdown import markdown_table
from app.llama.driver import CancelFlag
from app.model.file_format import ModelFileError
from app.model.gguf_info import inspect_model, read_metadata
from app.quality.eval_model import EvalModel
from app.quality.eval_types import EvalCancelled, EvalError, KLDivergenceResult, PerplexityResult


def quality_score(mean_kld: float | None) -> float | None:
    """100 x exp(-mean KLD); see the module docstring for why. None without a KLD measurement."""
    return None if mean_kld is None else 100.0 * math.exp(-mean_kld)


@dataclass(frozen=True)
class SpeedProgress:
    phase: str  # "warm-up", "pp", "tg"
    repetition: int
    repetitions: int


@dataclass(frozen=True)
class SpeedResult:
    """llama-bench-style speed of one model file on this machine."""

    model_path: str
    n_prompt: int
    n_gen: int
    n_threads: int
    repetitions: int
    pp_tokens_per_s: float
    pp_std: float | None  # standard deviation over repetitions (None with one repetition)
    tg_tokens_per_s: float
    tg_std: float | None


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def measure_speed(
    model_path: str,
    *,
    n_prompt: int = 512,
    n_gen: int = 64,
    repetitions: int = 3,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    seed: int = 1234,
    cancel: CancelFlag | None = None,
    on_progress: Callable[[SpeedProgress], None] | None = None,
    override_memory: bool = False,
) -> SpeedResult:
    """pp (n_prompt-token batch) and tg (n_gen greedy tokens) in tokens per second. Refused with the
    numbers (InsufficientMemoryError) before loading when it will not fit, unless `override_memory`."""
    from app.model.settings import count_physical_cores

    if n_prompt < 1 or n_gen < 1 or repetitions < 1:
        raise EvalError("Prompt size, generated tokens and repetitions must all be 1 or more.")
    cancel = cancel or threading.Event()
    threads = n_threads or count_physical_cores()
    pp_rates: list[float] = []
    tg_rates: list[float] = []
    with EvalModel(
        model_path,
        n_ctx=n_prompt + n_gen + 1,
        n_batch=n_prompt,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=n_gpu_layers,
        cancel=cancel,
        override_memory=override_memory,
    ) as m:
        rng = np.random.default_rng(seed)
        prompt = rng.integers(0, m.n_vocab, size=n_prompt, dtype=np.int32)
        start = np.array([m.bos_id if m.add_bos else int(prompt[0])], dtype=np.int32)

        def progress(phase: str, rep: int) -> None:
            if cancel.is_set():
                raise EvalCancelled("Speed measurement cancelled.")
            if on_progress is not None:
                on_progress(SpeedProgress(phase, rep, repetitions))

        def run_pp() -> float:
            m.clear()
            t0 = time.perf_counter()
            m.decode(prompt, 0, None)
            return n_prompt / (time.perf_counter() - t0)

        def run_tg() -> float:
            m.clear()
            token = start
            t0 = time.perf_counter()
            for pos in range(n_gen):
                logits = m.decode(token, pos, None)
                token = np.array([int(logits[0].argmax())], dtype=np.int32)
            return n_gen / (time.perf_counter() - t0)

        progress("warm-up", 0)
        run_pp()
        run_tg()
        for rep in range(1, repetitions + 1):
            progress("pp", rep)
            pp_rates.append(run_pp())
            progress("tg", rep)
            tg_rates.append(run_tg())
        path = m.path
    pp, pp_std = _mean_std(pp_rates)
    tg, tg_std = _mean_std(tg_rates)
    return SpeedResult(path, n_prompt, n_gen, threads, repetitions, pp, pp_std, tg, tg_std)


@dataclass(frozen=True)
class VariantMeasurement:
    """One file and whatever was measured on it."""

    path: str
    label: str
    type_name: str | None  # the file type from the GGUF header, e.g. "Q4_K_M"
    file_bytes: int
    bits_per_weight: float
    perplexity: PerplexityResult | None = None
    kld: KLDivergenceResult | None = None
    speed: SpeedResult | None = None


def variant_from_file(
    path: str,
    *,
    label: str | None = None,
    perplexity: PerplexityResult | None = None,
    kld: KLDivergenceResult | None = None,
    speed: SpeedResult | None = None,
) -> VariantMeasurement:
    """Read type, size and bits per weight from the file; label a copy made from a quantized
    model honestly ("F16 (from Q4_1)") using the metadata LlamaScope's quantizer writes."""
    try:
        info = inspect_model(path)
        origin = read_metadata(path).get("llamascope.quantized_from")
    except ModelFileError as exc:
        raise EvalError(str(exc)) from None
    type_name = info.file_type
    if label is None:
        label = type_name or os.path.basename(path)
        if isinstance(origin, str) and origin and origin != type_name:
            label = f"{label} (from {origin})"
    return VariantMeasurement(
        path=os.path.abspath(path),
        label=label,
        type_name=type_name,
        file_bytes=info.file_size_bytes,
        bits_per_weight=info.bits_per_weight,
        perplexity=perplexity,
        kld=kld,
        speed=speed,
    )


@dataclass(frozen=True)
class ComparisonRow:
    """One variant against the base. Percentages are 0..100; None means not measured."""

    label: str
    type_name: str | None
    path: str
    is_base: bool
    file_bytes: int
    bits_per_weight: float
    compression: float  # base size / this size (the base itself: 1.0)
    ppl: float | None
    ppl_uncertainty: float | None
    delta_ppl_percent: float | None
    mean_kld: float | None
    kld_uncertainty: float | None
    same_top_p_percent: float | None
    pp_tokens_per_s: float | None
    tg_tokens_per_s: float | None
    quality_score: float | None  # 100 x exp(-mean KLD)


@dataclass(frozen=True)
class Comparison:
    """Rows for the base and its variants, with exports. Build it with `build_comparison`."""

    base_label: str
    rows: tuple[ComparisonRow, ...]

    COLUMNS = (
        ("label", "Variant"),
        ("type_name", "Type"),
        ("file_bytes", "Size"),
        ("bits_per_weight", "Bits/weight"),
        ("compression", "Compression"),
        ("ppl", "PPL"),
        ("delta_ppl_percent", "ΔPPL %"),
        ("mean_kld", "Mean KLD"),
        ("same_top_p_percent", "Same top p %"),
        ("pp_tokens_per_s", "pp t/s"),
        ("tg_tokens_per_s", "tg t/s"),
        ("quality_score", "Quality score"),
    )

    def to_json(self) -> str:
        return json.dumps(
            {
                "base": self.base_label,
                "quality_score_definition": "100 * exp(-mean KLD(base || variant)); null when not measured",
                "rows": [asdict(r) for r in self.rows],
            },
            indent=2,
        )

    def to_csv(self) -> str:
        out = io.StringIO()
        names = [f for f in ComparisonRow.__dataclass_fields__]
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for row in self.rows:
            writer.writerow(["" if getattr(row, n) is None else getattr(row, n) for n in names])
        return out.getvalue()

    def to_markdown(self) -> str:
        table = markdown_table(
            [title for _, title in self.COLUMNS],
            ([_cell(name, getattr(row, name), row) for name, _ in self.COLUMNS] for row in self.rows),
            pad=False,
        )
        return (
            f"{table}\nBase: {self.base_label}. Quality score = 100 × exp(−mean KLD) against the base; "
            "n/a = not measured.\n"
        )


def _cell(name: str, value: object, row: ComparisonRow) -> str:
    if value is None:
        return NOT_AVAILABLE
    if name == "file_bytes":
        return format_bytes(int(value))  # type: ignore[call-overload]
    if name == "ppl" and isinstance(value, float):
        unc = f" ± {row.ppl_uncertainty:.4f}" if row.ppl_uncertainty is not None else ""
        return f"{value:.4f}{unc}"
    if name == "compression" and isinstance(value, float):
        return f"{value:.2f}×"
    if name == "mean_kld" and isinstance(value, float):
        return f"{value:.6f}"
    if name in ("delta_ppl_percent",) and isinstance(value, float):
        return f"{value:+.2f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _same_text(a: PerplexityResult, b: PerplexityResult) -> bool:
    return (a.text_sha256, a.n_ctx, a.n_chunks) == (b.text_sha256, b.n_ctx, b.n_chunks)


def build_comparison(base: VariantMeasurement, variants: Sequence[VariantMeasurement]) -> Comparison:
    """A row for the base, then one per variant, each compared with the base."""
    rows = []
    for v in (base, *variants):
        is_base = v is base
        ppl = unc = delta = None
        if v.kld is not None:
            ppl, unc = v.kld.ppl, v.kld.ppl_uncertainty
            delta = 100.0 * math.expm1(v.kld.ln_ppl_ratio)
        elif v.perplexity is not None:
            ppl, unc = v.perplexity.ppl, v.perplexity.ppl_uncertainty
            if is_base:
                delta = 0.0
            elif base.perplexity is not None and _same_text(v.perplexity, base.perplexity):
                delta = 100.0 * (v.perplexity.ppl / base.perplexity.ppl - 1.0)
        rows.append(
            ComparisonRow(
                label=v.label,
                type_name=v.type_name,
                path=v.path,
                is_base=is_base,
                file_bytes=v.file_bytes,
                bits_per_weight=v.bits_per_weight,
                compression=base.file_bytes / v.file_bytes if v.file_bytes else float("nan"),
                ppl=ppl,
                ppl_uncertainty=unc,
                delta_ppl_percent=delta,
                mean_kld=v.kld.kld_mean if v.kld else None,
                kld_uncertainty=v.kld.kld_uncertainty if v.kld else None,
                same_top_p_percent=100.0 * v.kld.same_top_p if v.kld else None,
                pp_tokens_per_s=v.speed.pp_tokens_per_s if v.speed else None,
                tg_tokens_per_s=v.speed.tg_tokens_per_s if v.speed else None,
                quality_score=quality_score(v.kld.kld_mean) if v.kld else None,
            )
        )
    return Comparison(base_label=base.label, rows=tuple(rows))


def export_comparison(comparison: Comparison, path: str) -> str:
    """Write the comparison as .csv, .json or .md (chosen by the extension); returns the path."""
    ext = os.path.splitext(path)[1].lower()
    writers = {
        ".csv": comparison.to_csv,
        ".json": comparison.to_json,
        ".md": comparison.to_markdown,
        ".markdown": comparison.to_markdown,
    }
    if ext not in writers:
        raise ValueError(f"Export to .csv, .json or .md, not {ext or 'a file without extension'}.")
    text = writers[ext]()
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return os.path.abspath(path)


__all__ = [
    "Comparison",
    "ComparisonRow",
    "SpeedProgress",
    "SpeedResult",
    "VariantMeasurement",
    "build_comparison",
    "export_comparison",
    "measure_speed",
    "quality_score",
    "variant_from_file",
]
