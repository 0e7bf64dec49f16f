"""The `llamascope` command line: parses arguments, calls the core, and may start the window."""
