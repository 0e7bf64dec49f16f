"""Quantization.

The request, the child process that runs llama_model_quantize, and the types a build offers.
"""
