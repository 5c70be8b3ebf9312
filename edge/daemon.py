"""`soundwarden-edge run`: microphone to MQTT events, nothing lost, under systemd.

Threads and who owns what:
- capture (`edge.capture`): reads the source into a bounded backlog and never waits for
  analysis; a stalled source is reopened with backoff;
- this loop: takes audio, feeds the detector and the clip recorder, writes every event to the
  spool *before* anything tries to send it, keeps the retained state/status topics current and
  pings systemd's watchdog while audio flows;
- the MQTT link (paho's thread + the outbox pump) and the clip uploader drain the spool;
- the updater (`edge.updater`) downloads and verifies the bundle the cloud asks for; this loop
  then shadows it, switches to it, watches its probation and rolls back on trouble, so the
  running model is only ever replaced here, between two hops.

SIGTERM/SIGINT end open episodes, finish their clips, give the outbox a few seconds to drain
(what is left stays in the spool for the next start), publish `offline` and exit 0.
"""

from __future__ import annotations

import logging
import resource
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from edge.capture import Capture
from edge.clips import START_DELAY_S, ClipRecorder, ClipStore, ClipUploader
from edge.config import EdgeConfig
from edge.detector import Detector
from edge.homeassistant import birth_topic, discovery_messages
from edge.modelstore import ModelStore
from edge.mqtt import MqttLink
from edge.sources import create_source
from edge.spool import Spool
from edge.systemd import Notifier
from edge.updater import Shadow, Updater, UpdateReporter
from models import __version__
from models.contract import (
    STATE_OFF,
    STATE_ON,
    ClipsStatus,
    EventPayload,
    SourceStatus,
    SpoolStatus,
    StatusPayload,
    WindowCounts,
    model_state_topic,
    state_topic,
    status_topic,
)
from models.frontend import FloatArray
from models.inference import InferenceError

log = logging.getLogger(__name__)
DRAIN_TIMEOUT_S = 5.0
REPORT_EVERY_S = 5.0  # of audio, between progress reports while shadowing or on probation


@dataclass
class _Probation:
    started: int  # detector.consumed at the switch (or at this start)
    baseline_per_hour: float  # episodes per hour the previous model started while shadowing
    reported: int = 0


class Daemon:
    def __init__(self, config: EdgeConfig, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.models = ModelStore(config)
        loaded = self.models.load_startup()
        bundle, model = loaded.bundle, loaded.model
        self.bundle = bundle
        self.detector = Detector(model, device=config.device, rules=config.detection)
        self.rate = rate = bundle.manifest.features.sample_rate
        log.info(
            "model %s %s (%s, signed by %s), labels %s, thresholds %s",
            bundle.manifest.name,
            bundle.manifest.version,
            model.runtime_kind,
            bundle.signed_by,
            bundle.manifest.labels,
            self.detector.thresholds,
        )
        self.spool = Spool(config.spool_path, max_entries=config.spool.max_entries)
        ha = config.homeassistant
        state_topic_ = model_state_topic(config.device, config.mqtt.prefix)
        self.reporter = UpdateReporter(
            config.device,
            lambda payload: self.link.publish_retained(state_topic_, payload),
            installed=self.detector.model,
        )
        self.updater: Updater | None = None
        if config.updates.enabled:
            self.updater = Updater(config, self.models, self.reporter, lambda: self.bundle.manifest)
        self.link = MqttLink(
            self.spool,
            device=config.device,
            config=config.mqtt,
            ha_status_topic=birth_topic(ha.discovery_prefix) if ha.enabled else None,
            on_model_set=self.updater.on_model_set if self.updater else None,
        )
        self.shadow: Shadow | None = None
        self._probation: _Probation | None = None
        probation = self.models.pointer.probation
        if loaded.rolled_back:
            self.reporter.set(
                state="rolled_back", previous=self.models.previous_ref(), error=loaded.rolled_back
            )
        elif probation is not None:  # a clean restart during probation: it starts over
            self._probation = _Probation(0, probation.baseline_events_per_hour)
            self.reporter.set(state="probation", previous=self.models.previous_ref(), progress=0.0)
        else:
            self.reporter.set(state="idle", previous=self.models.previous_ref())
        if ha.enabled:
            self.link.set_discovery(
                discovery_messages(
                    device=config.device,
                    prefix=config.mqtt.prefix,
                    discovery_prefix=ha.discovery_prefix,
                    per_component=ha.per_component,
                    labels=list(self.detector.thresholds),
                    model=self.detector.model,
                    software_version=__version__,
                )
            )
        clips = config.clips
        self.store: ClipStore | None = None
        self.recorder: ClipRecorder | None = None
        self.uploader: ClipUploader | None = None
        if clips.enabled:
            self.store = store = ClipStore(config.clips_dir, quota_bytes=int(clips.quota_mb * 1e6))
            self.recorder = ClipRecorder(
                clips,
                store,
                self.spool,
                rate=rate,
                device=config.device,
                origin=self.detector.origin,
                start_delay_s=config.detection.min_duration_s + START_DELAY_S,
            )
            if clips.upload_url and clips.token:
                self.uploader = ClipUploader(
                    store,
                    self.spool,
                    url=clips.upload_url,
                    token=clips.token,
                    retry_max_s=clips.retry_max_s,
                )
        audio = config.audio
        self.capture = Capture(
            lambda: create_source(audio.source, rate),
            rate=rate,
            stall_timeout_s=audio.stall_timeout_s,
            reopen_max_s=audio.reopen_max_s,
            max_backlog_s=audio.max_backlog_s,
        )
        self.dropped_windows = 0
        self._stop = threading.Event()
        self._updates: dict[str, int] = {}  # episode id -> update events so far (spool keys)
        self._started = time.monotonic()
        self._cpu_mark = (time.monotonic(), time.process_time())

    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        if signum:
            log.info("%s: stopping", signal.Signals(signum).name)
        self._stop.set()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        for label in self.detector.thresholds:
            self.link.publish_retained(self._state_topic(label), STATE_OFF)
        self.link.start()
        if self.uploader:
            self.uploader.start()
        if self.updater:
            self.updater.start()
        self.capture.start()
        ready = False
        next_status = next_ping = time.monotonic()
        try:
            while not self._stop.is_set():
                chunk = self.capture.get(timeout_s=0.1)
                if chunk is not None:
                    self._analyse(chunk.samples, chunk.dropped_before)
                    if not ready:
                        ready = True
                        line = self._status_line()
                        self.notifier.ready(line)
                        log.info("listening: %s", line)
                elif self.capture.ended:
                    log.info("end of the audio stream")
                    break
                if self.updater:
                    self._take_update(self.updater)
                now = time.monotonic()
                interval = self.notifier.watchdog_interval_s
                if interval and now >= next_ping and self.capture.audio_flowing():
                    self.notifier.watchdog()
                    next_ping = now + interval
                if now >= next_status:
                    self._publish_status()
                    next_status = now + self.config.mqtt.status_interval_s
        finally:
            self._shutdown()
        return 0

    def _analyse(self, samples: FloatArray, dropped_before: int) -> None:
        if dropped_before:
            lost = self.detector.skip(dropped_before)
            self.dropped_windows += lost  # capture logged the gap
            if self.shadow:
                self.shadow.skip(dropped_before)
            if self.recorder:
                self._clips_finished(self.recorder.skip(dropped_before))
        try:
            events = self.detector.push(samples)
        except InferenceError as exc:
            if self._probation is None:
                raise  # the model that passed probation broke: systemd restarts us
            self._roll_back(f"inference error on probation: {exc}")
            return
        for event in events:  # spooled before any clip work: events never wait for a disk write
            self._emit(event)
        self._record(events)
        if self.recorder:
            self._clips_finished(self.recorder.push(samples))
        if self.shadow:
            self._shadow(self.shadow, samples)
        elif self._probation:
            self._watch_probation(self._probation)

    # Model updates: the candidate the updater prepared is shadowed, switched to, watched.

    def _take_update(self, updater: Updater) -> None:
        if self.shadow and not updater.still_wanted(self.shadow.candidate):
            log.info("shadowing stopped: the cloud asked for another model")
            self.shadow.stop()
            self.shadow = None
        if self.shadow is None and self._probation is None:
            candidate = updater.take_candidate()
            if candidate is not None:
                self.shadow = Shadow(
                    candidate, self.detector, self.config.updates, self.config.detection.hop_s
                )

    def _shadow(self, shadow: Shadow, samples: FloatArray) -> None:
        assert self.updater is not None
        try:
            shadow.push(samples)
        except InferenceError as exc:
            self.shadow = None
            shadow.stop()
            self.updater.reject(shadow.candidate, f"inference error while shadowing: {exc}")
            return
        if not shadow.done:
            step = round(REPORT_EVERY_S / self.config.detection.hop_s)
            if shadow.windows and shadow.windows % step == 0:
                self.reporter.set(progress=round(shadow.progress, 3), shadow=shadow.report())
            return
        self.shadow = None
        shadow.stop()
        reason = shadow.verdict()
        if reason:
            self.updater.reject(shadow.candidate, reason, shadow=shadow.report())
        else:
            self._switch(shadow)

    def _switch(self, shadow: Shadow) -> None:
        """Replace the running model between two hops; the pointer write is the commit point."""
        assert self.updater is not None
        candidate = shadow.candidate
        hours = shadow.hours(self.rate)
        baseline = shadow.events_running / hours if hours > 0 else 0.0
        self._end_episodes()
        self.detector = self.detector.successor(candidate.model)
        self.models.install(candidate.bundle.root, candidate.target.sha256, baseline)
        self.bundle = candidate.bundle
        self.updater.installed(candidate)
        self._probation = _Probation(self.detector.consumed, baseline)
        log.info(
            "switched to %s %s (agreement %.3f over %d windows); on probation",
            candidate.target.name,
            candidate.target.version,
            shadow.agreement,
            shadow.windows,
        )
        self.reporter.set(
            state="probation",
            installed=self.detector.model,
            previous=self.models.previous_ref(),
            shadow=shadow.report(),
            progress=0.0,
        )

    def _watch_probation(self, probation: _Probation) -> None:
        rules = self.config.updates
        elapsed_s = (self.detector.consumed - probation.started) / self.rate
        started = self.detector.episodes_started
        allowed = rules.max_event_ratio * probation.baseline_per_hour * elapsed_s / 3600
        allowed += rules.event_slack
        if started > allowed:
            self._roll_back(
                f"started {started} episodes in {elapsed_s / 60:.1f} min on probation; the "
                f"previous model's rate allows {allowed:.0f}"
            )
        elif elapsed_s >= rules.probation_s:
            self._probation = None
            self.models.commit()
            log.info("model %s passed probation", self.detector.model.version)
            self.reporter.set(state="installed", previous=self.models.previous_ref())
        elif elapsed_s - probation.reported >= REPORT_EVERY_S:
            probation.reported = int(elapsed_s)
            self.reporter.set(progress=round(elapsed_s / rules.probation_s, 3))

    def _roll_back(self, reason: str) -> None:
        self._end_episodes()
        self._probation = None
        self.models.roll_back(reason)
        loaded = self.models.load_startup()
        self.detector = self.detector.successor(loaded.model)
        self.bundle = loaded.bundle
        self.reporter.set(
            state="rolled_back",
            installed=self.detector.model,
            previous=self.models.previous_ref(),
            error=reason,
        )

    def _end_episodes(self) -> None:
        ended = self.detector.flush()
        for event in ended:
            self._emit(event)
        self._record(ended)

    def _record(self, events: list[EventPayload]) -> None:
        if self.recorder:
            for event in events:
                self._clips_finished(self.recorder.on_event(event))

    def _clips_finished(self, ids: list[str]) -> None:
        if ids and self.uploader:
            self.uploader.notify()

    def _emit(self, event: EventPayload) -> None:
        if self.recorder and event.type == "end":
            event = event.model_copy(update={"clip": self.recorder.clip_id_for(event)})
        key = f"{event.id}:{event.type}"
        if event.type == "update":
            count = self._updates.get(event.id, 0) + 1
            self._updates[event.id] = count
            key += f":{count}"
        elif event.type == "end":
            self._updates.pop(event.id, None)
        self.spool.put(key, "event", event.model_dump_json().encode())
        self.link.notify()
        if event.type != "update":
            log.info("%s %s %s score %.3f", event.label, event.type, event.id[:8], event.max_score)
            state = STATE_ON if event.type == "start" else STATE_OFF
            self.link.publish_retained(self._state_topic(event.label), state)

    def _state_topic(self, label: str) -> str:
        return state_topic(self.config.device, label, self.config.mqtt.prefix)

    def _status_line(self) -> str:
        level = self.detector.level_dbfs
        return (
            f"{self.capture.state} {self.capture.name}, "
            f"level {'-' if level is None else f'{level:.0f}'} dBFS, "
            f"{self.detector.windows} windows ({self.dropped_windows} dropped), "
            f"spool {self.spool.depth()}, mqtt {'up' if self.link.connected else 'down'}"
        )

    def status(self) -> StatusPayload:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        return StatusPayload(
            device=self.config.device,
            at=datetime.now(UTC),
            uptime_s=round(now - self._started, 1),
            model=self.detector.model,
            source=SourceStatus(
                type=self.config.audio.source.type,
                name=self.capture.name,
                state=self.capture.state,
                level_dbfs=self.detector.level_dbfs,
            ),
            windows=WindowCounts(processed=self.detector.windows, dropped=self.dropped_windows),
            spool=SpoolStatus(depth=self.spool.depth(), dropped=self.spool.dropped),
            clips=self._clips_status(),
            cpu_percent=round(100 * (cpu - cpu_then) / max(now - then, 1e-6), 2),
            rss_mb=round(_rss_mb(), 1),
        )

    def _clips_status(self) -> ClipsStatus | None:
        if self.store is None:
            return None
        uploader = self.uploader
        return ClipsStatus(
            pending=len(self.store.pending_files()),
            uploaded=uploader.uploaded if uploader else 0,
            rejected=uploader.rejected if uploader else 0,
            lost=self.store.deleted_pending,
            disk_mb=round(self.store.usage_bytes() / 1e6, 2),
        )

    def _publish_status(self) -> None:
        self.link.publish_retained(
            status_topic(self.config.device, self.config.mqtt.prefix),
            self.status().model_dump_json(),
        )
        self.notifier.status(self._status_line())

    def _shutdown(self) -> None:
        self.notifier.stopping("stopping: flushing the spool")
        self.capture.stop()
        if self.updater:
            self.updater.stop()
        if self._probation:
            self.models.mark_clean_stop()
        self._end_episodes()
        if self.recorder:
            self._clips_finished(self.recorder.flush())
        self._publish_status()
        self.link.stop(timeout_s=DRAIN_TIMEOUT_S)
        if self.uploader:
            self.uploader.stop()
        left = self.spool.depth()
        if left:
            log.info("%d entries stay in the spool for the next start", left)
        self.spool.close()


def _rss_mb() -> float:
    """Current resident memory; the peak where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
