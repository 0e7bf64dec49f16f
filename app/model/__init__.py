"""The model file and how to load it.

GGUF inspection, load and sampling settings, profiles, the memory estimate, the demo model.
"""
