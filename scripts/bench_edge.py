"""Benchmark: the edge daemon's cost per window, and the daemon itself on a real-time stream.

Part 1, per-window cost on one thread (BLAS/OpenMP limited to one thread, model threads=1,
the process pinned to one core): the edge's hot path, `StreamingLogMel` fed one 0.25 s hop plus
`BundleModel.scores` on the resulting 1 s window, for the shipped cry detector's INT8 model in
every runtime this machine has (onnx; tflite when ai_edge_litert imports), timed hop by hop
over a few minutes of real audio (the fixture recordings concatenated and looped, or
`--audio FILE`), back to back; and for onnx also paced, 60 hops one per 0.25 s as the daemon
gets them, when caches and clocks go cold in between. `Detector.push` (the hot path plus
level, episode rules and events) is timed too, for reference. Baseline, same audio, same run:
what the projects we replace do per window, `librosa.load` of a 1 s window file at 22.05 kHz +
`melspectrogram(n_fft=2048)` + `mfcc(40)` (as in scripts/bench_frontend.py), then the same
ONNX inference on our features. Real-time factor = 0.25 s of audio per window / mean seconds
per window.

Part 2, the daemon as a Raspberry Pi runs it: a private Mosquitto on a free loopback port,
`soundwarden-edge run` from `.venv-edge` (else `.venv`) with a stdin source, and ~80 s of
16 kHz int16 audio written to its stdin in real time, one 0.25 s hop per write on a fixed
schedule: -60 dBFS room noise with the two fixture cries every ~10-15 s and the speech and music
fixtures between them, then a stretch of digital silence. A paho subscriber timestamps the
events. The same audio goes through `edge.detector.Detector` offline first, hop by hop, which
says which hop produced each event; latency = arrival time - the time that hop's last byte was
written. CPU is the daemon's utime+stime from /proc, whole process and per thread, over the
stream (after a warm-up) and over the silence (what it costs when nothing happens); peak RSS is
its VmHWM. The daemon gets our environment minus the one-thread settings, as on a device. The
last `status` heartbeat gives windows processed and dropped. The daemon's own log lines for
start/end events split their latency into "until the daemon logged it" (capture, analysis,
spool write) and "from the log line to the subscriber".

The targets of the edge issue (per-window p99 <= 2 ms, CPU <= 3 % of one core, RSS <= 120 MB,
event latency p99 <= 50 ms) are printed next to the numbers as pass/fail.

    .venv/bin/python scripts/bench_edge.py [--audio FILE] [--minutes 3] [--out results.json]

Needs the dev extra (librosa, paho) and `mosquitto` on PATH; takes about three minutes.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy loads its BLAS: hence the imports below this line.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
for _var in _THREAD_VARS:
    os.environ[_var] = "1"

import argparse
import json
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tests.mosquitto (the broker helper) and scripts.bench_frontend live beside the package.
sys.path.insert(0, str(REPO))

import numpy as np
import paho.mqtt.client as mqtt
import soundfile as sf
from paho.mqtt.enums import CallbackAPIVersion
from tqdm import tqdm

from edge.config import DetectionConfig
from edge.detector import Detector
from edge.spool import Spool
from models.audio import FloatArray, float_to_int16, int16_to_float, load_mono
from models.bundle import DEFAULT_TRUSTED_KEYS, PRETRAINED_DIR, Bundle, load_bundle
from models.contract import EventPayload, StatusPayload
from models.frontend import StreamingLogMel
from models.inference import BundleModel
from models.runtimes import RuntimeUnavailableError, runtime_class
from models.signing import TrustedKeys
from scripts.bench_frontend import _cpu_model
from tests.mosquitto import Mosquitto

FIXTURES = REPO / "tests" / "fixtures" / "audio"
CRY_FULL_BAND = FIXTURES / "cry" / "donateacry_ios_045c5483.wav"
CRY_8K_ORIGIN = FIXTURES / "cry" / "donateacry_android_035c6b30.wav"
SPEECH = [FIXTURES / "other" / "fsdd_3_theo_10.wav", FIXTURES / "other" / "fsdd_7_yweweler_12.wav"]
MUSIC = FIXTURES / "other" / "moh_reno_project-system_0040s.wav"
BUNDLE = PRETRAINED_DIR / "cry-detector"
DEFAULT_OUT = REPO / "scripts" / "results" / "edge.json"
RATE = 16000
HOP = 4000  # 0.25 s at 16 kHz: one window per hop, as the daemon's detection.hop_s
HOP_S = HOP / RATE
WARMUP_WINDOWS = 20  # untimed: caches, allocator, librosa's numba JIT
PACED_WINDOWS = 60  # hops timed one per 0.25 s, as they come in the daemon (15 s)
DEVICE = "bench"
TARGETS = {  # from the edge issue
    "per_window_p99_ms": 2.0,
    "cpu_percent": 3.0,
    "rss_mb": 120.0,
    "latency_p99_ms": 50.0,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- statistics -------------------------------------------------------------------------------


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """p50/p99/max/mean in ms of durations in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"n": 0}
    p50, p99 = np.percentile(ms, [50, 99])
    return {
        "n": int(ms.size),
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(ms.max()), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


# --- part 1: per-window cost ------------------------------------------------------------------


def load_bench_audio(path: Path | None, minutes: float) -> FloatArray:
    """The given file, or every fixture recording concatenated, looped to `minutes`."""
    paths = [path] if path else sorted(FIXTURES.glob("*/*.wav"))
    signal = np.concatenate([load_mono(p, RATE) for p in paths])
    wanted = int(minutes * 60 * RATE)
    return np.tile(signal, -(-wanted // len(signal)))[:wanted]


def hops_of(signal: FloatArray) -> list[FloatArray]:
    return [signal[i : i + HOP] for i in range(0, len(signal) - HOP + 1, HOP)]


def time_hot_path(
    model: BundleModel, hops: list[FloatArray], desc: str, pause_s: float = 0.0
) -> list[float]:
    """Seconds per hop of the edge's hot path: front-end update + one window's inference.
    With `pause_s` between hops, as in the daemon, caches and clocks go cold in between."""
    stream = StreamingLogMel(model.manifest.features)
    times = []
    for hop in tqdm(hops, desc=desc, leave=False):
        start = time.perf_counter()
        stream.push(hop)
        if stream.ready:  # the first 0.75 s only fill the window, as on the device
            model.scores(stream.window()[None])
            times.append(time.perf_counter() - start)
        time.sleep(pause_s)
    return times[WARMUP_WINDOWS:]


def time_detector(
    model: BundleModel, hops: list[FloatArray], desc: str, pause_s: float = 0.0
) -> list[float]:
    """Seconds per hop of `Detector.push`: what the daemon's analysis loop spends per hop."""
    detector = Detector(model, device=DEVICE)
    times = []
    for hop in tqdm(hops, desc=desc, leave=False):
        start = time.perf_counter()
        detector.push(hop)
        times.append(time.perf_counter() - start)
        time.sleep(pause_s)
    return times[WARMUP_WINDOWS + 3 :]


def time_baseline(model: BundleModel, signal: FloatArray, tmp: Path) -> list[float]:
    """Seconds per window of the librosa pipeline (from a 1 s file) + ONNX on our features."""
    import librosa

    window = model.manifest.features.window_samples
    features = model.logmel.windows(signal, HOP)  # the model's input; not part of the timing
    files = []
    for i in range(len(features)):
        path = tmp / f"window_{i:04d}.wav"
        sf.write(path, signal[i * HOP : i * HOP + window], RATE, "PCM_16")
        files.append(path)

    def one(i: int) -> None:
        y, sr = librosa.load(files[i])
        librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048)
        librosa.feature.mfcc(y=y, sr=sr, n_mfcc=40)
        model.scores(features[i][None])

    for i in range(WARMUP_WINDOWS):
        one(i)
    times = []
    for i in tqdm(range(len(files)), desc="baseline librosa", leave=False):
        start = time.perf_counter()
        one(i)
        times.append(time.perf_counter() - start)
    return times


def available_runtimes() -> list[str]:
    kinds = []
    for kind in ("onnx", "tflite"):
        try:
            runtime_class(kind)
        except RuntimeUnavailableError:
            continue
        kinds.append(kind)
    return kinds


@contextmanager
def pinned_to_one_core() -> Iterator[int]:
    """Pin this process to one core, and give the others back after (the daemon, started
    later, inherits the affinity and must run as it would on the device)."""
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def per_window(bundle: Bundle, audio: Path | None, minutes: float) -> dict[str, object]:
    signal = load_bench_audio(audio, minutes)
    hops = hops_of(signal)
    rows: dict[str, list[float]] = {}
    models = {kind: BundleModel(bundle, runtime=kind, threads=1) for kind in available_runtimes()}
    with pinned_to_one_core() as core:
        for kind, model in models.items():
            rows[f"hot_path_{kind}_int8"] = time_hot_path(model, hops, f"hot path {kind}")
        paced = hops[: WARMUP_WINDOWS + 3 + PACED_WINDOWS]
        rows["hot_path_onnx_int8_paced"] = time_hot_path(
            models["onnx"], paced, "hot path onnx, paced", pause_s=HOP_S
        )
        rows["detector_push_onnx_int8"] = time_detector(models["onnx"], hops, "detector.push")
        rows["detector_push_onnx_int8_paced"] = time_detector(
            models["onnx"], paced, "detector.push, paced", pause_s=HOP_S
        )
        with tempfile.TemporaryDirectory() as tmp:
            rows["baseline_librosa_then_onnx_int8"] = time_baseline(
                models["onnx"], signal, Path(tmp)
            )
    stats = {name: summary_ms(times) for name, times in rows.items()}
    for name, times in rows.items():
        stats[name]["rtf"] = round(HOP_S / float(np.mean(times)), 1)
    base = float(stats["baseline_librosa_then_onnx_int8"]["p50_ms"])
    return {
        "audio": _display(audio) if audio else "tests/fixtures/audio/*/*.wav concatenated, looped",
        "audio_s": round(len(signal) / RATE, 1),
        "windows_timed": {name: len(times) for name, times in rows.items()},
        "pinned_cpu": core,
        "rows": stats,
        "speedup_p50_vs_baseline": {
            name: round(base / float(s["p50_ms"]), 1)
            for name, s in stats.items()
            if not name.startswith("baseline")
        },
    }


# --- part 2: the daemon on a real-time stream -------------------------------------------------


def room(seconds: float, seed: int) -> FloatArray:
    """A quiet room: gaussian noise at about -60 dBFS."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * 0.001).astype(np.float32)


def stream_audio(silence_s: float) -> tuple[np.ndarray, list[dict[str, object]], int]:
    """int16 PCM of the stream, its layout, and the hop where the trailing silence begins.

    Cries (both fixtures, alternately) with speech or music between them, 2 s of room noise
    around each recording; every part is padded to whole hops so the layout reads in hops.
    """
    cries = [load_mono(CRY_FULL_BAND, RATE), load_mono(CRY_8K_ORIGIN, RATE)]
    others = [load_mono(SPEECH[0], RATE), load_mono(MUSIC, RATE), load_mono(SPEECH[1], RATE)]
    names = ["cry_full_band", "cry_8k_origin"], ["speech", "music", "speech"]
    parts: list[tuple[str, FloatArray]] = [("room", room(2, 0))]
    for i in range(6):
        parts.append((names[0][i % 2], cries[i % 2]))
        parts.append(("room", room(2, 2 * i + 1)))
        if i < 5:
            parts.append((names[1][i % 3], others[i % 3]))
            parts.append(("room", room(2, 2 * i + 2)))
    parts.append(("room", room(1, 99)))
    layout, pieces, at = [], [], 0
    for name, samples in parts:
        padded = np.pad(samples, (0, -len(samples) % HOP))
        pieces.append(padded)
        if name != "room":
            layout.append({"part": name, "start_s": at / RATE, "seconds": len(samples) / RATE})
        at += len(padded)
    silence_hop = at // HOP
    pieces.append(np.zeros(int(silence_s * RATE) // HOP * HOP, dtype=np.float32))
    return float_to_int16(np.concatenate(pieces)), layout, silence_hop


@dataclass(frozen=True)
class Expected:
    hop: int  # index of the hop whose push raised it
    type: str
    label: str
    score: float


def expected_events(model: BundleModel, pcm: np.ndarray) -> list[Expected]:
    """What the daemon must publish: the same detector over the same samples, hop by hop."""
    detector = Detector(model, device=DEVICE, rules=DetectionConfig())
    samples = int16_to_float(pcm)
    found = []
    for hop in range(len(samples) // HOP):
        for event in detector.push(samples[hop * HOP : (hop + 1) * HOP]):
            found.append(Expected(hop, event.type, event.label, event.score))
    return found


class Listener:
    """Subscribes to the device's topics and timestamps every message as it arrives."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda c, *_: c.subscribe(f"soundwarden/{DEVICE}/#", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the benchmark's subscriber could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        arrived = time.monotonic()  # first thing: the arrival time is the measurement
        with self._lock:
            self.messages.append((arrived, message.topic, bytes(message.payload)))

    def on(self, suffix: str) -> list[tuple[float, bytes]]:
        topic = f"soundwarden/{DEVICE}/{suffix}"
        with self._lock:
            return [(t, p) for t, m, p in self.messages if m == topic]

    def wait_for(self, suffix: str, payload: bytes, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p == payload for _, p in self.on(suffix)):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def write_config(tmp: Path, port: int, status_interval_s: float, chunk_s: float) -> Path:
    path = tmp / "edge.toml"
    path.write_text(
        f'device = "{DEVICE}"\ndata_dir = "{tmp / "data"}"\n'
        '[audio.source]\ntype = "stdin"\nsample_rate = 16000\nchannels = 1\n'
        f"chunk_s = {chunk_s}\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nstatus_interval_s = {status_interval_s}\n'
        "[clips]\nenabled = true\n"
    )
    return path


def daemon_venv(choice: Path | None) -> Path:
    """What a Pi runs: the edge-only virtualenv when there is one."""
    if choice:
        return choice
    edge = REPO / ".venv-edge"
    return edge if (edge / "bin" / "soundwarden-edge").exists() else REPO / ".venv"


def daemon_env() -> dict[str, str]:
    """Our environment minus what this benchmark set for itself: the daemon runs with the
    thread settings a device has, and never talks to a systemd that is not its own."""
    drop = {*_THREAD_VARS, "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"}
    return {k: v for k, v in os.environ.items() if k not in drop}


# The threads Daemon.run starts, in order (MqttLink.start, then Capture.start): thread ids grow
# in start order, and Python 3.11 gives threads no OS names. Those started before run() are
# OpenBLAS's idle workers and onnxruntime's.
RUN_THREADS = ["paho network loop", "outbox pump", "capture"]


@dataclass(frozen=True)
class ProcSample:
    at: float  # monotonic
    ticks: int  # utime + stime of the whole process, clock ticks
    threads: dict[int, int]  # the same per thread id


def _ticks(stat_path: Path) -> int:
    # Fields after the ")" that closes the command name: utime and stime are the 12th and 13th.
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_sample(pid: int) -> ProcSample:
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads[int(task.name)] = _ticks(task / "stat")
        except OSError:  # a thread that just ended
            continue
    return ProcSample(time.monotonic(), _ticks(Path(f"/proc/{pid}/stat")), threads)


def proc_memory(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set over the whole life) and VmRSS (now), in MB (10^6 bytes, what
    the target means) and MiB (what the daemon's own status reports as rss_mb)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            name = "peak" if key == "VmHWM" else "end"
            kib = int(rest.split()[0])
            values[f"{name}_mb"] = round(kib * 1024 / 1e6, 1)
            values[f"{name}_mib"] = round(kib / 1024, 1)
    return values


def cpu_between(first: ProcSample, last: ProcSample) -> dict[str, object]:
    """Percent of one core over an interval, for the process and for each thread."""
    wall = last.at - first.at

    def percent(ticks: int) -> float:
        return round(100 * ticks / CLK_TCK / wall, 2)

    pid = min(last.threads)  # the main thread's id is the process id
    tids = sorted(set(first.threads) & set(last.threads) - {pid})
    later, earlier = tids[-len(RUN_THREADS) :], tids[: -len(RUN_THREADS)]
    threads = {"main (analysis loop)": percent(last.threads[pid] - first.threads[pid])}
    threads |= {
        role: percent(last.threads[tid] - first.threads[tid])
        for role, tid in zip(RUN_THREADS, later, strict=True)
    }
    threads["started before run"] = percent(
        sum(last.threads[tid] - first.threads[tid] for tid in earlier)
    )
    return {
        "seconds": round(wall, 1),
        "cpu_percent": percent(last.ticks - first.ticks),
        "threads_percent": threads,
    }


@dataclass
class Feed:
    write_done: list[float] = field(default_factory=list)  # monotonic, per hop
    late_s: list[float] = field(default_factory=list)  # write finished after its schedule
    samples: dict[str, ProcSample] = field(default_factory=dict)


def feed(
    daemon: subprocess.Popen[bytes], pcm: np.ndarray, marks: dict[int, str], desc: str
) -> Feed:
    """Write one hop per 0.25 s on an absolute schedule (a sleep per hop would drift), hop i
    once its last sample 'was captured'; sample /proc right after the hops named in `marks`."""
    assert daemon.stdin is not None
    out = Feed()
    data = pcm.astype("<i2").tobytes()
    hop_bytes = 2 * HOP
    start = time.monotonic() + 0.1
    for i in tqdm(range(len(pcm) // HOP), desc=desc, leave=False):
        due = start + (i + 1) * HOP_S
        time.sleep(max(0.0, due - time.monotonic()))
        view = memoryview(data)[i * hop_bytes : (i + 1) * hop_bytes]
        while view:  # a blocking pipe takes it all at once; loop in case it does not
            view = view[daemon.stdin.write(view) or 0 :]
        done = time.monotonic()
        out.write_done.append(done)
        out.late_s.append(done - due)
        if i in marks:
            out.samples[marks[i]] = proc_sample(daemon.pid)
    return out


_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO edge\.daemon: (\S+) (start|end) [0-9a-f]{8} "
)


def logged_at(stderr: str) -> list[tuple[float, str, str]]:
    """(wall time, label, type) of every start/end line the daemon logged, in order."""
    found = []
    for line in stderr.splitlines():
        match = _LOG_LINE.match(line)
        if match:
            stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((stamp, match[2], match[3]))
    return found


def match_events(
    expected: list[Expected], arrived: list[tuple[float, bytes]]
) -> tuple[list[tuple[Expected, float, EventPayload]], list[str]]:
    """Pairs expected and received events in order; the problems, when they differ."""
    received = [(t, EventPayload.model_validate_json(p)) for t, p in arrived]
    problems = []
    if len(received) != len(expected):
        problems.append(f"{len(expected)} events expected, {len(received)} received")
    pairs = []
    for i, (want, (at, got)) in enumerate(zip(expected, received, strict=False)):
        if (got.type, got.label) != (want.type, want.label):
            problems.append(
                f"event {i}: expected {want.type} {want.label}, got {got.type} {got.label}"
            )
        elif abs(got.score - want.score) > 1e-6:
            problems.append(f"event {i}: score {got.score} offline {want.score} (hops misaligned?)")
        pairs.append((want, at, got))
    return pairs, problems


def latencies(pairs: list[tuple[Expected, float, EventPayload]], feed_: Feed) -> dict[str, object]:
    every = [at - feed_.write_done[want.hop] for want, at, _ in pairs]
    starts = [at - feed_.write_done[want.hop] for want, at, got in pairs if got.type == "start"]
    return {
        "all": summary_ms(every),
        "start": summary_ms(starts),
        "per_event": [
            {"hop": want.hop, "type": want.type, "ms": round(1e3 * seconds, 2)}
            for (want, _, _), seconds in zip(pairs, every, strict=True)
        ],
    }


def latency_split(
    pairs: list[tuple[Expected, float, EventPayload]], feed_: Feed, stderr: str, wall_offset: float
) -> dict[str, object]:
    """For start/end events: hop written -> daemon's log line (capture, analysis, spool write,
    retained state), and log line -> subscriber (outbox pump, paho, broker). The log's clock is
    the wall clock in whole ms, so each part is good to about a millisecond."""
    logged = logged_at(stderr)
    marked = [(want, at) for want, at, got in pairs if got.type != "update"]
    if len(logged) != len(marked):
        return {"note": f"{len(logged)} start/end log lines for {len(marked)} events: not split"}
    to_log, to_subscriber = [], []
    for (want, at), (stamp, _, _) in zip(marked, logged, strict=True):
        log_mono = stamp - wall_offset
        to_log.append(log_mono - feed_.write_done[want.hop])
        to_subscriber.append(at - log_mono)
    return {"write_to_log": summary_ms(to_log), "log_to_subscriber": summary_ms(to_subscriber)}


def clip_save_hops(clips_dir: Path, feed_: Feed, wall_offset: float) -> list[float]:
    """When each clip file was written, in hops since the stream began (hop i's audio is
    written at i + 1): clips are encoded and fsynced on the analysis thread."""
    origin = feed_.write_done[0] - HOP_S
    saved = sorted(f.stat().st_mtime - wall_offset for f in clips_dir.rglob("*.flac"))
    return [round((at - origin) / HOP_S, 2) for at in saved]


def time_spool_puts(directory: Path, count: int = 50) -> dict[str, float | int]:
    """What one durable `Spool.put` (WAL, synchronous=FULL: an fsync) costs on this disk."""
    spool = Spool(directory / "probe.sqlite")
    payload = b"x" * 400  # about an event's JSON
    times = []
    for i in range(count):
        start = time.perf_counter()
        spool.put(f"probe:{i}", "event", payload)
        times.append(time.perf_counter() - start)
    spool.close()
    return summary_ms(times)


def last_status(listener: Listener) -> StatusPayload | None:
    statuses = listener.on("status")
    return StatusPayload.model_validate_json(statuses[-1][1]) if statuses else None


def self_reported(listener: Listener) -> list[dict[str, float]]:
    """The daemon's own heartbeats: its CPU % since the previous one, and RSS."""
    out = []
    for _, payload in listener.on("status"):
        status = StatusPayload.model_validate_json(payload)
        out.append(
            {
                "uptime_s": status.uptime_s,
                "cpu_percent": status.cpu_percent,
                "rss_mb": status.rss_mb,
            }
        )
    return out


def start_daemon(venv: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:  # a file, not a pipe nobody drains while streaming
        return subprocess.Popen(
            [str(venv / "bin" / "soundwarden-edge"), "run", "--config", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=daemon_env(),
            cwd=config.parent,
            bufsize=0,
        )


def wait_online(daemon: subprocess.Popen[bytes], listener: Listener, log: Path) -> float:
    """Seconds from start until the daemon is connected, its capture about to read stdin."""
    started = time.monotonic()
    while not listener.wait_for("availability", b"online", 0.5):
        if daemon.poll() is not None or time.monotonic() - started > 120:
            daemon.kill()
            raise RuntimeError("the daemon did not come online:\n" + _tail(log.read_text()))
    return time.monotonic() - started


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def finish_daemon(daemon: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    """Close stdin (end of stream) and expect a clean exit 0."""
    assert daemon.stdin is not None
    closed = time.monotonic()
    daemon.stdin.close()
    try:
        code = daemon.wait(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        code = daemon.wait()
    result: dict[str, object] = {
        "exit_code": code,
        "exit_s_after_stdin_closed": round(time.monotonic() - closed, 2),
    }
    if code != 0:
        result["stderr_tail"] = _tail(log.read_text())
    return result


def daemon_versions(venv: Path) -> dict[str, str]:
    code = (
        "import json, platform, numpy, onnxruntime, paho.mqtt; print(json.dumps({"
        "'python': platform.python_version(), 'numpy': numpy.__version__, "
        "'onnxruntime': onnxruntime.__version__, 'paho_mqtt': paho.mqtt.__version__}))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    versions: dict[str, str] = json.loads(out.stdout)
    return versions


@dataclass(frozen=True)
class DaemonOptions:
    venv: Path
    warmup_s: float
    silence_s: float
    status_interval_s: float
    chunk_s: float  # audio.source.chunk_s: bytes per read from stdin


def run_daemon(bundle: Bundle, options: DaemonOptions) -> dict[str, object]:
    venv = options.venv
    pcm, layout, silence_hop = stream_audio(options.silence_s)
    model = BundleModel(bundle, runtime="onnx", threads=1)  # the daemon's `auto` on any venv
    expected = expected_events(model, pcm[: silence_hop * HOP])
    warm = round(options.warmup_s / HOP_S)
    marks = {
        warm - 1: "stream_start",
        silence_hop - 1: "stream_end",
        silence_hop + 3: "silence_start",  # 1 s in: the last window with sound is gone
        len(pcm) // HOP - 1: "silence_end",
    }
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as name:
        tmp = Path(name)
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker")
        broker.start()
        listener = Listener(broker.port)
        config = write_config(tmp, broker.port, options.status_interval_s, options.chunk_s)
        log = tmp / "daemon.log"
        daemon = start_daemon(venv, config, log)
        try:
            startup_s = wait_online(daemon, listener, log)
            wall_offset = time.time() - time.monotonic()
            fed = feed(daemon, pcm, marks, "streaming to the daemon")
            memory = proc_memory(daemon.pid)
            exit_info = finish_daemon(daemon, log)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        listener.wait_for("availability", b"offline", 10)
        spool_put = time_spool_puts(tmp)
        clip_hops = clip_save_hops(tmp / "data" / "clips", fed, wall_offset)
        stderr = log.read_text()
        listener.close()
        broker.stop()
    pairs, problems = match_events(expected, listener.on("events"))
    status = last_status(listener)
    return {
        "venv": _display(venv),
        "command": [_display(venv / "bin" / "soundwarden-edge"), "run", "--config", "edge.toml"],
        "versions": daemon_versions(venv),
        "stream": {
            "seconds": round(silence_hop * HOP_S, 2),
            "silence_s": round((len(pcm) // HOP - silence_hop) * HOP_S, 2),
            "warmup_s": options.warmup_s,
            "stdin_chunk_s": options.chunk_s,
            "layout": layout,
            "write_late": summary_ms(fed.late_s),
        },
        "startup_s": round(startup_s, 2),
        "events": {
            "expected": len(expected),
            "received": len(pairs),
            "starts": sum(e.type == "start" for e in expected),
            "match": not problems,
            "problems": problems,
        },
        "latency": latencies(pairs, fed),
        "latency_split_start_end": latency_split(pairs, fed, stderr, wall_offset),
        "spool_put_same_disk": spool_put,
        "clips_saved_at_hop": clip_hops,
        "cpu_stream": cpu_between(fed.samples["stream_start"], fed.samples["stream_end"]),
        "cpu_silence": cpu_between(fed.samples["silence_start"], fed.samples["silence_end"]),
        "memory": memory,
        "status": {
            "windows_processed": status.windows.processed if status else None,
            "windows_dropped": status.windows.dropped if status else None,
            "windows_fed": len(pcm) // HOP - 3,
            "heartbeats": self_reported(listener),
        },
        "exit": exit_info,
        "warnings_logged": [
            line for line in stderr.splitlines() if " WARNING " in line or " ERROR " in line
        ],
    }


# --- report -----------------------------------------------------------------------------------


def _display(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def machine() -> dict[str, object]:
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "onnxruntime", "ai-edge-litert", "librosa", "paho-mqtt"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cores": os.cpu_count(),
        "versions": versions,
        "mosquitto": mosquitto.stdout.splitlines()[0] if mosquitto.stdout else "?",
    }


def analysis_cpu_estimate(part1: dict[str, object]) -> float:
    """Percent of a core that 4 paced `Detector.push` a second take at part 1's mean: what
    the daemon's CPU would be if nothing but the analysis itself cost anything."""
    rows = part1["rows"]
    assert isinstance(rows, dict)
    mean_ms = float(rows["detector_push_onnx_int8_paced"]["mean_ms"])
    return round(100 * mean_ms / 1e3 / HOP_S, 2)


def targets(part1: dict[str, object], part2: dict[str, object]) -> dict[str, dict[str, object]]:
    rows = part1["rows"]
    assert isinstance(rows, dict)
    checks: dict[str, tuple[str, float]] = {
        f"per_window_p99_ms_{name.removeprefix('hot_path_')}": (
            "per_window_p99_ms",
            rows[name]["p99_ms"],
        )
        for name in rows
        if name.startswith("hot_path_")
    }
    cpu = part2["cpu_stream"]
    memory = part2["memory"]
    latency = part2["latency"]
    assert isinstance(cpu, dict) and isinstance(memory, dict) and isinstance(latency, dict)
    checks["cpu_percent"] = ("cpu_percent", cpu["cpu_percent"])
    checks["rss_peak_mb"] = ("rss_mb", memory["peak_mb"])
    checks["latency_p99_ms"] = ("latency_p99_ms", latency["all"].get("p99_ms", float("nan")))
    return {
        name: {"value": value, "target": TARGETS[key], "pass": bool(value <= TARGETS[key])}
        for name, (key, value) in checks.items()
    }


def print_report(result: dict[str, object]) -> None:
    part1, part2, checks = result["per_window"], result["daemon"], result["targets"]
    assert isinstance(part1, dict) and isinstance(part2, dict) and isinstance(checks, dict)
    print(f"per window, one thread, {part1['audio_s']} s of audio ({part1['audio']})")
    print(f"{'pipeline':<34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'RTF':>7}")
    for name, s in part1["rows"].items():
        print(
            f"{name:<34} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['max_ms']:>8.3f} {s['rtf']:>7}"
        )
    stream, events, status = part2["stream"], part2["events"], part2["status"]
    print(
        f"\ndaemon ({part2['venv']}) on {stream['seconds']} s real-time stdin + "
        f"{stream['silence_s']} s silence; started in {part2['startup_s']} s"
    )
    match = "match offline" if events["match"] else "MISMATCH: " + "; ".join(events["problems"])
    print(f"events: {events['received']} received ({events['starts']} starts), {match}")
    for kind in ("all", "start"):
        s = part2["latency"][kind]
        if s["n"]:
            print(
                f"latency {kind:<6} n={s['n']:<3} p50 {s['p50_ms']:.1f} ms  "
                f"p99 {s['p99_ms']:.1f} ms  max {s['max_ms']:.1f} ms"
            )
    split = part2["latency_split_start_end"]
    if "write_to_log" in split:
        to_log, to_sub = split["write_to_log"], split["log_to_subscriber"]
        print(
            f"  start/end split: hop written -> daemon log p50 {to_log['p50_ms']:.1f} / max "
            f"{to_log['max_ms']:.1f} ms, log -> subscriber p50 {to_sub['p50_ms']:.1f} / max "
            f"{to_sub['max_ms']:.1f} ms"
        )
    for phase in ("cpu_stream", "cpu_silence"):
        c = part2[phase]
        print(
            f"{phase:<12} {c['cpu_percent']:.2f} % of a core over {c['seconds']} s ("
            + ", ".join(f"{role} {p:.2f}" for role, p in c["threads_percent"].items())
            + ")"
        )
    print(
        f"{'':<12} {part2['cpu_analysis_estimate_percent']:.2f} % would be 4 Detector.push a "
        "second at part 1's paced mean"
    )
    memory = part2["memory"]
    print(
        f"RSS peak {memory['peak_mb']} MB ({memory['peak_mib']} MiB), at end {memory['end_mb']} MB"
    )
    print(
        f"windows: {status['windows_processed']} processed of {status['windows_fed']} fed, "
        f"{status['windows_dropped']} dropped; exit code {part2['exit']['exit_code']}"
    )
    if part2["exit"]["exit_code"] != 0:
        print("daemon stderr (tail):\n" + part2["exit"]["stderr_tail"])
    print("\ntargets")
    for name, c in checks.items():
        print(f"  {name:<34} {c['value']:>8} <= {c['target']:<6} {'pass' if c['pass'] else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, help="audio for part 1 (default: the fixtures)")
    parser.add_argument("--minutes", type=float, default=3.0, help="part 1 audio, looped to this")
    parser.add_argument("--venv", type=Path, help="the daemon's virtualenv (default .venv-edge)")
    parser.add_argument("--warmup", type=float, default=5.0, help="stream seconds before CPU")
    parser.add_argument("--silence", type=float, default=20.0, help="seconds of trailing silence")
    parser.add_argument("--status-interval", type=float, default=5.0)
    parser.add_argument("--chunk-s", type=float, default=0.05, help="the stdin source's chunk_s")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    bundle = load_bundle(BUNDLE, TrustedKeys.from_paths([DEFAULT_TRUSTED_KEYS]))
    started = time.monotonic()
    part1 = per_window(bundle, args.audio.resolve() if args.audio else None, args.minutes)
    part1_s = time.monotonic() - started
    options = DaemonOptions(
        venv=daemon_venv(args.venv.resolve() if args.venv else None),
        warmup_s=args.warmup,
        silence_s=args.silence,
        status_interval_s=args.status_interval,
        chunk_s=args.chunk_s,
    )
    part2 = run_daemon(bundle, options)
    part2["cpu_analysis_estimate_percent"] = analysis_cpu_estimate(part1)
    result: dict[str, object] = {
        "bundle": f"{bundle.manifest.name} {bundle.manifest.version} ({_display(BUNDLE)})",
        "per_window": part1,
        "daemon": part2,
        "targets": targets(part1, part2),
        "durations_s": {
            "per_window": round(part1_s, 1),
            "daemon": round(time.monotonic() - started - part1_s, 1),
        },
        "command": shlex.join([_display(Path(sys.executable)), *sys.argv]),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"saved to {_display(args.out.resolve())}")


if __name__ == "__main__":
    main()
