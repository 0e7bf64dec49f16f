"""llama.cpp itself: which build, whether it works on this CPU, its facts, and the driver on its C API."""
