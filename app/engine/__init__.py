"""The engine host: the child process that runs llama.cpp, its client, and the jobs it runs."""
