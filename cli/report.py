"""`llamascope report`: stored benchmark runs as one self-contained HTML file to share."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cli.checks import output_file_error

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write stored benchmark runs as one HTML file: machine, build, model, results with "
        "flags, the comparison and plots (self-contained: it loads nothing)",
        description="Two or more runs are each compared with the first; one run, its configurations. "
        "`llamascope history` lists the run ids.",
    )
    p.add_argument("runs", nargs="+", type=int, metavar="RUN", help="run ids from `llamascope history`")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the HTML file to write")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    problem = output_file_error(args.output, "-o")
    if problem is not None:
        print(f"llamascope: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from app.bench.history import HistoryError, HistoryStore
    from app.bench.report import ReportError, installed_build, report_runs, this_machine

    try:
        store = HistoryStore()
        build, build_error = installed_build()
        data = report_runs(
            store, args.runs, args.output, machine=this_machine(), build=build, build_error=build_error
        )
    except (HistoryError, ReportError) as exc:
        print(f"llamascope: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"llamascope: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    n_results = len(data.results)
    print(
        f"wrote {args.output}: run {', '.join(str(r.run.id) for r in data.runs)}, {n_results} result(s), "
        f"{os.path.getsize(args.output) / 1024:.0f} KiB"
    )
    return EXIT_OK
