"""app.server against a real llama-server running the demo model: watching, benchmarking under load,
a server killed mid-benchmark, the Prometheus endpoint, and every bad input as a message."""

from __future__ import annotations

import http.server
import json
import queue
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.bench.history import HistoryError, HistoryStore
from app.server.bench import (
    LevelResult,
    LevelVerdict,
    RequestResult,
    ServerBenchError,
    ServerBenchPlan,
    judge,
    parse_concurrency,
    percentile,
    run_server_bench,
)
from app.server.client import ServerClient, ServerError, ServerErrorKind, parse_server_url
from app.server.exporter import ExporterError, PrometheusExporter, parse_listen_address
from app.server.metrics import MetricsError, parse_metrics
from app.server.poller import ServerPoller, ServerTarget
from app.server.record import (
    RUN_KIND,
    ServerRunRecorder,
    compare_runs,
    dumps,
    export_file,
    level_summary,
    stored_levels,
)
from app.server.snapshot import ServerReader, ServerSnapshot, ServerStatus
from app.telemetry.snapshot import DeviceVerdict, GpuSnapshot, Snapshot, ThrottleVerdict
from cli.main import main
from tests.llama_server import HOST, RunningServer, free_port, llama_server

pytestmark = pytest.mark.slow

# 4 slots of 512 tokens: room for the watch test's long generation and the benchmark's requests.
# One thread: the machines that run the tests are small and shared, and llama.cpp's threads spin.
SERVER_ARGS = ("--metrics", "--slots", "-np", "4", "-c", "2048", "-t", "1")
API_KEY = "test-key-17"


@pytest.fixture(scope="module")
def server(demo_model: str) -> Iterator[RunningServer]:
    with llama_server(demo_model, *SERVER_ARGS) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server(demo_model: str) -> Iterator[RunningServer]:
    """Started with an API key and without --metrics and --slots."""
    with llama_server(
        demo_model, "--api-key", API_KEY, "--no-slots", "-np", "1", "-c", "512", "-t", "1"
    ) as s:
        yield s


def _wait_for(snapshots: queue.Queue[ServerSnapshot], predicate: Any, limit: int = 120) -> ServerSnapshot:
    """The first snapshot that satisfies `predicate`, among at most `limit` (one a second)."""
    seen = []
    for _ in range(limit):
        snapshot = snapshots.get(timeout=60)
        if predicate(snapshot):
            return snapshot
        seen.append(snapshot)
    raise AssertionError(f"no matching snapshot among {len(seen)}: last {seen[-1]!r}")


# ---- watching ----------------------------------------------------------------------------------


def test_watch_reads_health_props_slots_and_metrics(server: RunningServer, demo_model: str) -> None:
    snapshots: queue.Queue[ServerSnapshot] = queue.Queue()
    poller = ServerPoller(interval_s=1.0, timeout_s=10.0)
    poller.add_listener(snapshots.put)
    try:
        url = poller.add(ServerTarget(f"{HOST}:{server.port}"))
        assert url == server.url
        first = _wait_for(snapshots, lambda s: s.status is ServerStatus.OK)
    finally:
        poller.stop()
    assert first.error is None and first.notes == ()
    assert first.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert first.model_path == demo_model
    assert first.total_slots == 4 and len(first.slots) == 4
    assert first.n_ctx_per_slot_tokens == 512 and all(s.n_ctx_tokens == 512 for s in first.slots)
    assert first.requests_processing == 0 and first.requests_deferred == 0
    assert first.prompt_tokens_total is not None and first.generated_tokens_total is not None
    assert first.metrics is not None and first.metrics.get("n_decode_total") is not None
    assert first.health_latency_s is not None and first.health_latency_s > 0


def test_watch_shows_a_busy_slot_while_a_request_runs(server: RunningServer) -> None:
    client = ServerClient(server.url, timeout_s=60.0)
    payload = {"prompt": "Once upon a time", "max_tokens": 400, "stream": True, "ignore_eos": True}
    with client.stream("/v1/completions", payload) as events:
        for index, _event in enumerate(events):
            if index == 3:  # a few tokens streamed: the slot is decoding, with hundreds to go
                busy = ServerReader(client).read()
                break
    assert busy.status is ServerStatus.OK
    assert busy.requests_processing == 1
    running = [s for s in busy.slots if s.is_processing]
    assert len(running) == 1 and busy.busy_slots == 1
    slot = running[0]
    assert slot.n_decoded_tokens is not None and slot.n_decoded_tokens >= 3
    assert slot.n_remain_tokens is not None and slot.n_remain_tokens > 0
    assert slot.context_used_tokens is not None and slot.context_used_tokens >= slot.n_decoded_tokens
    assert slot.context_used_ratio is not None and 0 < slot.context_used_ratio < 1
    # The stream was closed: the slot is freed (cancelled, or at the latest after its 400 tokens),
    # so the next tests find the server idle.
    reader = ServerReader(client)
    for _ in range(3000):  # bounded: 400 tokens take seconds even on a slow machine
        if reader.read().busy_slots == 0:
            break
        threading.Event().wait(0.05)
    assert reader.read().busy_slots == 0


def test_monitor_command_prints_server_lines(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor", "--server", server.url, "--seconds", "2.5"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if server.url in line]
    assert lines, out
    assert "  ok  SmolLM2-135M-Instruct.Q4_1.gguf  slots 0/4 busy" in lines[0]
    assert "Traceback" not in err and "unexpectedly" not in err


# ---- benchmarking ------------------------------------------------------------------------------


def test_server_bench_two_levels_stored_exported_and_compared(server: RunningServer, tmp_path: Any) -> None:
    client = ServerClient(server.url, timeout_s=60.0)
    plan = ServerBenchPlan(concurrency=(1, 2), requests=4, prompt_tokens=48, gen_tokens=12)
    store = HistoryStore(str(tmp_path / "history.sqlite3"))
    run_ids = []
    results = []
    progress: list[int] = []
    for _ in range(2):  # two runs, to compare
        recorder = ServerRunRecorder(store, client.url, plan, client.get_json("/props"))
        progress.clear()
        result = run_server_bench(
            client,
            plan,
            on_level=recorder.add_level,
            on_progress=lambda done, total, what: progress.append(done),
        )
        recorder.finish(result)
        run_ids.append(recorder.run_id)
        results.append(result)

        assert result.stopped is None and not result.cancelled and result.prompt_exact
        assert [level.concurrency for level in result.levels] == [1, 2]
        assert max(progress) == 8
        for level in result.levels:
            assert len(level.requests) == 4 and level.errors == 0
            for r in level.requests:
                assert r.prompt_tokens == 48  # exactly the plan's size, as the server counted it
                assert r.generated_tokens == 12  # ignore_eos: every token asked for
                # The nonce: nothing past the first word of another request's prompt is reused.
                assert r.cached_prompt_tokens is not None and r.cached_prompt_tokens < 8
                assert r.ttft_s is not None and r.total_s is not None and 0 < r.ttft_s < r.total_s
                assert r.inter_token_s is not None and r.gen_tokens_per_s is not None
                assert r.gen_tokens_per_s == pytest.approx(1.0 / r.inter_token_s)
            p50, p95, p99 = level.ttft_p50_s, level.ttft_p95_s, level.ttft_p99_s
            assert p50 is not None and p95 is not None and p99 is not None and p50 <= p95 <= p99
            assert level.generated_tokens == 48
            assert level.aggregate_tokens_per_s == pytest.approx(48 / level.wall_s)
            assert level.max_requests_processing is not None and level.max_requests_processing >= 1
        assert result.levels[0].verdict is LevelVerdict.BASELINE
        assert result.levels[1].verdict in (LevelVerdict.SCALING, LevelVerdict.PLATEAU, LevelVerdict.DEGRADED)
        assert result.props["total_slots"] == 4

    run, levels = stored_levels(store, run_ids[0])
    assert run.kind == RUN_KIND and run.status == "finished" and run.n_results == 2
    assert run.settings["props"]["total_slots"] == 4 and run.settings["server_url"] == server.url
    assert run.hardware_fingerprint is None  # the server's hardware is not this machine's
    assert [s.level.concurrency for s in levels] == [1, 2]
    stored = levels[1].summary()
    assert (
        stored["ttft_p95_s"] == level_summary(results[0].levels[1], plan)["ttft_p95_s"]
    )  # the same requests
    assert stored["test"] == "pp48+tg12" and stored["requests"] == 4

    rows = compare_runs(store, run_ids[0], run_ids[1])
    assert [(r.concurrency, r.test) for r in rows] == [(1, "pp48+tg12"), (2, "pp48+tg12")]
    assert all(r.comparison.p_value is not None for r in rows)

    table = dumps([s.summary() for s in levels], "md")
    assert table.splitlines()[0].startswith("| concurrency | requests | errors | TTFT p50 ms")
    assert len(table.splitlines()) == 4
    data = json.loads(dumps([s.summary() for s in levels], "json"))
    assert data[1]["concurrency"] == 2 and data[1]["kept_up"] in (True, False)
    export_file(str(tmp_path / "levels.csv"), [s.summary() for s in levels])
    assert (tmp_path / "levels.csv").read_text().startswith("concurrency,test,api,")
    with pytest.raises(HistoryError, match="extension"):
        export_file(str(tmp_path / "levels.xlsx"), [])


def test_server_bench_command_stores_and_shows_the_run(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["server-bench", server.url, "--concurrency", "1,2", "--requests", "2", "--prompt-tokens", "16",
         "--gen-tokens", "4", "-o", "json"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    levels = json.loads(out)
    assert [level["concurrency"] for level in levels] == [1, 2]
    assert all(level["errors"] == 0 and level["requests"] == 2 for level in levels)
    run_id = int(err.strip().rsplit("stored as run ", 1)[1].split()[0])

    assert main(["history", "--run", str(run_id)]) == 0
    shown = capsys.readouterr().out
    assert f"server benchmark {run_id} of " in shown and "| concurrency |" in shown
    assert main(["history"]) == 0
    assert "server-bench" in capsys.readouterr().out
    assert main(["compare", str(run_id), str(run_id)]) == 0
    assert "| 2 | pp16+tg4 |" in capsys.readouterr().out


def test_a_server_killed_mid_benchmark_keeps_the_finished_levels(demo_model: str, tmp_path: Any) -> None:
    store = HistoryStore(str(tmp_path / "history.sqlite3"))
    plan = ServerBenchPlan(concurrency=(1, 2, 4), requests=4, prompt_tokens=32, gen_tokens=64, timeout_s=30.0)
    with llama_server(demo_model, *SERVER_ARGS) as doomed:
        client = ServerClient(doomed.url, timeout_s=10.0)
        recorder = ServerRunRecorder(store, client.url, plan, client.get_json("/props"))

        def on_progress(done: int, total: int, what: str) -> None:
            if done == plan.requests + 1:  # the first request of the second level has finished
                doomed.kill()

        result = run_server_bench(client, plan, on_level=recorder.add_level, on_progress=on_progress)
        recorder.finish(result)
    assert result.stopped is not None
    assert result.stopped.startswith("the server stopped answering at concurrency 2: ")
    assert "refused the connection" in result.stopped
    assert [level.concurrency for level in result.levels] == [1]
    run, levels = stored_levels(store, recorder.run_id)
    assert run.status == "failed" and [s.level.concurrency for s in levels] == [1]
    assert levels[0].level.errors == 0 and len(levels[0].level.requests) == 4


def test_server_bench_command_against_a_dead_server_is_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["server-bench", f"http://{HOST}:{port}", "--concurrency", "1", "--requests", "1"]) == 1
    err = capsys.readouterr().err
    assert f"server benchmark failed: {HOST}:{port} refused the connection" in err
    assert "Traceback" not in err and "unexpectedly" not in err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--concurrency", "1,x"], "'x' is not a whole number"),
        (["--concurrency", "0"], "between 1 and"),
        (["--concurrency", "2,2"], "once"),
        (["--concurrency", "4", "--requests", "2"], "fewer than the concurrency 4"),
        (["--prompt-tokens", "0"], "--prompt-tokens must be"),
        (["--gen-tokens", "-1"], "--gen-tokens must be"),
        (["--timeout", "nan"], "timeout must be a positive"),
    ],
)
def test_server_bench_bad_arguments(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["server-bench", f"http://{HOST}:1", *arguments]) == 2
    assert message in capsys.readouterr().err


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("ftp://example.invalid", "only http:// and https://"),
        ("http://", "names no host"),
        ("http://127.0.0.1:99999", "not a server URL"),
        ("http://127.0.0.1:8080/?x=1", r"no \?query"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ServerError, match=message) as caught:
        parse_server_url(url)
    assert caught.value.kind is ServerErrorKind.BAD_URL


def test_url_forms() -> None:
    assert parse_server_url("127.0.0.1").url == "http://127.0.0.1:8080"
    assert parse_server_url("localhost:9000/llama/").url == "http://localhost:9000/llama"
    assert parse_server_url("https://[::1]").url == "https://[::1]:443"


def test_a_host_that_does_not_resolve() -> None:
    # .invalid never resolves (RFC 2606): no address is contacted.
    client = ServerClient("http://llamascope-test.invalid:8080", timeout_s=5.0)
    with pytest.raises(ServerError, match="cannot find the host 'llamascope-test.invalid'") as caught:
        client.get_json("/health")
    assert caught.value.kind is ServerErrorKind.UNRESOLVED and caught.value.kind.server_gone
    snapshot = ServerReader(client).read()
    assert snapshot.status is ServerStatus.UNREACHABLE and not snapshot.up
    assert snapshot.error is not None and "cannot find the host" in snapshot.error


def test_a_refused_connection() -> None:
    port = free_port()
    with pytest.raises(ServerError, match=f"{HOST}:{port} refused the connection") as caught:
        ServerClient(f"{HOST}:{port}").get_json("/props")
    assert caught.value.kind is ServerErrorKind.REFUSED


def test_a_server_that_never_answers_times_out() -> None:
    # The kernel accepts connections into the backlog; nobody ever reads or answers them.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((HOST, 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        client = ServerClient(f"{HOST}:{port}", timeout_s=0.3)
        with pytest.raises(ServerError, match=r"did not answer within 0.3 s") as caught:
            client.get_json("/health")
        assert caught.value.kind is ServerErrorKind.TIMEOUT
        snapshot = ServerReader(client).read()
        assert snapshot.status is ServerStatus.UNREACHABLE and "did not answer" in (snapshot.error or "")


def test_a_wrong_or_missing_api_key(keyed_server: RunningServer) -> None:
    wrong = ServerClient(keyed_server.url, api_key="not-the-key", timeout_s=30.0)
    with pytest.raises(ServerError, match="HTTP 401, the API key given was refused") as caught:
        wrong.get_json("/props")
    assert caught.value.kind is ServerErrorKind.UNAUTHORIZED and caught.value.status == 401
    snapshot = ServerReader(wrong).read()  # /health is open; /props is not
    assert snapshot.status is ServerStatus.UNAUTHORIZED and "--api-key" in (snapshot.error or "")
    missing = ServerClient(keyed_server.url, timeout_s=30.0)
    with pytest.raises(ServerError, match="the server needs an API key"):
        missing.get_json("/slots")
    with pytest.raises(ServerError, match="401"):
        run_server_bench(wrong, ServerBenchPlan((1,), 1, 8, 2))


def test_the_right_key_and_endpoints_not_enabled(keyed_server: RunningServer) -> None:
    snapshot = ServerReader(ServerClient(keyed_server.url, api_key=API_KEY, timeout_s=30.0)).read()
    assert snapshot.status is ServerStatus.OK and snapshot.total_slots == 1
    assert any("Start it with `--slots`" in note for note in snapshot.notes), snapshot.notes
    assert any("Start it with `--metrics`" in note for note in snapshot.notes), snapshot.notes
    assert snapshot.requests_processing is None and snapshot.slots == ()


def test_bench_command_with_a_wrong_key_is_a_message(
    keyed_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["server-bench", keyed_server.url, "--api-key", "nope", "-c", "1", "-n", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "HTTP 401, the API key given was refused: check --api-key" in err
    assert "Traceback" not in err


class _Stub(http.server.BaseHTTPRequestHandler):
    """A server that is not a (working) llama-server: /metrics is whatever the test says."""

    metrics_text = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = {
            "/health": b'{"status":"ok"}',
            "/props": b'{"model_path":"/models/x.gguf","total_slots":1}',
            "/slots": b"[]",
            "/metrics": self.metrics_text.encode(),
        }.get(self.path, b"not found")
        self.send_response(200 if self.path in ("/health", "/props", "/slots", "/metrics") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.mark.parametrize(
    ("text", "note"),
    [
        ("llamacpp:requests_processing {{oops\n", "/metrics is not valid Prometheus text"),
        (
            "# TYPE node_load1 gauge\nnode_load1 0.5\n",
            "has no llama-server (llamacpp:) metrics (it has node_load1",
        ),
        ("", "/metrics has no llama-server (llamacpp:) metrics: it is empty"),
    ],
)
def test_a_malformed_or_unexpected_metrics_endpoint(text: str, note: str) -> None:
    handler = type("Stub", (_Stub,), {"metrics_text": text})
    httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        snapshot = ServerReader(ServerClient(f"{HOST}:{httpd.server_address[1]}")).read()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert snapshot.status is ServerStatus.OK and snapshot.model == "x.gguf"
    assert any(note in n for n in snapshot.notes), snapshot.notes
    assert snapshot.metrics is None and snapshot.requests_processing is None
    with pytest.raises(MetricsError):
        parse_metrics(text)


def test_plan_and_verdict_rules() -> None:
    assert parse_concurrency("1, 2,4") == (1, 2, 4)
    with pytest.raises(ServerBenchError, match="no levels"):
        parse_concurrency(" , ")
    with pytest.raises(ServerBenchError, match="--api must be"):
        ServerBenchPlan((1,), 1, 1, 1, api="embeddings")
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([], 95) is None

    def level(concurrency: int, tokens_per_request: int, wall_s: float, errors: int = 0) -> LevelResult:
        ok = RequestResult(0, None, 0.1, 1.0, tokens_per_request, 8, 0, 0.01, 100.0)
        bad = RequestResult(1, "refused", None, None, 0, 8, None, None, None)
        return LevelResult(concurrency, (ok,) * concurrency + (bad,) * errors, wall_s, 0.0)

    one = level(1, 100, 1.0)  # 100 t/s
    assert judge(one, None)[0] is LevelVerdict.BASELINE
    assert judge(level(2, 100, 1.2), one)[0] is LevelVerdict.SCALING  # 167 t/s
    assert judge(level(2, 100, 1.95), one)[0] is LevelVerdict.PLATEAU  # 103 t/s
    assert judge(level(2, 100, 4.0), one)[0] is LevelVerdict.DEGRADED  # 50 t/s
    verdict, detail = judge(level(2, 100, 1.0, errors=1), one)
    assert verdict is LevelVerdict.ERRORS and detail == "1 of 3 requests failed" and not verdict.kept_up


# ---- Prometheus ----------------------------------------------------------------------------------


def _scrape(url: str) -> dict[str, list[Any]]:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        families.setdefault(family.name, []).extend(family.samples)
    return families


def _real_snapshot() -> Snapshot:
    from app.telemetry.sampler import Sampler

    snapshots: queue.Queue[Snapshot] = queue.Queue()
    sampler = Sampler(interval_s=0.2)
    sampler.add_listener(snapshots.put)
    sampler.start()
    try:
        while True:
            snapshot = snapshots.get(timeout=60)
            if snapshot.cpu_percent is not None:  # the first tick has no rates yet
                return snapshot
    finally:
        sampler.stop()


def test_exporter_serves_telemetry_generations_and_servers(server: RunningServer) -> None:
    exporter = PrometheusExporter()
    url = exporter.start(HOST, 0)
    try:
        assert url.startswith(f"http://{HOST}:") and url.endswith("/metrics")
        snapshot = _real_snapshot()
        exporter.update_telemetry(snapshot)
        exporter.update_server(ServerReader(ServerClient(server.url)).read())
        exporter.update_server(ServerReader(ServerClient(f"{HOST}:{free_port()}")).read())
        exporter.observe_generation(
            prompt_tokens=12, generated_tokens=30, ttft_s=0.2, total_s=1.5, stop_reason="length"
        )
        exporter.observe_generation(
            prompt_tokens=5, generated_tokens=7, ttft_s=3.0, total_s=4.0, stop_reason="eos"
        )
        families = _scrape(url)
    finally:
        exporter.stop()
    value = {name: samples[0].value for name, samples in families.items() if samples}
    assert value["llamascope_cpu_utilization_ratio"] == pytest.approx((snapshot.cpu_percent or 0) / 100)
    assert 0 <= value["llamascope_cpu_utilization_ratio"] <= 1
    assert value["llamascope_memory_used_bytes"] == snapshot.mem_used_bytes
    build = families["llamascope_build_info"][0]
    assert build.name == "llamascope_build_info" and build.labels["version"] and build.value == 1
    tokens = families["llamascope_generated_tokens"]
    assert [(s.name, s.value) for s in tokens if s.name.endswith("_total")] == [
        ("llamascope_generated_tokens_total", 37.0)
    ]
    ttft = {(s.name, s.labels.get("le")): s.value for s in families["llamascope_ttft_seconds"]}
    assert (
        ttft[("llamascope_ttft_seconds_bucket", "0.25")] == 1
        and ttft[("llamascope_ttft_seconds_count", None)] == 2
    )
    assert ttft[("llamascope_ttft_seconds_sum", None)] == pytest.approx(3.2)
    up = {s.labels["server"]: s.value for s in families["llamascope_server_up"]}
    assert up[server.url] == 1.0 and sorted(up.values()) == [0.0, 1.0]
    slots = {s.labels["server"]: s.value for s in families["llamascope_server_slots"]}
    assert slots == {server.url: 4.0}
    info = families["llamascope_server_info"][0]
    assert info.name == "llamascope_server_info" and info.labels["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llamascope_gpu_power_watts" not in families  # no GPU here: left out, not 0


def test_exporter_names_gpu_figures_the_prometheus_way() -> None:
    gpu = GpuSnapshot(
        index=0,
        name="Test GPU",
        utilization_percent=50.0,
        memory_used_bytes=1 << 30,
        memory_total_bytes=8 << 30,
        temperature_c=60.0,
        power_watts=123.5,
        power_limit_watts=250.0,
        sm_clock_mhz=1500.0,
        memory_clock_mhz=7000.0,
        fan_percent=40.0,
        throttle_reasons_mask=0,
        throttle_reasons=(),
        energy_joules_total=1000.0,
    )
    snapshot = Snapshot(
        t_monotonic_s=1.0,
        t_unix_s=1.7e9,
        interval_s=1.0,
        cpu_percent=25.0,
        cpu_per_core_percent=(20.0, 30.0),
        cpu_freq_mhz=2500.0,
        cpu_freq_max_mhz=3000.0,
        load_avg=(1.0, 1.0, 1.0),
        mem_total_bytes=16 << 30,
        mem_used_bytes=4 << 30,
        mem_available_bytes=12 << 30,
        swap_used_bytes=0,
        process_rss_bytes=1 << 20,
        process_cpu_percent=150.0,
        gpus=(gpu,),
        temperatures_c=(("Package id 0", 55.0),),
        fans_rpm=(),
        cpu_package_power_watts=35.0,
        cpu_energy_joules_total=500.0,
        cpu_throttle_events_total=2,
        verdicts=(
            DeviceVerdict("CPU", ThrottleVerdict.NOT_THROTTLING, ""),
            DeviceVerdict("GPU 0", ThrottleVerdict.POWER, "power cap"),
        ),
    )
    exporter = PrometheusExporter()
    url = exporter.start(HOST, 0)
    try:
        exporter.update_telemetry(snapshot)
        families = _scrape(url)
    finally:
        exporter.stop()

    def sample(metric: str, **labels: str) -> float:
        for samples in families.values():
            for s in samples:
                if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        raise AssertionError(f"{metric}{labels} not served")

    assert sample("llamascope_gpu_power_watts", gpu="0") == 123.5
    assert sample("llamascope_gpu_utilization_ratio", gpu="0") == 0.5
    assert sample("llamascope_gpu_sm_clock_hertz", gpu="0") == 1.5e9
    assert sample("llamascope_gpu_energy_joules_total", gpu="0") == 1000.0
    assert sample("llamascope_gpu_info", gpu="0", name="Test GPU") == 1
    assert sample("llamascope_cpu_core_utilization_ratio", core="1") == 0.3
    assert sample("llamascope_cpu_energy_joules_total") == 500.0
    assert sample("llamascope_cpu_throttle_events_total") == 2
    assert sample("llamascope_process_cpu_utilization_ratio") == 1.5
    assert sample("llamascope_temperature_celsius", sensor="Package id 0") == 55.0
    assert (
        sample("llamascope_throttling", device="GPU 0") == 1
        and sample("llamascope_throttling", device="CPU") == 0
    )


def test_exporter_port_already_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        exporter = PrometheusExporter()
        with pytest.raises(ExporterError, match=f"{HOST}:{port} is already in use"):
            exporter.start(HOST, port)
        assert not exporter.running


def test_monitor_prometheus_port_taken_is_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["monitor", "--prometheus", f"{HOST}:{port}", "--seconds", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{HOST}:{port} is already in use" in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["host:port", "127.0.0.1:70000", ""])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ExporterError):
        parse_listen_address(text)
    assert parse_listen_address("9464") == ("127.0.0.1", 9464)
    assert parse_listen_address("0.0.0.0:9100") == ("0.0.0.0", 9100)


def test_monitor_prometheus_serves_while_monitoring(server: RunningServer) -> None:
    port = free_port()
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            main(["monitor", "--prometheus", f"{HOST}:{port}", "--server", server.url, "--seconds", "8"])
        ),
        name="test-monitor",
    )
    worker.start()
    try:
        families: dict[str, list[Any]] = {}
        for _ in range(600):  # until the endpoint is up and has read the server once (bounded)
            try:
                families = _scrape(f"http://{HOST}:{port}/metrics")
            except urllib.error.URLError:
                families = {}
            if "llamascope_server_up" in families:
                break
            if not worker.is_alive():
                break
            threading.Event().wait(0.05)
    finally:
        worker.join(timeout=60)
    assert result == [0]
    assert {s.labels["server"]: s.value for s in families["llamascope_server_up"]} == {server.url: 1.0}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--server", "ftp://example.invalid"], "only http:// and https://"),
        (["--server", "http://127.0.0.1:1", "--csv"], "--csv writes the local readings only"),
        (["--server", "http://127.0.0.1:1", "--timeout", "0"], "--timeout must be"),
        (["--prometheus", "host:port"], "give HOST:PORT or PORT"),
    ],
)
def test_monitor_bad_arguments(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor", *arguments, "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
