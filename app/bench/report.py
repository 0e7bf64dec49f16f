"""A benchmark report to share: stored runs as one self-contained HTML file.

The file holds its CSS and its plots (SVG written here, no plotting library) and nothing else: no
script, no font, image or style sheet from elsewhere, so it opens the same offline, in a mail
attachment or years later. Every text that comes from the data (model names and paths, labels,
builds, settings) is escaped, so a crafted file name shows as text and cannot add markup.

What the report holds comes from the history store (`app.bench.history`): the runs, their
results, and the comparison `compare` makes (Welch's t-test over the repetitions). The machine
and the llama.cpp build are described only where that is known to be true of the runs: the
machine's cores and RAM when a run's hardware id (and CPU) is this machine's, the build's CPU
features when a run's build is the one installed now; otherwise "n/a" says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import html
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app import __version__
from app.bench.history import ComparisonRow, HistoryError, HistoryStore, RunRow
from app.bench.runner import BenchError, BenchResult
from app.bench.trust import assess, clock_text, warmup_text
from app.common.formatting import NOT_AVAILABLE, fmt, fmt_bytes, format_bytes
from app.telemetry.hardware import build_cpu_features, parse_system_info, simd_text

# Kinds of run a report shows: the benchmark runs (LlamaScope's own and imported llama-bench output).
REPORTED_KINDS = ("benchmark", "import")
# Okabe–Ito's palette: told apart with the common colour-vision deficiencies, and in greyscale print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D00", "#000000")
ALPHA = 0.05  # the significance level of the comparison, as `compare` and the GUI use it

# LoadSettings fields that make a result's configuration, with llama-bench's short names.
_CONFIG_FIELDS = (
    ("n_threads", "t"),
    ("n_batch", "b"),
    ("n_ubatch", "ub"),
    ("flash_attn", "fa"),
    ("type_k", "ctk"),
    ("type_v", "ctv"),
    ("n_gpu_layers", "ngl"),
    ("use_mmap", "mmap"),
)


class ReportError(Exception):
    """A report cannot be made from what was asked for; the message says why and what to give."""


# ---- what the report describes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """The machine the report is written on: it stands for the runs whose hardware id is its own."""

    fingerprint: str  # app.telemetry.hardware.hardware_fingerprint, as the history stores it
    cpu_model: str
    physical_cores: int | None
    logical_cores: int | None
    ram_bytes: int | None
    cpu_features: tuple[str, ...]  # llama.cpp's names of the features this CPU supports
    os_text: str
    gpus: tuple[str, ...] | None = None  # GPUs llama.cpp lists, when known; None: not read


@dataclass(frozen=True)
class Build:
    """The llama.cpp build installed now, as it reports itself."""

    version: str  # llama-cpp-python's version: what LlamaScope's runs store as their build
    system_info: str  # llama_print_system_info(), verbatim
    backends: tuple[str, ...]

    @property
    def cpu_features(self) -> tuple[str, ...]:
        return build_cpu_features(parse_system_info(self.system_info))


@dataclass(frozen=True)
class ReportRun:
    run: RunRow
    results: tuple[BenchResult, ...]


@dataclass(frozen=True)
class ComparisonBlock:
    """One comparison the report shows: its rows, or why there are none."""

    title: str
    rows: tuple[ComparisonRow, ...]
    note: str = ""


@dataclass(frozen=True)
class ReportData:
    runs: tuple[ReportRun, ...]
    comparisons: tuple[ComparisonBlock, ...]
    machine: Machine | None
    build: Build | None
    build_error: str  # why `build` is None ("" when it is known)
    created_at: str

    @property
    def results(self) -> list[tuple[RunRow, BenchResult]]:
        return [(r.run, result) for r in self.runs for result in r.results]


def this_machine() -> Machine:
    """This machine, from psutil and /proc/cpuinfo: cheap, and loads no llama.cpp."""
    import platform

    import psutil

    from app.telemetry.hardware import cpu_info, current_os, hardware_fingerprint, os_cpu_features
    from app.telemetry.sysfs import read_cpuinfo

    blocks = read_cpuinfo("/")
    first = blocks[0] if blocks else {}
    flags = (first.get("flags") or first.get("Features") or "").split()
    system = current_os()
    try:
        ram: int | None = int(psutil.virtual_memory().total)
    except (OSError, RuntimeError):
        ram = None
    return Machine(
        fingerprint=hardware_fingerprint(),
        cpu_model=cpu_info(),
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(),
        ram_bytes=ram,
        cpu_features=os_cpu_features(flags, platform.machine()),
        os_text=f"{system.system} {system.release} ({system.machine})",
    )


def machine_from_hardware(report: Any) -> Machine:
    """This machine from a finished hardware detection (an app.telemetry.hardware.HardwareReport):
    what the window has already read, so writing a report from it reads nothing slow."""
    from app.telemetry.hardware import hardware_fingerprint

    gpus = tuple(
        (g.name or f"GPU {g.index}")
        + (f" ({format_bytes(g.memory_total_bytes)})" if g.memory_total_bytes else "")
        for g in report.gpus
    )
    system = report.os_info
    return Machine(
        fingerprint=hardware_fingerprint(),
        cpu_model=report.cpu.model_name or NOT_AVAILABLE,
        physical_cores=report.cpu.physical_cores,
        logical_cores=report.cpu.logical_cores,
        ram_bytes=report.memory.total_bytes,
        cpu_features=tuple(report.cpu.features_cpu),
        os_text=f"{system.system} {system.release} ({system.machine})",
        gpus=gpus,
    )


def build_from_info(info: Any) -> Build:
    """A Build from app.llama.runtime.BuildInfo or app.llama.facts.LibraryFacts (the same fields)."""
    return Build(str(info.llama_cpp_python_version), str(info.system_info), tuple(info.backends))


def installed_build() -> tuple[Build | None, str]:
    """(the installed build, "") or (None, why not): read through app.llama.facts, whose answer is
    cached per build (a child process reads it the first time; this process never loads llama.cpp)."""
    from app.llama.facts import LlamaFactsError, library_facts

    try:
        return build_from_info(library_facts()), ""
    except LlamaFactsError as exc:
        return None, str(exc)


# ---- gathering -------------------------------------------------------------------------------------


def collect(
    store: HistoryStore,
    run_ids: Sequence[int],
    *,
    machine: Machine | None = None,
    build: Build | None = None,
    build_error: str = "",
) -> ReportData:
    """The runs, their results and their comparison, read from `store`; raises ReportError or
    HistoryError (an unknown run id, named) with a message for the user."""
    ids = list(dict.fromkeys(run_ids))  # a run named twice is shown once
    if not ids:
        raise ReportError("name at least one run (`llamascope history` lists them)")
    runs = []
    for run_id in ids:
        run = store.run(run_id)
        if run.kind not in REPORTED_KINDS:
            raise ReportError(
                f"run {run_id} is a {run.kind} run, not a benchmark: a report shows benchmark runs "
                "(`llamascope history` lists them with their kind)"
            )
        try:
            results = store.results(run_id)
        except BenchError as exc:  # a stored record this version cannot read
            raise ReportError(f"run {run_id} holds a result that cannot be read: {exc}") from None
        runs.append(ReportRun(run, tuple(results)))
    if not any(r.results for r in runs):
        which = "run " + ", ".join(map(str, ids))
        raise ReportError(f"{which} holds no finished result: there is nothing to report")
    return ReportData(
        runs=tuple(runs),
        comparisons=tuple(_comparisons(store, [r for r in runs if r.results])),
        machine=machine,
        build=build,
        build_error=build_error if build is None else "",
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


def _comparisons(store: HistoryStore, runs: Sequence[ReportRun]) -> list[ComparisonBlock]:
    """Two or more runs: each against the first. One run: its configurations, as `compare` does."""
    if len(runs) == 1:
        pairs: list[tuple[int, int | None]] = [(runs[0].run.id, None)]
    else:
        pairs = [(runs[0].run.id, other.run.id) for other in runs[1:]]
    blocks = []
    for a, b in pairs:
        title = f"Run {b} (B) against run {a} (A)" if b is not None else f"The configurations of run {a}"
        try:
            blocks.append(ComparisonBlock(title, tuple(store.compare(a, b))))
        except HistoryError as exc:
            blocks.append(ComparisonBlock(title, (), note=str(exc)))
    return blocks


# ---- text ------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Text from the data, safe in an element and in a quoted attribute."""
    return html.escape(str(value), quote=True)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def config_of(result: BenchResult) -> dict[str, str]:
    """A result's configuration as llama-bench's short names → values."""
    config = {short: _value(getattr(result, name, NOT_AVAILABLE)) for name, short in _CONFIG_FIELDS}
    if config["fa"] == "-1":  # llama-bench's flash attention "auto": llama.cpp chooses
        used = getattr(result, "flash_attn_used", None)
        config["fa"] = "auto" if used is None else f"auto ({'on' if used else 'off'})"
    return config


def config_text(result: BenchResult, only: Iterable[str] | None = None) -> str:
    config = config_of(result)
    keys = list(config) if only is None else [k for k in config if k in set(only)]
    return " ".join(f"{k}={config[k]}" for k in keys)


def _varying(results: Iterable[BenchResult]) -> list[str]:
    """The configuration fields whose value differs between the results, in llama-bench's order."""
    seen: dict[str, set[str]] = {}
    for r in results:
        for key, value in config_of(r).items():
            seen.setdefault(key, set()).add(value)
    return [key for key, values in seen.items() if len(values) > 1]


@dataclass(frozen=True)
class Flag:
    short: str  # "CV 12.3 % > 5 %"
    reason: str  # the same in a sentence


def result_flags(result: BenchResult) -> list[Flag]:
    """Why a result should be trusted less (app.bench.trust's verdict, and a run stopped early);
    empty when nothing was noticed."""
    verdict = assess(result)
    flags = [Flag(short, reason) for short, reason in zip(verdict.flags, verdict.reasons, strict=True)]
    if not result.complete:
        n = len(result.samples_ns)
        flags.append(Flag("incomplete", f"stopped after {n} repetition{'s' if n != 1 else ''}"))
    return flags


# llama-bench's other settings, as a result records them (beside the configuration's own fields).
_OTHER_SETTINGS = (
    "n_cpu_moe",
    "cpu_mask",
    "cpu_strict",
    "poll",
    "split_mode",
    "main_gpu",
    "no_kv_offload",
    "devices",
    "tensor_split",
    "tensor_buft_overrides",
    "load_mode",
    "lazy_mode",
    "embeddings",
    "no_op_offload",
    "no_host",
    "repack",
    "fit_target",
    "fit_min_ctx",
)


def _common_settings(results: Sequence[BenchResult]) -> tuple[str, list[str]]:
    """(the configuration every result shares as text, the configuration fields that vary)."""
    varying = _varying(results)
    shared = [k for k in config_of(results[0]) if k not in varying]
    text = config_text(results[0], shared)
    others = []
    for name in _OTHER_SETTINGS:
        values = {_value(getattr(r, name, None)) for r in results}
        if len(values) == 1 and getattr(results[0], name, None) not in (None, ""):
            others.append(f"{name}={values.pop()}")
    return " ".join(filter(None, [text, *others])), varying


def _ts(value: float) -> str:
    return f"{value:,.2f}"


def _run_label(run: RunRow) -> str:
    return f"run {run.id}"


def _model_name(path: str) -> str:
    return os.path.basename(path.replace("\\", "/")) or path


# ---- SVG -------------------------------------------------------------------------------------------


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    """Ticks 0, step, 2·step … covering `top`, with step 1, 2, 2.5 or 5 × 10^k."""
    if not math.isfinite(top) or top <= 0:
        top = 1.0
    raw = top / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    n = max(1, math.ceil(top / step - 1e-9))
    return [i * step for i in range(n + 1)]


def _tick_text(value: float, step: float) -> str:
    if step >= 1:
        return f"{value:,.0f}"
    decimals = min(6, max(0, -math.floor(math.log10(step)) + 1))
    return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class _Bar:
    label: str  # under the bar
    mean: float
    sd: float
    color: str
    title: str  # the tooltip: every detail of the result
    group: str = ""  # bars of one group stand together, the group's name under them
    flagged: bool = False  # the result is flagged: its value is marked ⚠


def _y_axis(
    parts: list[str], ticks: list[float], x0: float, x1: float, y_of: Callable[[float], float]
) -> None:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    for tick in ticks:
        y = y_of(tick)
        parts.append(f'<line class="grid" x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{x0 - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_tick_text(tick, step)}</text>"
        )


def _svg_head(kind: str, title: str, width: float, height: float, left: float) -> list[str]:
    return [
        f'<svg class="plot {kind}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text class="title" x="{left:.1f}" y="20">{_e(title)}</text>',
    ]


def bar_chart(title: str, bars: Sequence[_Bar], *, kind: str) -> str:
    """Bars of mean t/s with ± one standard deviation as whiskers; one `rect.bar` per bar."""
    grouped = any(b.group for b in bars)
    left, right, top, bottom = 64.0, 16.0, 34.0, 92.0 if grouped else 70.0
    slot, gap = 56.0, 28.0
    centres: list[float] = []
    x = left
    for i, bar in enumerate(bars):
        if i and bar.group != bars[i - 1].group:
            x += gap
        centres.append(x + slot / 2)
        x += slot
    width = max(300.0, x + right)
    height = 300.0 + (bottom - 70.0)
    plot_h = height - top - bottom
    base = top + plot_h
    ticks = _nice_ticks(max((b.mean + b.sd for b in bars), default=1.0))
    y_max = ticks[-1]

    def y_of(v: float) -> float:
        return top + plot_h * (1.0 - max(0.0, v) / y_max)

    parts = _svg_head(kind, title, width, height, left)
    _y_axis(parts, ticks, left, width - right, y_of)
    parts.append(
        f'<text class="axis" transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">t/s</text>'
    )
    bar_w = slot * 0.62
    for cx, bar in zip(centres, bars, strict=True):
        y = y_of(bar.mean)
        parts.append(
            f'<rect class="bar" x="{cx - bar_w / 2:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
            f'height="{max(0.0, base - y):.1f}" fill="{bar.color}">'
            f"<title>{_e(bar.title)}</title></rect>"
        )
        if bar.sd > 0:
            lo, hi = y_of(bar.mean - bar.sd), y_of(bar.mean + bar.sd)
            parts.append(
                f'<path class="whisker" d="M{cx:.1f} {lo:.1f}V{hi:.1f}'
                f'M{cx - 7:.1f} {hi:.1f}h14M{cx - 7:.1f} {lo:.1f}h14"/>'
            )
        parts.append(
            f'<text class="value" x="{cx:.1f}" y="{min(y, y_of(bar.mean + bar.sd)) - 5:.1f}" '
            f'text-anchor="middle">{"⚠ " if bar.flagged else ""}{_e(_short_number(bar.mean))}</text>'
        )
        parts.append(
            f'<text class="label" x="{cx + 4:.1f}" y="{base + 14:.1f}" text-anchor="end" '
            f'transform="rotate(-30 {cx + 4:.1f} {base + 14:.1f})">{_e(bar.label)}</text>'
        )
    if grouped:
        i = 0
        while i < len(bars):
            j = i
            while j + 1 < len(bars) and bars[j + 1].group == bars[i].group:
                j += 1
            x0, x1 = centres[i] - slot / 2 + 4, centres[j] + slot / 2 - 4
            parts.append(
                f'<path class="bracket" d="M{x0:.1f} {height - 24:.1f}v4H{x1:.1f}v-4"/>'
                f'<text class="group" x="{(x0 + x1) / 2:.1f}" y="{height - 6:.1f}" '
                f'text-anchor="middle">{_e(bars[i].group)}</text>'
            )
            i = j + 1
    parts.append(
        f'<line class="axisline" x1="{left:.1f}" y1="{base:.1f}" x2="{width - right:.1f}" y2="{base:.1f}"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _short_number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


@dataclass(frozen=True)
class _Line:
    label: str
    color: str
    dash: str  # SVG stroke-dasharray ("" for solid): tells apart the lines of one run's colour
    points: tuple[tuple[int, float, float, str], ...]  # (depth, mean, sd, tooltip), by depth


DASHES = ("", "7 4", "2 3", "10 3 2 3")


def line_chart(title: str, lines: Sequence[_Line]) -> str:
    """t/s against KV cache depth: one `polyline.series` per line, one `circle.point` per result,
    and a legend under the axes."""
    left, right, top = 64.0, 16.0, 34.0
    width, plot_h = 560.0, 220.0
    legend_y = top + plot_h + 48
    height = legend_y + 16 * len(lines) + 4
    plot_w = width - left - right
    base = top + plot_h
    x_ticks = _nice_ticks(max((p[0] for line in lines for p in line.points), default=1))
    x_max = x_ticks[-1]
    y_ticks = _nice_ticks(max((p[1] + p[2] for line in lines for p in line.points), default=1.0))
    y_max = y_ticks[-1]

    def x_of(d: float) -> float:
        return left + plot_w * d / x_max

    def y_of(v: float) -> float:
        return top + plot_h * (1.0 - max(0.0, v) / y_max)

    parts = _svg_head("by-depth", title, width, height, left)
    _y_axis(parts, y_ticks, left, width - right, y_of)
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for tick in x_ticks:
        parts.append(
            f'<text class="tick" x="{x_of(tick):.1f}" y="{base + 16:.1f}" text-anchor="middle">'
            f"{_tick_text(tick, x_step)}</text>"
        )
    parts.append(
        f'<line class="axisline" x1="{left:.1f}" y1="{base:.1f}" x2="{width - right:.1f}" y2="{base:.1f}"/>'
        f'<text class="axis" x="{left + plot_w / 2:.1f}" y="{base + 34:.1f}" text-anchor="middle">'
        "depth (tokens already in the KV cache)</text>"
        f'<text class="axis" transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
        'text-anchor="middle">t/s</text>'
    )
    for n, line in enumerate(lines):
        dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
        coords = " ".join(f"{x_of(d):.1f},{y_of(m):.1f}" for d, m, _, _ in line.points)
        parts.append(
            f'<polyline class="series" points="{coords}" stroke="{line.color}"{dash}>'
            f"<title>{_e(line.label)}</title></polyline>"
        )
        for d, m, sd, tip in line.points:
            x = x_of(d)
            if sd > 0:
                lo, hi = y_of(m - sd), y_of(m + sd)
                parts.append(
                    f'<path class="lwhisker" stroke="{line.color}" '
                    f'd="M{x:.1f} {lo:.1f}V{hi:.1f}M{x - 4:.1f} {hi:.1f}h8M{x - 4:.1f} {lo:.1f}h8"/>'
                )
            parts.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y_of(m):.1f}" r="4" fill="{line.color}">'
                f"<title>{_e(tip)}</title></circle>"
            )
        y = legend_y + 16 * n
        parts.append(
            f'<line class="key" x1="{left:.1f}" y1="{y - 4:.1f}" x2="{left + 28:.1f}" y2="{y - 4:.1f}" '
            f'stroke="{line.color}"{dash}/>'
            f'<text class="label" x="{left + 36:.1f}" y="{y:.1f}">{_e(line.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ---- the plots -------------------------------------------------------------------------------------


def _colors(data: ReportData) -> dict[int, str]:
    return {r.run.id: PALETTE[i % len(PALETTE)] for i, r in enumerate(data.runs)}


def _tooltip(run: RunRow, result: BenchResult) -> str:
    flags = result_flags(result)
    return (
        f"{_run_label(run)} · {result.test.name} · {config_text(result)}: "
        f"{_ts(result.avg_ts)} ± {_ts(result.stddev_ts)} t/s over {len(result.samples_ns)} repetition(s)"
        + ("; ⚠ " + "; ".join(f.reason for f in flags) if flags else "")
    )


def _by_test(data: ReportData, colors: dict[int, str]) -> str:
    """One chart per test (each its own scale: pp and tg speeds differ by orders), a bar per result."""
    tests: dict[str, list[tuple[RunRow, BenchResult]]] = {}
    for run, result in data.results:
        tests.setdefault(result.test.name, []).append((run, result))
    charts = []
    for test, items in tests.items():
        several = _varying(r for _, r in items)
        bars = [
            _Bar(
                label=_run_label(run) + (f" {config_text(r, several)}" if several else ""),
                mean=r.avg_ts,
                sd=r.stddev_ts,
                color=colors[run.id],
                title=_tooltip(run, r),
                flagged=bool(result_flags(r)),
            )
            for run, r in items
        ]
        charts.append(
            _figure(bar_chart(test, bars, kind="by-test"), f"{test}: mean t/s ± one standard deviation")
        )
    return "".join(charts)


def _by_depth(data: ReportData, colors: dict[int, str]) -> str:
    """Per test without its depth: a line per run and configuration through the depths measured."""
    groups: dict[str, dict[tuple[int, str], list[tuple[RunRow, BenchResult]]]] = {}
    for run, result in data.results:
        base = dataclasses.replace(result.test, n_depth=0).name
        groups.setdefault(base, {}).setdefault((run.id, config_text(result)), []).append((run, result))
    charts = []
    for base, series in groups.items():
        if not any(len({r.n_depth for _, r in items}) > 1 for items in series.values()):
            continue
        several = _varying(r for items in series.values() for _, r in items)
        lines = []
        per_run: dict[int, int] = {}
        for (run_id, _config), items in series.items():
            ordered = sorted(items, key=lambda item: item[1].n_depth)
            first = ordered[0][1]
            nth = per_run[run_id] = per_run.get(run_id, -1) + 1
            lines.append(
                _Line(
                    label=f"run {run_id}" + (f" {config_text(first, several)}" if several else ""),
                    color=colors[run_id],
                    dash=DASHES[nth % len(DASHES)],
                    points=tuple(
                        (r.n_depth, r.avg_ts, r.stddev_ts, _tooltip(run, r) + f" at depth {r.n_depth}")
                        for run, r in ordered
                    ),
                )
            )
        charts.append(
            _figure(
                line_chart(f"{base} by depth", lines), f"{base}: mean t/s ± one standard deviation by depth"
            )
        )
    if not charts:
        return (
            '<p class="none">No depth sweep: every test ran at one KV cache depth '
            "(bench -d 0,512,… sweeps it).</p>"
        )
    return "".join(charts)


def _by_configuration(data: ReportData, colors: dict[int, str]) -> str:
    """Per test, a bar per configuration (labelled by the settings that differ), coloured by run."""
    every = [r for _, r in data.results]
    varying = _varying(every)
    if not varying:
        only = config_text(every[0]) if every else NOT_AVAILABLE
        return f'<p class="none">One configuration only ({_e(only)}): nothing to plot by configuration.</p>'
    tests: dict[str, list[tuple[RunRow, BenchResult]]] = {}
    for run, result in data.results:
        tests.setdefault(result.test.name, []).append((run, result))
    order = {text: i for i, text in enumerate(dict.fromkeys(config_text(r, varying) for r in every))}
    runs = {r.run.id: i for i, r in enumerate(data.runs)}
    charts = []
    for test, items in tests.items():
        items.sort(key=lambda item: (order[config_text(item[1], varying)], runs[item[0].id]))
        bars = [
            _Bar(
                label=_run_label(run),
                mean=r.avg_ts,
                sd=r.stddev_ts,
                color=colors[run.id],
                title=_tooltip(run, r),
                flagged=bool(result_flags(r)),
                group=config_text(r, varying),
            )
            for run, r in items
        ]
        charts.append(
            _figure(
                bar_chart(f"{test} by {', '.join(varying)}", bars, kind="by-config"),
                f"{test}: mean t/s ± one standard deviation, grouped by configuration",
            )
        )
    return "".join(charts)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _legend(data: ReportData, colors: dict[int, str]) -> str:
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{colors[r.run.id]}"></span>'
        f"{_e(_run_label(r.run))}: {_e(_model_name(r.run.model_path))}"
        + (f" · {_e(r.run.label)}" if r.run.label else "")
        + "</span>"
        for r in data.runs
    )
    return f'<p class="legend">{items}</p>'


# ---- the page --------------------------------------------------------------------------------------


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, classes: str = "", numeric: Iterable[int] = ()
) -> str:
    """A table whose cells are already HTML (each data text escaped by the caller)."""
    right = set(numeric)
    head = "".join(f"<th{' class=num' if i in right else ''}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in right else ''}>{cell}</td>" for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _facts(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column description list; values already HTML."""
    return '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _na(why: str) -> str:
    return f'<span class="na">{NOT_AVAILABLE}</span> <span class="why">({_e(why)})</span>'


def _is_this_machine(data: ReportData, run: ReportRun) -> bool:
    """Whether `run` was measured on the machine writing the report: the same hardware id, and the
    CPU its results name (an import from another machine carries this machine's id but its CPU)."""
    machine = data.machine
    if machine is None or run.run.hardware_fingerprint != machine.fingerprint:
        return False
    return all(not r.cpu_info or r.cpu_info == machine.cpu_model for r in run.results)


def _machine_section(data: ReportData) -> str:
    blocks = []
    groups: dict[str, list[ReportRun]] = {}
    for run in data.runs:
        key = "this" if _is_this_machine(data, run) else f"other:{run.run.hardware_fingerprint}"
        groups.setdefault(key, []).append(run)
    for key, runs in groups.items():
        results = [r for run in runs for r in run.results]
        cpus = sorted({r.cpu_info for r in results if r.cpu_info})
        gpus = sorted({r.gpu_info for r in results if r.gpu_info})
        gpu_text = (
            _e("; ".join(gpus)) if gpus else "none (llama.cpp listed no GPU)" if results else _na("no result")
        )
        which = ", ".join(_run_label(r.run) for r in runs)
        if key == "this" and data.machine is not None:
            m = data.machine
            cores = f"{fmt(m.physical_cores)} physical, {fmt(m.logical_cores)} logical"
            rows = [
                ("CPU", _e(m.cpu_model)),
                ("Cores", _e(cores)),
                ("RAM", _e(fmt_bytes(m.ram_bytes))),
                ("GPUs used", gpu_text),
                ("GPUs present", _e(", ".join(m.gpus) or "none") if m.gpus is not None else _na("not read")),
                (
                    "CPU features",
                    _e(simd_text(m.cpu_features))
                    + f' <span class="why">({_e(" ".join(m.cpu_features) or "none")})</span>',
                ),
                ("OS", _e(m.os_text)),
                ("Hardware id", f"<code>{_e(m.fingerprint)}</code>"),
            ]
            heading = f"This machine ({which})"
        else:
            if data.machine is None:
                other = "this machine's details were not read for this report"
            elif runs[0].run.hardware_fingerprint:
                other = "recorded on another machine"
            else:
                other = "not recorded"
            rows = [
                ("CPU", _e("; ".join(cpus)) if cpus else _na("not recorded")),
                ("Cores", _na(other)),
                ("RAM", _na(other)),
                ("GPUs used", gpu_text),
                (
                    "Hardware id",
                    f"<code>{_e(runs[0].run.hardware_fingerprint)}</code>"
                    if runs[0].run.hardware_fingerprint
                    else _na("not recorded"),
                ),
            ]
            heading = f"Machine of {which}"
        blocks.append(f"<h3>{_e(heading)}</h3>{_facts(rows)}")
    return "".join(blocks)


def _build_section(data: ReportData) -> str:
    builds: dict[str, list[ReportRun]] = {}
    for run in data.runs:
        name = run.run.build or next((r.build for r in run.results if r.build), "")
        builds.setdefault(name, []).append(run)
    blocks = []
    for name, runs in builds.items():
        results = [r for run in runs for r in run.results]
        backends = sorted({r.backends for r in results if r.backends})
        installed = data.build
        if installed is not None and name and name == installed.version:
            features = installed.cpu_features
            feature_html = (
                _e(simd_text(features)) + f' <span class="why">({_e(" ".join(features) or "none")})</span>'
            )
            system_info = f"<code>{_e(installed.system_info.strip())}</code>"
        elif installed is None:
            feature_html = system_info = _na(data.build_error or "the installed build could not be read")
        else:
            why = f"the build installed now is {installed.version}; this build's features were not recorded"
            feature_html = system_info = _na(why)
        rows = [
            ("Build", _e(name) if name else _na("not recorded")),
            ("Backends", _e(", ".join(backends)) if backends else _na("not recorded")),
            ("CPU features it uses", feature_html),
            ("System info", system_info),
        ]
        which = ", ".join(_run_label(r.run) for r in runs)
        blocks.append(f"<h3>{_e(f'llama.cpp of {which}')}</h3>{_facts(rows)}")
    return "".join(blocks)


def _model_section(data: ReportData) -> str:
    models: dict[tuple[str, str | None], list[ReportRun]] = {}
    for run in data.runs:
        models.setdefault((run.run.model_path, run.run.model_fingerprint), []).append(run)
    blocks = []
    for (path, fingerprint), runs in models.items():
        results = [r for run in runs for r in run.results]
        first = results[0] if results else None
        types = sorted({r.model_type for r in results if r.model_type})
        size = first.model_size if first and first.model_size else runs[0].run.model_size
        params = first.model_n_params if first and first.model_n_params else None
        rows = [
            ("Name", _e(_model_name(path))),
            ("Type", _e(", ".join(types)) if types else _na("not recorded")),
            ("Size", _e(f"{format_bytes(size)} ({size:,} bytes)") if size else _na("not recorded")),
            ("Parameters", _e(f"{params:,}") if params else _na("not recorded")),
            (
                "Fingerprint",
                f"<code>{_e(fingerprint)}</code>"
                if fingerprint
                else _na("the file was not readable when the run was stored"),
            ),
            ("Path", f"<code>{_e(path)}</code>"),
        ]
        which = ", ".join(_run_label(r.run) for r in runs)
        blocks.append(f"<h3>{_e(f'Model of {which}')}</h3>{_facts(rows)}")
    return "".join(blocks)


def _settings_text(settings: dict[str, Any], prefix: str = "") -> str:
    """A run's stored settings as "name value" pairs; nested ones (the sweep) flattened."""
    parts = []
    for key, value in settings.items():
        if isinstance(value, dict):
            inner = _settings_text(value, f"{prefix}{key}.")
            if inner:
                parts.append(inner)
        elif isinstance(value, list | tuple):
            parts.append(f"{prefix}{key} " + ",".join(_value(v) for v in value))
        else:
            parts.append(f"{prefix}{key} {_value(value) if not isinstance(value, str) else value}")
    return " · ".join(parts)


def _runs_table(data: ReportData, colors: dict[int, str]) -> str:
    rows = []
    for run in data.runs:
        r = run.run
        status = "interrupted" if r.status == "running" else r.status
        settings = _settings_text(r.settings)
        rows.append(
            [
                f'<span class="swatch" style="background:{colors[r.id]}"></span>{_e(r.id)}',
                _e(r.created_at.replace("T", " ").rstrip("Z") + " UTC"),
                _e(r.kind),
                _e(status),
                _e(_model_name(r.model_path)),
                _e(len(run.results)),
                _e(r.label) if r.label else "",
                f'<span class="settings">{_e(settings)}</span>' if settings else _na("not recorded"),
            ]
        )
    return _table(
        ["run", "when", "kind", "status", "model", "results", "label", "settings"],
        rows,
        classes="runs",
        numeric=(0, 5),
    )


def _flags_cell(flags: Sequence[Flag]) -> str:
    if not flags:
        return '<span class="ok">none</span>'
    badges = " ".join(f'<span class="flag">⚠ {_e(f.short)}</span>' for f in flags)
    reasons = "; ".join(f.reason for f in flags)
    return f'{badges}<div class="why">{_e(reasons[:1].upper() + reasons[1:])}.</div>'


def _results_tables(data: ReportData) -> str:
    blocks = []
    for run in data.runs:
        title = f"{_run_label(run.run)}: {_model_name(run.run.model_path)}"
        if not run.results:
            blocks.append(f'<h3>{_e(title)}</h3><p class="none">No finished result.</p>')
            continue
        shared, varying = _common_settings(run.results)
        rows = []
        for r in run.results:
            steal, other = r.steal_percent, r.other_cpu_percent
            rows.append(
                [
                    _e(r.test.name),
                    *([_e(config_text(r, varying))] if varying else []),
                    f"<b>{_e(_ts(r.avg_ts))}</b> ± {_e(_ts(r.stddev_ts))}",
                    _e(len(r.samples_ns)),
                    _e(fmt(r.cv_percent, ".1f", " %")),
                    _e(fmt(steal, ".1f", " %")) if steal is not None else _na_cell(r.cpu_load_note),
                    _e(fmt(other, ".0f", " %")) if other is not None else _na_cell(r.cpu_load_note),
                    _e(clock_text(r)),
                    _e(warmup_text(r)),
                    _e(fmt(r.mean_cpu_percent, ".0f")),
                    _e(fmt(r.joules_per_token, ".3f")),
                    _e(fmt(r.max_temp_c, ".0f", " °C")),
                    _flags_cell(result_flags(r)),
                ]
            )
        headers = [
            "test",
            *(["configuration"] if varying else []),
            "t/s (mean ± sd)",
            "reps",
            "CV",
            "steal",
            "other load",
            "CPU clock",
            "warm-up",
            "CPU %",
            "J/token",
            "max temp",
            "flags",
        ]
        first_number = 2 if varying else 1
        blocks.append(
            f"<h3>{_e(title)}</h3>"
            + f'<p class="settings">Every result: {_e(shared)}</p>'
            + _table(headers, rows, classes="results", numeric=range(first_number, len(headers) - 1))
        )
    return "".join(blocks)


def _na_cell(why: str) -> str:
    return f'<span class="na" title="{_e(why)}">{NOT_AVAILABLE}</span>' if why else NOT_AVAILABLE


def _mean_sd(result: BenchResult) -> str:
    return (
        f"{_e(_ts(result.avg_ts))} ± {_e(_ts(result.stddev_ts))} <small>(n={len(result.samples_ts)})</small>"
    )


def _short_flags(flags: Sequence[Flag]) -> str:
    if not flags:
        return '<span class="ok">none</span>'
    return '<span class="flagtext">⚠ ' + _e("; ".join(f.short for f in flags)) + "</span>"


def _comparison_tables(data: ReportData) -> str:
    blocks = []
    for block in data.comparisons:
        if not block.rows:
            blocks.append(f'<h3>{_e(block.title)}</h3><p class="none">{_e(block.note)}</p>')
            continue
        rows = []
        doubtful = 0  # significant, but A or B is flagged
        for row in block.rows:
            c = row.comparison
            verdict = c.verdict(ALPHA)
            css = "sig" if c.significant else "refused" if getattr(c, "refused", None) else "nosig"
            flags_a, flags_b = result_flags(row.a), result_flags(row.b)
            doubtful += bool(c.significant and (flags_a or flags_b))
            rows.append(
                [
                    _e(row.test),
                    _e(row.config),
                    _mean_sd(row.a),
                    _mean_sd(row.b),
                    _e(f"{c.diff_percent:+.1f} %") if math.isfinite(c.diff_percent) else _na("A is 0 t/s"),
                    f'<span class="{css}">{_e(verdict)}</span>',
                    f"<div>A: {_short_flags(flags_a)}</div><div>B: {_short_flags(flags_b)}</div>",
                ]
            )
        note = (
            f'<p class="why">⚠ {doubtful} significant difference{"s" if doubtful != 1 else ""} between '
            "flagged results: the noise the flags name may have made it, not the change.</p>"
            if doubtful
            else ""
        )
        blocks.append(
            f"<h3>{_e(block.title)}</h3>"
            + _table(
                ["test", "configuration", "A t/s", "B t/s", "change", "Welch's t-test", "flags"],
                rows,
                classes="compare",
                numeric=(2, 3, 4),
            )
            + note
        )
    return "".join(blocks)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1b1f24;
background:#fff;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:32px 0 8px;border-bottom:2px solid #d0d7de;
padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px;color:#34404d}
.sub{color:#57606a;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px;width:100%}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.num,th.num{text-align:right;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:4px 0 8px;font-size:14px}
dl.facts dt{font-weight:600;color:#34404d}dl.facts dd{margin:0}
.na{color:#8c959f}.why{color:#6e7781;font-size:12px}
.flag{display:inline-block;background:#fff4d6;color:#7a4d00;border:1px solid #e3b341;border-radius:4px;
padding:0 5px;margin:1px 2px;font-size:12px}
.ok{color:#2b7a3d}.sig{color:#0a6b2a;font-weight:600}.nosig{color:#57606a}.refused{color:#7a4d00}
table.results td{font-size:12px}table.results .why{margin-top:2px}
table.results td:first-child,table.compare td:first-child{white-space:nowrap}
table.results td:last-child{min-width:190px}table.results td,table.results th{padding:4px 6px}
table.compare td:last-child{font-size:12px}
.flagtext{color:#7a4d00}
.none{color:#57606a;font-style:italic}
.setup{display:grid;grid-template-columns:repeat(auto-fit,minmax(330px,1fr));gap:0 28px}
.setup h2{margin-top:20px}.settings{font-size:12px;color:#424a53}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.legend .key{margin-right:18px;font-size:13px}
.plots{display:flex;flex-wrap:wrap;gap:12px 20px}
figure{margin:0;max-width:100%;overflow-x:auto}
figcaption{font-size:12px;color:#57606a;margin-top:2px}
svg.plot{font-family:inherit;background:#fff}
svg .title{font-size:14px;font-weight:600;fill:#1b1f24}
svg .tick,svg .label{font-size:11px;fill:#424a53}svg .axis{font-size:12px;fill:#424a53}
svg .value{font-size:10px;fill:#1b1f24}
svg .grid{stroke:#e6e9ec;stroke-width:1}svg .axisline{stroke:#57606a;stroke-width:1}
svg .whisker{stroke:#1b1f24;stroke-width:1.4;fill:none}
svg .series{fill:none;stroke-width:2}svg .key{stroke-width:2.5}
svg .lwhisker{stroke-width:1.2;fill:none}svg .bracket{stroke:#8c959f;fill:none}
svg .group{font-size:12px;fill:#1b1f24}
footer{margin-top:36px;font-size:12px;color:#57606a}
"""


def render(data: ReportData) -> str:
    """The whole report as one HTML document: inline CSS and SVG, no script, nothing fetched."""
    colors = _colors(data)
    ids = ", ".join(str(r.run.id) for r in data.runs)
    n_results = len(data.results)
    flagged = sum(1 for _, r in data.results if result_flags(r))  # noisy or stopped early
    summary = (
        f"Run {ids} · {n_results} result(s), {flagged} flagged · "
        f"written {data.created_at} by LlamaScope {__version__}"
    )
    sections = [
        "<header>",
        "<h1>LlamaScope benchmark report</h1>",
        f'<p class="sub">{_e(summary)}</p>',
        _legend(data, colors),
        "</header>",
        # What was measured on what first, then the verdict and the pictures, then every figure.
        '<div class="setup">',
        '<section id="machine"><h2>Machine</h2>',
        _machine_section(data),
        "</section>",
        '<section id="build"><h2>llama.cpp build</h2>',
        _build_section(data),
        "</section>",
        '<section id="model"><h2>Model</h2>',
        _model_section(data),
        "</section>",
        "</div>",
        '<section id="comparison"><h2>Comparison</h2>',
        f'<p class="sub">Change of B against A, with Welch\'s two-sided t-test over the repetitions '
        f"(significant at p &lt; {ALPHA:g}).</p>",
        _comparison_tables(data),
        "</section>",
        '<section id="plots"><h2>Plots</h2>',
        '<h3>t/s by test</h3><div class="plots" id="plot-by-test">',
        _by_test(data, colors),
        "</div>",
        '<h3>t/s by depth</h3><div class="plots" id="plot-by-depth">',
        _by_depth(data, colors),
        "</div>",
        '<h3>t/s by configuration</h3><div class="plots" id="plot-by-config">',
        _by_configuration(data, colors),
        "</div>",
        "</section>",
        '<section id="results"><h2>Results</h2>',
        '<p class="sub">Mean ± sample standard deviation of the repetitions\' t/s, as llama-bench reports '
        "it; CV is that deviation as a share of the mean.</p>",
        _results_tables(data),
        "</section>",
        '<section id="runs"><h2>Runs</h2>',
        _runs_table(data, colors),
        "</section>",
        "<footer>Whiskers span one standard deviation either side of the mean. Hover a bar or a point "
        "for its run, test and settings. This file is self-contained: it loads nothing.</footer>",
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        # No script may run and nothing may load: the policy says so to the browser, too.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(f'LlamaScope report: run {ids}')}</title>"
        f"<style>{_CSS}</style></head><body><main>" + "".join(sections) + "</main></body></html>\n"
    )


def write_report(html_text: str, path: str) -> None:
    """Write the report whole or not at all: a temporary file beside it, renamed into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(html_text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def report_runs(
    store: HistoryStore,
    run_ids: Sequence[int],
    path: str,
    *,
    machine: Machine | None = None,
    build: Build | None = None,
    build_error: str = "",
) -> ReportData:
    """Collect, render and write the report of `run_ids` to `path`; returns what it showed."""
    data = collect(store, run_ids, machine=machine, build=build, build_error=build_error)
    write_report(render(data), path)
    return data
