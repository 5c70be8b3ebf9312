"""Benchmark: labelling console queue latency with 100,000 clips in the database.

A real `soundwarden-cloud serve` answers one signed-in labeller over a kept-alive HTTP connection,
as a browser does. The database is filled first with `--clips` device clips (bulk inserted rows,
no audio: the queue pages read rows only): 20 devices over 90 days, 60 % still to label, 70 %
scored by a model; then analysed (and on PostgreSQL vacuumed) as autovacuum would have by the
time anyone pages through it. Timed, `--requests` each, after a warm-up:

- `first page`: the console's queue page `/`, most uncertain first.
- `deep pages`: queue pages (`/?after=<cursor>`) at random depths of the whole queue (cursors
  every 500 clips, collected beforehand by walking the queue API).
- `filtered pages`: the queue page by device, by what the device heard, by score range, by
  received date, and reviewing one label, each first page and the page after it.
- `API pages`: `GET /api/v1/queue` at the same random depths (JSON, 50 clips).

Each is measured twice in the same run on the same server: with the queue's index
(ix_clips_queue: label, uncertainty, received_at) and, as the baseline, after dropping it.
Reported per database: latency p50/p95/p99/max from request to the last byte, the clips per
answer (50, fewer only at the queue's end: the pages render in full), the server's CPU time per
request, and the cores everything else on the machine used meanwhile: PostgreSQL's own
processes (where its queries run) and, on a shared machine, the noise in the latencies. Every
answer must be a 200.

    .venv/bin/python scripts/bench_queue.py [--clips 100000] [--requests 200]

Needs the cloud extra and, for the PostgreSQL half, a server at SOUNDWARDEN_BENCH_POSTGRES
(default postgresql://postgres@127.0.0.1:5432/postgres; a scratch database is created and
dropped); takes 2-5 minutes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # scripts.bench_ingest lives beside the package

import numpy as np
from sqlalchemy import insert, text

from cloud import accounts
from cloud.api.deps import SESSION_COOKIE
from cloud.core.db import make_engine, make_sessionmaker, migrate
from cloud.tables import Clip, Label
from scripts.bench_ingest import (
    _display,
    cpu_seconds,
    machine,
    machine_busy_seconds,
    own_cpu_seconds,
    postgres_database,
    server,
)

DEFAULT_OUT = REPO / "scripts" / "results" / "queue.json"
TARGET_P95_MS = 150.0  # from the issue
PAGE = 50  # clips on a console queue page (cloud.console.routes.PAGE_SIZE)
DEVICES = [f"pi-{n:02d}" for n in range(20)]
LABELS = ["cry", "glass", "other"]
T0 = datetime(2025, 1, 1, tzinfo=UTC)
DAYS = 90
INSERT_BATCH = 10_000


# --- the database -----------------------------------------------------------------------------


def clip_rows(n: int, rng: random.Random) -> list[dict[str, object]]:
    """`n` clips as ingestion would have stored them (without their audio)."""
    rows = []
    for _ in range(n):
        clip_id = uuid.uuid4().hex
        device = rng.choice(DEVICES)
        received = T0 + timedelta(seconds=rng.uniform(0, DAYS * 86400))
        scored = rng.random() < 0.7
        score = rng.random()
        rows.append(
            {
                "id": clip_id,
                "source": "device",
                "device_id": device,
                "group_id": device,
                "event_id": clip_id,
                "device_label": rng.choice(LABELS),
                "device_score": score,
                "model_name": "cry-detector",
                "model_version": "1.1.0",
                "started_at": received - timedelta(seconds=6),
                "ended_at": received - timedelta(seconds=1),
                "received_at": received,
                "sample_rate": 16000,
                "channels": 1,
                "duration_s": 5.0,
                "original_key": f"clips/{clip_id}/original.flac",
                "original_format": "flac",
                "audio_key": f"clips/{clip_id}/audio.flac",
                "sha256": "0" * 64,
                "label": None if rng.random() < 0.6 else rng.choice(LABELS),
                "false_positive": False,
                "suggestion": rng.choice(LABELS) if scored else None,
                "suggestion_score": rng.random() if scored else None,
                "uncertainty": abs(rng.random() - 0.5) if scored else None,
            }
        )
    return rows


def fill(url: str, clips: int, seed: int) -> tuple[str, float]:
    """Migrate, enrol the devices, add labels, a labeller and `clips` clips; returns the
    labeller's session cookie and the seconds the clips took to insert."""
    migrate(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as db:
            for device in DEVICES:
                accounts.add_device(db, device)
            db.add_all(Label(name=name, key=n) for n, name in enumerate(LABELS, start=1))
            user = accounts.create_user(db, "bench", "bench password", "labeller")
            cookie, _ = accounts.open_session(db, user, hours=2)
            db.commit()
        rows = clip_rows(clips, random.Random(seed))
        started = time.perf_counter()
        with engine.begin() as conn:
            for start in range(0, len(rows), INSERT_BATCH):
                conn.execute(insert(Clip), rows[start : start + INSERT_BATCH])
        took = time.perf_counter() - started
        # What a database in use has: statistics for the planner and, on PostgreSQL, the
        # visibility map that index-only scans need (the label counts on every queue page);
        # autovacuum sets both within minutes of a bulk insert.
        vacuum = "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(vacuum))
    finally:
        engine.dispose()
    return cookie, took


def drop_queue_index(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_clips_queue"))
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()


# --- the requests -----------------------------------------------------------------------------


class Client:
    """One signed-in browser: a kept-alive connection, the session cookie on every request."""

    def __init__(self, port: int, cookie: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"}

    def get(self, path: str) -> tuple[float, int, bytes]:
        """Seconds from sending the request to the last byte of the answer, status, body."""
        began = time.perf_counter()
        self.connection.request("GET", path, headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        return time.perf_counter() - began, response.status, body

    def json(self, path: str) -> dict[str, object]:
        _, status, body = self.get(path)
        assert status == 200, (path, status, body[:500])
        data: dict[str, object] = json.loads(body)
        return data


def queue_cursors(client: Client) -> tuple[list[str], int]:
    """Cursors every 500 clips down the whole queue (walked through the API), and its length."""
    cursors: list[str] = []
    cursor: str | None = None
    length = 0
    while True:
        query = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = client.json(f"/api/v1/queue?{urlencode(query)}")
        items = page["items"]
        assert isinstance(items, list)
        length += len(items)
        cursor = page["next_cursor"] if isinstance(page["next_cursor"], str) else None
        if cursor is None:
            return cursors, length
        cursors.append(cursor)


FILTERS = [
    {"device": "pi-07"},
    {"device_label": "glass"},
    {"min_score": "0.4", "max_score": "0.6"},
    {"since": "2025-02-01", "until": "2025-02-07"},
    {"label": "cry"},
]


def page_paths(
    client: Client, cursors: list[str], n: int, rng: random.Random
) -> dict[str, list[str]]:
    """What each timed scenario requests, `n` paths each."""
    depths = [rng.choice(cursors) for _ in range(n)]
    filtered = []
    for f in FILTERS:
        # The console's own "next page" link, as the first page renders it.
        _, status, body = client.get(f"/?{urlencode(f)}")
        assert status == 200
        after = body.split(b'id="next-page" href="', 1)[1].split(b'"', 1)[0].decode()
        filtered += [f"/?{urlencode(f)}", after.replace("&amp;", "&")]
    return {
        "first page": ["/"] * n,
        "deep pages": [f"/?{urlencode({'after': c})}" for c in depths],
        "filtered pages": [filtered[i % len(filtered)] for i in range(n)],
        "API pages": [f"/api/v1/queue?{urlencode({'cursor': c})}" for c in depths],
    }


def clips_in(path: str, body: bytes) -> int:
    if path.startswith("/api/"):
        items = json.loads(body)["items"]
        return len(items)
    return body.count(b'class="clip-link"')


@dataclass
class Timing:
    latencies_s: list[float]
    clips: list[int]
    wall_s: float
    server_cpu_s: float
    others_cpu_s: float  # every process on the machine but the server and this client

    def summary(self) -> dict[str, object]:
        ms = np.asarray(self.latencies_s) * 1e3
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return {
            "requests": len(ms),
            "p50_ms": round(float(p50), 1),
            "p95_ms": round(float(p95), 1),
            "p99_ms": round(float(p99), 1),
            "max_ms": round(float(ms.max()), 1),
            "mean_clips_per_answer": round(float(np.mean(self.clips)), 1),
            # What a page costs the server (SQLite's queries included, PostgreSQL's not), which
            # a busy shared machine does not inflate as it does latency; and how busy the
            # machine was with everything else, PostgreSQL included, meanwhile.
            "server_cpu_ms_per_request": round(self.server_cpu_s / len(ms) * 1e3, 1),
            "other_cpu_cores": round(self.others_cpu_s / self.wall_s, 2),
        }


def measure(client: Client, server_pid: int, paths: list[str]) -> Timing:
    latencies, clips = [], []
    before = cpu_seconds(server_pid), own_cpu_seconds(), machine_busy_seconds()
    started = time.perf_counter()
    for path in paths:
        took, status, body = client.get(path)
        assert status == 200, (path, status, body[:500])
        latencies.append(took)
        clips.append(clips_in(path, body))
    wall = time.perf_counter() - started
    after = cpu_seconds(server_pid), own_cpu_seconds(), machine_busy_seconds()
    server_s, client_s, busy_s = (b - a for a, b in zip(before, after, strict=True))
    return Timing(latencies, clips, wall, server_s, busy_s - server_s - client_s)


def bench_database(kind: str, url: str, args: argparse.Namespace) -> dict[str, object]:
    print(f"{kind}: inserting {args.clips} clips", flush=True)
    cookie, insert_s = fill(url, args.clips, args.seed)
    runs: dict[str, dict[str, object]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-queue-") as name,
        server(Path(name), url, workers=1) as (port, process),
    ):
        client = Client(port, cookie)
        cursors, queue_length = queue_cursors(client)
        paths = page_paths(client, cursors, args.requests, random.Random(args.seed))
        for index in ("ix_clips_queue", "none"):
            if index == "none":
                drop_queue_index(url)
            measure(client, process.pid, [p for ps in paths.values() for p in ps[: args.warmup]])
            runs[index] = {}
            for scenario, scenario_paths in paths.items():
                print(f"{kind}, index {index}: {scenario}", flush=True)
                runs[index][scenario] = measure(client, process.pid, scenario_paths).summary()
    return {
        "database": kind,
        "clips": args.clips,
        "queue_length": queue_length,
        "insert_s": round(insert_s, 1),
        "by_index": runs,
    }


# --- report -----------------------------------------------------------------------------------


def print_report(result: dict[str, object]) -> None:
    runs = result["runs"]
    assert isinstance(runs, list)
    print(
        f"\n{'database':<11} {'index':<15} {'scenario':<15} {'requests':>8} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'CPU ms/req':>10} {'others cores':>12}"
    )
    for run in runs:
        for index, scenarios in run["by_index"].items():
            for scenario, s in scenarios.items():
                print(
                    f"{run['database']:<11} {index:<15} {scenario:<15} {s['requests']:>8} "
                    f"{s['p50_ms']:>7} {s['p95_ms']:>7} {s['p99_ms']:>7} {s['max_ms']:>7} "
                    f"{s['server_cpu_ms_per_request']:>10} {s['other_cpu_cores']:>12}"
                )
    print(f"\ntarget: p95 <= {TARGET_P95_MS:.0f} ms with the index")
    for run in runs:
        worst = max(s["p95_ms"] for s in run["by_index"]["ix_clips_queue"].values())
        verdict = "pass" if worst <= TARGET_P95_MS else "FAIL"
        print(f"  {run['database']:<11} worst p95 {worst:>7} ms {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=100_000, help="clips in the database")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per scenario")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per scenario")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    started = time.monotonic()
    info = machine()
    runs = []
    for kind in args.databases:
        if kind == "sqlite":
            with tempfile.TemporaryDirectory(prefix="bench-queue-db-") as name:
                runs.append(bench_database(kind, f"sqlite:///{name}/soundwarden.db", args))
        else:
            with postgres_database() as url:
                runs.append(bench_database(kind, url, args))
    result: dict[str, object] = {
        "data": f"{args.clips} device clips from {len(DEVICES)} devices over {DAYS} days, 60 % "
        "unlabelled, 70 % scored; one labeller, sequential requests on a kept-alive connection",
        "runs": runs,
        "duration_s": round(time.monotonic() - started, 1),
        "command": shlex.join([_display(Path(sys.executable)), *sys.argv]),
        "machine": info,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"saved to {_display(args.out.resolve())}")


if __name__ == "__main__":
    main()
