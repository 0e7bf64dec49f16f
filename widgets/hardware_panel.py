"""Hardware panel: what the machine is and what it is doing while a model runs."""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from widgets.panel import PlannedPanel


class HardwarePanel(PlannedPanel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(
            "Hardware",
            [
                ("Hardware Detection", "Will detect the CPU (model, cores, cache, SIMD flags), RAM and GPUs."),
                ("Optimization", "Will recommend threads, batch sizes and GPU layers for this machine."),
                ("Monitoring", "Will plot CPU, memory, GPU, temperature and power live, with throttling."),
            ],
            parent,
        )
