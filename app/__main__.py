"""`python -m app`: the same entry point as the `llamascope` command."""

from app.cli import main

raise SystemExit(main())
