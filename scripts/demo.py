"""The whole loop on one machine: cloud, embedded MQTT broker, an edge daemon, events live.

    .venv/bin/python scripts/demo.py                 # replay shipped recordings (make demo)
    .venv/bin/python scripts/demo.py --mic           # listen to this machine's microphone
    .venv/bin/python scripts/demo.py --duration 60   # stop by itself after a minute

It starts `soundwarden-cloud serve` (SQLite and an embedded amqtt broker, data under
out/demo/run, wiped at each start), creates an admin with a fresh random password, enrols a
device, starts `soundwarden-edge run` publishing to that broker and uploading clips to that
cloud, and prints every event as it arrives, with the console's address and login.
Ctrl-C stops the daemon, then the cloud, each with SIGTERM as systemd would, and exits 0.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import soundfile as sf
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from models.bundle import DEFAULT_TRUSTED_KEYS  # noqa: E402
from models.contract import EventPayload  # noqa: E402

BIN = Path(sys.executable).parent  # the soundwarden-* commands of this virtualenv
AUDIO = REPO / "tests" / "fixtures" / "audio"
DEVICE = "demo"
ADMIN = "admin"
RATE = 16000
STOP = threading.Event()  # set by Ctrl-C (SIGINT) or SIGTERM


def free_port(preferred: int = 0) -> int:
    """`preferred` when it is free, else any free loopback port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def replay_file(out: Path) -> Path:
    """Shipped real recordings, one after another with a quiet room between: an infant cry
    (an episode: start, updates, end) and hold music (nothing). The file source loops it."""
    room = np.random.default_rng(0).standard_normal(4 * RATE).astype(np.float32) * 0.001
    parts = []
    for name in ("cry/donateacry_ios_045c5483.wav", "other/moh_reno_project-system_0040s.wav"):
        audio, rate = sf.read(AUDIO / name, dtype="float32")
        assert rate == RATE, f"{name}: expected {RATE} Hz"
        parts += [audio, room]  # about -60 dBFS of noise
    path = out / "replay.wav"
    sf.write(path, np.concatenate(parts), RATE, subtype="PCM_16")
    return path


def edge_config(out: Path, *, broker_port: int, cloud_url: str, mic: str | None) -> Path:
    if mic is None:
        source = f'type = "file"\npath = "{replay_file(out)}"\nrealtime = true\nloop = true\n'
    else:
        # An index is a number in the configuration, anything else part of the device's name.
        device = mic if mic.isdigit() else f'"{mic}"'
        source = 'type = "microphone"\n' + (f"device = {device}\n" if mic else "")
    path = out / "edge.toml"
    path.write_text(
        f'device = "{DEVICE}"\ndata_dir = "{out / "edge"}"\n'
        f"[audio.source]\n{source}"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nreconnect_max_s = 2\n'
        f"status_interval_s = 10.0\n"
        f'[clips]\nupload_url = "{cloud_url}"\n'  # the token comes from the environment
        # The release key and the demo cloud's own, so a model trained and promoted in the
        # console installs on this device (the cloud made its key when it started).
        f'[model]\ntrusted_keys = ["{DEFAULT_TRUSTED_KEYS}", "{out / "cloud" / "keys"}"]\n'
    )
    return path


def cli(command: Sequence[str], env: dict[str, str], stdin: str | None = None) -> str:
    done = subprocess.run(
        command, env=env, input=stdin, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return done.stdout


class Child:
    """A child process in its own session, so a Ctrl-C in the terminal reaches only this
    script, which then stops the children in order. Output goes to `log`."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], log: Path):
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check(self) -> None:
        """Exit with the end of its log if it died."""
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-25:]
            raise SystemExit(
                f"{self.name} exited with {self.process.returncode}; the end of {self.log}:\n"
                + "\n".join(tail)
            )

    def stop(self, timeout_s: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(f"{self.name} did not stop within {timeout_s:.0f} s: killed", flush=True)
                self.process.kill()
                self.process.wait()


def wait_until(child: Child, what: str, ready: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready() and not STOP.is_set():
        child.check()
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{child.name}: {what} not ready within {timeout_s:.0f} s ({child.log})"
            )
        time.sleep(0.2)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class EventPrinter:
    """Subscribes to the fleet's events and availability and prints each as it arrives."""

    def __init__(self, port: int, console: str) -> None:
        self.events = 0
        self._console = console
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"demo-printer-{os.getpid()}"
        )
        self._client.on_connect = lambda client, *_: client.subscribe(
            [("soundwarden/+/events", 1), ("soundwarden/+/availability", 1)]
        )
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        now = time.strftime("%H:%M:%S")
        if message.topic.endswith("/availability"):
            device = message.topic.split("/")[1]
            print(f"{now}  device {device} is {message.payload.decode()}", flush=True)
            return
        event = EventPayload.model_validate_json(message.payload)
        self.events += 1
        line = f"{now}  {event.device}  {event.label:<8} {event.type:<6}  score {event.score:.3f}"
        line += f"  level {event.level_dbfs:6.1f} dBFS"
        if event.type == "end" and event.ended_at is not None:
            line += f"  lasted {(event.ended_at - event.started_at).total_seconds():.1f} s"
            if event.clip:
                line += f"  clip {self._console}/clips/{event.clip}"
        print(line, flush=True)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mic",
        nargs="?",
        const="",
        metavar="DEVICE",
        help="listen to a microphone (optionally an index or part of its name, as "
        "`soundwarden-edge devices` lists them) instead of replaying recordings",
    )
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (taken: any free one)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo" / "run")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGINT, lambda *_: STOP.set())
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())

    if args.mic is not None:
        listed = subprocess.run([str(BIN / "soundwarden-edge"), "devices"], capture_output=True)
        if listed.returncode != 0:
            print(listed.stderr.decode() + "no microphone here: run without --mic", file=sys.stderr)
            return 1

    out: Path = args.out.resolve()
    marker = out / ".soundwarden-demo"
    if out.is_dir() and any(out.iterdir()) and not marker.exists():
        print(f"{out} holds files this demo did not make: choose another --out", file=sys.stderr)
        return 1
    shutil.rmtree(out, ignore_errors=True)  # a fresh demo each time
    out.mkdir(parents=True)
    marker.touch()
    http_port, broker_port = free_port(args.port), free_port()
    console = f"http://127.0.0.1:{http_port}"
    env = {
        **os.environ,
        "SOUNDWARDEN_DATA_DIR": str(out / "cloud"),
        "SOUNDWARDEN_EMBEDDED_BROKER_PORT": str(broker_port),
    }
    cloud_cli = str(BIN / "soundwarden-cloud")
    password = secrets.token_urlsafe(12)
    print("setting up the cloud: database, admin user, device enrolment...", flush=True)
    cli([cloud_cli, "create-user", ADMIN, "--role", "admin", "--password-stdin"], env, password)
    token = cli([cloud_cli, "add-device", DEVICE], env).strip().splitlines()[-1]

    children: list[Child] = []
    printer: EventPrinter | None = None
    try:
        command = [cloud_cli, "serve", "--port", str(http_port)]
        cloud = Child("soundwarden-cloud", command, env, out / "cloud.log")
        children.append(cloud)
        wait_until(cloud, "HTTP API", lambda: answers(f"{console}/api/v1/health"))
        wait_until(cloud, "embedded MQTT broker", lambda: listens(broker_port))
        printer = EventPrinter(broker_port, console)

        config = edge_config(out, broker_port=broker_port, cloud_url=console, mic=args.mic)
        command = [str(BIN / "soundwarden-edge"), "run", "--config", str(config)]
        edge_env = {**os.environ, "SOUNDWARDEN_DEVICE_TOKEN": token}
        children.append(Child("soundwarden-edge", command, edge_env, out / "edge.log"))
        hearing = (
            "listening to the microphone"
            if args.mic is not None
            else f"replaying {out / 'replay.wav'} in a loop"
        )
        print(
            f"\nconsole   {console}/  (user {ADMIN}, password {password})\n"
            f"API docs  {console}/docs\n"
            f"MQTT      mosquitto_sub -h 127.0.0.1 -p {broker_port} -t 'soundwarden/#' -v\n"
            f"logs      {out / 'cloud.log'}, {out / 'edge.log'}\n"
            f"processes cloud pid {cloud.process.pid}, edge pid {children[1].process.pid}\n"
            f"{hearing}; events below as they arrive. Ctrl-C stops.\n",
            flush=True,
        )
        deadline = time.monotonic() + args.duration if args.duration else None
        while not STOP.wait(0.5):
            for child in children:
                child.check()
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        print("\nstopping: edge daemon, then the cloud...", flush=True)
        for child in reversed(children):  # the device first: it flushes to the broker
            child.stop()
        if printer is not None:
            printer.close()
    events = printer.events if printer else 0
    print(f"stopped ({events} events); logs and data in {out} until the next demo", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
