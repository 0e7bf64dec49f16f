"""Benchmark results out and in: llama-bench's markdown, CSV, JSON and JSONL, with its field names.

Records carry llama-bench's fields (so its tools read ours) followed by LlamaScope's telemetry
fields. `load_llama_bench` reads llama-bench's own JSON or JSONL output, so a user can put
llama.cpp's numbers beside LlamaScope's.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from app.bench.runner import SWEEPABLE, BenchError, BenchResult
from app.common.formatting import format_bytes
from app.common.markdown import markdown_table

LLAMA_BENCH_FIELDS = (
    "build_commit",
    "cpu_info",
    "gpu_info",
    "backends",
    "model_filename",
    "model_type",
    "model_size",
    "model_n_params",
    "n_batch",
    "n_ubatch",
    "n_threads",
    "type_k",
    "type_v",
    "n_gpu_layers",
    "flash_attn",
    "use_mmap",
    "n_prompt",
    "n_gen",
    "n_depth",
    "test_time",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
    "samples_ns",
    "samples_ts",
)
TELEMETRY_FIELDS = (
    "complete",
    "mean_cpu_percent",
    "peak_rss_bytes",
    "mean_power_watts",
    "energy_joules",
    "joules_per_token",
    "max_temp_c",
    "throttle_events",
    "throttled",
    "source",
)
FORMATS = ("md", "csv", "json", "jsonl")


def to_record(result: BenchResult) -> dict[str, Any]:
    """One result as a flat dict: llama-bench's fields first, then the telemetry fields."""
    record: dict[str, Any] = {
        "build_commit": result.build,
        "cpu_info": result.cpu_info,
        "gpu_info": result.gpu_info,
        "backends": result.backends,
        "model_filename": result.model_filename,
        "model_type": result.model_type,
        "model_size": result.model_size,
        "model_n_params": result.model_n_params,
        "n_batch": result.n_batch,
        "n_ubatch": result.n_ubatch,
        "n_threads": result.n_threads,
        "type_k": result.type_k,
        "type_v": result.type_v,
        "n_gpu_layers": result.n_gpu_layers,
        "flash_attn": int(result.flash_attn),
        "use_mmap": result.use_mmap,
        "n_prompt": result.n_prompt,
        "n_gen": result.n_gen,
        "n_depth": result.n_depth,
        "test_time": result.test_time,
        "avg_ns": result.avg_ns,
        "stddev_ns": result.stddev_ns,
        "avg_ts": result.avg_ts,
        "stddev_ts": result.stddev_ts,
        "samples_ns": list(result.samples_ns),
        "samples_ts": list(result.samples_ts),
    }
    for name in TELEMETRY_FIELDS:
        record[name] = getattr(result, name)
    return record


def from_record(record: dict[str, Any], *, source: str | None = None) -> BenchResult:
    """A result from a record written by LlamaScope or by llama-bench (-o json / jsonl)."""
    try:
        samples = tuple(int(s) for s in record.get("samples_ns") or ())
        if not samples and record.get("avg_ns"):
            samples = (int(record["avg_ns"]),)  # llama-bench CSV/SQL keep only the mean
        flash = record.get("flash_attn", 0)
        use_mmap = record.get("use_mmap", record.get("load_mode", "mmap") != "none")
        return BenchResult(
            model_filename=str(record["model_filename"]),
            model_type=str(record.get("model_type", "")),
            model_size=int(record.get("model_size", 0)),
            model_n_params=int(record.get("model_n_params", 0)),
            n_batch=int(record.get("n_batch", 0)),
            n_ubatch=int(record.get("n_ubatch", 0)),
            n_threads=int(record.get("n_threads", 0)),
            type_k=str(record.get("type_k", "f16")),
            type_v=str(record.get("type_v", "f16")),
            n_gpu_layers=int(record.get("n_gpu_layers", 0)),
            flash_attn=bool(int(flash)) if not isinstance(flash, bool) else flash,
            use_mmap=bool(use_mmap),
            n_prompt=int(record.get("n_prompt", 0)),
            n_gen=int(record.get("n_gen", 0)),
            n_depth=int(record.get("n_depth", 0)),
            test_time=str(record.get("test_time", "")),
            samples_ns=samples,
            cpu_info=str(record.get("cpu_info", "")),
            gpu_info=str(record.get("gpu_info", "")),
            backends=str(record.get("backends", "")),
            build=str(record.get("build_commit", "")),
            complete=bool(record.get("complete", True)),
            mean_cpu_percent=record.get("mean_cpu_percent"),
            peak_rss_bytes=record.get("peak_rss_bytes"),
            mean_power_watts=record.get("mean_power_watts"),
            energy_joules=record.get("energy_joules"),
            joules_per_token=record.get("joules_per_token"),
            max_temp_c=record.get("max_temp_c"),
            throttle_events=record.get("throttle_events"),
            throttled=bool(record.get("throttled", False)),
            source=source or str(record.get("source", "llama-bench")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchError(f"not a benchmark record ({exc.__class__.__name__}: {exc})") from None


def _markdown(results: Sequence[BenchResult], swept: Sequence[str]) -> str:
    columns = ["model", "size", "params", "backend", *[SWEEPABLE[f][1] for f in swept], "test", "t/s"]
    if "threads" not in columns:
        columns.insert(4, "threads")
    rows = []
    for r in results:
        values = {
            "model": r.model_type,
            "size": format_bytes(r.model_size),
            "params": f"{r.model_n_params / 1e6:.2f} M"
            if r.model_n_params < 1e9
            else f"{r.model_n_params / 1e9:.2f} B",
            "backend": r.backends,
            "threads": str(r.n_threads),
            "test": r.test.name
            + ("" if r.complete else " (cancelled)")
            + (" ⚠ throttled" if r.throttled else ""),
            "t/s": f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}",
        }
        for f in swept:
            v = getattr(r, f)
            values[SWEEPABLE[f][1]] = str(int(v) if isinstance(v, bool) else v)
        rows.append([values[c] for c in columns])
    # llama-bench's alignment: numbers (and the test name) to the right, words to the left.
    right = {"size", "params", "threads", "t/s", "n_batch", "n_ubatch", "ngl", "fa", "test", "mmap"}
    return markdown_table(columns, rows, align=["right" if c in right else "default" for c in columns])


def dumps(results: Sequence[BenchResult], fmt: str, *, swept: Sequence[str] = ()) -> str:
    """Results as text in one of FORMATS; JSON is one array, as `llama-bench -o json` prints."""
    if fmt == "md":
        return _markdown(results, swept)
    records = [to_record(r) for r in results]
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "csv":
        out = io.StringIO()
        fields = [*LLAMA_BENCH_FIELDS, *TELEMETRY_FIELDS]
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
        return out.getvalue()
    raise BenchError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")


def export(results: Sequence[BenchResult], path: str, *, swept: Sequence[str] = ()) -> None:
    """Write results to `path` in the format its extension names (.md, .csv, .json, .jsonl)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    fmt = {"markdown": "md"}.get(ext, ext)
    text = dumps(results, fmt, swept=swept)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def loads(text: str, *, source: str | None = None) -> list[BenchResult]:
    """Parse JSON (an array) or JSONL records, LlamaScope's or llama-bench's."""
    stripped = text.strip()
    if not stripped:
        return []
    records: Iterable[Any]
    try:
        data = json.loads(stripped)
        records = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in stripped.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise BenchError(f"neither JSON nor JSONL: {exc}") from None
    out = []
    for record in records:
        if not isinstance(record, dict):
            raise BenchError("each benchmark record must be a JSON object")
        out.append(from_record(record, source=source))
    return out


def load_llama_bench(path: str) -> list[BenchResult]:
    """Import `llama-bench -o json` or `-o jsonl` output, marked as llama-bench's."""
    with open(path, encoding="utf-8") as f:
        return loads(f.read(), source="llama-bench")
