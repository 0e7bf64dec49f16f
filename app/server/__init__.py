"""llama-server instances seen from outside, and LlamaScope's own figures served to Prometheus.

- `client`: one HTTP client for a llama-server (its `/health`, `/props`, `/slots`, `/metrics`
  and the OpenAI-compatible API), with an optional API key and a timeout; every transport or
  HTTP failure becomes a `ServerError` whose message a person can act on.
- `metrics`: llama-server's Prometheus text parsed with prometheus_client's own parser.
- `snapshot`: one reading of a server as a frozen `ServerSnapshot` (units in the field names).
- `poller`: reads a set of servers off the caller's thread, at most once a second each.
- `bench`: a load test through the OpenAI-compatible streaming API at several concurrency
  levels (TTFT percentiles, inter-token latency, per-request and aggregate t/s, a plateau verdict).
- `record`: server benchmarks in the same history database as local runs, and their exports.
- `exporter`: LlamaScope's telemetry, generations and watched servers as a Prometheus endpoint.

This package sits beside app.quant, above app.bench (it stores into the run history) and
app.telemetry (the exporter serves its snapshots); nothing here loads llama.cpp.
"""
