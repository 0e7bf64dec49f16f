"""llama-batched-bench's view of a benchmark: the prompt and the generation of a pg test apart,
and tokens/s against KV-cache depth.

llama-batched-bench (llama.cpp, tools/batched-bench/batched-bench.cpp) times one prompt +
generation run as two parts and prints, per shape,

    | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |

with, for one sequence (B = 1, the prompt not shared):

    T_PP = time to decode the PP prompt tokens, synchronized     (the time to the first token)
    T_TG = time of the TG single-token decodes that follow, each synchronized
    T    = T_PP + T_TG
    S_PP = PP / T_PP        S_TG = TG / T_TG        S = (PP + TG) / T
    N_KV = PP + TG          (the KV cells the shape needs)

A LlamaScope pg test (llama-bench's `-pg PP,TG`) runs exactly that: the runner records where
the prompt ended inside each timed repetition (`BenchResult.samples_pp_ns`), so each repetition
gives batched-bench's row. batched-bench runs each shape once; LlamaScope repeats it R times, and
each figure here is the mean ± sample standard deviation over the repetitions, as llama-bench
reports t/s (for T, S is then exactly llama-bench's avg_ts). With R = 1 they are batched-bench's
numbers. B is always 1: LlamaScope decodes one sequence. A depth (`-d`) fills the cache first,
untimed, so N_KV here is depth + PP + TG, the cells the test needs.

The depth view groups results that differ only by depth into series (one per test shape,
configuration and model) for the CLI's table and the Performance panel's plot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.bench.runner import SWEEPABLE, BenchError, BenchResult, BenchTest
from app.common.markdown import markdown_table
from app.common.stats import mean, stdev


@dataclass(frozen=True)
class Spread:
    """The mean and sample standard deviation of one figure over the repetitions (0 for one)."""

    mean: float
    stdev: float

    @staticmethod
    def of(values: Sequence[float]) -> Spread:
        return Spread(mean(values), stdev(values))

    def text(self, spec: str) -> str:
        return f"{self.mean:{spec}} ± {self.stdev:{spec}}"


@dataclass(frozen=True)
class PgFigures:
    """llama-batched-bench's row for one pg test, over its repetitions (times in s, speeds in t/s)."""

    n_prompt: int
    n_gen: int
    n_depth: int
    n_repetitions: int
    t_pp_s: Spread  # T_PP: the time to the first token
    s_pp_ts: Spread  # S_PP
    t_tg_s: Spread  # T_TG
    s_tg_ts: Spread  # S_TG
    t_s: Spread  # T
    s_ts: Spread  # S, the total speed

    @property
    def n_kv(self) -> int:
        """The KV cells the test fills: batched-bench's N_KV plus the depth filled before it."""
        return self.n_depth + self.n_prompt + self.n_gen

    @property
    def ttft_ms(self) -> Spread:
        return Spread(1000 * self.t_pp_s.mean, 1000 * self.t_pp_s.stdev)


def pg_figures(
    n_prompt: int, n_gen: int, n_depth: int, samples_ns: Sequence[int], samples_pp_ns: Sequence[int]
) -> PgFigures:
    """batched-bench's figures from each repetition's total time and its prompt part (ns).

    Raises BenchError when the two lists do not describe the same repetitions: different lengths,
    a prompt part that is not shorter than its repetition, or a time that is not positive."""
    if n_prompt <= 0 or n_gen <= 0:
        raise BenchError("batched-bench's figures need a pg test: prompt and generated tokens")
    if not samples_ns or len(samples_pp_ns) != len(samples_ns):
        raise BenchError(
            f"{len(samples_pp_ns)} prompt times for {len(samples_ns)} repetitions: each repetition "
            "needs its prompt time"
        )
    t_pp, t_tg, t = [], [], []
    for i, (total, prompt) in enumerate(zip(samples_ns, samples_pp_ns, strict=True)):
        if not 0 < prompt < total:
            raise BenchError(
                f"repetition {i + 1}: its prompt took {prompt:,} ns of {total:,} ns; the prompt part "
                "must be positive and shorter than the whole"
            )
        t_pp.append(prompt / 1e9)
        t_tg.append((total - prompt) / 1e9)
        t.append(total / 1e9)
    return PgFigures(
        n_prompt=n_prompt,
        n_gen=n_gen,
        n_depth=n_depth,
        n_repetitions=len(t),
        t_pp_s=Spread.of(t_pp),
        s_pp_ts=Spread.of([n_prompt / x for x in t_pp]),
        t_tg_s=Spread.of(t_tg),
        s_tg_ts=Spread.of([n_gen / x for x in t_tg]),
        t_s=Spread.of(t),
        s_ts=Spread.of([(n_prompt + n_gen) / x for x in t]),
    )


def result_pg_figures(result: BenchResult) -> PgFigures | None:
    """The figures of a pg result that recorded its prompt times; None for any other result
    (a pp or tg test, or a record from llama-bench or an older LlamaScope, which have none)."""
    if not (result.n_prompt and result.n_gen and result.samples_pp_ns):
        return None
    return pg_figures(result.n_prompt, result.n_gen, result.n_depth, result.samples_ns, result.samples_pp_ns)


# ---- the record: extra fields beside llama-bench's (the means, named as batched-bench's JSONL) ---
PG_FIELDS = ("samples_pp_ns", "t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed")


def pg_record_fields(result: BenchResult) -> dict[str, Any]:
    """The record's pg fields: the raw prompt times and batched-bench's means (None when not a pg
    test with prompt times)."""
    figures = result_pg_figures(result)
    if figures is None:
        return {"samples_pp_ns": list(result.samples_pp_ns)} | dict.fromkeys(PG_FIELDS[1:])
    return {
        "samples_pp_ns": list(result.samples_pp_ns),
        "t_pp": figures.t_pp_s.mean,
        "speed_pp": figures.s_pp_ts.mean,
        "t_tg": figures.t_tg_s.mean,
        "speed_tg": figures.s_tg_ts.mean,
        "t": figures.t_s.mean,
        "speed": figures.s_ts.mean,
    }


def pg_samples_from_record(raw: Any, n_prompt: int, n_gen: int, samples_ns: Sequence[int]) -> tuple[int, ...]:
    """A record's samples_pp_ns (`raw`, as stored or exported): () when absent, else checked
    against the test and its repetitions; raises BenchError naming the field."""
    if raw is None or raw == [] or raw == "":
        return ()
    if isinstance(raw, str):  # the CSV export writes a list as JSON text
        try:
            raw = json.loads(raw)
        except ValueError:
            raise BenchError(f"samples_pp_ns must be a list of times in ns, not {raw[:40]!r}") from None
    if not isinstance(raw, list):
        raise BenchError("samples_pp_ns must be a list of times in ns")
    values = []
    for i, v in enumerate(raw):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise BenchError(f"samples_pp_ns[{i}] must be a positive whole number of ns, not {v!r}")
        values.append(v)
    if not values:
        return ()
    try:
        pg_figures(n_prompt, n_gen, 0, samples_ns, values)  # consistent with the test, or says why not
    except BenchError as exc:
        raise BenchError(f"samples_pp_ns: {exc}") from None
    return tuple(values)


# ---- the tables -----------------------------------------------------------------------------
def _varying(results: Sequence[BenchResult]) -> tuple[list[str], bool]:
    """The swept fields that differ between the results, and whether they span several models."""
    fields = [f for f in SWEEPABLE if len({getattr(r, f) for r in results}) > 1]
    return fields, len({r.model_filename for r in results}) > 1


def _config(result: BenchResult, fields: Sequence[str], several_models: bool) -> str:
    parts = [os.path.basename(result.model_filename)] if several_models else []
    for f in fields:
        v = getattr(result, f)
        parts.append(f"{SWEEPABLE[f][1]}={int(v) if isinstance(v, bool) else v}")
    return " ".join(parts)


def pg_table(results: Sequence[BenchResult]) -> str:
    """batched-bench's table for the pg results that have prompt times ("" when there are none).
    Each cell is the mean ± standard deviation over the repetitions."""
    rows_of = [(r, f) for r in results if (f := result_pg_figures(r)) is not None]
    if not rows_of:
        return ""
    fields, several = _varying([r for r, _ in rows_of])
    config = bool(fields or several)
    header = [
        *(["config"] if config else []),
        "PP",
        "TG",
        "B",
        "depth",
        "N_KV",
        "T_PP s",
        "S_PP t/s",
        "T_TG s",
        "S_TG t/s",
        "T s",
        "S t/s",
    ]
    rows = []
    for r, f in rows_of:
        rows.append(
            [
                *([_config(r, fields, several)] if config else []),
                str(f.n_prompt),
                str(f.n_gen),
                "1",
                str(f.n_depth),
                str(f.n_kv),
                f.t_pp_s.text(".3f"),
                f.s_pp_ts.text(".2f"),
                f.t_tg_s.text(".3f"),
                f.s_tg_ts.text(".2f"),
                f.t_s.text(".3f"),
                f.s_ts.text(".2f"),
            ]
        )
    align = ["default" if h == "config" else "right" for h in header]
    return markdown_table(header, rows, align=align)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DepthPoint:
    depth: int
    avg_ts: float
    stddev_ts: float


@dataclass(frozen=True)
class DepthSeries:
    """One test shape in one configuration at every depth it ran, depths ascending."""

    label: str  # "tg128", "pp512 threads=4", "pp512 model.gguf"
    points: tuple[DepthPoint, ...]


def depth_series(results: Sequence[BenchResult]) -> list[DepthSeries]:
    """The results grouped into series that differ only by depth, in the order they first appear.
    A depth measured twice in one series (two runs merged) keeps the later result."""
    fields, several = _varying(results)
    grouped: dict[str, dict[int, DepthPoint]] = {}
    for r in results:
        shape = BenchTest(r.n_prompt, r.n_gen).name
        config = _config(r, fields, several)
        label = f"{shape} {config}" if config else shape
        grouped.setdefault(label, {})[r.n_depth] = DepthPoint(r.n_depth, r.avg_ts, r.stddev_ts)
    return [DepthSeries(label, tuple(points[d] for d in sorted(points))) for label, points in grouped.items()]


def depths_of(results: Sequence[BenchResult]) -> list[int]:
    return sorted({r.n_depth for r in results})


def depth_table(results: Sequence[BenchResult]) -> str:
    """t/s against depth, one row per depth and one column per series; "" unless the results span
    at least two depths. A series that did not run at a depth (stopped) shows n/a there."""
    depths = depths_of(results)
    if len(depths) < 2:
        return ""
    series = depth_series(results)
    header = ["depth", *(f"{s.label} t/s" for s in series)]
    rows = []
    for d in depths:
        row = [str(d)]
        for s in series:
            point = next((p for p in s.points if p.depth == d), None)
            row.append("n/a" if point is None else f"{point.avg_ts:.2f} ± {point.stddev_ts:.2f}")
        rows.append(row)
    return markdown_table(header, rows, align=["right"] * len(header))


def batched_tables(results: Sequence[BenchResult]) -> str:
    """The tables the CLI prints after llama-bench's: batched-bench's view of the pg tests and
    t/s against depth, each under a heading line; "" when neither applies."""
    parts = []
    pg = pg_table(results)
    if pg:
        parts.append(
            "\nprompt + generation, as llama-batched-bench reports it (mean ± sd over repetitions):\n\n" + pg
        )
    depth = depth_table(results)
    if depth:
        parts.append("\nt/s against KV-cache depth:\n\n" + depth)
    return "".join(parts)
