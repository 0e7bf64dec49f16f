"""LlamaScope core: everything that runs, measures and inspects models. Imports no Qt."""

__version__ = "0.1.0"
