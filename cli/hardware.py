"""`llamascope hw` (the detection report) and `llamascope monitor` (live snapshots, as text or CSV)."""

from __future__ import annotations

import argparse
import csv
import json
import queue
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from app.common.formatting import NOT_AVAILABLE, fmt, fmt_bytes, jsonable
from cli import server as cli_server
from cli.checks import positive_number_error

if TYPE_CHECKING:
    from app.telemetry.hardware import HardwareReport

EXIT_OK = 0
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    """Add the `hw` and `monitor` subcommands to `llamascope`'s subparsers."""
    p_hw = subparsers.add_parser("hw", help="detect the CPU, memory, GPUs and llama.cpp build")
    p_hw.add_argument("--json", action="store_true", help="print JSON")
    p_hw.set_defaults(func=_cmd_hw)

    p_mon = subparsers.add_parser(
        "monitor", help="print live CPU, memory, GPU, temperature and power readings"
    )
    p_mon.add_argument(
        "--interval", type=float, default=1.0, help="seconds between readings (0.1-5, default 1)"
    )
    p_mon.add_argument(
        "--seconds", type=float, default=None, help="stop after this many seconds (default: until Ctrl+C)"
    )
    p_mon.add_argument("--csv", action="store_true", help="CSV: a header, then one row per reading")
    p_mon.set_defaults(func=_cmd_monitor)
    cli_server.add_monitor_arguments(p_mon)


# ---- hw ---------------------------------------------------------------------------------------


def _gpu_rows(report: HardwareReport) -> list[tuple[str, str]]:
    """One row per GPU in llama.cpp's device list (NVIDIA's details where NVML has them), then the
    NVIDIA GPUs llama.cpp does not list."""
    rows = []
    for g in report.gpus:
        memory = "shared memory" if g.kind == "IGPU" else "VRAM"
        line = (
            f"{g.name or NOT_AVAILABLE} · llama.cpp {g.device_name} ({g.backend or NOT_AVAILABLE}) · "
            f"{fmt_bytes(g.memory_total_bytes)} {memory} ({fmt_bytes(g.memory_free_bytes)} free)"
        )
        if g.nvml_index is not None:
            line += (
                f" · limit {fmt(g.power_limit_watts, '.0f', ' W')} · "
                f"PCIe {fmt(g.pcie_generation)} x{fmt(g.pcie_width)}"
            )
        rows.append((f"  GPU {g.index}", line))
    why = (
        "not usable by this llama.cpp build" if report.devices is not None else "llama.cpp could not be asked"
    )
    for g in report.unused_gpus:
        rows.append((f"  NVIDIA {g.index}", f"{g.name or NOT_AVAILABLE} · {why}"))
    if any(g.nvml_index is not None for g in (*report.gpus, *report.unused_gpus)):
        rows.append(
            (
                "Driver / CUDA",
                f"{report.driver_version or NOT_AVAILABLE} / {report.cuda_driver_version or NOT_AVAILABLE}",
            )
        )
    return rows


def _cmd_hw(args: argparse.Namespace) -> int:
    from app.telemetry.advice import recommend
    from app.telemetry.hardware import detect_hardware, simd_text

    report = detect_hardware()
    rec = recommend(report)
    if args.json:
        out = jsonable(report)
        out["gpu_summary"] = report.gpu_summary
        out["recommendation"] = jsonable(rec)
        print(json.dumps(out, indent=2))
        return EXIT_OK
    cpu, mem, build = report.cpu, report.memory, report.build
    clock = NOT_AVAILABLE if cpu.max_freq_mhz is None else f"up to {cpu.max_freq_mhz:.0f} MHz"
    rows = [
        ("CPU", " · ".join(p for p in (cpu.model_name, cpu.vendor, cpu.architecture) if p) or NOT_AVAILABLE),
        ("Cores", f"{cpu.physical_cores} physical / {cpu.logical_cores} logical"),
        ("Clock", clock),
        (
            "Cache",
            " · ".join(f"L{c.level} {c.kind.lower()} {fmt_bytes(c.size_bytes)}" for c in cpu.caches)
            or NOT_AVAILABLE,
        ),
        ("SIMD (CPU)", simd_text(cpu.features_cpu) if cpu.features_cpu else NOT_AVAILABLE),
        ("SIMD (llama.cpp)", simd_text(cpu.features_build) if cpu.features_build else NOT_AVAILABLE),
        ("RAM", f"{fmt_bytes(mem.total_bytes)} total, {fmt_bytes(mem.available_bytes)} available"),
        (
            "Swap",
            "none"
            if mem.swap_total_bytes == 0
            else f"{fmt_bytes(mem.swap_used_bytes)} used of {fmt_bytes(mem.swap_total_bytes)}",
        ),
        ("GPU", report.gpu_summary),
    ]
    rows += _gpu_rows(report)
    if build is not None:

        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        rows.append(
            (
                "llama.cpp",
                f"llama-cpp-python {build.llama_cpp_python_version} · backends "
                f"{', '.join(build.backends)} · GPU offload {yes(build.gpu_offload)}"
                f" · mmap {yes(build.mmap)} · mlock {yes(build.mlock)}",
            )
        )
    else:
        rows.append(("llama.cpp", f"n/a ({report.build_error})"))
    check = report.build_check
    rows.append(
        (
            "Build check",
            NOT_AVAILABLE if check is None else f"{check.status}: {check.message.splitlines()[0]}",
        )
    )
    os_info = report.os_info
    rows.append(
        ("OS", f"{os_info.system} {os_info.release} · {os_info.machine} · Python {os_info.python_version}")
    )
    rows.append(
        (
            "Recommended",
            f"threads {rec.n_threads} (generation) / {rec.n_threads_batch} (prompt) · "
            f"batch {rec.n_batch} / {rec.n_ubatch} · GPU layers {rec.n_gpu_layers} "
            f"({rec.gpu_layers_text})",
        )
    )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for note in report.notes:
        print(f"note: {note}")
    return EXIT_OK


# ---- monitor ----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class _CsvWriter:
    """Flattens snapshots into rows; the columns are fixed by the first snapshot."""

    def __init__(self, out: TextIO) -> None:
        self._writer = csv.writer(out, lineterminator="\n")
        self._out = out
        self._columns: list[str] | None = None

    @staticmethod
    def _flatten(s: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "t_unix_s": s.t_unix_s,
            "cpu_percent": s.cpu_percent,
            "cpu_freq_mhz": s.cpu_freq_mhz,
            "cpu_freq_max_mhz": s.cpu_freq_max_mhz,
            "load_avg_1m": s.load_avg[0] if s.load_avg else None,
            "mem_used_bytes": s.mem_used_bytes,
            "mem_available_bytes": s.mem_available_bytes,
            "swap_used_bytes": s.swap_used_bytes,
            "process_rss_bytes": s.process_rss_bytes,
            "process_cpu_percent": s.process_cpu_percent,
            "cpu_package_power_watts": s.cpu_package_power_watts,
            "cpu_energy_joules_total": s.cpu_energy_joules_total,
            "cpu_throttle_events_total": s.cpu_throttle_events_total,
        }
        for i, value in enumerate(s.cpu_per_core_percent):
            row[f"cpu{i}_percent"] = value
        for label, value in s.temperatures_c:
            row[f"temp_c[{label}]"] = value
        for label, value in s.fans_rpm:
            row[f"fan_rpm[{label}]"] = value
        for g in s.gpus:
            p = f"gpu{g.index}_"
            row.update(
                {
                    p + "utilization_percent": g.utilization_percent,
                    p + "memory_used_bytes": g.memory_used_bytes,
                    p + "temperature_c": g.temperature_c,
                    p + "power_watts": g.power_watts,
                    p + "sm_clock_mhz": g.sm_clock_mhz,
                    p + "memory_clock_mhz": g.memory_clock_mhz,
                    p + "fan_percent": g.fan_percent,
                    p + "throttle_reasons": "; ".join(g.throttle_reasons) or None,
                }
            )
        for v in s.verdicts:
            row[f"throttle[{v.device}]"] = v.verdict.value
        return row

    def write(self, snapshot: Any) -> None:
        if self._columns is None and snapshot.interval_s is None:
            return  # the priming tick has no rates (no per-core columns yet) to fix the header by
        row = self._flatten(snapshot)
        if self._columns is None:
            self._columns = list(row)
            self._writer.writerow(self._columns)
        self._writer.writerow([_cell(row.get(c)) for c in self._columns])
        self._out.flush()


def _text_line(s: Any) -> str:
    gpus = " ".join(
        f"GPU{g.index} {fmt(g.utilization_percent, '.0f', '%')} {fmt_bytes(g.memory_used_bytes)} "
        f"{fmt(g.temperature_c, '.0f', '°C')} {fmt(g.power_watts, '.0f', 'W')}"
        for g in s.gpus
    )
    throttled = [f"{v.device}:{v.verdict.value}" for v in s.verdicts if v.verdict.is_throttling]
    return (
        f"{time.strftime('%H:%M:%S', time.localtime(s.t_unix_s))}  "
        f"CPU {fmt(s.cpu_percent, '5.1f', '%')} {fmt(s.cpu_freq_mhz, '.0f', ' MHz')}  "
        f"RAM {fmt_bytes(s.mem_used_bytes)} used  swap {fmt_bytes(s.swap_used_bytes)}  "
        f"self {fmt_bytes(s.process_rss_bytes)} {fmt(s.process_cpu_percent, '.0f', '%')}  "
        f"temp {fmt(s.max_temperature_c, '.0f', '°C')}  "
        f"pkg {fmt(s.cpu_package_power_watts, '.1f', ' W')}"
        + (f"  {gpus}" if gpus else "")
        + (f"  THROTTLING {' '.join(throttled)}" if throttled else "")
    )


def _cmd_monitor(args: argparse.Namespace) -> int:
    if cli_server.wants_server_monitor(args):  # --server, --prometheus: cli/server.py
        return cli_server.cmd_monitor(args, _text_line, _CsvWriter)
    from app.telemetry.sampler import MAX_INTERVAL_S, MIN_INTERVAL_S, Sampler

    if not MIN_INTERVAL_S <= args.interval <= MAX_INTERVAL_S:  # False for NaN too
        print(
            f"llamascope: --interval must be between {MIN_INTERVAL_S:g} and {MAX_INTERVAL_S:g} s",
            file=sys.stderr,
        )
        return EXIT_USAGE
    problem = positive_number_error(args.seconds, "--seconds")  # inf would never end, NaN at once
    if problem is not None:
        print(f"llamascope: {problem}", file=sys.stderr)
        return EXIT_USAGE
    snapshots: queue.Queue[Any] = queue.Queue()
    sampler = Sampler(interval_s=args.interval)
    sampler.add_listener(snapshots.put)
    csv_writer = _CsvWriter(sys.stdout) if args.csv else None
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    sampler.start()
    try:
        while deadline is None or time.monotonic() < deadline:
            timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                snapshot = snapshots.get(timeout=timeout)
            except queue.Empty:
                continue
            if csv_writer is not None:
                csv_writer.write(snapshot)
            else:
                print(_text_line(snapshot), flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl+C is how a user ends monitoring
    except BrokenPipeError:  # `llamascope monitor | head`
        pass
    finally:
        sampler.stop()
    return EXIT_OK
