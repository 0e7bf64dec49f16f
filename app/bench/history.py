"""Every benchmark and interactive generation, kept in SQLite in the user's data folder.

WAL mode and one transaction per finished result: a run killed mid-way leaves a readable
database holding every result that finished (its run stays marked "running", shown as
interrupted). The schema is versioned with `PRAGMA user_version` and migrated forward on open.
Each call opens its own short-lived connection, so any thread may use the store.

A run names its model by path and by app.model.fingerprint (content, not name). Schema 3 moved
the stored fingerprints to that function's scheme; see `_refingerprint`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from app.bench.export import from_record, to_record
from app.bench.localscore import ScorePlan, ScoreRun, ShapeResult, shape_from_record, shape_to_record
from app.bench.localscore import run_from_record as score_run_from_record
from app.bench.localscore import run_to_record as score_run_to_record
from app.bench.runner import BenchError, BenchResult, flash_attn_text
from app.bench.trust import assess, compare_repetitions
from app.common.stats import Comparison
from app.model.fingerprint import fingerprint_v1, model_fingerprint
from app.telemetry.hardware import hardware_fingerprint

SCHEMA_VERSION = 7


def _refingerprint(conn: sqlite3.Connection) -> None:
    """2 -> 3: model fingerprints from size and first MiB to app.model.fingerprint's scheme 2.

    An old value cannot be converted by computation, only by reading the file again. A row gets
    the new fingerprint when the file at its path is still the one it was recorded with (the old
    fingerprint of that file still matches); otherwise, the file gone or changed since, NULL: the
    fingerprint is unknown, as for a run recorded without a readable file. Keeping the old value
    would look like an identity that no file can ever match again.
    """
    pairs = conn.execute(
        "SELECT DISTINCT model_path, model_fingerprint FROM runs WHERE model_fingerprint IS NOT NULL"
    ).fetchall()
    for path, old in pairs:
        new = model_fingerprint(path) if fingerprint_v1(path) == old else None
        conn.execute(
            "UPDATE runs SET model_fingerprint = ? WHERE model_path = ? AND model_fingerprint = ?",
            (new, path, old),
        )


# How far to trust each result (app.bench.trust), as columns beside the record so that SQL can filter
# on them: the coefficient of variation, CPU steal, other processes' load, throttling, and the verdict.
_TRUST_COLUMNS = (
    ("cv_percent", "REAL"),
    ("steal_percent", "REAL"),
    ("other_cpu_percent", "REAL"),
    ("throttled", "INTEGER"),
    ("noisy", "INTEGER"),
    ("noise_reasons", "TEXT NOT NULL DEFAULT ''"),
)


def _trust_values(result: BenchResult) -> tuple[Any, ...]:
    verdict = assess(result)
    return (
        result.cv_percent,
        result.steal_percent,
        result.other_cpu_percent,
        int(result.throttled),
        int(verdict.noisy),
        "; ".join(verdict.reasons),
    )


def _add_trust_columns(conn: sqlite3.Connection) -> None:
    """4 -> 5: the trust columns, filled for the stored results from their records. Results stored
    before steal and other load were measured have those NULL (n/a); their CV and throttling are
    in the record."""
    for name, kind in _TRUST_COLUMNS:
        conn.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")
    for row_id, record_json in conn.execute("SELECT id, record_json FROM results").fetchall():
        try:
            result = from_record(json.loads(record_json), source=None)
        except (ValueError, BenchError):  # a record this version cannot read keeps NULLs
            continue
        conn.execute(
            "UPDATE results SET cv_percent = ?, steal_percent = ?, other_cpu_percent = ?, throttled = ?, "
            "noisy = ?, noise_reasons = ? WHERE id = ?",
            (*_trust_values(result), row_id),
        )


# Each entry upgrades the schema from version i to i + 1: SQL, or a function for what SQL cannot do.
_MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    # 0 -> 1: runs and their benchmark results.
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        created_at TEXT NOT NULL,
        model_path TEXT NOT NULL,
        model_size INTEGER,
        model_fingerprint TEXT,
        hardware_fingerprint TEXT,
        build TEXT,
        settings_json TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'running'
    );
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        test TEXT NOT NULL,
        avg_ts REAL NOT NULL,
        stddev_ts REAL NOT NULL,
        record_json TEXT NOT NULL
    );
    """,
    # 1 -> 2: interactive generations, labels, and indexes for the history filters.
    """
    ALTER TABLE runs ADD COLUMN label TEXT NOT NULL DEFAULT '';
    CREATE TABLE generations (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        chat INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        generated_tokens INTEGER NOT NULL,
        ttft_s REAL,
        prompt_tokens_per_s REAL,
        gen_tokens_per_s REAL,
        total_s REAL NOT NULL,
        stop_reason TEXT NOT NULL
    );
    CREATE INDEX runs_by_model ON runs(model_path, created_at);
    CREATE INDEX results_by_run ON results(run_id);
    """,
    # 2 -> 3: model fingerprints of app.model.fingerprint's scheme.
    _refingerprint,
    # 3 -> 4: the levels of server benchmarks (app.server.record), one row per concurrency level.
    """
    CREATE TABLE server_levels (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        concurrency INTEGER NOT NULL,
        record_json TEXT NOT NULL
    );
    CREATE INDEX server_levels_by_run ON server_levels(run_id);
    """,
    # 4 -> 5: how far to trust each benchmark result (CV, steal, other load, throttling, the verdict).
    _add_trust_columns,
    # 5 -> 6: LocalScore runs (app.bench.localscore): each test as it finishes, and the score with
    # its parts when the run ends (score NULL when it was stopped; `comparable` 0 when capped).
    """
    CREATE TABLE localscore_tests (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        test TEXT NOT NULL,
        capped INTEGER NOT NULL,
        prompt_tps REAL NOT NULL,
        gen_tps REAL NOT NULL,
        ttft_ms REAL NOT NULL,
        record_json TEXT NOT NULL
    );
    CREATE INDEX localscore_tests_by_run ON localscore_tests(run_id);
    CREATE TABLE localscores (
        run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        score REAL,
        avg_prompt_tps REAL,
        avg_gen_tps REAL,
        avg_ttft_ms REAL,
        comparable INTEGER NOT NULL,
        record_json TEXT NOT NULL
    );
    """,
    # 6 -> 7: the quantization advisor's measurements (app.quant.advisor), one row per candidate,
    # keyed by a hash of everything that determines its figures (the key's fields kept beside it).
    """
    CREATE TABLE quant_measurements (
        key TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        key_json TEXT NOT NULL,
        record_json TEXT NOT NULL
    );
    """,
)


def default_history_path() -> str:
    import platformdirs

    folder = platformdirs.user_data_dir("LlamaScope", appauthor=False)
    return os.path.join(folder, "history.sqlite3")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RunRow:
    id: int
    kind: str  # "benchmark", "generation", "import" or "server-bench"
    created_at: str
    model_path: str
    model_size: int | None
    model_fingerprint: str | None
    hardware_fingerprint: str | None
    build: str | None
    settings: dict[str, Any]
    status: str  # "running" (or interrupted), "finished", "cancelled", "failed"
    label: str
    n_results: int


@dataclass(frozen=True)
class ComparisonRow:
    test: str
    config: str
    a: BenchResult
    b: BenchResult
    comparison: Comparison


class HistoryError(Exception):
    """The history database cannot be used; the message says why."""


class HistoryStore:
    def __init__(self, path: str | None = None) -> None:
        self.path = path or default_history_path()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with self._connect() as conn:
            self._migrate(conn)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=10)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot open the history database {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            with conn:  # one transaction: committed on success, rolled back on error
                yield conn
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"the history database {self.path} is damaged or locked: {exc}") from exc
        finally:
            conn.close()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                "the history database was written by a newer LlamaScope "
                f"(schema {version} > {SCHEMA_VERSION})"
            )
        for step in range(version, SCHEMA_VERSION):
            migration = _MIGRATIONS[step]
            if isinstance(migration, str):
                conn.executescript("BEGIN;" + migration + f"PRAGMA user_version = {step + 1}; COMMIT;")
                continue
            # IMMEDIATE takes the write lock before reading: another LlamaScope opening the same
            # database may have run this step meanwhile, and running it twice would find the
            # fingerprints it just wrote "changed since" and clear them.
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] == step:
                    migration(conn)
                    conn.execute(f"PRAGMA user_version = {step + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    # ---- writing -----------------------------------------------------------------------------
    def start_run(
        self,
        kind: str,
        model_path: str,
        settings: dict[str, Any],
        *,
        build: str | None = None,
        label: str = "",
        local: bool = True,
    ) -> int:
        """A new run. `local=False`: it measured another machine (a server), so this machine's
        hardware id and the size and fingerprint of a file at `model_path` here are not its own."""
        size = os.path.getsize(model_path) if local and os.path.isfile(model_path) else None
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO runs (kind, created_at, model_path, model_size, model_fingerprint, "
                "hardware_fingerprint, build, settings_json, status, label) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    kind,
                    _now(),
                    model_path,
                    size,
                    model_fingerprint(model_path) if local else None,
                    hardware_fingerprint() if local else None,
                    build,
                    json.dumps(settings, default=str),
                    "running",
                    label,
                ),
            )
            return int(cur.lastrowid or 0)

    def add_result(self, run_id: int, result: BenchResult) -> None:
        """Store one finished test at once, in its own transaction."""
        columns = ", ".join(name for name, _ in _TRUST_COLUMNS)
        with self._connect() as conn:
            conn.execute(
                f"INSERT INTO results (run_id, test, avg_ts, stddev_ts, record_json, {columns}) "
                f"VALUES (?,?,?,?,?,{','.join('?' * len(_TRUST_COLUMNS))})",
                (
                    run_id,
                    result.test.name,
                    result.avg_ts,
                    result.stddev_ts,
                    json.dumps(to_record(result)),
                    *_trust_values(result),
                ),
            )

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        with self._connect() as conn:
            conn.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))

    def add_generation(
        self, model_path: str, settings: dict[str, Any], stats: Any, *, build: str | None = None
    ) -> int:
        """Store an interactive generation's stats (an app.engine.client.RunStats) as a run of its own."""
        run_id = self.start_run("generation", model_path, settings, build=build)
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO generations (run_id, chat, prompt_tokens, generated_tokens, ttft_s, "
                "prompt_tokens_per_s, gen_tokens_per_s, total_s, stop_reason) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    int(stats.chat),
                    stats.prompt_tokens,
                    stats.generated_tokens,
                    stats.ttft_s,
                    stats.prompt_tokens_per_s,
                    stats.gen_tokens_per_s,
                    stats.total_s,
                    stats.stop_reason.value,
                ),
            )
            conn.execute("UPDATE runs SET status = 'finished' WHERE id = ?", (run_id,))
        return run_id

    def import_results(self, results: Sequence[BenchResult], *, label: str = "") -> int:
        """Keep imported results (e.g. llama-bench's) as one run of kind "import"."""
        if not results:
            raise HistoryError("nothing to import")
        run_id = self.start_run("import", results[0].model_filename, {}, build=results[0].build, label=label)
        for result in results:
            self.add_result(run_id, result)
        self.finish_run(run_id)
        return run_id

    def add_server_level(self, run_id: int, concurrency: int, record: dict[str, Any]) -> None:
        """Store one finished level of a server benchmark (app.server.record's record) at once."""
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO server_levels (run_id, concurrency, record_json) VALUES (?,?,?)",
                (run_id, concurrency, json.dumps(record)),
            )

    def server_levels(self, run_id: int) -> list[dict[str, Any]]:
        """The stored level records of a server benchmark run, in the order they ran."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT record_json FROM server_levels WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        return [json.loads(row["record_json"]) for row in rows]

    # ---- LocalScore runs (kind "localscore") ---------------------------------------------------
    def add_score_test(self, run_id: int, result: ShapeResult) -> None:
        """Store one finished LocalScore test at once, in its own transaction."""
        prompt_tps, gen_tps, ttft_ms = result.printed
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO localscore_tests (run_id, test, capped, prompt_tps, gen_tps, ttft_ms, "
                "record_json) VALUES (?,?,?,?,?,?,?)",
                (
                    run_id,
                    result.shape.name,
                    int(result.shape.capped),
                    prompt_tps,
                    gen_tps,
                    ttft_ms,
                    json.dumps(shape_to_record(result)),
                ),
            )

    def add_score(self, run_id: int, run: ScoreRun) -> None:
        """Store a LocalScore run's outcome: the score and its parts (NULL when it has none)."""
        summary = run.summary
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO localscores (run_id, kind, score, avg_prompt_tps, avg_gen_tps, "
                "avg_ttft_ms, comparable, record_json) VALUES (?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    run.kind,
                    summary.score if summary else None,
                    summary.avg_prompt_tps if summary else None,
                    summary.avg_gen_tps if summary else None,
                    summary.avg_ttft_ms if summary else None,
                    int(run.comparable),
                    json.dumps(score_run_to_record(run)),
                ),
            )
            # The build is known once the host has answered; the run was started at its first test.
            conn.execute("UPDATE runs SET build = ? WHERE id = ?", (run.build, run_id))

    def score_run(self, run_id: int) -> ScoreRun | None:
        """A stored LocalScore run; None when the run is not one or ended before it was stored whole
        (its tests are in `score_tests`)."""
        self.run(run_id)
        with self._connect() as conn:
            row = conn.execute("SELECT record_json FROM localscores WHERE run_id = ?", (run_id,)).fetchone()
        return score_run_from_record(json.loads(row["record_json"])) if row is not None else None

    def score_tests(self, run_id: int) -> list[ShapeResult]:
        """The stored tests of a LocalScore run, in the order they ran."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT record_json FROM localscore_tests WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        return [shape_from_record(json.loads(row["record_json"])) for row in rows]

    def add_quant_measurement(self, key: str, key_fields: dict[str, Any], record: dict[str, Any]) -> None:
        """Store (or replace) one advisor candidate's measured figures under `key`."""
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO quant_measurements (key, created_at, key_json, record_json) "
                "VALUES (?,?,?,?)",
                (key, _now(), json.dumps(key_fields, sort_keys=True), json.dumps(record)),
            )

    def quant_measurement(self, key: str) -> dict[str, Any] | None:
        """The figures stored under `key`, or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT record_json FROM quant_measurements WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row["record_json"])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def delete_run(self, run_id: int) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # ---- reading -----------------------------------------------------------------------------
    def runs(
        self, *, model: str | None = None, hardware: str | None = None, kind: str | None = None
    ) -> list[RunRow]:
        """Runs, newest first; `model` matches any part of the model path."""
        where, args = [], []
        if model:
            where.append("r.model_path LIKE ?")
            args.append(f"%{model}%")
        if hardware:
            where.append("r.hardware_fingerprint = ?")
            args.append(hardware)
        if kind:
            where.append("r.kind = ?")
            args.append(kind)
        sql = (
            "SELECT r.*, (SELECT COUNT(*) FROM results x WHERE x.run_id = r.id) + "
            "(SELECT COUNT(*) FROM generations g WHERE g.run_id = r.id) + "
            "(SELECT COUNT(*) FROM server_levels s WHERE s.run_id = r.id) + "
            "(SELECT COUNT(*) FROM localscore_tests l WHERE l.run_id = r.id) AS n_results FROM runs r"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY r.created_at DESC, r.id DESC"
        )
        with self._connect() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_run_row(row) for row in rows]

    def run(self, run_id: int) -> RunRow:
        """One run by its id; raises HistoryError naming the id when there is no such run."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT r.*, (SELECT COUNT(*) FROM results x WHERE x.run_id = r.id) + "
                "(SELECT COUNT(*) FROM generations g WHERE g.run_id = r.id) + "
                "(SELECT COUNT(*) FROM server_levels s WHERE s.run_id = r.id) + "
                "(SELECT COUNT(*) FROM localscore_tests l WHERE l.run_id = r.id) AS n_results "
                "FROM runs r WHERE r.id = ?",
                (run_id,),
            ).fetchone()
            last = conn.execute("SELECT MAX(id) FROM runs").fetchone()[0]
        if row is None:
            held = "the history is empty" if last is None else f"run ids go up to {last}"
            raise HistoryError(f"there is no run {run_id} ({held}; `llamascope history` lists them)")
        return _run_row(row)

    def results(self, run_id: int) -> list[BenchResult]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT record_json FROM results WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        return [from_record(json.loads(row["record_json"]), source=None) for row in rows]

    def generations(self, run_id: int) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM generations WHERE run_id = ?", (run_id,)).fetchall()
        return [dict(row) for row in rows]

    def metric_over_time(self, test: str, *, model: str | None = None) -> list[tuple[str, float, str]]:
        """(time, mean t/s, model path) of every stored result of one test, oldest first."""
        sql = (
            "SELECT r.created_at, x.avg_ts, r.model_path FROM results x JOIN runs r ON r.id = x.run_id "
            "WHERE x.test = ?"
            + (" AND r.model_path LIKE ?" if model else "")
            + " ORDER BY r.created_at, x.id"
        )
        args = [test, f"%{model}%"] if model else [test]
        with self._connect() as conn:
            return [(row[0], float(row[1]), row[2]) for row in conn.execute(sql, args).fetchall()]

    def compare(self, run_a: int, run_b: int | None = None) -> list[ComparisonRow]:
        """Results of two runs matched by test and configuration, B against A (Welch's t-test; with
        fewer than 3 repetitions a side none is called significant: app.bench.trust.compare_repetitions).

        With one run (`run_b` None), its configurations are compared instead: for each test
        measured in several configurations (a sweep), every configuration against the first.
        """
        self.run(run_a)  # an unknown id is named as such, not as a run without results
        if run_b is None:
            return self.compare_configurations(run_a)
        self.run(run_b)
        a_results, b_results = self.results(run_a), self.results(run_b)
        if not a_results or not b_results:
            raise HistoryError(f"run {run_a if not a_results else run_b} has no benchmark results to compare")
        key = _comparison_key

        a_by_key = {key(r): r for r in a_results}
        rows = []
        for b in b_results:
            k = key(b)
            a = a_by_key.get(k)
            if a is None:
                # Two configurations of the same test are compared when the keys differ only in config.
                same_test = [r for r in a_results if r.test.name == k[0]]
                if len(same_test) != 1 or len([r for r in b_results if r.test.name == k[0]]) != 1:
                    continue
                a = same_test[0]
                k = (k[0], f"{key(a)[1]} → {k[1]}")
            rows.append(ComparisonRow(k[0], k[1], a, b, compare_repetitions(a.samples_ts, b.samples_ts)))
        if not rows:
            raise HistoryError("the two runs have no test in common")
        return rows

    def compare_configurations(self, run: int) -> list[ComparisonRow]:
        """Within one run: per test, each configuration against the first one measured."""
        results = self.results(run)
        if not results:
            raise HistoryError(f"run {run} has no benchmark results to compare")
        first: dict[str, BenchResult] = {}
        rows = []
        for r in results:
            test, config = _comparison_key(r)
            base = first.setdefault(test, r)
            if base is not r and _comparison_key(base) != (test, config):
                label = f"{_comparison_key(base)[1]} → {config}"
                comparison = compare_repetitions(base.samples_ts, r.samples_ts)
                rows.append(ComparisonRow(test, label, base, r, comparison))
        if not rows:
            raise HistoryError(f"run {run} measured each test in one configuration only: select two runs")
        return rows


def _run_row(row: sqlite3.Row) -> RunRow:
    return RunRow(
        id=row["id"],
        kind=row["kind"],
        created_at=row["created_at"],
        model_path=row["model_path"],
        model_size=row["model_size"],
        model_fingerprint=row["model_fingerprint"],
        hardware_fingerprint=row["hardware_fingerprint"],
        build=row["build"],
        settings=json.loads(row["settings_json"] or "{}"),
        status=row["status"],
        label=row["label"],
        n_results=row["n_results"],
    )


def _comparison_key(r: BenchResult) -> tuple[str, str]:
    """(test, configuration) by which results of two runs are matched."""
    config = (
        f"t={r.n_threads} b={r.n_batch} ub={r.n_ubatch} fa={flash_attn_text(r.flash_attn)} "
        f"ctk={r.type_k} ctv={r.type_v} ngl={r.n_gpu_layers} mmap={int(r.use_mmap)}"
    )
    return r.test.name, config  # the depth is in the test's name ("tg128 @ d512")


def run_and_record(
    plan: Any,
    store: HistoryStore | None,
    *,
    cancel: Any = None,
    on_progress: Any = None,
    on_result: Any = None,
    sampler: Any = None,
    run_ids: dict[str, int] | None = None,
    run: Any = None,
) -> tuple[list[BenchResult], dict[str, int]]:
    """Run a benchmark plan, storing each result the moment it finishes (one run per model).

    Returns the results and the run id of each model (also filled into `run_ids` as they start).
    A run ends "finished", "cancelled" (by `cancel` or Ctrl+C), or "failed" (the exception is
    re-raised after the runs are closed).
    """
    from app.bench.runner import run_benchmark

    run = run or run_benchmark  # app.engine.jobs.host_benchmark(engine) runs it in the engine host
    run_ids = {} if run_ids is None else run_ids
    settings = {"repetitions": plan.repetitions, "sweep": {name: list(values) for name, values in plan.sweep}}

    def stored(result: BenchResult) -> None:
        if store is not None:
            if result.model_filename not in run_ids:
                run_ids[result.model_filename] = store.start_run(
                    "benchmark", result.model_filename, settings, build=result.build
                )
            store.add_result(run_ids[result.model_filename], result)
        if on_result is not None:
            on_result(result)

    status = "failed"
    try:
        results = run(plan, cancel=cancel, on_progress=on_progress, on_result=stored, sampler=sampler)
        status = "cancelled" if cancel is not None and cancel.is_set() else "finished"
        return results, run_ids
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    finally:
        if store is not None:
            for run_id in run_ids.values():
                store.finish_run(run_id, status)


def score_and_record(
    plan: ScorePlan,
    store: HistoryStore | None,
    *,
    run: Callable[..., ScoreRun],
    on_progress: Any = None,
    on_shape: Callable[[ShapeResult], None] | None = None,
    sampler: Any = None,
    run_ids: list[int] | None = None,
) -> tuple[ScoreRun, int | None]:
    """Run LocalScore (`run`: app.bench.localscore.run_localscore, or
    app.engine.score_job.host_localscore(engine)), storing each test the moment it finishes and the
    score at the end, as one run of kind "localscore". Returns the run and its id (None: nothing stored;
    the id also goes into `run_ids` as soon as the run starts). The run ends "finished", "cancelled"
    (stopped: no score) or "failed" (the exception is re-raised after the run is closed)."""
    ids = [] if run_ids is None else run_ids
    settings = {
        "localscore": {
            "repetitions": plan.repetitions,
            "quick": plan.quick,
            "n_threads": plan.n_threads,
            "max_ctx": plan.max_ctx,
        }
    }

    def stored(result: ShapeResult) -> None:
        if store is not None:
            if not ids:
                ids.append(store.start_run("localscore", plan.model, settings))
            store.add_score_test(ids[0], result)
        if on_shape is not None:
            on_shape(result)

    status = "failed"
    try:
        outcome = run(plan, on_progress=on_progress, on_shape=stored, sampler=sampler)
        if store is not None and ids:
            store.add_score(ids[0], outcome)
        status = "cancelled" if outcome.stopped else "finished"
        return outcome, (ids[0] if ids else None)
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    finally:
        if store is not None and ids:
            store.finish_run(ids[0], status)
