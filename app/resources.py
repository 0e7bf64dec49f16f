"""Where LlamaScope's resource files are, from a source checkout or a frozen bundle."""

from __future__ import annotations

import os
import sys


def resource_root() -> str:
    # PyInstaller unpacks data files under sys._MEIPASS; a checkout keeps them beside app/.
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return os.path.join(frozen_root, "resources")
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources")


def resource_path(*parts: str) -> str:
    return os.path.join(resource_root(), *parts)
