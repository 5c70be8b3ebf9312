"""Which bundle the daemon runs, kept so that a power cut at any moment leaves a working model.

`data_dir/models/installed.json` is the pointer: the current bundle folder, the previous one kept
for rollback, and the probation in progress. It only ever changes by an atomic rename
(`atomic_write_bytes`), so after a crash it names either the old arrangement or the new one. The
bundle folders under `data_dir/models/bundles/` are complete before the pointer names them
(extracted and verified into a staging folder, then renamed), and the configured bundle
(`model.bundle`, the factory model) is never touched: it is the last resort when neither
installed bundle loads, so the device always comes back with a model.

A daemon that stops uncleanly while the new model is on probation (a crash, the watchdog, a
power cut) counts that against the new model: the next start rolls back to the previous one.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.config import EdgeConfig
from edge.detector import load_model
from models.atomic import atomic_write_bytes
from models.bundle import MANIFEST_NAME, Bundle, BundleError, Manifest
from models.contract import ModelRef
from models.inference import BundleModel
from models.runtimes import RuntimeUnavailableError

log = logging.getLogger(__name__)
POINTER_NAME = "installed.json"
MAX_REJECTED = 50  # remembered refusals, so a retained model/set is not retried at every start


class Probation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline_events_per_hour: float = Field(description="The old model's rate while shadowing.")
    clean_stop: bool = Field(False, description="The daemon stopped cleanly during probation.")


class Pointer(BaseModel):
    """`installed.json`. Bundle folders are absolute paths; None means the configured bundle."""

    model_config = ConfigDict(extra="forbid")

    current: str | None = None
    current_sha256: str | None = Field(None, description="SHA-256 of the archive it came from.")
    previous: str | None = None
    previous_sha256: str | None = None
    probation: Probation | None = None
    rejected: dict[str, str] = Field(default_factory=dict, description="sha256 -> reason.")


@dataclass
class Loaded:
    """The model the daemon starts with, and what happened on the way."""

    bundle: Bundle
    model: BundleModel
    sha256: str | None
    rolled_back: str | None  # why the installed model was given up at this start, if it was


class ModelStore:
    def __init__(self, config: EdgeConfig) -> None:
        self._config = config
        self.root = config.models_dir
        self.bundles_dir = self.root / "bundles"
        self.downloads_dir = self.root / "downloads"
        for folder in (self.bundles_dir, self.downloads_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.pointer = self._read()
        # The updater thread records refusals while the daemon thread switches models.
        self._lock = threading.RLock()

    def _read(self) -> Pointer:
        path = self.root / POINTER_NAME
        if not path.exists():
            return Pointer()
        try:
            return Pointer.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            # Written atomically, so this is damage from outside: start from the factory model.
            log.error("%s is unreadable (%s): using the configured bundle", path, exc)
            return Pointer()

    def save(self) -> None:
        with self._lock:
            data = self.pointer.model_dump_json().encode()
            atomic_write_bytes(self.root / POINTER_NAME, data)

    def load_startup(self) -> Loaded:
        """The model to start with: the current bundle, else the previous, else the configured
        one; rolls back first if the last run ended uncleanly on probation."""
        pointer, reason = self.pointer, None
        if pointer.probation is not None:
            if pointer.probation.clean_stop:
                pointer.probation.clean_stop = False  # probation starts over
                self.save()
            else:
                reason = "the daemon stopped uncleanly while the new model was on probation"
                self.roll_back(reason)
        candidates: list[tuple[str | None, str | None]] = [
            (pointer.current, pointer.current_sha256)
        ]
        if pointer.previous:
            candidates.append((pointer.previous, pointer.previous_sha256))
        if pointer.current:
            candidates.append((None, None))  # the configured bundle, the last resort
        problems = []
        for folder, sha in candidates:
            path = Path(folder) if folder else self._config.model.bundle
            try:
                bundle, model = load_model(self._config.model, path)
            except (BundleError, RuntimeUnavailableError, OSError, ValueError) as exc:
                log.error("cannot load the bundle %s: %s", path, exc)
                problems.append(f"{path}: {exc}")
                continue
            if problems:
                reason = "; ".join(problems)
                self._fall_back_to(folder, sha, reason)
            return Loaded(bundle, model, sha, reason)
        # Even the configured bundle failed: nothing safe to run, and load_model said why.
        raise BundleError("no loadable model: " + "; ".join(problems))

    def _fall_back_to(self, folder: str | None, sha: str | None, reason: str) -> None:
        with self._lock:
            pointer = self.pointer
            if pointer.current_sha256:
                self.reject(pointer.current_sha256, reason, save=False)
            pointer.current, pointer.current_sha256 = folder, sha
            if folder == pointer.previous:
                pointer.previous = pointer.previous_sha256 = None
            pointer.probation = None
            self.save()

    def install(self, folder: Path, sha256: str, baseline_events_per_hour: float) -> None:
        """The switch: one atomic pointer write makes `folder` current and starts probation."""
        with self._lock:
            pointer = self.pointer
            pointer.previous, pointer.previous_sha256 = pointer.current, pointer.current_sha256
            pointer.current, pointer.current_sha256 = str(folder), sha256
            pointer.probation = Probation(baseline_events_per_hour=baseline_events_per_hour)
            self.save()

    def commit(self) -> None:
        """Probation passed: the new model stays; bundles beyond the newest kept are deleted."""
        with self._lock:
            self.pointer.probation = None
            self.save()
            keep = {self.pointer.current, self.pointer.previous}
            folders = sorted(
                (p for p in self.bundles_dir.iterdir() if p.is_dir() and str(p) not in keep),
                key=lambda p: p.stat().st_mtime,
                reverse=True,
            )
            for old in folders[max(0, self._config.updates.keep_bundles - len(keep)) :]:
                shutil.rmtree(old, ignore_errors=True)

    def roll_back(self, reason: str) -> None:
        """Give up the current bundle for the previous one (pointer only; the caller reloads)."""
        with self._lock:
            pointer = self.pointer
            if pointer.current_sha256:
                self.reject(pointer.current_sha256, reason, save=False)
            failed = pointer.current
            pointer.current, pointer.current_sha256 = pointer.previous, pointer.previous_sha256
            pointer.previous = pointer.previous_sha256 = None
            pointer.probation = None
            self.save()
            if failed:
                shutil.rmtree(failed, ignore_errors=True)
            log.error("rolled back: %s", reason)

    def mark_clean_stop(self) -> None:
        with self._lock:
            if self.pointer.probation is not None:
                self.pointer.probation.clean_stop = True
                self.save()

    def reject(self, sha256: str, reason: str, *, save: bool = True) -> None:
        with self._lock:
            rejected = self.pointer.rejected
            rejected.pop(sha256, None)
            rejected[sha256] = reason
            while len(rejected) > MAX_REJECTED:
                rejected.pop(next(iter(rejected)))
            if save:
                self.save()

    def rejection(self, sha256: str) -> str | None:
        with self._lock:
            return self.pointer.rejected.get(sha256)

    def previous_ref(self) -> ModelRef | None:
        """The model a rollback would return to: the previous bundle, else the configured one
        (None while the configured bundle is the one running)."""
        with self._lock:
            if self.pointer.current is None:
                return None
            folder = self.pointer.previous
        path = Path(folder) if folder else self._config.model.bundle
        try:
            manifest = Manifest.model_validate_json((path / MANIFEST_NAME).read_bytes())
        except (OSError, ValidationError):
            return None
        return ModelRef(name=manifest.name, version=manifest.version)

    def staging(self, name: str) -> Path:
        """A fresh folder beside the bundles, to extract into before the rename."""
        path = self.bundles_dir / f".staging-{name}"
        shutil.rmtree(path, ignore_errors=True)
        return path
