"""`python -m cli`: the same entry point as the `llamascope` command."""

from cli.main import main

raise SystemExit(main())
