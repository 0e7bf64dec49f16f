"""Entry script of the PyInstaller bundle (packaging/llamascope.spec).

- `LlamaScope` with no arguments opens the window; any other arguments go to the `llamascope`
  command line (cli.main.main): `LlamaScope bench …`, `LlamaScope info MODEL`, `LlamaScope gui MODEL`.
- `LlamaScope --self-test [MODEL]` runs the headless self-test (ui/self_test.py).
- `LlamaScope -m MODULE …` runs one of the bundled modules as `python -m MODULE` would: the core
  starts child processes as `sys.executable -m app.…`, and in a bundle sys.executable is this
  program, not a Python interpreter.
"""

from __future__ import annotations

import multiprocessing
import runpy
import sys


def main() -> int:
    # A multiprocessing child of a frozen program re-runs this executable; this hands it over.
    multiprocessing.freeze_support()
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "-m":
        sys.argv = [sys.argv[0], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    if args[:1] == ["--self-test"]:
        # Imported by name here (not through cli.main) so PyInstaller sees and bundles the GUI.
        from ui import self_test

        return int(self_test.main(args[1:]))
    from cli.main import main as cli_main

    return int(cli_main(args))


if __name__ == "__main__":
    sys.exit(main())
