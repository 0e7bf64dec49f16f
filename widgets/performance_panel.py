"""Performance panel: live speed, benchmarks, history and auto-tune."""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from widgets.panel import PlannedPanel


class PerformancePanel(PlannedPanel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(
            "Performance",
            [
                ("Real-time", "Will plot tokens/s and time to first token live during generation."),
                ("Efficiency", "Will show CPU and memory use and joules per token during a run."),
                ("Thermal", "Will show temperatures and throttling while the model runs."),
                ("Benchmarks", "Will run llama-bench-compatible pp/tg tests and keep a history."),
                ("Optimization", "Will auto-tune threads, batch sizes and cache types for this model."),
            ],
            parent,
        )
