"""Remote model updates on the device: download, verify, self-test, shadow, then hand over.

The cloud names the bundle a device should run on the retained `<prefix>/<device>/model/set`.
`Updater` takes it from there on its own thread, so the audio loop never waits for the network:

1. download to `models/downloads/<sha256>.part`, resuming with an HTTP Range request after an
   outage or a restart, never past the announced size (nor `updates.max_bundle_mb`);
2. verify: the archive's SHA-256, then `load_bundle` (Ed25519 signature by a trusted key, every
   file's hash), then compatibility with this device (same model name, task and labels, the
   capture's sample rate, a runtime this machine has, the detection rules);
3. self-test: the bundle loaded in a second runtime scores its reference windows as the builder
   did (`models.reference`): NaN or different scores are a rejection.

The daemon then shadows the candidate (`Shadow`) on live audio next to the running model and
switches, or rejects it; after the switch it watches a probation period (see `edge.daemon`).
A refusal is remembered by hash (`ModelStore.reject`), so the retained message is not retried
at every start. Each step is reported on `<prefix>/<device>/model/state` by `UpdateReporter`.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPException
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config import EdgeConfig, UpdatesConfig
from edge.detector import Detector, DetectorConfigError
from edge.modelstore import ModelStore
from models.bundle import Bundle, BundleError, Manifest, MissingFileError, load_bundle, sha256_file
from models.contract import (
    IN_PROGRESS,
    ModelRef,
    ModelSetPayload,
    ModelStatePayload,
    ModelTarget,
    ShadowReport,
    UpdateState,
)
from models.frontend import FloatArray
from models.inference import BundleModel, InferenceError, choose_runtime
from models.reference import check_reference
from models.runtimes import RuntimeUnavailableError
from models.signing import TrustedKeys

log = logging.getLogger(__name__)
CHUNK = 64 * 1024


class UpdateRejectedError(Exception):
    """The bundle must not be installed; the message says why. Not retried."""


class UpdateFailedError(Exception):
    """A step failed for a reason that may pass (network, server error); retried."""


class _SupersededError(Exception):
    """A newer model/set (or a cancel) arrived while this one was being prepared."""


@dataclass
class Candidate:
    """A verified, self-tested bundle ready to shadow."""

    target: ModelSetPayload
    bundle: Bundle
    model: BundleModel


class UpdateReporter:
    """Holds the update's state and publishes it (retained) on every change, from any thread."""

    def __init__(self, device: str, publish: Callable[[str], None], installed: ModelRef) -> None:
        self._device = device
        self._publish = publish
        self._lock = threading.Lock()
        self._fields: dict[str, Any] = {
            "state": "idle",
            "installed": installed,
            "previous": None,
            "target": None,
            "rollout": None,
            "progress": None,
            "error": None,
            "shadow": None,
        }

    @property
    def state(self) -> UpdateState:
        with self._lock:
            state: UpdateState = self._fields["state"]
            return state

    def set(self, **changes: Any) -> ModelStatePayload:
        """Change fields (a new `state` clears progress, and the error unless given) and
        publish the result."""
        with self._lock:
            if "state" in changes:
                changes.setdefault("progress", None)
                changes.setdefault("error", None)
            self._fields.update(changes)
            payload = self.payload()
            self._publish(payload.model_dump_json())
        return payload

    def payload(self) -> ModelStatePayload:
        fields = self._fields
        state: UpdateState = fields["state"]
        installed: ModelRef = fields["installed"]
        target: ModelTarget | None = fields["target"]
        busy = state in IN_PROGRESS
        progress: float | None = fields["progress"]
        return ModelStatePayload(
            device=self._device,
            at=datetime.now(UTC),
            **fields,
            installed_version=installed.version,
            latest_version=target.version if busy and target else installed.version,
            title=installed.name,
            in_progress=busy,
            update_percentage=round(100 * progress, 1) if progress is not None else None,
            release_summary=_summary(state, target, fields["error"])[:255],
        )


def _summary(state: UpdateState, target: ModelTarget | None, error: str | None) -> str:
    what = target.version if target else "the update"
    if error and state in ("rejected", "rolled_back", "failed"):
        return f"{what} {state.replace('_', ' ')}: {error}"
    return f"{what}: {state}" if target else state


class Updater:
    """Prepares the bundle the latest model/set names; the daemon takes it with
    `take_candidate`. `running` gives the manifest of the model running now."""

    def __init__(
        self,
        config: EdgeConfig,
        store: ModelStore,
        reporter: UpdateReporter,
        running: Callable[[], Manifest],
    ) -> None:
        self._config = config
        self._updates: UpdatesConfig = config.updates
        self._store = store
        self._reporter = reporter
        self._running = running
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._desired: ModelSetPayload | None = None
        self._generation = 0  # bumped by every new model/set or cancel
        self._handled = 0  # the generation last finished (prepared or refused)
        self._candidate: tuple[int, Candidate] | None = None
        self._thread = threading.Thread(target=self._work, name="updater", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def on_model_set(self, payload: bytes) -> None:
        """A model/set message (MQTT thread). Empty, or naming the running model: cancel."""
        if not payload.strip():
            self._cancel()
            return
        try:
            target = ModelSetPayload.model_validate_json(payload)
        except ValidationError as exc:
            log.warning("malformed model/set ignored: %s", exc)
            self._reporter.set(state="failed", error=f"malformed model/set: {exc}"[:500])
            return
        running = self._running()
        if (target.name, target.version) == (running.name, running.version):
            self._cancel()
            if self._reporter.state not in ("probation", "rolled_back"):
                self._reporter.set(
                    state="installed", target=_target(target), rollout=target.rollout
                )
            return
        reason = self._store.rejection(target.sha256)
        if reason is not None:
            self._cancel()
            # Rolled back at this start: say so, now that the target is known again.
            state = "rolled_back" if self._reporter.state == "rolled_back" else "rejected"
            self._reporter.set(
                state=state, target=_target(target), rollout=target.rollout, error=reason
            )
            return
        with self._lock:
            if target == self._desired:
                return  # the retained message again, after a reconnect
            self._desired = target
            self._generation += 1
            self._candidate = None
        log.info("model update asked: %s %s (%s)", target.name, target.version, target.url)
        self._reporter.set(
            state="downloading", target=_target(target), rollout=target.rollout, progress=0.0
        )
        self._wake.set()

    def _cancel(self) -> None:
        with self._lock:
            if self._desired is None:
                return
            log.info("model update to %s cancelled", self._desired.version)
            self._desired = None
            self._generation += 1
            self._candidate = None

    def take_candidate(self) -> Candidate | None:
        """The prepared candidate, once (daemon thread)."""
        with self._lock:
            if self._candidate is None or self._candidate[0] != self._generation:
                return None
            candidate = self._candidate[1]
            self._candidate = None
            return candidate

    def still_wanted(self, candidate: Candidate) -> bool:
        with self._lock:
            return self._desired == candidate.target

    def installed(self, candidate: Candidate) -> None:
        """The daemon switched to the candidate."""
        with self._lock:
            if self._desired == candidate.target:
                self._desired = None

    def reject(self, candidate: Candidate, reason: str, **report: Any) -> None:
        """The daemon refused the candidate after shadowing it (or it failed meanwhile)."""
        self._reject(candidate.target, reason, **report)
        shutil.rmtree(candidate.bundle.root, ignore_errors=True)

    def _work(self) -> None:
        retry_s = 1.0
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                target, generation = self._desired, self._generation
            if target is None or generation == self._handled:
                continue
            try:
                candidate = self._prepare(target, generation)
            except _SupersededError:
                continue
            except UpdateRejectedError as exc:
                self._handled = generation
                self._reject(target, str(exc))
                continue
            except UpdateFailedError as exc:
                log.warning("update to %s: %s; retrying in %.0f s", target.version, exc, retry_s)
                self._reporter.set(state="failed", error=str(exc))
                if self._stop.wait(retry_s):
                    return
                retry_s = min(2 * retry_s, self._updates.retry_max_s)
                self._wake.set()
                continue
            retry_s = 1.0
            with self._lock:
                if generation != self._generation:
                    continue
                self._handled = generation
                self._candidate = (generation, candidate)
            log.info("model %s verified; shadowing it", target.version)
            self._reporter.set(state="shadowing", progress=0.0)

    def _reject(self, target: ModelSetPayload, reason: str, **report: Any) -> None:
        log.error("model %s %s rejected: %s", target.name, target.version, reason)
        self._store.reject(target.sha256, reason)
        with self._lock:
            if self._desired == target:
                self._desired = None
        self._reporter.set(state="rejected", error=reason, **report)

    def _check(self, generation: int) -> None:
        if self._stop.is_set() or generation != self._generation:
            raise _SupersededError

    def _prepare(self, target: ModelSetPayload, generation: int) -> Candidate:
        running = self._running()
        if target.name != running.name:
            raise UpdateRejectedError(
                f"this device runs {running.name}; {target.name} is a different model"
            )
        limit = int(self._updates.max_bundle_mb * 1e6)
        if target.size > limit:
            raise UpdateRejectedError(f"bundle of {target.size} bytes exceeds the {limit} limit")
        archive = self._download(target, generation)
        self._reporter.set(state="verifying")
        actual = sha256_file(archive)
        if actual != target.sha256:
            archive.unlink()
            raise UpdateRejectedError(f"sha256 {actual} differs from the announced {target.sha256}")
        self._check(generation)
        folder = self._store.bundles_dir / f"{target.name}-{target.version}-{target.sha256[:12]}"
        try:
            bundle = self._unpack(archive, folder)
            candidate = self._self_test(target, bundle, running)
        except UpdateRejectedError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        archive.unlink(missing_ok=True)
        return candidate

    def _download(self, target: ModelSetPayload, generation: int) -> Path:
        downloads = self._store.downloads_dir
        final = downloads / f"{target.sha256}.tar.gz"
        if final.exists():
            return final
        part = downloads / f"{target.sha256}.part"
        for stale in downloads.iterdir():  # an abandoned update's download
            if stale not in (part, final):
                stale.unlink(missing_ok=True)
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        if self._config.clips.token:
            headers["Authorization"] = f"Bearer {self._config.clips.token}"
        request = urllib.request.Request(target.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # the partial file is not a prefix of this one: start over
                part.unlink(missing_ok=True)
                raise UpdateFailedError("download restarted (range not satisfiable)") from None
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                refused = f"download refused: HTTP {exc.code} {exc.reason}"
                raise UpdateRejectedError(refused) from None
            raise UpdateFailedError(f"download failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            raise UpdateFailedError(f"download failed: {exc}") from None
        with response:
            if response.status != 206:
                have = 0  # the server sent the whole file
            reported = time.monotonic()
            try:
                with part.open("ab" if have else "wb") as out:
                    while chunk := response.read(CHUNK):
                        have += len(chunk)
                        if have > target.size:
                            part.unlink()
                            raise UpdateRejectedError(
                                f"the download exceeds the announced {target.size} bytes"
                            )
                        out.write(chunk)
                        self._check(generation)  # the partial file stays, for a resume
                        if time.monotonic() - reported > 1.0:
                            reported = time.monotonic()
                            self._reporter.set(progress=round(have / target.size, 3))
                    out.flush()
                    os.fsync(out.fileno())
            except (OSError, HTTPException) as exc:
                raise UpdateFailedError(f"download interrupted at {have} bytes: {exc}") from None
        if have != target.size:
            raise UpdateFailedError(f"download ended at {have} of {target.size} bytes")
        part.rename(final)
        return final

    def _unpack(self, archive: Path, folder: Path) -> Bundle:
        """Extract and verify into a staging folder, then rename it into place: a folder under
        `bundles/` is always complete."""
        trusted = TrustedKeys.from_paths(self._config.model.trusted_keys)
        staging = self._store.staging(folder.name)
        try:
            load_bundle(archive, trusted, extract_to=staging)
        except BundleError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UpdateRejectedError(str(exc)) from None
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        return load_bundle(folder, trusted)

    def _self_test(self, target: ModelSetPayload, bundle: Bundle, running: Manifest) -> Candidate:
        new = bundle.manifest
        if (new.name, new.version) != (target.name, target.version):
            raise UpdateRejectedError(
                f"the bundle is {new.name} {new.version}, not the announced {target.version}"
            )
        if new.task != running.task or new.labels != running.labels:
            raise UpdateRejectedError(
                f"incompatible: {new.task} with labels {new.labels}, the device runs "
                f"{running.task} with labels {running.labels}"
            )
        rate, running_rate = new.features.sample_rate, running.features.sample_rate
        if rate != running_rate:
            raise UpdateRejectedError(
                f"incompatible front end: {rate} Hz audio, the device captures {running_rate} Hz"
            )
        model_config = self._config.model
        try:
            model = BundleModel(
                bundle,
                runtime=choose_runtime(model_config.runtime, bundle),
                threads=model_config.threads,
            )
            Detector(model, device=self._config.device, rules=self._config.detection)
            check_reference(bundle, model)
        except MissingFileError:
            raise UpdateRejectedError("the bundle carries no reference windows") from None
        except (RuntimeUnavailableError, DetectorConfigError, InferenceError) as exc:
            raise UpdateRejectedError(f"self-test failed: {exc}") from None
        except ValueError as exc:  # a front end that cannot be built
            raise UpdateRejectedError(f"incompatible front end: {exc}") from None
        return Candidate(target, bundle, model)


def _target(target: ModelSetPayload) -> ModelTarget:
    return ModelTarget(name=target.name, version=target.version, sha256=target.sha256)


class Shadow:
    """A candidate scored next to the running model on the same audio; its events go nowhere.

    Decisions (the labels over threshold) are compared window by window; both detectors share
    the hop grid (`Detector.successor`), so their windows pair up by end sample.
    """

    def __init__(
        self, candidate: Candidate, running: Detector, rules: UpdatesConfig, hop_s: float
    ) -> None:
        self.candidate = candidate
        self.detector = running.successor(candidate.model)
        self._running = running
        self._rules = rules
        self.windows_needed = round(rules.shadow_s / hop_s)
        running.decisions, self.detector.decisions = [], []
        self._running_start = running.episodes_started
        self._started_at = running.consumed
        self.windows = self.agreed = 0

    def push(self, samples: FloatArray) -> None:
        """Feed what the running model was fed (InferenceError: the candidate failed)."""
        self.detector.push(samples)
        ours, theirs = self._running.decisions, self.detector.decisions
        assert ours is not None and theirs is not None
        mine = dict(theirs)
        for sample, labels in ours:
            if sample in mine:
                self.windows += 1
                self.agreed += mine[sample] == labels
        ours.clear()
        theirs.clear()

    def skip(self, n_samples: int) -> None:
        self.detector.skip(n_samples)

    @property
    def done(self) -> bool:
        return self.windows >= self.windows_needed

    @property
    def progress(self) -> float:
        return min(1.0, self.windows / self.windows_needed) if self.windows_needed else 1.0

    def report(self) -> ShadowReport:
        return ShadowReport(
            windows=self.windows,
            agreement=round(self.agreement, 4),
            events_running=self.events_running,
            events_candidate=self.detector.episodes_started,
        )

    @property
    def agreement(self) -> float:
        return self.agreed / self.windows if self.windows else 1.0

    @property
    def events_running(self) -> int:
        return self._running.episodes_started - self._running_start

    def hours(self, rate: int) -> float:
        return (self._running.consumed - self._started_at) / rate / 3600

    def verdict(self) -> str | None:
        """Why the candidate must not replace the running model, or None."""
        rules = self._rules
        if self.agreement < rules.min_agreement:
            return (
                f"agreed with the running model on {self.agreement:.0%} of {self.windows} "
                f"windows while shadowing (at least {rules.min_agreement:.0%} needed)"
            )
        allowed = rules.max_event_ratio * self.events_running + rules.event_slack
        if self.detector.episodes_started > allowed:
            return (
                f"would have started {self.detector.episodes_started} episodes while "
                f"shadowing where the running model started {self.events_running}"
            )
        return None

    def stop(self) -> None:
        self._running.decisions = None
