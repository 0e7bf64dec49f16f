"""How the tuner measures one configuration: the `Measure` protocol and the default, `BenchMeasure`.

A measure runs R repetitions of the objective's workload with the given settings and returns one score
per finished repetition (tokens/s, higher is better). After each finished step it calls `keep_going`
with an estimate of that repetition's score (or None when it has none) and stops when told to: that is
how the tuner prunes clearly worse configurations and enforces its time-outs. Tests pass fakes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Protocol

from app.bench.runner import AnyFlag, BenchPlan, BenchTest, run_benchmark
from app.llama.driver import CancelFlag
from app.model.settings import LoadSettings
from app.tune.space import Objective

KeepGoing = Callable[[float | None], bool]


class Measure(Protocol):
    """Measure `load` `repetitions` times; return each finished repetition's score.

    Call `keep_going(estimate)` after each finished step (estimate: that repetition's score as far as it
    is known, or None) and stop early when it returns False; check `cancel` as often as is cheap. Raise
    on failure: the tuner records the message as the trial's reason and scores the trial 0.
    """

    def __call__(
        self, load: LoadSettings, *, repetitions: int, keep_going: KeepGoing, cancel: CancelFlag
    ) -> list[float]: ...


class BenchMeasure:
    """The objective measured with app.bench.runner.run_benchmark on the real model, as llama-bench would.

    * tg G: the test tg G with the settings as they are.
    * pp P: the test pp P, run with n_threads := n_threads_batch. run_benchmark follows llama-bench in
      giving a context one thread count for both (-t), and llama.cpp computes every multi-token batch
      with n_threads_batch, so this measures exactly what the settings would do on a prompt.
    * mix P,G: pp P (threads as above), then tg G @ dP (generation after a P-token prompt, with
      n_threads); repetition i scores (P + G) / (t_pp_i + t_tg_i). Two model loads per trial.

    run_benchmark reports a test's samples only when the test ends, so the live estimate passed to
    `keep_going` is the time between its progress calls, which bracket each repetition (plus the few
    microseconds of preparing its random tokens). In a mix the generation part gives no estimate (its
    interval includes filling the cache) and the prompt part gives an optimistic one, as if generation
    took no time, so pruning on it never stops a configuration that might still win. The returned
    scores are the runner's own samples.
    """

    def __init__(
        self,
        model_path: str,
        objective: Objective,
        *,
        sampler: object | None = None,
        override_memory: bool = False,
    ) -> None:
        self.model_path = model_path
        self.objective = objective
        self.sampler = sampler
        self.override_memory = override_memory  # passed to the runner's own memory check

    def __call__(
        self, load: LoadSettings, *, repetitions: int, keep_going: KeepGoing, cancel: CancelFlag
    ) -> list[float]:
        obj = self.objective
        prompt_load = dataclasses.replace(load, n_threads=load.n_threads_batch)
        if obj.kind == "tg":
            gen = self._run(
                load,
                BenchTest(n_gen=obj.gen_tokens),
                repetitions,
                keep_going,
                cancel,
                lambda ns: obj.score(0.0, ns / 1e9),
            )
            return [obj.score(0.0, ns / 1e9) for ns in gen]
        if obj.kind == "pp":
            prompt = self._run(
                prompt_load,
                BenchTest(n_prompt=obj.prompt_tokens),
                repetitions,
                keep_going,
                cancel,
                lambda ns: obj.score(ns / 1e9, 0.0),
            )
            return [obj.score(ns / 1e9, 0.0) for ns in prompt]
        # Optimistic while only the prompt is measured: (P + G) / t_pp.
        prompt = self._run(
            prompt_load,
            BenchTest(n_prompt=obj.prompt_tokens),
            repetitions,
            keep_going,
            cancel,
            lambda ns: (obj.prompt_tokens + obj.gen_tokens) / (ns / 1e9) if ns > 0 else 0.0,
        )
        if len(prompt) < repetitions:
            return []  # stopped: a workload score needs both parts
        gen = self._run(
            load,
            BenchTest(n_gen=obj.gen_tokens, n_depth=obj.prompt_tokens),
            repetitions,
            keep_going,
            cancel,
            None,
        )
        return [
            obj.score(p / 1e9, g / 1e9) for p, g in zip(prompt, gen, strict=False)
        ]  # the shorter: a stopped part

    def _run(
        self,
        load: LoadSettings,
        test: BenchTest,
        repetitions: int,
        keep_going: KeepGoing,
        cancel: CancelFlag,
        estimate: Callable[[int], float] | None,
    ) -> list[int]:
        """Samples (ns) of one test; stops between repetitions when keep_going says so, and inside
        one on cancel (that repetition is dropped)."""
        stop = threading.Event()
        last_ns: list[int] = []

        def on_progress(done: int, total: int, what: str) -> None:
            now = time.perf_counter_ns()
            if cancel.is_set():
                stop.set()
                return
            # done == 0: loading; done == 1: warm-up finished, repetition 1 starts; done == k + 1:
            # repetition k finished (BenchPlan with one instance and warmup=True).
            if done == 0:
                return
            previous = last_ns[-1] if last_ns else None
            last_ns.append(now)
            if done == 1 or previous is None:
                if not keep_going(None):
                    stop.set()
                return
            if not keep_going(estimate(now - previous) if estimate is not None else None):
                stop.set()

        plan = BenchPlan(
            models=(self.model_path,),
            tests=(test,),
            base=load,
            repetitions=repetitions,
            warmup=True,
            override_memory=self.override_memory,
        )
        # The tuner's own cancel goes to the runner too, not only through `stop` at progress calls:
        # llama.cpp then sees a Stop inside a repetition and cuts a long prompt short.
        results = run_benchmark(
            plan, cancel=AnyFlag(stop, cancel), on_progress=on_progress, sampler=self.sampler
        )
        return list(results[0].samples_ns) if results else []
