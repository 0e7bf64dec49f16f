"""Where LlamaScope's resource files are, from a source checkout or a frozen bundle.

This is the one place that knows about PyInstaller's layout: everything else asks here.
"""

from __future__ import annotations

import os
import sys


def is_frozen() -> bool:
    """True inside a PyInstaller bundle (packaging/llamascope.spec)."""
    return bool(getattr(sys, "frozen", False)) and hasattr(sys, "_MEIPASS")


def resource_root() -> str:
    # PyInstaller unpacks data files under sys._MEIPASS; a checkout keeps them beside app/.
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return os.path.join(frozen_root, "resources")
    # This file is app/common/resources.py: the checkout's root is three levels up.
    here = os.path.abspath(__file__)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(here))), "resources")


def resource_path(*parts: str) -> str:
    return os.path.join(resource_root(), *parts)
