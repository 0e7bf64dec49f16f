"""The pg tests of a benchmark as llama-batched-bench reports them: the time to the first token
(T_PP), the prompt and generation speeds apart (S_PP, S_TG) and the total (S).

The figures come from app.bench.batched (mean ± standard deviation over the repetitions); the
table shows itself only when the benchmark has a pg test.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QAbstractItemView, QTableWidget

from app.bench.batched import result_pg_figures
from app.bench.runner import BenchResult
from widgets.table_fit import cell, fit_columns, stacked

# Two lines each: six columns of one-line headers would be wider than the column of the window.
HEADERS = ("test", "TTFT\n(T_PP) ms", "S_PP\nt/s", "T_TG\ns", "S_TG\nt/s", "S\nt/s")
TIPS = (
    "The pg test (-pg PP,TG), at its depth",
    "Time to the first token: decoding the PP prompt tokens, as batched-bench's T_PP",
    "Prompt speed: PP ÷ T_PP",
    "Time of the TG generated tokens, one decode each",
    "Generation speed: TG ÷ T_TG",
    "Total speed: (PP + TG) ÷ (T_PP + T_TG), llama-bench's t/s for the test",
)


class PgTable(QTableWidget):
    visibility_changed = Signal(bool)  # shown with the first pg result, hidden when cleared

    def __init__(self) -> None:
        super().__init__(0, len(HEADERS))
        self.setObjectName("pgTable")
        self.setHorizontalHeaderLabels(list(HEADERS))
        for col, tip in enumerate(TIPS):
            item = self.horizontalHeaderItem(col)
            if item is not None:
                item.setToolTip(tip)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        # The figures at their width; the test name takes the rest and wraps ("pg512,128 @ d4096").
        fit_columns(self, elastic=(0,))
        self.setMinimumHeight(120)
        self.setToolTip("Prompt + generation tests as llama-batched-bench reports them (B = 1)")
        self.setVisible(False)

    def clear_results(self) -> None:
        self.setRowCount(0)
        self.setVisible(False)
        self.visibility_changed.emit(False)

    def add_result(self, result: BenchResult) -> None:
        """A row for a pg result with its prompt times; any other result is not one of this table's."""
        figures = result_pg_figures(result)
        if figures is None:
            return
        row = self.rowCount()
        self.setRowCount(row + 1)
        values = (
            result.test.name,
            figures.ttft_ms.text(".1f"),
            figures.s_pp_ts.text(".2f"),
            figures.t_tg_s.text(".3f"),
            figures.s_tg_ts.text(".2f"),
            figures.s_ts.text(".2f"),
        )
        tip = (
            f"N_KV {figures.n_kv} (depth {figures.n_depth} + {figures.n_prompt} + {figures.n_gen}), "
            f"{figures.n_repetitions} repetition(s); {result.n_threads} threads, n_batch {result.n_batch}, "
            f"n_ubatch {result.n_ubatch}"
        )
        for col, value in enumerate(values):
            self.setItem(row, col, cell(stacked(value), tip))
        self.setVisible(True)
        self.visibility_changed.emit(True)


__all__ = ["PgTable"]
