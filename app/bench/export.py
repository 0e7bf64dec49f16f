"""Benchmark results out and in: llama-bench's markdown, CSV, JSON and JSONL, with its field names.

Records carry llama-bench's fields (so its tools read ours; every setting its JSON records, in
its order) followed by LlamaScope's telemetry fields and the trust fields (app.bench.trust: CV,
steal, other load, the clock, the warm-up, and the noisy flag with its reasons in words).
`load_llama_bench` reads llama-bench's own JSON or JSONL output, so a user can put llama.cpp's
numbers beside LlamaScope's.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from app.bench.batched import PG_FIELDS, pg_record_fields, pg_samples_from_record
from app.bench.runner import SWEEPABLE, BenchError, BenchResult, BenchTest, flash_attn_text
from app.bench.trust import assess, trust_fields
from app.common.formatting import format_bytes
from app.common.markdown import markdown_table

# llama-bench's JSON fields in its order (tools/llama-bench/llama-bench.cpp, test::get_fields, then
# samples_ns and samples_ts), with use_mmap, which older llama-bench versions wrote before load_mode.
LLAMA_BENCH_FIELDS = (
    "build_commit",
    "build_number",
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
    "cpu_mask",
    "cpu_strict",
    "poll",
    "type_k",
    "type_v",
    "n_gpu_layers",
    "n_cpu_moe",
    "split_mode",
    "main_gpu",
    "no_kv_offload",
    "flash_attn",
    "devices",
    "tensor_split",
    "tensor_buft_overrides",
    "use_mmap",
    "load_mode",
    "lazy_mode",
    "embeddings",
    "no_op_offload",
    "no_host",
    "repack",
    "fit_target",
    "fit_min_ctx",
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
# How far to trust each result (app.bench.trust), beside llama-bench's fields. cv_percent, noisy and
# noise_reasons are computed from the others; flash_attn_used is what flash_attn (auto) resolved to.
TRUST_FIELDS = (
    "cv_percent",
    "steal_percent",
    "other_cpu_percent",
    "other_cpus",
    "cpu_load_note",
    "throttle_detail",
    "cpu_freq_min_mhz",
    "cpu_freq_max_mhz",
    "cpu_freq_limit_mhz",
    "warmup_runs",
    "warmup_steady",
    "flash_attn_used",
    "noisy",
    "noise_reasons",
)
# llama-bench's settings a LlamaScope result holds as they are (the record writes them unchanged).
_PLAIN_SETTINGS = (
    "build_number",
    "cpu_mask",
    "cpu_strict",
    "poll",
    "n_cpu_moe",
    "split_mode",
    "main_gpu",
    "no_kv_offload",
    "devices",
    "tensor_split",
    "tensor_buft_overrides",
    "lazy_mode",
    "embeddings",
    "no_op_offload",
    "no_host",
    "repack",
    "fit_target",
    "fit_min_ctx",
)
FORMATS = ("md", "csv", "json", "jsonl", "sql")


def to_record(result: BenchResult) -> dict[str, Any]:
    """One result as a flat dict: llama-bench's fields first, then the telemetry fields."""
    record: dict[str, Any] = {
        "build_commit": result.build,
        **{name: getattr(result, name) for name in _PLAIN_SETTINGS},
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
        "flash_attn": int(result.flash_attn),  # -1 auto, as llama-bench writes it
        "use_mmap": result.use_mmap,
        "load_mode": result.load_mode,
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
    derived = trust_fields(result)
    for name in TRUST_FIELDS:
        record[name] = derived[name] if name in derived else getattr(result, name)
    # llama-bench's order for its own fields (JSON readers do not care; people reading it do).
    record = {
        **{name: record[name] for name in LLAMA_BENCH_FIELDS if name in record},
        **{k: v for k, v in record.items() if k not in LLAMA_BENCH_FIELDS},
    }
    record.update(pg_record_fields(result))  # batched-bench's figures of a pg test (app.bench.batched)
    return record


# Bounds of a stored count or time: llama-bench writes them as 64-bit integers; beyond these a value
# is garbage, and would overflow SQLite's INTEGER and the float arithmetic of the statistics.
_MAX_INT = 2**63 - 1
_STRING_FIELDS = ("model_type", "type_k", "type_v", "test_time", "cpu_info", "gpu_info", "backends")


def _int_field(record: dict[str, Any], key: str, default: int = 0, *, minimum: int = 0) -> int:
    """A whole-number field, with a message naming the field for anything else."""
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BenchError(f"{key} must be a whole number, not {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchError(f"{key} is {_non_finite(value)}: benchmark figures must be finite numbers")
    try:
        number = int(value)
    except ValueError:
        raise BenchError(f"{key} must be a whole number, not {_shown(value)}") from None
    if not minimum <= number <= _MAX_INT:
        raise BenchError(f"{key} is {_shown(value)}: it must be between {minimum} and {_MAX_INT:,}")
    return number


def _optional_number(record: dict[str, Any], key: str) -> float | None:
    """A telemetry figure: absent (null) or a finite number."""
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BenchError(f"{key} must be a number or null, not {_shown(value)}")
    if not math.isfinite(value):
        raise BenchError(f"{key} is {_non_finite(value)}: benchmark figures must be finite numbers")
    if abs(value) > _MAX_INT:
        raise BenchError(f"{key} is {_shown(value)}: too large to be a measurement")
    return value


def _optional_int(record: dict[str, Any], key: str) -> int | None:
    return None if record.get(key) is None else _int_field(record, key)


def _string_field(record: dict[str, Any], key: str, default: str = "") -> str:
    value = record.get(key, default)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a numeric build number or commit: harmless
    if not isinstance(value, str):
        raise BenchError(f"{key} must be a string, not {_shown(value)}")
    return value


def _bool_field(record: dict[str, Any], key: str, default: bool) -> bool:
    value = record.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return _int_field(record, key) != 0  # llama-bench writes 0/1 for some switches


def _non_finite(value: float) -> str:
    # JSON's Infinity and a literal past the float range (1e400) both arrive as inf.
    return "NaN" if math.isnan(value) else "infinite (Infinity, or a number past 1.8e308 such as 1e400)"


def _shown(value: Any) -> str:
    """A value as a message shows it: its JSON type for containers, a short repr otherwise."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def from_record(record: dict[str, Any], *, source: str | None = None) -> BenchResult:
    """A result from a record written by LlamaScope or by llama-bench (-o json / jsonl).

    Raises BenchError naming the field for anything that is not a benchmark record: a missing
    model file name, a non-numeric, non-finite (Infinity, 1e400) or negative count or time.
    """
    if "model_filename" not in record:
        raise BenchError("not a benchmark record: it has no model_filename")
    raw_samples = record.get("samples_ns")
    if raw_samples is not None and not isinstance(raw_samples, list):
        raise BenchError(f"samples_ns must be a list of times in ns, not {_shown(raw_samples)}")
    samples = tuple(
        _int_field({f"samples_ns[{i}]": s}, f"samples_ns[{i}]", minimum=1)
        for i, s in enumerate(raw_samples or ())
    )
    if not samples and record.get("avg_ns"):
        samples = (_int_field(record, "avg_ns", minimum=1),)  # llama-bench CSV/SQL keep only the mean
    if "load_mode" in record and "use_mmap" not in record:
        use_mmap = _string_field(record, "load_mode", "mmap") != "none"
    else:
        use_mmap = _bool_field(record, "use_mmap", True)
    n_prompt, n_gen, n_depth = (_int_field(record, k) for k in ("n_prompt", "n_gen", "n_depth"))
    BenchTest(n_prompt, n_gen, n_depth)  # a test needs prompt or generated tokens: says so if not
    strings = {k: _string_field(record, k) for k in _STRING_FIELDS}
    return BenchResult(
        model_filename=_string_field(record, "model_filename"),
        model_type=strings["model_type"],
        model_size=_int_field(record, "model_size"),
        model_n_params=_int_field(record, "model_n_params"),
        n_batch=_int_field(record, "n_batch"),
        n_ubatch=_int_field(record, "n_ubatch"),
        n_threads=_int_field(record, "n_threads"),
        type_k=strings["type_k"] or "f16",
        type_v=strings["type_v"] or "f16",
        n_gpu_layers=_int_field(record, "n_gpu_layers", minimum=-1),
        flash_attn=_flash_attn_field(record),
        use_mmap=use_mmap,
        n_prompt=n_prompt,
        n_gen=n_gen,
        n_depth=n_depth,
        test_time=strings["test_time"],
        samples_ns=samples,
        cpu_info=strings["cpu_info"],
        gpu_info=strings["gpu_info"],
        backends=strings["backends"],
        build=_string_field(record, "build_commit"),
        complete=_bool_field(record, "complete", True),
        mean_cpu_percent=_optional_number(record, "mean_cpu_percent"),
        peak_rss_bytes=_optional_int(record, "peak_rss_bytes"),
        mean_power_watts=_optional_number(record, "mean_power_watts"),
        energy_joules=_optional_number(record, "energy_joules"),
        joules_per_token=_optional_number(record, "joules_per_token"),
        max_temp_c=_optional_number(record, "max_temp_c"),
        throttle_events=_optional_int(record, "throttle_events"),
        throttled=_bool_field(record, "throttled", False),
        source=source or _string_field(record, "source", "llama-bench"),
        samples_pp_ns=pg_samples_from_record(record.get("samples_pp_ns"), n_prompt, n_gen, samples),
        **_settings_from_record(record),
        **_trust_from_record(record),
    )


def _flash_attn_field(record: dict[str, Any]) -> int:
    """llama-bench's flash_attn: -1 (auto), 0 or 1; older versions wrote true/false, some "auto"."""
    value = record.get("flash_attn", 0)
    if isinstance(value, str) and value.strip().lower() in ("auto", "on", "off"):
        return {"auto": -1, "on": 1, "off": 0}[value.strip().lower()]
    if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false")):
        return int(_bool_field(record, "flash_attn", False))
    number = _int_field(record, "flash_attn", minimum=-1)
    if number > 1:
        raise BenchError(f"flash_attn is {_shown(value)}: it must be -1 (auto), 0 or 1")
    return number


def _settings_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """llama-bench's other settings; absent ones (older records) are llama-bench's defaults, which
    LlamaScope always ran with."""
    out: dict[str, Any] = {}
    for name in ("cpu_mask", "split_mode", "devices", "tensor_split", "tensor_buft_overrides", "lazy_mode"):
        if name in record:
            out[name] = _string_field(record, name)
    for name in ("cpu_strict", "no_kv_offload", "embeddings", "no_host", "repack"):
        if name in record:
            out[name] = _bool_field(record, name, False)
    for name in ("build_number", "poll", "n_cpu_moe", "main_gpu", "fit_target", "fit_min_ctx"):
        if name in record:
            out[name] = _int_field(record, name, minimum=-1 if name == "main_gpu" else 0)
    if "no_op_offload" in record:
        out["no_op_offload"] = int(_bool_field(record, "no_op_offload", False))
    if "load_mode" in record:
        out["load_mode"] = _string_field(record, "load_mode")
    return out


def _trust_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The measured trust figures (app.bench.trust); CV, noisy and the reasons are recomputed."""
    out: dict[str, Any] = {
        name: _optional_number(record, name)
        for name in (
            "steal_percent",
            "other_cpu_percent",
            "other_cpus",
            "cpu_freq_min_mhz",
            "cpu_freq_max_mhz",
            "cpu_freq_limit_mhz",
        )
    }
    out["cpu_load_note"] = _string_field(record, "cpu_load_note")
    out["throttle_detail"] = _string_field(record, "throttle_detail")
    out["warmup_runs"] = _optional_int(record, "warmup_runs")
    for name in ("warmup_steady", "flash_attn_used"):
        out[name] = None if record.get(name) is None else _bool_field(record, name, False)
    return out


# After llama-bench's columns, how far to trust each row (app.bench.trust): n/a where not measured.
TRUST_COLUMNS = ("CV", "steal", "other load", "flags")


def trust_cells(r: BenchResult) -> dict[str, str]:
    """A result's trust columns as table cells: CV, steal, other processes' load, and the flags."""

    def pct(value: float | None, spec: str) -> str:
        return "n/a" if value is None else f"{value:{spec}} %"

    return {
        "CV": pct(r.cv_percent, ".1f"),
        "steal": pct(r.steal_percent, ".1f"),
        "other load": pct(r.other_cpu_percent, ".0f"),
        "flags": assess(r).cell,
    }


def _markdown(results: Sequence[BenchResult], swept: Sequence[str]) -> str:
    columns = ["model", "size", "params", "backend", *[SWEEPABLE[f][1] for f in swept], "test", "t/s"]
    if "threads" not in columns:
        columns.insert(4, "threads")
    columns += TRUST_COLUMNS
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
            "test": r.test.name + ("" if r.complete else " (cancelled)"),
            "t/s": f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}",
            **trust_cells(r),
        }
        for f in swept:
            v = getattr(r, f)
            values[SWEEPABLE[f][1]] = (
                flash_attn_text(v) if f == "flash_attn" else str(int(v) if isinstance(v, bool) else v)
            )
        rows.append([values[c] for c in columns])
    # llama-bench's alignment: numbers (and the test name) to the right, words to the left.
    right = {"size", "params", "threads", "t/s", "n_batch", "n_ubatch", "ngl", "fa", "test", "mmap"}
    right |= {"CV", "steal", "other load"}
    return markdown_table(columns, rows, align=["right" if c in right else "default" for c in columns])


# llama-bench's `-o sql` (tools/llama-bench/llama-bench.cpp: test::get_fields, test::get_field_type and
# sql_printer) of the llama.cpp that llama-cpp-python 0.3.36 vendors: its columns in its order, with
# the SQL type its printer gives each (INT and BOOL fields INTEGER, avg_ts and stddev_ts REAL, the
# rest TEXT).
SQL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("build_commit", "TEXT"),
    ("build_number", "INTEGER"),
    ("cpu_info", "TEXT"),
    ("gpu_info", "TEXT"),
    ("backends", "TEXT"),
    ("model_filename", "TEXT"),
    ("model_type", "TEXT"),
    ("model_size", "INTEGER"),
    ("model_n_params", "INTEGER"),
    ("n_batch", "INTEGER"),
    ("n_ubatch", "INTEGER"),
    ("n_threads", "INTEGER"),
    ("cpu_mask", "TEXT"),
    ("cpu_strict", "INTEGER"),
    ("poll", "INTEGER"),
    ("type_k", "TEXT"),
    ("type_v", "TEXT"),
    ("n_gpu_layers", "INTEGER"),
    ("n_cpu_moe", "INTEGER"),
    ("split_mode", "TEXT"),
    ("main_gpu", "INTEGER"),
    ("no_kv_offload", "INTEGER"),
    ("flash_attn", "INTEGER"),
    ("devices", "TEXT"),
    ("tensor_split", "TEXT"),
    ("tensor_buft_overrides", "TEXT"),
    ("load_mode", "TEXT"),
    ("lazy_mode", "TEXT"),
    ("embeddings", "INTEGER"),
    ("no_op_offload", "INTEGER"),
    ("no_host", "INTEGER"),
    ("repack", "INTEGER"),
    ("fit_target", "INTEGER"),
    ("fit_min_ctx", "INTEGER"),
    ("n_prompt", "INTEGER"),
    ("n_gen", "INTEGER"),
    ("n_depth", "INTEGER"),
    ("test_time", "TEXT"),
    ("avg_ns", "INTEGER"),
    ("stddev_ns", "INTEGER"),
    ("avg_ts", "REAL"),
    ("stddev_ts", "REAL"),
)
# Settings LlamaScope never changes from llama.cpp's defaults, so the run had these values: no CPU
# mask, strictness or polling level of its own (ggml's default threadpool: mask none, not strict,
# poll 50), llama_model_default_params' split, devices, tensor split and overrides, lazy loading and
# extra (repacked) buffer types, no MoE layers kept on the CPU, no embeddings, no fitting. They are
# also llama-bench's defaults, which is what compare-llama-bench.py needs to pair a LlamaScope row
# with a llama-bench row of the same settings. build_number: LlamaScope does not know llama.cpp's
# build number; 0 is what llama-bench itself writes when its build has none.
_SQL_FIXED: dict[str, str | int] = {
    "build_number": 0,
    "cpu_mask": "0x0",
    "cpu_strict": 0,
    "poll": 50,
    "n_cpu_moe": 0,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": 0,  # a record without the field: LlamaScope's default, the KV cache offloaded
    "devices": "auto",
    "tensor_split": "0.00",
    "tensor_buft_overrides": "none",
    "lazy_mode": "auto",
    "embeddings": 0,
    "no_op_offload": 0,
    "no_host": 0,
    "repack": 1,
    "fit_target": 0,
    "fit_min_ctx": 0,
}


def _sql_value(value: Any) -> str:
    """One value as llama-bench's sql_printer writes it: quoted text (SQLite's column affinity makes
    numbers of INTEGER and REAL columns numbers), floats as C++'s std::to_string (6 decimals),
    booleans 0/1; a quote inside is doubled, which llama-bench does not do (a model path with ' would
    break its SQL)."""
    if isinstance(value, bool):
        text = str(int(value))
    elif isinstance(value, float):
        text = f"{value:f}"
    else:
        text = str(value)
    return "'" + text.replace("'", "''") + "'"


def sql_row(result: BenchResult) -> dict[str, Any]:
    """A result as llama-bench's SQL columns: its record's values, the result's own fields for the
    rest, and llama.cpp's defaults (_SQL_FIXED) for what neither holds (an older record)."""
    record = to_record(result)
    row: dict[str, Any] = {}
    for column, _type in SQL_COLUMNS:
        if record.get(column) is not None:
            row[column] = record[column]
        elif getattr(result, column, None) is not None:
            row[column] = getattr(result, column)
        else:
            row[column] = _SQL_FIXED.get(column, "")
    if not row.get("load_mode"):  # llama_load_mode_name of what app.llama.driver asks for
        row["load_mode"] = "mmap" if result.use_mmap else "none"
    row["no_kv_offload"] = int(row["no_kv_offload"])
    row["flash_attn"] = int(row["flash_attn"])
    return row


def to_sql(results: Sequence[BenchResult]) -> str:
    """`llama-bench -o sql`: CREATE TABLE IF NOT EXISTS llama_bench with its columns, then one
    INSERT per result; pipe it into `sqlite3 llama-bench.sqlite` beside llama-bench's own output
    and llama.cpp's scripts/compare-llama-bench.py reads both. Only llama-bench's columns: an extra
    one would make the INSERT fail on a table that llama-bench's output created first. The
    telemetry and batched-bench figures are in the JSON, JSONL and CSV exports."""
    lines = ["CREATE TABLE IF NOT EXISTS llama_bench ("]
    lines += [
        f"  {name} {kind}{',' if i < len(SQL_COLUMNS) - 1 else ''}"
        for i, (name, kind) in enumerate(SQL_COLUMNS)
    ]
    lines += [");", ""]
    names = ", ".join(name for name, _ in SQL_COLUMNS)
    for result in results:
        row = sql_row(result)
        values = ", ".join(_sql_value(row[name]) for name, _ in SQL_COLUMNS)
        lines.append(f"INSERT INTO llama_bench ({names}) VALUES ({values});")
    return "\n".join(lines) + "\n"


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
        fields = [*LLAMA_BENCH_FIELDS, *TELEMETRY_FIELDS, *PG_FIELDS, *TRUST_FIELDS]
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
        return out.getvalue()
    if fmt == "sql":
        return to_sql(results)
    raise BenchError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")


def export(results: Sequence[BenchResult], path: str, *, swept: Sequence[str] = ()) -> None:
    """Write results to `path` in the format its extension names (.md, .csv, .json, .jsonl, .sql)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    fmt = {"markdown": "md"}.get(ext, ext)
    text = dumps(results, fmt, swept=swept)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


# An import is read whole; llama-bench's output for even a large sweep is a few MB.
MAX_IMPORT_BYTES = 256 * 1024 * 1024


def loads(text: str, *, source: str | None = None) -> list[BenchResult]:
    """Parse JSON (an array) or JSONL records, LlamaScope's or llama-bench's; raises BenchError."""
    stripped = text.strip()
    if not stripped:
        return []
    records: Iterable[Any]
    try:
        try:
            data = json.loads(stripped)
            records = data if isinstance(data, list) else [data]
            where = "record {}"
        except json.JSONDecodeError as whole:
            lines = [(n, line) for n, line in enumerate(stripped.splitlines(), 1) if line.strip()]
            if len(lines) < 2:  # one line: the JSON parser's message is the one that helps
                raise BenchError(
                    f"not JSON: {whole.msg} (line {whole.lineno}, column {whole.colno})"
                ) from None
            records = []
            for number, line in lines:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise BenchError(
                        f"neither a JSON array nor JSONL: line {number} is not JSON "
                        f"({exc.msg}, column {exc.colno})"
                    ) from None
            where = "line {}"
    except RecursionError:
        raise BenchError("its JSON is nested too deeply to be benchmark records") from None
    except ValueError:  # json's only failure besides a syntax error: an integer past Python's digit limit
        raise BenchError("it holds a number of more than 4,300 digits, which no benchmark writes") from None
    out = []
    for index, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise BenchError(f"{where.format(index)}: each benchmark record must be a JSON object")
        try:
            out.append(from_record(record, source=source))
        except BenchError as exc:
            raise BenchError(f"{where.format(index)}: {exc}") from None
    return out


def load_llama_bench(path: str) -> list[BenchResult]:
    """Import `llama-bench -o json` or `-o jsonl` output, marked as llama-bench's; raises BenchError
    with the file's name and what is wrong with it."""
    name = os.path.basename(path) or path
    if os.path.isdir(path):
        raise BenchError(f"{path} is a folder: give the file llama-bench wrote with -o json or -o jsonl")
    if os.path.exists(path) and not os.path.isfile(path):  # /dev/zero would be read without end
        raise BenchError(f"{path} is not a regular file (a device, pipe or socket)")
    try:
        size = os.path.getsize(path)
        if size > MAX_IMPORT_BYTES:
            raise BenchError(
                f"{name} is {format_bytes(size)}, more than the {format_bytes(MAX_IMPORT_BYTES)} an import "
                "reads: it is not llama-bench output"
            )
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise BenchError(f"{path}: no such file") from None
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark from a Windows editor is harmless
    except UnicodeDecodeError as exc:
        raise BenchError(
            f"{name} is not UTF-8 text (byte {exc.start:,} is 0x{raw[exc.start]:02x}): "
            "llama-bench writes -o json and -o jsonl as UTF-8"
        ) from None
    try:
        results = loads(text, source="llama-bench")
    except BenchError as exc:
        raise BenchError(f"{name}: {exc}") from None
    if not results:
        raise BenchError(f"{name} holds no benchmark records")
    return results
