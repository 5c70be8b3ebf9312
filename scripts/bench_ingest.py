"""Benchmark: clip ingestion throughput of a real `soundwarden-cloud serve`.

Devices upload 5 s clips the way the edge does: 16 kHz mono 16-bit FLAC with the clip's
`ClipMetadata` in its comment tag, as the multipart body `edge.clips` builds, one new HTTP
connection per upload (urllib's behaviour on the device). The clips are cut from the fixture
recordings (cries, music, speech, concatenated and looped) at different offsets, so no two are
alike. Every device has its own token, enrolled before the server starts.

For each database (SQLite; PostgreSQL in a scratch database created and dropped here) and each
`serve --workers` count, a fresh server answers, after a short warm-up, first a baseline of one
device uploading alone, then `--clients` devices uploading at once, each in a closed loop (next
clip as soon as the last is answered). Reported: clips/s over the phase's wall time, upload
latency p50/p95/p99, non-201 answers, the server's CPU time per clip (utime+stime of the server
and its workers from /proc: what a clip costs), and the cores the server, these clients and
everything else on the machine used meanwhile (on a shared machine, what others took is what
the server could not have). Afterwards the database must hold each clip exactly once.

    .venv/bin/python scripts/bench_ingest.py [--clips 1000] [--clients 16] [--workers 1 2 4]

Needs the cloud extra and, for the PostgreSQL half, a server at SOUNDWARDEN_BENCH_POSTGRES
(default postgresql://postgres@127.0.0.1:5432/postgres); takes about 20 s per server.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # scripts.bench_frontend lives beside the package

import numpy as np
import psycopg
import soundfile as sf
from sqlalchemy import func, select

from cloud import accounts
from cloud.core.db import make_engine, make_sessionmaker, migrate
from cloud.tables import Clip
from edge.clips import _multipart  # the edge's own body builder: the bytes a device sends
from models.audio import FloatArray, float_to_int16, load_mono
from models.contract import ClipMetadata, ModelRef
from scripts.bench_frontend import _cpu_model

FIXTURES = REPO / "tests" / "fixtures" / "audio"
RECORDINGS = sorted(FIXTURES.glob("*/*.wav"))
DEFAULT_OUT = REPO / "scripts" / "results" / "ingest.json"
POSTGRES_ADMIN = os.environ.get(
    "SOUNDWARDEN_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RATE = 16000
CLIP_S = 5.0
TARGET_CLIPS_PER_S = 200.0  # from the issue: 16 devices, 5 s clips
MODEL = ModelRef(name="cry-detector", version="1.1.0")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- clips ------------------------------------------------------------------------------------


def source_audio() -> FloatArray:
    """The fixture recordings back to back at 16 kHz (about 20 s)."""
    return np.concatenate([load_mono(path, RATE) for path in RECORDINGS])


@dataclass(frozen=True)
class Upload:
    device: str
    body: bytes
    content_type: str


def make_upload(audio: FloatArray, index: int, device: str) -> Upload:
    """Clip `index`: 5 s from a shifting offset of the looped recordings, as the edge sends it."""
    length = round(CLIP_S * RATE)
    start = (index * 7919) % audio.shape[0]  # a prime stride: offsets spread over the loop
    piece = np.take(audio, np.arange(start, start + length), mode="wrap")
    clip_id = uuid.uuid4().hex
    began = datetime(2024, 5, 1, tzinfo=UTC) + timedelta(seconds=index * 10)
    meta = ClipMetadata(
        id=clip_id,
        device=device,
        event_id=clip_id,
        label="cry",
        score=0.9,
        model=MODEL,
        started_at=began,
        ended_at=began + timedelta(seconds=CLIP_S),
        episode_started_at=began + timedelta(seconds=1),
        episode_ended_at=began + timedelta(seconds=4),
        sample_rate=RATE,
        truncated=False,
    )
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", RATE, 1, format="FLAC", subtype="PCM_16") as handle:
        handle.comment = meta.model_dump_json()
        handle.write(float_to_int16(piece))
    body, content_type = _multipart(
        [
            ("metadata", None, "application/json", meta.model_dump_json().encode()),
            ("audio", f"{clip_id}.flac", "audio/flac", buffer.getvalue()),
        ]
    )
    return Upload(device, body, content_type)


# --- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"soundwarden_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def enrol(url: str, devices: Sequence[str]) -> dict[str, str]:
    migrate(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as db:
            tokens = {device: accounts.add_device(db, device) for device in devices}
            db.commit()
    finally:
        engine.dispose()
    return tokens


def stored_clips(url: str) -> tuple[int, int]:
    """Rows in `clips` and distinct clip ids among them."""
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as db:
            rows = db.scalar(select(func.count()).select_from(Clip)) or 0
            ids = db.scalar(select(func.count(func.distinct(Clip.id)))) or 0
    finally:
        engine.dispose()
    return int(rows), int(ids)


@contextmanager
def server(data_dir: Path, url: str, workers: int) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, "SOUNDWARDEN_DATA_DIR": str(data_dir), "SOUNDWARDEN_DATABASE_URL": url}
    command = [str(Path(sys.executable).parent / "soundwarden-cloud"), "serve", "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    log = (data_dir / "server.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the server did not start:\n" + (data_dir / "server.log").read_text()
                    ) from None
                time.sleep(0.2)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its live children (uvicorn's workers)."""
    total = 0.0
    for proc in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every core of this machine spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    """This process's CPU time: the benchmark's clients."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [int(child) for child in found]


# --- load -------------------------------------------------------------------------------------


@dataclass
class Phase:
    latencies_s: list[float]
    statuses: list[int]
    wall_s: float
    server_cpu_s: float
    client_cpu_s: float
    machine_busy_s: float  # every process on the machine, ours included


def post(port: int, token: str, upload: Upload) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST",
            "/api/v1/clips",
            body=upload.body,
            headers={"Content-Type": upload.content_type, "Authorization": f"Bearer {token}"},
        )
        response = connection.getresponse()
        response.read()
        return int(response.status)
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


def run_phase(port: int, pid: int, tokens: dict[str, str], lanes: list[list[Upload]]) -> Phase:
    """One client per lane, all at once, each uploading its list in a closed loop."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    go = threading.Barrier(len(lanes) + 1)

    def client(lane: list[Upload]) -> None:
        go.wait()
        for upload in lane:
            began = time.perf_counter()
            code = post(port, tokens[upload.device], upload)
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                statuses.append(code)

    threads = [threading.Thread(target=client, args=(lane,)) for lane in lanes]
    for thread in threads:
        thread.start()
    before = cpu_seconds(pid), own_cpu_seconds(), machine_busy_seconds()
    go.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    after = cpu_seconds(pid), own_cpu_seconds(), machine_busy_seconds()
    server_s, client_s, busy_s = (b - a for a, b in zip(before, after, strict=True))
    return Phase(latencies, statuses, wall, server_s, client_s, busy_s)


def summary(phase: Phase, clients: int) -> dict[str, object]:
    ms = np.asarray(phase.latencies_s) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    errors = sum(code != 201 for code in phase.statuses)
    return {
        "clients": clients,
        "clips": len(phase.statuses),
        "clips_per_s": round(len(phase.statuses) / phase.wall_s, 1),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(ms.max()), 1),
        "errors": errors,
        "statuses": {str(c): phase.statuses.count(c) for c in sorted(set(phase.statuses))},
        "wall_s": round(phase.wall_s, 2),
        "server_cpu_ms_per_clip": round(phase.server_cpu_s / len(phase.statuses) * 1e3, 2),
        "server_cpu_cores": round(phase.server_cpu_s / phase.wall_s, 2),
        "client_cpu_cores": round(phase.client_cpu_s / phase.wall_s, 2),
        # What everyone else on a shared machine took meanwhile: cores the server could not use.
        "other_cpu_cores": round(
            (phase.machine_busy_s - phase.server_cpu_s - phase.client_cpu_s) / phase.wall_s, 2
        ),
    }


def bench_database(
    kind: str, url: str, workers: int, audio: FloatArray, args: argparse.Namespace
) -> dict[str, object]:
    devices = [f"bench-{i:02d}" for i in range(args.clients)]
    tokens = enrol(url, devices)
    total = args.warmup + args.baseline + args.clips
    label = f"{kind}, {workers} worker{'s' if workers > 1 else ''}"
    print(f"{label}: encoding {total} clips", flush=True)
    pool = [make_upload(audio, i, devices[i % len(devices)]) for i in range(total)]
    warmup, baseline, main = (
        pool[: args.warmup],
        pool[args.warmup : args.warmup + args.baseline],
        pool[args.warmup + args.baseline :],
    )
    n = len(devices)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as name:
        data_dir = Path(name)
        with server(data_dir, url, workers) as (port, process):
            # Clip i belongs to device i mod n, so lane i mod n is one device's clips in order.
            run_phase(port, process.pid, tokens, [warmup[i::n] for i in range(n)])
            print(f"{label}: 1 client x {len(baseline)} clips", flush=True)
            one = run_phase(port, process.pid, tokens, [baseline])
            print(f"{label}: {n} clients x {len(main)} clips", flush=True)
            many = run_phase(port, process.pid, tokens, [main[i::n] for i in range(n)])
        rows, ids = stored_clips(url)
        disk = sum(p.stat().st_size for p in (data_dir / "clips").rglob("*") if p.is_file())
        files = sum(1 for p in (data_dir / "clips").rglob("*") if p.is_file())
    return {
        "database": kind,
        "workers": workers,
        "baseline": summary(one, 1),
        "concurrent": summary(many, args.clients),
        "stored": {"rows": rows, "distinct_ids": ids, "uploaded": total, "files": files},
        "stored_exactly_once": rows == ids == total,
        "storage_mb": round(disk / 1e6, 1),
        "clip_bytes_mean": round(float(np.mean([len(u.body) for u in pool]))),
    }


# --- report -----------------------------------------------------------------------------------


def _display(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def machine() -> dict[str, object]:
    versions = {"python": platform.python_version()}
    for dist in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "psycopg", "python-multipart"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def print_report(result: dict[str, object]) -> None:
    runs = result["runs"]
    assert isinstance(runs, list)
    print(
        f"\n{'database':<11} {'workers':>7} {'clients':>7} {'clips':>6} {'clips/s':>8} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'CPU ms/clip':>11} "
        f"{'server cores':>12} {'others cores':>12}"
    )
    for run in runs:
        for phase in ("baseline", "concurrent"):
            s = run[phase]
            print(
                f"{run['database']:<11} {run['workers']:>7} {s['clients']:>7} {s['clips']:>6} "
                f"{s['clips_per_s']:>8} {s['p50_ms']:>7} {s['p95_ms']:>7} {s['p99_ms']:>7} "
                f"{s['errors']:>6} {s['server_cpu_ms_per_clip']:>11} "
                f"{s['server_cpu_cores']:>12} {s['other_cpu_cores']:>12}"
            )
        once = "yes" if run["stored_exactly_once"] else f"NO {run['stored']}"
        print(f"{'':<11} stored exactly once: {once}")
    print(f"\ntarget >= {TARGET_CLIPS_PER_S:.0f} clips/s with concurrent clients:")
    for run in runs:
        rate = run["concurrent"]["clips_per_s"]
        verdict = "pass" if rate >= TARGET_CLIPS_PER_S else "FAIL"
        print(f"  {run['database']:<11} {run['workers']} worker(s) {rate:>8} {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1000, help="clips in the concurrent phase")
    parser.add_argument("--clients", type=int, default=16, help="devices uploading at once")
    parser.add_argument("--baseline", type=int, default=200, help="clips one device uploads")
    parser.add_argument("--warmup", type=int, default=48, help="untimed clips first")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 4], help="`serve --workers`, in turn"
    )
    parser.add_argument(
        "--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    audio = source_audio()
    started = time.monotonic()
    info = machine()
    runs = []
    for kind in args.databases:
        for workers in args.workers:
            if kind == "sqlite":
                with tempfile.TemporaryDirectory(prefix="bench-ingest-db-") as name:
                    url = f"sqlite:///{name}/soundwarden.db"
                    runs.append(bench_database(kind, url, workers, audio, args))
            else:
                with postgres_database() as url:
                    runs.append(bench_database(kind, url, workers, audio, args))
    result: dict[str, object] = {
        "clip": f"{CLIP_S} s, 16 kHz mono 16-bit FLAC with metadata tag, from {len(RECORDINGS)} "
        "fixture recordings",
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
