"""Qt glue: application start-up, main window, bridges from the core to Qt signals."""
