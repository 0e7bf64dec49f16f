"""The quantization advisor: measure candidate types, draw the size x KLD x speed frontier, pick one.

`llamascope advise MODEL` quantizes MODEL to each candidate type (by default Q8_0, Q6_K, Q5_K_M,
Q4_K_M, IQ4_XS, Q3_K_M and Q2_K; with an importance matrix each of those whose quantization
llama.cpp weighs by it is made both ways, and IQ3_XXS and IQ2_XS join), and measures each on this
machine: the file's size, its mean KL divergence from the base and its perplexity over the same
tokens (one KL-divergence run on the evaluation text gives both), and its prompt (pp) and
generation (tg) speed. Every figure is measured; none is taken from a table.

- **Frontier.** A candidate is dominated when another is no larger, has no worse mean KLD and is no
  slower at generating, and is strictly better in one of the three. The others form the Pareto
  frontier: every type worth considering for some trade-off.
- **Recommendation.** Among the candidates whose memory estimate (Model Config's, app.model.memory:
  weights, KV cache and compute buffers at the chosen context) fits `max_memory` and whose tg reaches
  `min_tg`, the lowest mean KLD (the smaller file on a tie). When none qualifies the advice says so
  and which constraint excluded which candidate.
- **Reuse.** Each candidate's figures are stored in the history database (app.bench.history,
  `quant_measurements`) under a key of what determines them: the source's and the base's content
  fingerprints, the type, the matrix (the calibration text's hash and settings, or the matrix
  file's hash), the evaluation text's hash, the evaluation and speed settings and this machine's
  hardware fingerprint. A second advice on the same model measures only what is new.
- **Calibration is not evaluation.** A calibration text whose content (SHA-256) equals the
  evaluation text's is refused: a matrix fitted to the very text that judges it would flatter
  every imatrix candidate.

`Advisor.run()` blocks (call it off the GUI thread), reports `AdviceProgress` through a callback,
stops when its `Stop` is set (from any thread), and always removes its temporary files. Its result
`Advice` is frozen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.common.formatting import format_bytes
from app.common.markdown import markdown_table
from app.model.file_format import ModelFileError
from app.model.fingerprint import model_fingerprint
from app.model.gguf_info import inspect_model
from app.model.model_info import ModelInfo
from app.quality.compare import SpeedResult
from app.quality.eval_text import EvalText, EvalTextError, load_text
from app.quality.eval_types import EvalError, EvalSettings, KLDivergenceResult, PerplexityResult
from app.quant.measuring import (
    EvalRunner,
    ImatrixStep,
    Stop,
    remove_quietly,
    run_eval,
    run_quantize,
)
from app.quant.plan import QuantizeRequest
from app.quant.types import is_quantized_tensor_type, quant_type, supported_quant_types
from app.quant.workflow import KLDivergenceStep, PerplexityStep, SpeedStep

DEFAULT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "Q2_K")
IMATRIX_TYPES = ("IQ3_XXS", "IQ2_XS")  # made only with a matrix
# Types whose quantization routine llama.cpp weighs by the matrix (ggml_quantize_chunk with
# quant_weights): the K-quants, the i-quants and the legacy 4- and 5-bit types. Q8_0 and the
# float types ignore it.
_NO_IMATRIX_EFFECT = frozenset({"Q8_0", "F16", "BF16", "F32"})
RECORD_VERSION = 1


class AdviceError(Exception):
    """An advice that cannot be given; the message says why and what to do."""


def uses_imatrix(type_name: str) -> bool:
    """Whether llama.cpp's quantizer weighs this type's rounding by an importance matrix."""
    return type_name.upper() not in _NO_IMATRIX_EFFECT


@dataclass(frozen=True)
class Candidate:
    type_name: str
    with_imatrix: bool

    @property
    def label(self) -> str:
        return f"{self.type_name} + imatrix" if self.with_imatrix else self.type_name


@dataclass(frozen=True)
class CandidateFigures:
    """What was measured on one candidate file (stored in the history as it is)."""

    type_name: str
    with_imatrix: bool
    file_bytes: int
    tensor_data_bytes: int
    bits_per_weight: float
    mean_kld: float
    kld_uncertainty: float | None
    same_top_p: float  # 0..1
    ppl: float
    ppl_uncertainty: float | None
    pp_tokens_per_s: float
    tg_tokens_per_s: float
    tg_std: float | None


@dataclass(frozen=True)
class CandidateRow:
    figures: CandidateFigures
    memory_bytes: int  # the memory estimate at the advice's context
    on_frontier: bool
    excluded_by: tuple[str, ...]  # e.g. ("memory 150 MiB > 100 MiB",)
    from_history: bool

    @property
    def label(self) -> str:
        return Candidate(self.figures.type_name, self.figures.with_imatrix).label


@dataclass(frozen=True)
class AdviceProgress:
    phase: str  # "base", "imatrix", "quantize", "kld", "speed", "history"
    index: int  # candidate number, 1-based (0 for the base and the matrix)
    total: int
    text: str


@dataclass(frozen=True)
class AdviceRequest:
    source: str  # the model to quantize (an F16/BF16/F32 file, ideally)
    text_source: str  # evaluation text: "default" or a file
    base: str | None = None  # the KL-divergence reference; None: the source
    calibration: str | None = None  # calibration text for an importance matrix
    imatrix: str | None = None  # or a ready matrix file
    types: tuple[str, ...] | None = None  # None: DEFAULT_TYPES (+ IMATRIX_TYPES with a matrix)
    max_memory_bytes: int | None = None
    min_tg: float | None = None
    n_ctx: int = 4096  # context the memory estimate is made for (Model Config's default)
    settings: EvalSettings = EvalSettings(n_ctx=256, n_chunks=8)
    imatrix_ctx: int = 512
    imatrix_chunks: int | None = None
    speed_prompt: int = 256
    speed_gen: int = 32
    speed_repetitions: int = 3
    n_threads: int | None = None
    allow_requantize: bool = False
    keep_folder: str | None = None  # where the recommended file is kept; None: nothing kept


@dataclass(frozen=True)
class Advice:
    rows: tuple[CandidateRow, ...]
    pick: CandidateRow | None
    verdict: str  # the recommendation, or why there is none, in words
    max_memory_bytes: int | None
    min_tg: float | None
    n_ctx: int
    measured: int  # candidates measured now
    reused: int  # candidates taken from the history
    base_ppl: PerplexityResult | None  # None when every figure came from the history
    kept_path: str | None  # the recommended file, when kept
    notes: tuple[str, ...] = ()

    def table(self) -> str:
        """Markdown: one row per candidate, smallest first; '*' on the frontier, '→' the pick."""
        body = [
            candidate_cells(r, "→" if self.pick is not None and r is self.pick else "", frontier="*")
            for r in sorted(self.rows, key=lambda r: r.figures.file_bytes)
        ]
        return markdown_table(list(ADVICE_COLUMNS), body, pad=False)


# The columns of an advice's full table: the CLI's Markdown and the Recommend box's dialog.
ADVICE_COLUMNS = (
    "",
    "Type",
    "Size",
    "Bits/w",
    "Memory",
    "Mean KLD",
    "PPL",
    "pp t/s",
    "tg t/s",
    "Frontier",
    "Excluded by",
)


def candidate_cells(row: CandidateRow, mark: str, frontier: str) -> list[str]:
    """One row of ADVICE_COLUMNS: `mark` first (the pick's arrow), `frontier` in the Frontier column
    when the row is on it ("*" in Markdown, "yes" in the GUI)."""
    f = row.figures
    return [
        mark,
        row.label,
        format_bytes(f.file_bytes),
        f"{f.bits_per_weight:.2f}",
        format_bytes(row.memory_bytes),
        f"{f.mean_kld:.5f}",
        f"{f.ppl:.3f}",
        f"{f.pp_tokens_per_s:.1f}",
        f"{f.tg_tokens_per_s:.1f}",
        frontier if row.on_frontier else "",
        "; ".join(row.excluded_by),
    ]


def pareto_frontier(points: Sequence[tuple[float, float, float]]) -> tuple[bool, ...]:
    """For (size, kld, tg) points, whether each is on the frontier: not dominated by another that is
    no larger, has no worse KLD and is no slower, and is strictly better in one of them."""

    def dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
        no_worse = a[0] <= b[0] and a[1] <= b[1] and a[2] >= b[2]
        better = a[0] < b[0] or a[1] < b[1] or a[2] > b[2]
        return no_worse and better

    return tuple(
        not any(dominates(q, p) for j, q in enumerate(points) if j != i) for i, p in enumerate(points)
    )


def recommend(
    rows: Sequence[CandidateRow], max_memory_bytes: int | None, min_tg: float | None, n_ctx: int
) -> tuple[CandidateRow | None, str]:
    """The lowest-KLD row no constraint excluded (the smaller on a tie), and the verdict in words."""
    fits = [r for r in rows if not r.excluded_by]
    limits = []
    if max_memory_bytes is not None:
        limits.append(f"fits in {format_bytes(max_memory_bytes)} at a context of {n_ctx}")
    if min_tg is not None:
        limits.append(f"generates at least {min_tg:g} tokens/s")
    within = " and ".join(limits) if limits else "of the candidates (no constraint given)"
    if fits:
        pick = min(fits, key=lambda r: (r.figures.mean_kld, r.figures.file_bytes))
        f = pick.figures
        return pick, (
            f"Recommended: {pick.label} ({format_bytes(f.file_bytes)}, mean KLD {f.mean_kld:.5f}, "
            f"tg {f.tg_tokens_per_s:.1f} t/s, memory {format_bytes(pick.memory_bytes)}): the lowest KL "
            f"divergence that {within}."
        )
    if not rows:
        return None, "Nothing was measured."
    by_memory = [r.label for r in rows if any(e.startswith("memory") for e in r.excluded_by)]
    by_speed = [r.label for r in rows if any(e.startswith("tg") for e in r.excluded_by)]
    parts = []
    if by_memory:
        smallest = min(rows, key=lambda r: r.memory_bytes)
        parts.append(
            f"the memory limit excluded {', '.join(by_memory)} (the smallest, {smallest.label}, needs "
            f"{format_bytes(smallest.memory_bytes)})"
        )
    if by_speed:
        fastest = max(rows, key=lambda r: r.figures.tg_tokens_per_s)
        parts.append(
            f"the speed floor excluded {', '.join(by_speed)} (the fastest, {fastest.label}, generates "
            f"{fastest.figures.tg_tokens_per_s:.1f} t/s)"
        )
    return None, "Nothing meets the constraints: " + "; ".join(parts) + "."


def exclusions(
    memory_bytes: int, tg: float, max_memory_bytes: int | None, min_tg: float | None
) -> tuple[str, ...]:
    out = []
    if max_memory_bytes is not None and memory_bytes > max_memory_bytes:
        out.append(f"memory {format_bytes(memory_bytes)} > {format_bytes(max_memory_bytes)}")
    if min_tg is not None and tg < min_tg:
        out.append(f"tg {tg:.1f} < {min_tg:g} t/s")
    return tuple(out)


def memory_needed(source: ModelInfo, figures: CandidateFigures, n_ctx: int) -> int:
    """Model Config's memory estimate (weights, KV cache, compute) for the candidate at `n_ctx`:
    the source's shape with the candidate's tensor bytes."""
    from app.model.memory import estimate_memory
    from app.model.settings import LoadSettings

    info = dataclasses.replace(
        source,
        file_size_bytes=figures.file_bytes,
        tensor_data_bytes=figures.tensor_data_bytes,
        bits_per_weight=figures.bits_per_weight,
    )
    estimate = estimate_memory(info, LoadSettings(n_ctx=n_ctx), available_ram_bytes=1 << 62)
    return int(estimate.total_ram_bytes + estimate.total_vram_bytes)


def source_quantized_type(info: ModelInfo) -> str | None:
    """The quantized type the source already holds ("Q4_1"), or None for a float model. The header's
    file type first; when it names none (n/a), the type of the tensors that hold most bytes."""
    if info.file_type is not None:
        return None if info.file_type.upper() in ("F32", "F16", "BF16") else info.file_type
    quantized = [t.type_name for t in info.tensor_types if is_quantized_tensor_type(t.type_name)]
    return quantized[0] if quantized else None


def requantization_note(info: ModelInfo) -> str | None:
    """What an advice on an already-quantized source measures, in words; None for a float source."""
    qtype = source_quantized_type(info)
    if qtype is None:
        if info.quantized_from and is_quantized_tensor_type(info.quantized_from):
            return (
                f"Source is a {info.file_type} copy of a {info.quantized_from} model: KLD is measured "
                f"against the {info.quantized_from}'s values, not the original's."
            )
        return None
    return (
        f"Source is already quantized ({qtype}): each candidate is a requantization and KLD is measured "
        f"against the {qtype}, not the original. Advise on the original F16/BF16/F32 model for true figures."
    )


def _calibration_text(source: str) -> EvalText:
    """A calibration text file, or "calibration": the one LlamaScope ships (resources/calibration)."""
    from app.quant.imatrix_compute import calibration_text

    return calibration_text(source)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Advisor:
    """One advice; see the module docstring. Not reusable: make one per advice."""

    def __init__(
        self,
        request: AdviceRequest,
        runner: EvalRunner,
        *,
        store: Any = None,  # app.bench.history.HistoryStore; None: the user's history database
        stop: Stop | None = None,
        on_progress: Callable[[AdviceProgress], None] | None = None,
        on_eval_progress: Callable[[Any], None] | None = None,
        work_folder: str | None = None,
    ) -> None:
        self.request = request
        self.runner = runner
        self.stop = stop or Stop()
        self._store = store
        self._on_progress = on_progress
        self._on_eval_progress = on_eval_progress
        self._work_parent = work_folder
        self._work: str | None = None
        self._base: PerplexityResult | None = None
        self._imatrix_path: str | None = None

    # ---- checks before anything long ---------------------------------------------------------
    def candidates(self, has_imatrix: bool) -> tuple[Candidate, ...]:
        r = self.request
        names = r.types or (DEFAULT_TYPES + (IMATRIX_TYPES if has_imatrix else ()))
        supported = {t.name for t in supported_quant_types()}
        out: list[Candidate] = []
        for name in names:
            try:
                qtype = quant_type(name)
            except ValueError as exc:
                raise AdviceError(str(exc)) from None
            if qtype.name not in supported:
                raise AdviceError(f"This llama.cpp build cannot make {qtype.name}.")
            if qtype.is_float:
                raise AdviceError(f"{qtype.name} is not a quantization; leave it out of the candidates.")
            if not qtype.needs_imatrix:
                out.append(Candidate(qtype.name, False))
            elif not has_imatrix:
                if r.types:  # asked for by name: say why it cannot be made
                    raise AdviceError(
                        f"{qtype.name} needs an importance matrix: give a calibration text (--calibration) "
                        "or a matrix (--imatrix)."
                    )
                continue
            if has_imatrix and uses_imatrix(qtype.name):
                out.append(Candidate(qtype.name, True))
        return tuple(dict.fromkeys(out))

    def _texts(self) -> tuple[str, str | None]:
        """The evaluation text's SHA-256 and the calibration text's (refused when they are equal)."""
        r = self.request
        try:
            evaluation = load_text(r.text_source)
            calibration = _calibration_text(r.calibration) if r.calibration else None
        except (EvalTextError, EvalError) as exc:
            raise AdviceError(str(exc)) from None
        if calibration is not None and calibration.sha256 == evaluation.sha256:
            raise AdviceError(
                f"The calibration text {calibration.name} has the same content as the evaluation text "
                f"{evaluation.name}: a matrix fitted to the text that judges it flatters every imatrix "
                "candidate. Calibrate on another text (--calibration calibration names the one LlamaScope "
                "ships, Python standard library docstrings)."
            )
        return evaluation.sha256, calibration.sha256 if calibration else None

    # ---- the advice --------------------------------------------------------------------------
    def run(self) -> Advice:
        r = self.request
        if r.max_memory_bytes is not None and r.max_memory_bytes <= 0:
            raise AdviceError("The memory limit must be larger than 0.")
        if r.min_tg is not None and r.min_tg < 0:
            raise AdviceError("The speed floor must be 0 tokens/s or more.")
        if r.calibration and r.imatrix:
            raise AdviceError("Give a calibration text or a matrix file, not both.")
        try:
            source = inspect_model(r.source)
            base_path = r.base or r.source
            if r.base:
                inspect_model(r.base)
        except ModelFileError as exc:
            raise AdviceError(str(exc)) from None
        text_sha, calibration_sha = self._texts()
        imatrix_key = None
        if calibration_sha is not None:
            imatrix_key = f"calibration:{calibration_sha}:c{r.imatrix_ctx}:n{r.imatrix_chunks}"
        elif r.imatrix:
            if not os.path.isfile(r.imatrix):
                raise AdviceError(f"Importance matrix not found: {r.imatrix}.")
            imatrix_key = f"file:{_sha256_file(r.imatrix)}"
            self._imatrix_path = os.path.abspath(r.imatrix)
        candidates = self.candidates(imatrix_key is not None)
        store = self._store
        if store is None:
            from app.bench.history import HistoryStore

            store = HistoryStore()
        from app.telemetry.hardware import hardware_fingerprint

        common = {
            "version": RECORD_VERSION,
            "source": model_fingerprint(r.source),
            "base": model_fingerprint(base_path),
            "text": text_sha,
            "eval": [r.settings.n_ctx, r.settings.n_chunks],
            "speed": [r.speed_prompt, r.speed_gen, r.speed_repetitions, r.n_threads],
            "hardware": hardware_fingerprint(),
        }
        rows: list[tuple[CandidateFigures, bool]] = []
        measured = reused = 0
        kept: str | None = None
        files: dict[Candidate, str] = {}
        self._work = tempfile.mkdtemp(prefix="llamascope-advise-", dir=self._work_parent)
        try:
            for i, cand in enumerate(candidates, 1):
                self.stop.check()
                key_fields = {
                    **common,
                    "type": cand.type_name,
                    "imatrix": imatrix_key if cand.with_imatrix else None,
                }
                key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()
                stored = store.quant_measurement(key)
                if stored is not None:
                    try:
                        rows.append((CandidateFigures(**stored), True))
                        reused += 1
                        self._progress("history", i, len(candidates), f"{cand.label}: from the history")
                        continue
                    except TypeError:  # a record of another shape: measure again
                        pass
                figures, path = self._measure(cand, i, len(candidates), base_path, imatrix_key)
                files[cand] = path
                store.add_quant_measurement(key, key_fields, dataclasses.asdict(figures))
                rows.append((figures, False))
                measured += 1
            advice_rows = self._rows(source, rows)
            pick, verdict = recommend(advice_rows, r.max_memory_bytes, r.min_tg, r.n_ctx)
            if pick is not None and r.keep_folder:
                cand = Candidate(pick.figures.type_name, pick.figures.with_imatrix)
                kept = self._keep(cand, files.get(cand))
            notes = []
            requantized = requantization_note(source)
            if requantized is not None:
                notes.append(requantized)
            if imatrix_key is None:
                notes.append(
                    "No importance matrix (--calibration or --imatrix): the imatrix variants and "
                    f"{', '.join(IMATRIX_TYPES)} were not measured."
                )
            return Advice(
                rows=advice_rows,
                pick=pick,
                verdict=verdict,
                max_memory_bytes=r.max_memory_bytes,
                min_tg=r.min_tg,
                n_ctx=r.n_ctx,
                measured=measured,
                reused=reused,
                base_ppl=self._base,
                kept_path=kept,
                notes=tuple(notes),
            )
        finally:
            shutil.rmtree(self._work, ignore_errors=True)

    def _rows(self, source: ModelInfo, rows: list[tuple[CandidateFigures, bool]]) -> tuple[CandidateRow, ...]:
        r = self.request
        frontier = pareto_frontier([(f.file_bytes, f.mean_kld, f.tg_tokens_per_s) for f, _ in rows])
        out = []
        for (f, from_history), on in zip(rows, frontier, strict=True):
            memory = memory_needed(source, f, r.n_ctx)
            out.append(
                CandidateRow(
                    f,
                    memory,
                    on,
                    exclusions(memory, f.tg_tokens_per_s, r.max_memory_bytes, r.min_tg),
                    from_history,
                )
            )
        return tuple(out)

    def _progress(self, phase: str, index: int, total: int, text: str) -> None:
        if self._on_progress is not None:
            self._on_progress(AdviceProgress(phase, index, total, text))

    def _eval(self, step: Any) -> Any:
        return run_eval(self.runner, step, self.stop, self._on_eval_progress)

    def _base_logits(self, base_path: str) -> str:
        if self._base is None:
            assert self._work is not None
            self._progress("base", 0, 0, f"log-probabilities of {os.path.basename(base_path)}")
            self._base = self._eval(
                PerplexityStep(
                    base_path,
                    self.request.text_source,
                    self.request.settings,
                    save_logits=os.path.join(self._work, "base.kld"),
                )
            )
        assert self._base is not None and self._base.logits_file is not None
        return self._base.logits_file

    def _matrix(self) -> str:
        r = self.request
        if self._imatrix_path is None:
            assert self._work is not None and r.calibration is not None
            self._progress("imatrix", 0, 0, f"importance matrix on {os.path.basename(r.calibration)}")
            out = os.path.join(self._work, "calibration.imatrix.gguf")
            self._imatrix_path = self._eval(
                ImatrixStep(r.source, r.calibration, out, r.imatrix_ctx, r.imatrix_chunks)
            )
        return self._imatrix_path

    def _measure(
        self, cand: Candidate, i: int, n: int, base_path: str, imatrix_key: str | None
    ) -> tuple[CandidateFigures, str]:
        r = self.request
        assert self._work is not None
        logits = self._base_logits(base_path)
        imatrix = self._matrix() if cand.with_imatrix else None
        self._progress("quantize", i, n, f"{cand.label}: quantizing")
        out = os.path.join(self._work, f"{cand.type_name}{'.imatrix' if cand.with_imatrix else ''}.gguf")
        made = run_quantize(
            QuantizeRequest(
                r.source,
                cand.type_name,
                out,
                allow_requantize=r.allow_requantize,
                n_threads=r.n_threads,
                imatrix=imatrix,
            ),
            self.stop,
        )
        try:
            self._progress("kld", i, n, f"{cand.label}: KL divergence")
            kld: KLDivergenceResult = self._eval(KLDivergenceStep(made.output_path, logits, r.settings))
            self._progress("speed", i, n, f"{cand.label}: speed")
            speed: SpeedResult = self._eval(
                SpeedStep(
                    made.output_path,
                    n_prompt=r.speed_prompt,
                    n_gen=r.speed_gen,
                    repetitions=r.speed_repetitions,
                )
            )
            info = inspect_model(made.output_path)
        except BaseException:
            remove_quietly(made.output_path)
            raise
        figures = CandidateFigures(
            type_name=cand.type_name,
            with_imatrix=cand.with_imatrix,
            file_bytes=made.output_bytes,
            tensor_data_bytes=info.tensor_data_bytes,
            bits_per_weight=made.bits_per_weight,
            mean_kld=kld.kld_mean,
            kld_uncertainty=kld.kld_uncertainty,
            same_top_p=kld.same_top_p,
            ppl=kld.ppl,
            ppl_uncertainty=kld.ppl_uncertainty,
            pp_tokens_per_s=speed.pp_tokens_per_s,
            tg_tokens_per_s=speed.tg_tokens_per_s,
            tg_std=speed.tg_std,
        )
        if not r.keep_folder:
            remove_quietly(made.output_path)
        return figures, made.output_path

    def _keep(self, cand: Candidate, path: str | None) -> str | None:
        """Move the recommended file into the keep folder (made again when it came from the history),
        under a name no file has yet: a file of the user's with the natural name is never replaced."""
        r = self.request
        assert r.keep_folder is not None
        stem = os.path.splitext(os.path.basename(r.source))[0]
        natural = f"{stem}.{cand.type_name}{'.imatrix' if cand.with_imatrix else ''}.gguf"
        dest = reserve_free_path(os.path.join(r.keep_folder, natural))
        try:
            if path is None or not os.path.exists(path):
                imatrix = self._matrix() if cand.with_imatrix else None
                # overwrite: only the empty placeholder reserve_free_path made for this file
                made = run_quantize(
                    QuantizeRequest(r.source, cand.type_name, dest, allow_requantize=r.allow_requantize,
                                    n_threads=r.n_threads, imatrix=imatrix, overwrite=True),
                    self.stop,
                )  # fmt: skip
                return made.output_path
            shutil.move(path, dest)  # onto its own placeholder
        except BaseException:
            remove_quietly(dest)
            raise
        return dest


def free_path(path: str) -> str:
    """`path` when no file is there, else the first free "STEM-2.EXT", "STEM-3.EXT", … beside it
    (EXT: ".gguf", or ".imatrix.gguf" kept whole for a matrix)."""
    if not os.path.lexists(path):
        return path
    folder, name = os.path.split(path)
    for ext in (".imatrix.gguf", ".gguf", ""):
        if name.endswith(ext) and len(name) > len(ext):
            stem = name[: len(name) - len(ext)]
            break
    n = 2
    while True:
        candidate = os.path.join(folder, f"{stem}-{n}{ext}")
        if not os.path.lexists(candidate):
            return candidate
        n += 1


def reserve_free_path(path: str) -> str:
    """Like free_path, and creates the file empty (O_EXCL), so that nothing else takes the name
    between now and the write that replaces this placeholder."""
    while True:
        candidate = free_path(path)
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:  # taken since free_path looked: the next one
            continue
        return candidate


__all__ = [
    "ADVICE_COLUMNS",
    "DEFAULT_TYPES",
    "IMATRIX_TYPES",
    "Advice",
    "AdviceError",
    "AdviceProgress",
    "AdviceRequest",
    "Advisor",
    "Candidate",
    "CandidateFigures",
    "CandidateRow",
    "candidate_cells",
    "exclusions",
    "free_path",
    "memory_needed",
    "pareto_frontier",
    "recommend",
    "requantization_note",
    "reserve_free_path",
    "uses_imatrix",
]
