"""`llamascope report`: stored runs as one self-contained HTML file, opened in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app.bench.history import HistoryError, HistoryStore
from app.bench.report import (
    PALETTE,
    Build,
    Machine,
    ReportError,
    collect,
    render,
    report_runs,
)
from app.bench.runner import BenchResult

WAIT_S = 600  # a child command's limit: far past what it takes, so a slow machine does not fail a test


# ---- helpers ---------------------------------------------------------------------------------------


def _result(**kw: object) -> BenchResult:
    fields: dict[str, object] = dict(
        model_filename="/m/model.gguf",
        model_type="llama 135M Q4_1",
        model_size=96_576_768,
        model_n_params=134_515_008,
        n_batch=512,
        n_ubatch=512,
        n_threads=2,
        type_k="f16",
        type_v="f16",
        n_gpu_layers=0,
        flash_attn=False,
        use_mmap=True,
        n_prompt=64,
        n_gen=0,
        n_depth=0,
        test_time="2026-01-01T00:00:00Z",
        samples_ns=(400_000_000, 410_000_000, 390_000_000, 405_000_000),
        cpu_info="Test CPU",
        gpu_info="",
        backends="CPU",
        build="0.3.36",
    )
    fields.update(kw)
    return BenchResult(**fields)  # type: ignore[arg-type]


def _machine(fingerprint: str) -> Machine:
    return Machine(
        fingerprint=fingerprint,
        cpu_model="Test CPU",
        physical_cores=8,
        logical_cores=16,
        ram_bytes=32 * 1024**3,
        cpu_features=("SSE3", "AVX", "AVX2", "FMA"),
        os_text="Linux 6.1 (x86_64)",
    )


_BUILD = Build("0.3.36", "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | FMA = 1 | AVX512 = 0 |", ("CPU",))


def _store_with_runs(tmp_path: Path) -> tuple[HistoryStore, int, int]:
    """Two runs: A with a thread sweep and a depth sweep, B faster, on the same tests."""
    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    a = store.start_run("benchmark", "/m/model.gguf", {"repetitions": 4, "sweep": {"n_threads": [1, 2]}})
    for threads in (1, 2):
        for depth in (0, 128):
            slow = 2 * threads * (1 + depth // 128)
            store.add_result(
                a,
                _result(
                    n_threads=threads,
                    n_depth=depth,
                    samples_ns=tuple(s // slow for s in _result().samples_ns),
                ),
            )
            store.add_result(a, _result(n_threads=threads, n_depth=depth, n_prompt=0, n_gen=16))
    store.finish_run(a)
    b = store.start_run("benchmark", "/m/model.gguf", {"repetitions": 4})
    for depth in (0, 128):
        store.add_result(
            b, _result(n_depth=depth, samples_ns=(200_000_000, 201_000_000, 199_000_000, 200_500_000))
        )
        store.add_result(b, _result(n_depth=depth, n_prompt=0, n_gen=16))
    store.finish_run(b)
    return store, a, b


class _Dom(HTMLParser):
    """Every element with its attributes and the path of tags above it; and the page's text."""

    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], tuple[str, ...]]] = []
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        ancestry = tuple(
            f"{t}#{a['id']}" if "id" in a else f"{t}.{a.get('class', '')}" for t, a in self.stack
        )
        self.elements.append((tag, attributes, ancestry))
        if tag not in self.VOID:
            self.stack.append((tag, attributes))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def count(self, tag: str, cls: str, inside: str) -> int:
        """Elements <tag class="cls ..."> with an ancestor whose id or class names `inside`."""
        return sum(
            1
            for t, a, ancestry in self.elements
            if t == tag and cls in a.get("class", "").split() and any(inside in step for step in ancestry)
        )


def _dom(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    dom.close()
    return dom


# The elements and attributes the renderer writes: anything else in a report came from the data.
_TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "header", "footer", "section", "div",
    "h1", "h2", "h3", "p", "span", "b", "small", "code", "table", "thead", "tbody", "tr", "th", "td",
    "dl", "dt", "dd", "figure", "figcaption", "svg", "text", "line", "rect", "path", "polyline", "circle",
}  # fmt: skip
_ATTRIBUTES = {
    "lang", "charset", "http-equiv", "content", "name", "class", "id", "style", "xmlns", "viewbox",
    "width", "height", "role", "aria-label", "x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "d",
    "points", "fill", "stroke", "stroke-dasharray", "text-anchor", "transform", "title",
}  # fmt: skip


# ---- what the report holds ---------------------------------------------------------------------------


def test_the_report_has_a_bar_per_result_and_a_line_per_depth_series(tmp_path: Path) -> None:
    store, a, b = _store_with_runs(tmp_path)
    data = collect(store, [a, b], machine=_machine("x"), build=_BUILD)
    dom = _dom(render(data))
    n_results = len(store.results(a)) + len(store.results(b))
    assert n_results == 12
    assert dom.count("rect", "bar", "plot-by-test") == n_results
    assert dom.count("rect", "bar", "plot-by-config") == n_results  # threads differ: 1 and 2
    # Depth: per test (pp64, tg16) a line for each run and thread count with more than one depth.
    assert dom.count("polyline", "series", "plot-by-depth") == 2 * 3
    assert dom.count("circle", "point", "plot-by-depth") == n_results
    # A whisker for each result with a spread (the tg16 results have one: their samples differ).
    assert dom.count("path", "whisker", "plot-by-test") == n_results
    # One chart per test name: pp64, tg16, pp64 @ d128, tg16 @ d128.
    assert dom.count("svg", "by-test", "plot-by-test") == 4


def test_the_comparison_shows_welchs_verdict(tmp_path: Path) -> None:
    store, a, b = _store_with_runs(tmp_path)
    page = render(collect(store, [a, b], machine=_machine("x"), build=_BUILD))
    rows = store.compare(a, b)
    pp = next(r for r in rows if r.test == "pp64")
    assert pp.comparison.significant  # B's pp64 takes twice A's time at the same configuration
    assert _dom(page).count("span", "sig", "comparison") == sum(r.comparison.significant for r in rows)
    assert f"{pp.comparison.diff_percent:+.1f} %" in page
    assert pp.comparison.verdict() in page
    assert "Run 2 (B) against run 1 (A)" in page
    one = render(collect(store, [a], machine=_machine("x"), build=_BUILD))
    assert "The configurations of run 1" in one and "t=1 " in one and "→" in one


def test_a_significant_difference_between_flagged_results_is_called_doubtful(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    ids = []
    for result in (_result(other_cpu_percent=50.0, other_cpus=1.0), _result(samples_ns=(200_000_000,) * 4)):
        run = store.start_run("benchmark", "/m/model.gguf", {"repetitions": 4})
        store.add_result(run, result)
        store.finish_run(run)
        ids.append(run)
    (row,) = store.compare(*ids)
    assert row.comparison.significant
    text = "".join(_dom(render(collect(store, ids, machine=_machine("x"), build=_BUILD))).text)
    assert "A: ⚠ other load 50 % > 10 %" in text and "B: none" in text
    assert "1 significant difference between flagged results" in text


def test_machine_and_build_are_shown_only_where_they_are_the_runs_own(tmp_path: Path) -> None:
    store, a, b = _store_with_runs(tmp_path)
    mine = store.run(a).hardware_fingerprint
    assert mine
    here = _dom(render(collect(store, [a], machine=_machine(mine), build=_BUILD)))
    text = " ".join(here.text)
    assert "8 physical, 16 logical" in text and "32.0 GiB" in text
    assert "AVX2 + FMA" in text  # the build's CPU features, from its system info (AVX512 = 0 is off)
    elsewhere = " ".join(
        _dom(render(collect(store, [a], machine=_machine("another"), build=Build("0.4.0", "", ())))).text
    )
    assert "8 physical" not in elsewhere and "recorded on another machine" in elsewhere
    assert "Test CPU" in elsewhere  # the CPU the results name
    assert "the build installed now is 0.4.0" in elsewhere
    unread = " ".join(_dom(render(collect(store, [a], build_error="llama-cpp-python is not installed"))).text)
    assert "llama-cpp-python is not installed" in unread and "details were not read" in unread
    for fact in ("llama 135M Q4_1", "92.1 MiB", "134,515,008", "model.gguf"):
        assert fact in text


def test_each_result_says_how_far_to_trust_it(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    run = store.start_run("benchmark", "/m/model.gguf", {"repetitions": 4})
    quiet = _result(steal_percent=0.0, other_cpu_percent=1.0, other_cpus=0.02)
    busy = _result(
        n_prompt=0,
        n_gen=16,
        samples_ns=(400_000_000, 800_000_000, 390_000_000, 405_000_000),  # CV about 40 %
        steal_percent=6.5,
        other_cpu_percent=48.0,
        other_cpus=0.96,
        throttled=True,
        throttle_detail="CPU clock at 1,200 MHz of 3,500",
    )
    stopped = _result(n_gen=4, n_prompt=0, samples_ns=(100_000_000,), complete=False)
    for result in (quiet, busy, stopped):
        store.add_result(run, result)
    store.finish_run(run)
    dom = _dom(render(collect(store, [run], machine=_machine("x"), build=_BUILD)))
    text = " ".join(dom.text)
    assert dom.count("span", "flag", "results") == 4 + 1  # busy: CV, steal, other load, throttled
    for words in (
        "steal 6.5 % > 2 %",
        "other load 48 % > 10 %",
        "throttled",
        "the virtual machine's host took 6.5 % of the CPU time",
        "CPU clock at 1,200 MHz of 3,500",
        "stopped after 1 repetition",
    ):
        assert words in text, words
    assert "2 flagged" in text  # the busy result and the one stopped early
    assert "6.5 %" in text and "48 %" in text and "0.0 %" in text  # the figures themselves


def test_a_crafted_name_is_shown_as_text_and_adds_no_markup(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)><svg onload=alert(3)>.gguf'
    run = store.import_results(
        [
            _result(
                model_filename=f"/models/{evil}",
                model_type='</style><script>alert("type")</script>',
                cpu_info="<b onmouseover=alert(4)>CPU</b>",
                gpu_info="<iframe src=//example.com>",
                type_k='f16"><script>alert(5)</script>',
                build="0.3.36<script>",
                backends="CPU & <i>more</i>",
            )
        ],
        label="<a href=https://example.com>click</a>",
    )
    page = render(collect(store, [run], machine=_machine("x"), build=_BUILD))
    dom = _dom(page)
    assert {tag for tag, _, _ in dom.elements} <= _TAGS
    assert {name for _, attrs, _ in dom.elements for name in attrs} <= _ATTRIBUTES
    text = "".join(dom.text)
    for shown in (
        evil,
        "<b onmouseover=alert(4)>CPU</b>",
        "<a href=https://example.com>click</a>",
        "<i>more</i>",
    ):
        assert shown in text  # the crafted text is there, as text
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<iframe" not in page.lower()


def test_the_file_loads_nothing_from_anywhere(tmp_path: Path) -> None:
    store, a, b = _store_with_runs(tmp_path)
    page = render(collect(store, [a, b], machine=_machine("x"), build=_BUILD))
    lowered = page.lower()
    for needle in ("<script", "<link", "<img", "<iframe", "src=", "href=", "url(", "@import", "@font-face"):
        assert needle not in lowered, needle
    # The only address is SVG's namespace, which names the vocabulary and is never fetched.
    assert lowered.count("//") == lowered.count('xmlns="http://www.w3.org/2000/svg"')
    assert "default-src 'none'" in page  # the browser is told so too: no script, nothing loaded


def test_what_cannot_be_reported_is_said(tmp_path: Path) -> None:
    from app.engine.types import RunStats, StopReason

    store = HistoryStore(str(tmp_path / "h.sqlite3"))
    with pytest.raises(HistoryError, match="no run 7"):
        collect(store, [7])
    with pytest.raises(ReportError, match="at least one run"):
        collect(store, [])
    stats = RunStats(False, 3, 2, 0.1, 30.0, 10.0, 0.3, StopReason.LENGTH, "text", 5)
    generation = store.add_generation("/m/model.gguf", {}, stats)
    with pytest.raises(ReportError, match="generation run, not a benchmark"):
        collect(store, [generation])
    empty = store.start_run("benchmark", "/m/model.gguf", {})
    with pytest.raises(ReportError, match="no finished result"):
        collect(store, [empty])
    damaged = store.start_run("benchmark", "/m/model.gguf", {})
    store.add_result(damaged, _result())
    with sqlite3.connect(store.path) as conn:  # a record no LlamaScope writes: a negative prompt size
        record = json.loads(conn.execute("SELECT record_json FROM results").fetchone()[0])
        conn.execute("UPDATE results SET record_json = ?", (json.dumps(record | {"n_prompt": -5}),))
    conn.close()
    with pytest.raises(ReportError, match=f"run {damaged} holds a result that cannot be read: n_prompt"):
        collect(store, [damaged])


def test_a_report_is_written_whole(tmp_path: Path) -> None:
    store, a, b = _store_with_runs(tmp_path)
    target = tmp_path / "report.html"
    data = report_runs(store, [a, b, a], str(target), machine=_machine("x"), build=_BUILD)
    assert [r.run.id for r in data.runs] == [a, b]  # a run named twice is shown once
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if "report" in p.name] == ["report.html"]  # no temporary left


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
        env=env,
    )


def test_the_command_names_what_is_wrong(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))
    missing = _cli("report", "3", "-o", str(tmp_path / "r.html"), env=env)
    assert missing.returncode == 1 and "there is no run 3" in missing.stderr
    folder = _cli("report", "3", "-o", str(tmp_path), env=env)
    assert folder.returncode == 2 and "is a folder" in folder.stderr
    nowhere = _cli("report", "3", "-o", str(tmp_path / "absent" / "r.html"), env=env)
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr
    for run in (missing, folder, nowhere):
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "r.html").exists()


# ---- in a real browser, from real runs -------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _png_pixels(path: Path) -> tuple[int, int, Iterator[tuple[int, int, int]]]:
    """Width, height and the RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (Chromium's)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp

    def rows() -> Iterator[tuple[int, int, int]]:
        previous = bytearray(stride)
        for y in range(height):
            start = y * (stride + 1)
            kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
            for x in range(stride):  # PNG's filters, undone (RFC 2083, 6.3-6.6)
                left = line[x - bpp] if x >= bpp else 0
                up = previous[x]
                if kind == 1:
                    line[x] = (line[x] + left) & 255
                elif kind == 2:
                    line[x] = (line[x] + up) & 255
                elif kind == 3:
                    line[x] = (line[x] + ((left + up) >> 1)) & 255
                elif kind == 4:
                    corner = previous[x - bpp] if x >= bpp else 0
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    line[x] = (
                        line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)
                    ) & 255
            for x in range(0, stride, bpp):
                yield line[x], line[x + 1], line[x + 2]
            previous = line

    return width, height, rows()


def _near(pixel: tuple[int, int, int], color: str, tolerance: int = 8) -> bool:
    target = (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, target, strict=True))


def test_a_report_of_two_real_runs_renders_in_a_headless_browser(demo_model: str, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium; .ci/run installs it)")
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))
    bench = ["bench", demo_model, "-p", "16", "-n", "4", "-d", "0,32", "-r", "3", "-t", "1", "-o", "json"]
    counts = []
    for _ in range(2):
        done = _cli(*bench, env=env)
        assert done.returncode == 0, done.stderr
        counts.append(len(json.loads(done.stdout)))
    runs = json.loads(_cli("history", "--json", env=env).stdout)
    ids = sorted(r["id"] for r in runs)
    assert len(ids) == 2 and counts == [4, 4]  # pp16, tg4, each at depth 0 and 32
    page = tmp_path / "report.html"
    made = _cli("report", *map(str, ids), "-o", str(page), env=env)
    assert made.returncode == 0, made.stderr
    assert f"wrote {page}" in made.stdout

    url = page.as_uri()
    with tempfile.TemporaryDirectory(prefix="llamascope-chromium-") as profile:
        common = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            "--window-size=1280,2000",
        ]
        dumped = subprocess.run(
            [*common, "--dump-dom", url], capture_output=True, text=True, timeout=WAIT_S, check=False
        )
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        shot = tmp_path / "report.png"
        taken = subprocess.run(
            [*common, f"--screenshot={shot}", url],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )
        assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]

    # The DOM the browser built: the plots are there, a bar per result, a point per result.
    dom = _dom(dumped.stdout)
    n_results = sum(counts)
    assert dom.count("rect", "bar", "plot-by-test") == n_results
    assert dom.count("circle", "point", "plot-by-depth") == n_results
    assert dom.count("polyline", "series", "plot-by-depth") == 2 * 2  # pp16 and tg4, a line per run
    verdicts = sum(dom.count("span", css, "comparison") for css in ("sig", "nosig", "refused"))
    assert verdicts == 4  # pp16 and tg4 at two depths, run 2 against run 1
    assert "LlamaScope benchmark report" in " ".join(dom.text)

    # The picture it drew: not blank, and the runs' colours cover bars, not just the legend's squares.
    width, height, pixels = _png_pixels(shot)
    assert (width, height) == (1280, 2000)
    inked = first_run = second_run = 0
    for pixel in pixels:
        if min(pixel) < 235:
            inked += 1
            first_run += _near(pixel, PALETTE[0])
            second_run += _near(pixel, PALETTE[1])
    assert inked > 0.03 * width * height, f"only {inked} non-white pixels: the page looks blank"
    swatches = 4 * 11 * 11  # the legend's and the runs table's squares of one colour
    # Each chart's axis ends just above its tallest bar, so the bars' colour covers far more than the
    # squares do; a slower run's bars may be short, yet each run's cover more than its squares.
    assert first_run + second_run > 10 * swatches, (first_run, second_run)
    assert first_run > 2 * swatches and second_run > 2 * swatches, (first_run, second_run)
