"""Server benchmarks in the run history, beside local benchmarks, and their exports and comparisons.

A server benchmark is one run of kind "server-bench" in app.bench.history's database: its model
is the server's model path with the server's URL, its settings are the plan and the server's
`/props` (the configuration it ran with), its build the server's `build_info`. Each level is
stored the moment it finishes (`HistoryStore.add_server_level`) as a record holding the summary
figures and every request's own figures, so a benchmark whose server died keeps the levels it
finished, and a stored level can be recomputed and compared request by request.

Two server runs compare level by level (same concurrency and test), with Welch's t-test over
the per-request generation t/s, as local runs compare over their repetitions.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from app.bench.history import HistoryError, HistoryStore, RunRow
from app.common.formatting import fmt
from app.common.markdown import markdown_table
from app.common.stats import Comparison, welch
from app.server.bench import (
    LevelResult,
    LevelVerdict,
    RequestResult,
    ServerBenchPlan,
    ServerBenchResult,
)

RUN_KIND = "server-bench"
RECORD_VERSION = 1


def _model_label(url: str, props: dict[str, Any]) -> str:
    path = props.get("model_path")
    return f"{path} @ {url}" if isinstance(path, str) and path else url


def level_summary(level: LevelResult, plan: ServerBenchPlan) -> dict[str, Any]:
    """The figures of one level under their export names (units in the names)."""
    return _summary(level, plan.test_name, plan.api, plan.prompt_tokens, plan.gen_tokens)


def _summary(level: LevelResult, test: str, api: str, prompt_tokens: int, gen_tokens: int) -> dict[str, Any]:
    return {
        "concurrency": level.concurrency,
        "test": test,
        "api": api,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "requests": len(level.requests),
        "errors": level.errors,
        "wall_s": level.wall_s,
        "started_unix_s": level.started_unix_s,
        "ttft_p50_s": level.ttft_p50_s,
        "ttft_p95_s": level.ttft_p95_s,
        "ttft_p99_s": level.ttft_p99_s,
        "inter_token_mean_s": level.inter_token_mean_s,
        "inter_token_p95_s": level.inter_token_p95_s,
        "request_tokens_per_s_mean": level.request_tokens_per_s_mean,
        "request_tokens_per_s_stdev": level.request_tokens_per_s_stdev,
        "aggregate_tokens_per_s": level.aggregate_tokens_per_s,
        "requests_per_s": level.requests_per_s,
        "generated_tokens": level.generated_tokens,
        "cached_prompt_tokens": level.cached_prompt_tokens,
        "max_requests_deferred": level.max_requests_deferred,
        "max_requests_processing": level.max_requests_processing,
        "verdict": level.verdict.value,
        "kept_up": level.verdict.kept_up,
        "verdict_detail": level.verdict_detail,
    }


def to_record(level: LevelResult, plan: ServerBenchPlan) -> dict[str, Any]:
    record = level_summary(level, plan)
    record["record_version"] = RECORD_VERSION
    record["timeout_s"] = plan.timeout_s
    record["samples"] = [asdict(r) for r in level.requests]
    return record


@dataclass(frozen=True)
class StoredLevel:
    """A level read back from the history, with the plan figures it ran with."""

    level: LevelResult
    test: str
    api: str
    prompt_tokens: int
    gen_tokens: int

    def summary(self) -> dict[str, Any]:
        return _summary(self.level, self.test, self.api, self.prompt_tokens, self.gen_tokens)


def from_record(record: Any) -> StoredLevel:
    """A stored record back as a level; a damaged one raises HistoryError naming what is wrong."""
    try:
        if not isinstance(record, dict):
            raise TypeError("not an object")
        samples = tuple(
            RequestResult(
                index=int(s["index"]),
                error=s.get("error"),
                ttft_s=s.get("ttft_s"),
                total_s=s.get("total_s"),
                generated_tokens=int(s.get("generated_tokens", 0)),
                prompt_tokens=s.get("prompt_tokens"),
                cached_prompt_tokens=s.get("cached_prompt_tokens"),
                inter_token_s=s.get("inter_token_s"),
                gen_tokens_per_s=s.get("gen_tokens_per_s"),
            )
            for s in record.get("samples", ())
        )
        level = LevelResult(
            concurrency=int(record["concurrency"]),
            requests=samples,
            wall_s=float(record["wall_s"]),
            started_unix_s=float(record.get("started_unix_s", 0.0)),
            verdict=LevelVerdict(record.get("verdict", "baseline")),
            verdict_detail=str(record.get("verdict_detail", "")),
            max_requests_deferred=record.get("max_requests_deferred"),
            max_requests_processing=record.get("max_requests_processing"),
        )
        return StoredLevel(
            level,
            str(record.get("test", "")),
            str(record.get("api", "completions")),
            int(record.get("prompt_tokens", 0)),
            int(record.get("gen_tokens", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HistoryError(
            f"a stored server benchmark level is damaged ({type(exc).__name__}: {exc})"
        ) from None


class ServerRunRecorder:
    """Stores a server benchmark as it runs: the run when it starts, each level as it finishes."""

    def __init__(self, store: HistoryStore, url: str, plan: ServerBenchPlan, props: dict[str, Any]) -> None:
        self.store = store
        self.plan = plan
        settings = {"server_url": url, "plan": asdict(plan), "props": props}
        build = props.get("build_info") if isinstance(props.get("build_info"), str) else None
        self.run_id = store.start_run(
            RUN_KIND, _model_label(url, props), settings, build=build, label=f"server {url}", local=False
        )

    def add_level(self, level: LevelResult) -> None:
        self.store.add_server_level(self.run_id, level.concurrency, to_record(level, self.plan))

    def finish(self, result: ServerBenchResult | None) -> None:
        """Close the run: "finished", "cancelled", or "failed" (the server went away, or no result)."""
        if result is None or result.stopped:
            status = "failed"
        else:
            status = "cancelled" if result.cancelled else "finished"
        self.store.finish_run(self.run_id, status)


def stored_levels(store: HistoryStore, run_id: int) -> tuple[RunRow, list[StoredLevel]]:
    run = next((r for r in store.runs() if r.id == run_id), None)
    if run is None:
        raise HistoryError(f"there is no run {run_id} (`llamascope history` lists them)")
    if run.kind != RUN_KIND:
        raise HistoryError(f"run {run_id} is a {run.kind} run, not a server benchmark")
    return run, [from_record(r) for r in store.server_levels(run_id)]


# ---- exports --------------------------------------------------------------------------------------

_TABLE = (
    ("concurrency", "concurrency", "right"),
    ("requests", "requests", "right"),
    ("errors", "errors", "right"),
    ("TTFT p50 ms", "ttft_p50_s", "right"),
    ("TTFT p95 ms", "ttft_p95_s", "right"),
    ("TTFT p99 ms", "ttft_p99_s", "right"),
    ("ITL ms", "inter_token_mean_s", "right"),
    ("t/s per request", "request_tokens_per_s_mean", "right"),
    ("aggregate t/s", "aggregate_tokens_per_s", "right"),
    ("deferred", "max_requests_deferred", "right"),
    ("verdict", "verdict", "left"),
)


def _cell(key: str, row: dict[str, Any]) -> str:
    value = row.get(key)
    if key.startswith(("ttft_", "inter_token_")):  # seconds, shown in milliseconds
        return fmt(None if value is None else value * 1000.0, ".1f")
    if key == "request_tokens_per_s_mean":
        sd = row.get("request_tokens_per_s_stdev")
        return fmt(value, ".2f") + (f" ± {sd:.2f}" if value is not None and sd is not None else "")
    if key == "aggregate_tokens_per_s":
        return fmt(value, ".2f")
    if key == "max_requests_deferred":
        return fmt(value, ".0f")
    return fmt(value)


def levels_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of level summaries (level_summary's dicts)."""
    header = [h for h, _, _ in _TABLE]
    align: Any = [a for _, _, a in _TABLE]
    return markdown_table(header, ([_cell(k, row) for _, k, _ in _TABLE] for row in rows), align=align)


def dumps(rows: Sequence[dict[str, Any]], fmt_name: str) -> str:
    """Level summaries as "md", "csv", "json" or "jsonl"."""
    if fmt_name == "md":
        return levels_table(rows)
    if fmt_name == "json":
        return json.dumps(list(rows), indent=2) + "\n"
    if fmt_name == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    if fmt_name == "csv":
        out = io.StringIO()
        columns = list(rows[0]) if rows else [k for _, k, _ in _TABLE]
        writer = csv.DictWriter(out, columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return out.getvalue()
    raise ValueError(f"unknown format {fmt_name!r}")


def export_file(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write level summaries to `path` in the format its extension names (.md, .csv, .json, .jsonl);
    replaced whole, never half-written."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    fmt_name = {"md": "md", "markdown": "md", "csv": "csv", "json": "json", "jsonl": "jsonl"}.get(ext)
    if fmt_name is None:
        raise HistoryError(f"{path}: give the file a .md, .csv, .json or .jsonl extension")
    text = dumps(rows, fmt_name)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise HistoryError(f"cannot write {path}: {exc.strerror or exc}") from None


# ---- comparison -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelComparison:
    concurrency: int
    test: str
    a: dict[str, Any]  # level summaries
    b: dict[str, Any]
    comparison: Comparison  # Welch's t-test over the per-request generation t/s, B against A


def compare_runs(store: HistoryStore, run_a: int, run_b: int) -> list[LevelComparison]:
    """Two server benchmarks, level by level (same concurrency and test)."""
    _, a_levels = stored_levels(store, run_a)
    _, b_levels = stored_levels(store, run_b)
    if not a_levels or not b_levels:
        raise HistoryError(f"run {run_a if not a_levels else run_b} has no finished level to compare")
    a_by_key = {(s.level.concurrency, s.test): s for s in a_levels}
    rows = []
    for b in b_levels:
        a = a_by_key.get((b.level.concurrency, b.test))
        if a is None:
            continue
        a_samples, b_samples = a.level.request_tokens_per_s_samples, b.level.request_tokens_per_s_samples
        if not a_samples or not b_samples:
            continue
        rows.append(
            LevelComparison(
                b.level.concurrency, b.test, a.summary(), b.summary(), welch(a_samples, b_samples)
            )
        )
    if not rows:
        raise HistoryError(
            f"runs {run_a} and {run_b} have no level in common "
            "(the same concurrency and prompt and generation sizes)"
        )
    return rows
