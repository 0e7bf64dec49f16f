"""Writes stdlib-docstrings.txt: the docstrings of a fixed list of Python standard library modules.

    python resources/calibration/make_stdlib_docstrings.py > resources/calibration/stdlib-docstrings.txt

For each module in MODULES: its docstring, then, for each public class and function the module
itself defines (sorted by name), a "name" line and its docstring; a class's public methods follow
it. The docstrings are part of CPython's source (PSF License Agreement, LICENSE-python.txt); the
text depends on the Python version, which the first line records.
"""

from __future__ import annotations

import importlib
import inspect
import platform

MODULES = ("argparse", "textwrap", "heapq", "bisect", "fractions", "statistics", "shlex", "difflib")
LIMIT = 48_000  # characters: a small calibration text, cut at a blank line


def _doc(obj: object) -> str | None:
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else None


def main() -> None:
    parts = [f"Python {platform.python_version()} standard library docstrings"]
    for name in MODULES:
        module = importlib.import_module(name)
        doc = _doc(module)
        if doc:
            parts.append(f"Module {name}\n\n{doc}")
        for attr in sorted(vars(module)):
            obj = vars(module)[attr]
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = _doc(obj)
            if doc:
                parts.append(f"{name}.{attr}\n\n{doc}")
            if inspect.isclass(obj):
                for method in sorted(vars(obj)):
                    member = vars(obj)[method]
                    if method.startswith("_") or not inspect.isfunction(member):
                        continue
                    doc = _doc(member)
                    if doc:
                        parts.append(f"{name}.{attr}.{method}\n\n{doc}")
    text = ""
    for part in parts:
        if len(text) + len(part) + 2 > LIMIT:
            break
        text += part + "\n\n"
    print(text.rstrip("\n"))


if __name__ == "__main__":
    main()
