"""A llama-server under load: streaming requests at several concurrency levels.

At each level C, N requests go through the OpenAI-compatible streaming API, C at a time (each of
C workers sends its next request when the previous one ended: a closed loop, as GuideLLM's
concurrent profile and GPUStack's benchmark runner do). Per request it measures, on this
machine's clock:

- TTFT: from sending the request to the first streamed token;
- inter-token latency: (last token - first token) / (tokens - 1);
- generation t/s: (tokens - 1) / (last token - first token), as LlamaScope's own figure;

and per level the TTFT p50/p95/p99, the aggregate t/s (every generated token of the level over
the level's wall time), the errors, the most requests the server reported deferred (queued
for a slot) while it ran, and a verdict: did the aggregate throughput still rise with the
concurrency, or has it reached its plateau (more requests only wait longer)?

Prompts are exactly `prompt_tokens` tokens when the server can tokenize (`/tokenize`, llama-
server's): a per-request nonce first, then a fixed text, sent as token ids. The nonce makes every
prompt differ from its first tokens on, so the server's prompt cache cannot serve a later request
from an earlier one; the cached tokens the server reports are kept per request to show it. Without
`/tokenize` (another OpenAI-compatible server), or with the chat API, the prompt is text of about
that many tokens and the server's own count (`usage`) is kept. `ignore_eos` asks llama-server to
generate all `gen_tokens`; a request that got fewer says so in its token count.

A server that stops answering ends the benchmark: the levels that finished are returned (and
were already handed to `on_level`), with the reason.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.common.stats import mean, stdev
from app.server.client import ServerClient, ServerError, ServerErrorKind
from app.server.metrics import MetricsError, parse_metrics

MAX_CONCURRENCY = 512
MAX_REQUESTS = 100_000
MAX_PROMPT_TOKENS = 1_000_000
MAX_GEN_TOKENS = 100_000
DEFAULT_REQUEST_TIMEOUT_S = 120.0
APIS = ("completions", "chat")
# Throughput that rose by less than this share from the previous level has stopped rising.
PLATEAU_GAIN = 0.10
# /metrics is read this often during a level for the deferred (queued) requests.
METRICS_PERIOD_S = 0.5
# A stream may carry a few events besides the tokens (role, usage, timings); more than this many
# beyond the tokens asked for is a server that does not stop, and the request is ended.
_EXTRA_EVENTS = 64
_FILLER = (
    "The history of measurement is the history of agreeing on units. Merchants weighed grain "
    "against stones, builders counted cubits from the elbow to the fingertip, and sailors timed "
    "knots on a rope paid out behind the ship. Each of these worked because everyone nearby "
    "used the same reference, and each broke down when goods or ideas travelled further. "
)


class ServerBenchError(Exception):
    """A benchmark cannot be planned or started; the message says why."""


@dataclass(frozen=True)
class ServerBenchPlan:
    concurrency: tuple[int, ...]
    requests: int  # per level
    prompt_tokens: int
    gen_tokens: int
    api: str = "completions"
    timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    warmup: bool = True

    def __post_init__(self) -> None:
        if not self.concurrency:
            raise ServerBenchError("give at least one concurrency level, e.g. --concurrency 1,2,4")
        for c in self.concurrency:
            if not 1 <= c <= MAX_CONCURRENCY:
                raise ServerBenchError(
                    f"a concurrency level must be between 1 and {MAX_CONCURRENCY}, not {c}"
                )
        if len(set(self.concurrency)) != len(self.concurrency):
            raise ServerBenchError("each concurrency level may be given once")
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise ServerBenchError(f"--requests must be between 1 and {MAX_REQUESTS:,}, not {self.requests}")
        if self.requests < max(self.concurrency):
            raise ServerBenchError(
                f"--requests {self.requests} is fewer than the concurrency {max(self.concurrency)}: "
                f"that level could never have {max(self.concurrency)} requests in flight"
            )
        if not 1 <= self.prompt_tokens <= MAX_PROMPT_TOKENS:
            raise ServerBenchError(f"--prompt-tokens must be between 1 and {MAX_PROMPT_TOKENS:,}")
        if not 1 <= self.gen_tokens <= MAX_GEN_TOKENS:
            raise ServerBenchError(f"--gen-tokens must be between 1 and {MAX_GEN_TOKENS:,}")
        if self.api not in APIS:
            raise ServerBenchError(f"--api must be one of {', '.join(APIS)}, not {self.api!r}")
        if not self.timeout_s > 0 or not math.isfinite(self.timeout_s):
            raise ServerBenchError("the request timeout must be a positive number of seconds")

    @property
    def test_name(self) -> str:
        """llama-bench's style of label: pp512+tg128."""
        return f"pp{self.prompt_tokens}+tg{self.gen_tokens}"


def parse_concurrency(text: str) -> tuple[int, ...]:
    """ "1,2,4,8" into (1, 2, 4, 8); a message for anything else."""
    values = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise ServerBenchError(
                f"--concurrency: {part!r} is not a whole number (give e.g. 1,2,4,8)"
            ) from None
    if not values:
        raise ServerBenchError("--concurrency: no levels given (give e.g. 1,2,4,8)")
    return tuple(values)


@dataclass(frozen=True)
class RequestResult:
    index: int
    error: str | None  # None: the request finished
    ttft_s: float | None
    total_s: float | None  # from sending to the last token
    generated_tokens: int
    prompt_tokens: int | None  # as the server counted them (usage), else as sent
    cached_prompt_tokens: int | None  # served from the server's prompt cache (usage)
    inter_token_s: float | None
    gen_tokens_per_s: float | None

    @property
    def ok(self) -> bool:
        return self.error is None


class LevelVerdict(enum.Enum):
    BASELINE = "baseline"  # the first level: nothing to compare with
    SCALING = "scaling"  # throughput rose with the concurrency: the server kept up
    PLATEAU = "plateau"  # throughput flat: more concurrency only adds waiting
    DEGRADED = "degraded"  # throughput fell
    ERRORS = "errors"  # requests failed

    @property
    def kept_up(self) -> bool:
        return self in (LevelVerdict.BASELINE, LevelVerdict.SCALING)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between the two nearest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: tuple[RequestResult, ...]
    wall_s: float
    started_unix_s: float
    verdict: LevelVerdict = LevelVerdict.BASELINE
    verdict_detail: str = ""
    max_requests_deferred: float | None = None  # from /metrics during the level; None: not enabled
    max_requests_processing: float | None = None

    @property
    def ok_requests(self) -> tuple[RequestResult, ...]:
        return tuple(r for r in self.requests if r.ok)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.requests if not r.ok)

    def _values(self, name: str) -> list[float]:
        return [v for r in self.ok_requests if (v := getattr(r, name)) is not None]

    def ttft_percentile_s(self, q: float) -> float | None:
        return percentile(self._values("ttft_s"), q)

    @property
    def ttft_p50_s(self) -> float | None:
        return self.ttft_percentile_s(50)

    @property
    def ttft_p95_s(self) -> float | None:
        return self.ttft_percentile_s(95)

    @property
    def ttft_p99_s(self) -> float | None:
        return self.ttft_percentile_s(99)

    @property
    def inter_token_mean_s(self) -> float | None:
        values = self._values("inter_token_s")
        return mean(values) if values else None

    @property
    def inter_token_p95_s(self) -> float | None:
        return percentile(self._values("inter_token_s"), 95)

    @property
    def request_tokens_per_s_samples(self) -> tuple[float, ...]:
        return tuple(self._values("gen_tokens_per_s"))

    @property
    def request_tokens_per_s_mean(self) -> float | None:
        values = self.request_tokens_per_s_samples
        return mean(values) if values else None

    @property
    def request_tokens_per_s_stdev(self) -> float | None:
        values = self.request_tokens_per_s_samples
        return stdev(values) if len(values) > 1 else None

    @property
    def generated_tokens(self) -> int:
        return sum(r.generated_tokens for r in self.ok_requests)

    @property
    def aggregate_tokens_per_s(self) -> float | None:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 and self.ok_requests else None

    @property
    def requests_per_s(self) -> float | None:
        return len(self.ok_requests) / self.wall_s if self.wall_s > 0 else None

    @property
    def cached_prompt_tokens(self) -> int | None:
        values = [r.cached_prompt_tokens for r in self.ok_requests if r.cached_prompt_tokens is not None]
        return sum(values) if values else None


def judge(level: LevelResult, previous: LevelResult | None) -> tuple[LevelVerdict, str]:
    """Whether the server kept up at this level, from its throughput against the previous level's."""
    if level.errors:
        return LevelVerdict.ERRORS, f"{level.errors} of {len(level.requests)} requests failed"
    now = level.aggregate_tokens_per_s
    queued = (
        f"; up to {level.max_requests_deferred:.0f} requests waited for a slot"
        if level.max_requests_deferred
        else ""
    )
    if previous is None or now is None or not previous.aggregate_tokens_per_s:
        return LevelVerdict.BASELINE, "first level" + queued
    gain = now / previous.aggregate_tokens_per_s
    ideal = level.concurrency / previous.concurrency
    scale = f"×{gain:.2f} aggregate t/s for ×{ideal:g} concurrency"
    ttft_before, ttft_now = previous.ttft_p95_s, level.ttft_p95_s
    ttft = f", TTFT p95 ×{ttft_now / ttft_before:.1f}" if ttft_before and ttft_now else ""
    if gain >= 1.0 + PLATEAU_GAIN:
        if ideal > 1:
            return LevelVerdict.SCALING, f"{scale} ({(gain - 1) / (ideal - 1):.0%} of linear){ttft}{queued}"
        return LevelVerdict.SCALING, f"{scale}{ttft}{queued}"
    if gain >= 1.0 - PLATEAU_GAIN:
        return LevelVerdict.PLATEAU, f"{scale}: throughput has stopped rising{ttft}{queued}"
    return LevelVerdict.DEGRADED, f"{scale}: throughput fell{ttft}{queued}"


@dataclass(frozen=True)
class ServerBenchResult:
    url: str
    plan: ServerBenchPlan
    levels: tuple[LevelResult, ...]
    stopped: str | None = None  # why the benchmark ended before its last level; None: it finished
    cancelled: bool = False
    props: dict[str, Any] = field(default_factory=dict, compare=False)
    prompt_exact: bool = True  # prompts were exactly plan.prompt_tokens tokens


class _Prompts:
    """Builds each request's prompt: a nonce, then the filler, cut to the plan's token count."""

    def __init__(self, client: ServerClient, plan: ServerBenchPlan) -> None:
        self.client = client
        self.plan = plan
        self.exact = plan.api == "completions"
        self._filler_tokens: list[int] = []
        if self.exact:
            try:
                text = _FILLER * (1 + plan.prompt_tokens // 40)
                while True:  # the filler is long enough once its tokens cover the prompt
                    tokens = self._tokenize(text)
                    if len(tokens) >= plan.prompt_tokens or len(text) > 40 * plan.prompt_tokens + 4096:
                        break
                    text += _FILLER * (1 + plan.prompt_tokens // 40)
                self._filler_tokens = tokens
            except ServerError as exc:
                if exc.kind is not ServerErrorKind.NOT_ENABLED:
                    raise
                self.exact = False  # no /tokenize: an OpenAI-compatible server that is not llama-server

    def _tokenize(self, text: str) -> list[int]:
        data = self.client.post_json("/tokenize", {"content": text, "add_special": False})
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ServerError(ServerErrorKind.PROTOCOL, "/tokenize did not answer a list of token ids")
        return tokens

    def prompt(self) -> tuple[list[int] | str, int | None]:
        """The next prompt (token ids, or text) and its length in tokens when known."""
        nonce = f"Request {uuid.uuid4().hex[:16]}. "
        if self.exact:
            head = self._tokenize(nonce)
            tokens = (head + self._filler_tokens)[: self.plan.prompt_tokens]
            return tokens, len(tokens)
        words = _FILLER.split()
        count = max(0, int(self.plan.prompt_tokens * 0.75) - 4)  # English runs about 4 tokens to 3 words
        return nonce + " ".join(words[i % len(words)] for i in range(count)), None


def _payload(
    plan: ServerBenchPlan, prompt: list[int] | str, gen_tokens: int, model: str | None
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "max_tokens": gen_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # llama-server: generate all of them, as llama-bench's tg does
    }
    if model:
        payload["model"] = model
    if plan.api == "chat":
        payload["messages"] = [{"role": "user", "content": prompt}]
    else:
        payload["prompt"] = prompt
    return payload


def _token_text(event: Any, chat: bool) -> str | None:
    """The text a streamed event carries, or None for events without a choice (usage, timings)."""
    if not isinstance(event, dict):
        return None
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    if chat:
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _one_request(
    client: ServerClient,
    plan: ServerBenchPlan,
    index: int,
    prompt: list[int] | str,
    n_prompt: int | None,
    model: str | None,
    gen_tokens: int,
    cancel: threading.Event,
) -> tuple[RequestResult, ServerError | None]:
    path = "/v1/chat/completions" if plan.api == "chat" else "/v1/completions"
    chat = plan.api == "chat"
    start = time.monotonic()
    first: float | None = None
    last: float | None = None
    chunks = 0
    usage: dict[str, Any] = {}

    def failed(message: str) -> RequestResult:
        return RequestResult(index, message, None, None, chunks, n_prompt, None, None, None)

    try:
        with client.stream(path, _payload(plan, prompt, gen_tokens, model), plan.timeout_s) as events:
            for n_events, event in enumerate(events):
                if n_events > gen_tokens + _EXTRA_EVENTS:
                    return failed(
                        f"the server sent more than {gen_tokens} tokens without ending the stream"
                    ), None
                if cancel.is_set():
                    return failed("cancelled"), None
                if isinstance(event.data, dict) and isinstance(event.data.get("usage"), dict):
                    usage = event.data["usage"]
                text = _token_text(event.data, chat)
                if text:  # an empty text is a partial UTF-8 character or a role-only event
                    chunks += 1
                    first = event.t_monotonic_s if first is None else first
                    last = event.t_monotonic_s
    except ServerError as exc:
        return failed(str(exc)), exc
    if first is None or last is None:
        return failed("the stream ended without a single token"), None
    completion = usage.get("completion_tokens")
    n_gen = completion if isinstance(completion, int) and completion > 0 else chunks
    prompt_used = usage.get("prompt_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    span = last - first
    return (
        RequestResult(
            index=index,
            error=None,
            ttft_s=first - start,
            total_s=last - start,
            generated_tokens=n_gen,
            prompt_tokens=prompt_used if isinstance(prompt_used, int) else n_prompt,
            cached_prompt_tokens=cached if isinstance(cached, int) else None,
            inter_token_s=span / (n_gen - 1) if n_gen > 1 and span > 0 else None,
            gen_tokens_per_s=(n_gen - 1) / span if n_gen > 1 and span > 0 else None,
        ),
        None,
    )


class _MetricsWatch:
    """Reads /metrics every METRICS_PERIOD_S during a level: the most requests deferred and processing."""

    def __init__(self, client: ServerClient) -> None:
        self.client = client
        self.max_deferred: float | None = None
        self.max_processing: float | None = None
        self.enabled = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llamascope-serverbench-metrics", daemon=True)

    def _read(self) -> None:
        try:
            metrics = parse_metrics(self.client.get_text("/metrics"))
        except (ServerError, MetricsError):
            self.enabled = False  # not enabled, or not readable: the level reports n/a
            return
        for name, attribute in (
            ("requests_deferred", "max_deferred"),
            ("requests_processing", "max_processing"),
        ):
            value = metrics.get(name)
            if value is not None:
                setattr(self, attribute, max(value, getattr(self, attribute) or 0.0))

    def _run(self) -> None:
        while self.enabled and not self._stop.wait(METRICS_PERIOD_S):
            self._read()

    def __enter__(self) -> _MetricsWatch:
        self._read()
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.client.timeout_s + 1.0)


def _run_level(
    client: ServerClient,
    plan: ServerBenchPlan,
    concurrency: int,
    prompts: _Prompts,
    model: str | None,
    cancel: threading.Event,
    on_request: Callable[[RequestResult], None],
) -> tuple[LevelResult, ServerError | None]:
    """One level; returns it and the error that ended it early when the server went away."""
    prepared = [prompts.prompt() for _ in range(plan.requests)]  # before the clock starts
    results: list[RequestResult | None] = [None] * plan.requests
    lock = threading.Lock()
    next_index = 0
    gone: list[ServerError] = []
    stop = threading.Event()

    def worker() -> None:
        nonlocal next_index
        while not stop.is_set() and not cancel.is_set():
            with lock:
                if next_index >= plan.requests:
                    return
                index, next_index = next_index, next_index + 1
            prompt, n_prompt = prepared[index]
            result, error = _one_request(
                client, plan, index, prompt, n_prompt, model, plan.gen_tokens, cancel
            )
            results[index] = result
            on_request(result)
            if error is not None and error.kind.server_gone:
                with lock:
                    gone.append(error)
                stop.set()

    started_unix = time.time()
    with _MetricsWatch(client) as watch:
        start = time.monotonic()
        workers = [
            threading.Thread(target=worker, name=f"llamascope-serverbench-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()  # each request is bounded by the plan's timeout per read
        wall = time.monotonic() - start
    level = LevelResult(
        concurrency=concurrency,
        requests=tuple(r for r in results if r is not None),
        wall_s=wall,
        started_unix_s=started_unix,
        max_requests_deferred=watch.max_deferred,
        max_requests_processing=watch.max_processing,
    )
    return level, (gone[0] if gone else None)


def _server_gone_reason(client: ServerClient, error: ServerError) -> str | None:
    """Why the benchmark cannot go on, or None when the server still answers /health."""
    try:
        reply = client.request("GET", "/health")
    except ServerError as exc:
        return str(exc)
    if reply.status != 200:
        return f"{client.address.host_port} answers /health with HTTP {reply.status} after: {error}"
    return None


def run_server_bench(
    client: ServerClient,
    plan: ServerBenchPlan,
    *,
    cancel: threading.Event | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> ServerBenchResult:
    """Run every level of the plan against the server behind `client`.

    Before the first level, /props is read (the configuration stored with the results) and one
    short warm-up request is sent: a server that cannot be benchmarked at all (refused, wrong key,
    no completions API) raises ServerError here, before anything is measured. Afterwards a server
    that goes away ends the run: the result holds the finished levels and `stopped` says why.
    """
    cancel = cancel or threading.Event()
    props = client.get_json("/props")
    if not isinstance(props, dict):
        raise ServerError(
            ServerErrorKind.PROTOCOL, "/props did not answer a JSON object: is this a llama-server?"
        )
    model = props.get("model_alias") if isinstance(props.get("model_alias"), str) else None
    prompts = _Prompts(client, plan)
    total = plan.requests * len(plan.concurrency)
    done = 0
    progress_lock = threading.Lock()

    def on_request(result: RequestResult) -> None:
        nonlocal done
        with progress_lock:
            done += 1
            count = done
        if on_progress is not None:
            on_progress(count, total, f"request {result.index + 1}")

    if plan.warmup:
        prompt, n_prompt = prompts.prompt()
        warm, error = _one_request(client, plan, -1, prompt, n_prompt, model, min(plan.gen_tokens, 4), cancel)
        if warm.error is not None and not cancel.is_set():
            if error is not None:
                raise error
            raise ServerError(ServerErrorKind.PROTOCOL, f"the warm-up request failed: {warm.error}")

    levels: list[LevelResult] = []
    stopped: str | None = None
    for concurrency in plan.concurrency:
        if cancel.is_set():
            break
        if on_progress is not None:
            on_progress(done, total, f"concurrency {concurrency}")
        try:
            level, gone = _run_level(client, plan, concurrency, prompts, model, cancel, on_request)
        except ServerError as exc:  # preparing the prompts (/tokenize) failed
            stopped = f"the server stopped answering before concurrency {concurrency}: {exc}"
            break
        if gone is not None:
            reason = _server_gone_reason(client, gone)
            if reason is not None:
                stopped = f"the server stopped answering at concurrency {concurrency}: {reason}"
                break
            # It answers again (a dropped connection): the level stands, with its failed requests.
        if cancel.is_set():
            break  # a level cut short by Stop is not a measurement of that level
        verdict, detail = judge(level, levels[-1] if levels else None)
        level = _with_verdict(level, verdict, detail)
        levels.append(level)
        if on_level is not None:
            on_level(level)
    return ServerBenchResult(
        url=client.url,
        plan=plan,
        levels=tuple(levels),
        stopped=stopped,
        cancelled=cancel.is_set(),
        props=props,
        prompt_exact=prompts.exact,
    )


def _with_verdict(level: LevelResult, verdict: LevelVerdict, detail: str) -> LevelResult:
    return dataclasses.replace(level, verdict=verdict, verdict_detail=detail)
