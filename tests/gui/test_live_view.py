"""The pieces of the live view: plots that redraw cheaply, labels that do not relayout, token batches."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QGraphicsItem, QVBoxLayout, QWidget
from pytestqt.qtbot import QtBot

from app.engine.types import TokenEvent, TokenStream
from widgets.live_plot import LivePlot, ReadoutLabel, ValueLabel, keeps_range, nice_range
from widgets.token_reader import TokenReader

WAIT_MS = 30_000


class LayoutRequests(QObject):
    """Counts the LayoutRequest events a widget receives (each one relays out what it holds)."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__()
        self.count = 0
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if event.type() == QEvent.Type.LayoutRequest:
            self.count += 1
        return False


def _holder(qtbot: QtBot, *widgets: QWidget) -> QWidget:
    holder = QWidget()
    layout = QVBoxLayout(holder)
    for w in widgets:
        layout.addWidget(w)
    qtbot.addWidget(holder)
    holder.resize(300, 200)
    holder.show()
    qtbot.waitExposed(holder)
    qtbot.wait(20)  # the first layout passes are done
    return holder


# ---- ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (95.0, 140.0, (80.0, 140.0)),
        (0.0, 100.0, (0.0, 100.0)),
        (0.31, 0.33, (0.31, 0.33)),
        (5.0, 5.0, (2.0, 8.0)),
    ],
)
def test_nice_range_has_round_ends_holding_the_data(
    lo: float, hi: float, expected: tuple[float, float]
) -> None:
    a, b = nice_range(lo, hi)
    assert a <= lo and hi <= b
    assert (a, b) == pytest.approx(expected)


def test_keeps_range_only_while_the_data_fit_and_fill_a_third() -> None:
    assert keeps_range((0.0, 150.0), 60.0, 140.0)
    assert not keeps_range((0.0, 150.0), 60.0, 160.0)  # data above the range
    assert not keeps_range((0.0, 150.0), 100.0, 110.0)  # data a sliver of it


def test_y_range_steps_instead_of_following_every_wobble(qtbot: QtBot) -> None:
    plot = LivePlot("Test", "u", window_s=1000.0)
    qtbot.addWidget(plot)
    rng = np.random.default_rng(1)
    t = 0.0
    ranges = set()
    for _ in range(20):
        for _ in range(10):
            t += 0.1
            plot.append("a", t, 100.0 + rng.normal() * 10)
        plot.flush()
        ranges.add(plot.y_range())
    assert len(ranges) <= 3  # a few steps at the start, then still
    y0, y1 = plot.y_range()
    _, values = plot.data("a")
    assert y0 <= values.min() and values.max() <= y1
    plot.append("a", t + 1, 500.0)  # a jump out of the range moves it
    plot.flush()
    assert plot.y_range()[1] >= 500.0


# ---- LivePlot ---------------------------------------------------------------------------------


def test_extend_is_many_appends(qtbot: QtBot) -> None:
    one, many = (
        LivePlot("One", "u", window_s=1000.0, capacity=16),
        LivePlot("Many", "u", window_s=1000.0, capacity=16),
    )
    qtbot.addWidget(one)
    qtbot.addWidget(many)
    t = np.arange(40) * 0.25
    v = np.sin(t)
    v[7] = np.nan  # a gap
    for ti, vi in zip(t, v, strict=True):
        one.append("a", float(ti), None if np.isnan(vi) else float(vi))
    many.extend("a", t[:25], v[:25])
    many.extend("a", t[25:], v[25:])
    many.extend("a", np.array([1.0]), np.array([9.0]))  # older than the newest: dropped
    one.flush()
    many.flush()
    for a, b in zip(one.data("a"), many.data("a"), strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    assert many.latest("a") == pytest.approx(float(v[-1]))


def test_since_start_plot_grows_its_x_range_in_round_steps(qtbot: QtBot) -> None:
    plot = LivePlot("Speed", "tok/s", window_s=5.0, since_start=True)
    qtbot.addWidget(plot)
    plot.extend("a", np.array([0.1, 1.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    plot.flush()
    assert plot.x_range() == pytest.approx((0.0, 5.0))
    x, _ = plot.data("a")
    assert list(x) == [0.1, 1.0, 3.0]  # the time itself, not seconds before now
    plot.extend("a", np.array([7.2]), np.array([4.0]))
    plot.flush()
    assert plot.x_range() == pytest.approx((0.0, 10.0))
    plot.extend("a", np.array([12.0]), np.array([4.0]))
    plot.flush()
    assert plot.x_range() == pytest.approx((0.0, 20.0))
    assert len(plot.data("a")[0]) == 5  # every sample stays in view
    plot.clear()
    plot.flush()
    assert plot.x_range() == pytest.approx((0.0, 5.0))


def test_cached_axes_draw_the_same_picture(qtbot: QtBot) -> None:
    def render(cached: bool) -> QImage:
        plot = LivePlot("Test", "u", window_s=10.0)
        qtbot.addWidget(plot)
        axis = plot.plot_widget.getPlotItem().getAxis("left")
        if not cached:
            for name in ("left", "bottom"):
                plot.plot_widget.getPlotItem().getAxis(name).setCacheMode(QGraphicsItem.CacheMode.NoCache)
        else:
            assert axis.cacheMode() == QGraphicsItem.CacheMode.DeviceCoordinateCache
        plot.resize(400, 180)
        plot.show()
        qtbot.waitExposed(plot)
        for i in range(50):
            plot.append("a", i * 0.2, 50 + 40 * np.sin(i / 5))
        plot.flush()
        plot.grab()  # a first paint fills the cache; the second reuses it
        for i in range(50, 60):
            plot.append("a", i * 0.2, 50 + 40 * np.sin(i / 5))
        plot.flush()
        return plot.grab().toImage()

    assert render(cached=True) == render(cached=False)


def test_a_plot_idles_without_timers(qtbot: QtBot) -> None:
    plot = LivePlot("Test", "u", window_s=10.0)
    holder = _holder(qtbot, plot)
    assert holder.isVisible()
    assert not plot._timer.isActive()  # nothing to draw: nothing wakes the GUI thread
    plot.append("a", 1.0, 2.0)
    assert plot._timer.isActive()
    qtbot.waitUntil(lambda: len(plot.data("a")[0]) == 1, timeout=WAIT_MS)
    assert not plot._timer.isActive()


# ---- labels -----------------------------------------------------------------------------------


def test_value_label_changes_without_relayout_until_it_needs_more_room(qtbot: QtBot) -> None:
    label = ValueLabel("n/a", reserve="9999.9 t/s")
    holder = _holder(qtbot, label)
    requests = LayoutRequests(holder)
    hint = label.sizeHint()
    for i in range(50):
        label.setText(f"{100 + i * 0.7:.1f} t/s")
        qtbot.wait(1)  # let posted events arrive
    assert requests.count == 0
    assert label.sizeHint() == hint and label.text() == "134.3 t/s"
    label.setText("a much longer text than was reserved for it")
    qtbot.waitUntil(lambda: requests.count > 0, timeout=WAIT_MS)
    assert label.sizeHint().width() > hint.width()


def test_readout_label_keeps_its_lines_while_values_wobble(qtbot: QtBot) -> None:
    label = ReadoutLabel()
    holder = _holder(qtbot, label)
    label.setFixedWidth(160)
    qtbot.wait(10)
    long = [
        ("Speed", None, True),
        ("per token 123.4 tok/s", None, False),
        ("smoothed 120.1 tok/s", None, False),
    ]
    short = [("Speed", None, True), ("a 1", None, False)]
    label.set_segments(long)
    qtbot.wait(10)
    lines = label.sizeHint().height()
    requests = LayoutRequests(holder)
    for _ in range(10):
        label.set_segments(short)
        label.set_segments(long)
        qtbot.wait(1)
    assert requests.count == 0 and label.sizeHint().height() == lines
    label.setFixedWidth(2000)  # a new width lays it out afresh: one line is enough
    qtbot.waitUntil(lambda: label.sizeHint().height() < lines, timeout=WAIT_MS)


# ---- token batches ----------------------------------------------------------------------------


def _event(i: int) -> TokenEvent:
    return TokenEvent(index=i, token_id=i, text=f"t{i} ", t_ns=1_000_000 * (i + 1))


def test_token_stream_takes_appends_from_another_thread() -> None:
    stream = TokenStream()
    writer = threading.Thread(target=lambda: [stream.append(_event(i)) for i in range(1000)])
    writer.start()
    seen: list[TokenEvent] = []
    while writer.is_alive() or len(seen) < len(stream):
        seen += stream.since(len(seen))
    writer.join()
    assert [e.index for e in seen] == list(range(1000))


def test_token_reader_hands_over_batches_and_the_rest_at_finish(qtbot: QtBot) -> None:
    batches: list[list[TokenEvent]] = []
    reader = TokenReader(20, batches.append)
    stream = TokenStream()
    reader.start(stream)
    for i in range(5):
        stream.append(_event(i))
    qtbot.waitUntil(lambda: sum(map(len, batches)) == 5, timeout=WAIT_MS)
    assert len(batches) <= 5  # batched, never more calls than tokens
    for i in range(5, 8):
        stream.append(_event(i))
    reader.finish()  # no waiting: the last tokens come at once
    assert [e.index for b in batches for e in b] == list(range(8))
    assert not reader.is_active()


def test_a_paused_reader_collects_until_finish(qtbot: QtBot) -> None:
    batches: list[list[TokenEvent]] = []
    reader = TokenReader(10, batches.append)
    stream = TokenStream()
    reader.start(stream, ticking=False)
    for i in range(3):
        stream.append(_event(i))
    qtbot.wait(60)
    assert batches == [] and not reader.is_active()
    reader.set_ticking(True)
    qtbot.waitUntil(lambda: len(batches) == 1, timeout=WAIT_MS)
    reader.set_ticking(False)
    stream.append(_event(3))
    reader.finish()
    assert [len(b) for b in batches] == [3, 1]


# ---- the live view of a generation ------------------------------------------------------------------


def test_ttft_and_prompt_speed_show_at_the_first_token(qtbot: QtBot) -> None:
    from widgets.performance_panel import PerformancePanel

    perf = PerformancePanel(None)
    qtbot.addWidget(perf)
    perf.show()
    stream = TokenStream()
    perf.on_generation_started(stream)
    assert perf.tile_ttft.value.text() == "n/a" and perf.tile_prompt.value.text() == "n/a"
    t0 = 1_000_000_000
    stream.append(TokenEvent(0, 7, "Once", t0, ttft_s=0.25, prompt_tokens=100))
    stream.append(TokenEvent(1, 8, " upon", t0 + 20_000_000))
    # No generation_finished yet: the figures come from the first token.
    qtbot.waitUntil(lambda: perf.tile_ttft.value.text() == "250 ms", timeout=WAIT_MS)
    assert perf.tile_prompt.value.text() == "400 t/s"
    assert perf.tile_tokens.value.text() == "2"
    perf.token_reader.finish()
    # The next generation starts from n/a again, not from the last one's figures.
    perf.on_generation_started(TokenStream())
    assert perf.tile_ttft.value.text() == "n/a" and perf.tile_prompt.value.text() == "n/a"
    perf.token_reader.finish()


def test_the_speed_legend_keeps_its_place_when_values_arrive(qtbot: QtBot) -> None:
    plot = LivePlot(
        "Generation speed", "t/s", window_s=5, since_start=True, non_negative=True, reserve="9999.9"
    )
    plot.add_curve("per token")
    plot.add_curve("smoothed")
    holder = _holder(qtbot, plot)
    header = plot.header

    def places(width: int) -> list[list[int]]:
        """Where each segment of the readout starts, line by line, at this width."""
        return [[x for x, _s in line] for line in header._flow(width)]

    empty = {w: places(w) for w in range(150, 700, 7)}
    assert "n/a" in header.text()
    for i, value in enumerate((3.0, 123.4, 9999.9, 45.6)):
        plot.append("per token", float(i), value)
        plot.append("smoothed", float(i), value)
        plot.flush()
        assert "n/a" not in header.text() and "t/s" in header.text() and "tok/s" not in header.text()
        # At any width of the column: as many lines as before, each segment where it was.
        assert {w: places(w) for w in empty} == empty
    assert holder.isVisible()
