"""Reusable widgets: the four panels, the generation console, small display helpers."""
