"""Audio clips around detection episodes: recorded, kept under a disk quota, uploaded.

`ClipRecorder` sees the same samples and the same timeline as the detector (sample index /
rate after a shared `origin`). It keeps a short history because an episode's `start` is decided
a second or two after the episode began, so the pre-roll lies in the past by then. Each episode
gets its own clip: pre-roll, the episode, post-roll, cut at `max_clip_s`.

A finished clip is written in full (temporary file, fsync, rename) into `ClipStore`'s
`pending/` folder and only then queued in the durable spool, so a crash leaves at worst a clip
without its spool entry, never an entry without its clip. The clip's `ClipMetadata` travels
inside the file too (its comment tag), which makes every file self-describing: at startup a
pending file without an entry is queued again from its own tag.

`ClipUploader` drains the spool's clip entries oldest first to the cloud over plain HTTP
(standard library only, to keep the Raspberry Pi profile light). Delivery is at least once: a
clip whose 2xx was lost, or whose acknowledgement a crash interrupted, goes again under the same
id, which the cloud treats as the same clip.

On disk, under the store's root:
    pending/<clip id>.<flac|wav>   written, waiting for upload (or kept locally without a URL)
    uploaded/<clip id>.<ext>       the cloud has it; first to go when over the quota
    rejected/<clip id>.<ext>       the cloud refused it for good; moving it back to pending/
                                   re-queues it at the next start (e.g. after fixing the token)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import urllib.error
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.client import HTTPException, HTTPMessage
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf
from pydantic import ValidationError

from edge.config import ClipsConfig
from edge.spool import Entry, Spool
from models.atomic import atomic_write_bytes
from models.audio import FloatArray, float_to_int16
from models.contract import ClipMetadata, EventPayload

log = logging.getLogger(__name__)

CLIP_KIND = "clip"
# How long after an episode began its `start` event may come: 1 s windows and k-of-n agreement
# make it ~1.5 s; detection.min_duration_s adds itself (the daemon passes the sum plus margin).
START_DELAY_S = 5.0
IDLE_POLL_S = 5.0  # also re-reads the spool without a notify(), e.g. for entries queued elsewhere
HTTP_TIMEOUT_S = 30.0
_RETRIED_4XX = frozenset({408, 429})  # "later, please": every other 4xx is the clip's fault
_CONTENT_TYPES = {".flac": "audio/flac", ".wav": "audio/wav"}


def clip_key(clip_id: str) -> str:
    """The clip's spool key: one queued upload per clip, whoever queues it."""
    return f"clip:{clip_id}"


def read_metadata(path: Path) -> ClipMetadata:
    """The `ClipMetadata` a clip file carries in its comment tag."""
    with sf.SoundFile(str(path)) as handle:
        return ClipMetadata.model_validate_json(handle.comment)


@dataclass(order=True, frozen=True)
class _File:
    mtime_ns: int
    path: Path
    size: int


def _files(folder: Path) -> list[_File]:
    """The folder's files, oldest first."""
    with os.scandir(folder) as entries:
        stats = [(Path(e.path), e.stat()) for e in entries if e.is_file()]
    return sorted(_File(stat.st_mtime_ns, path, stat.st_size) for path, stat in stats)


class ClipStore:
    """The clip folders and their disk quota.

    Over the quota, uploaded (and rejected) clips go first, oldest first, since the cloud has
    them or never will; only then the oldest pending ones, each logged as a warning and counted
    in `deleted_pending`, because on a device offline for days the newest clips matter most.
    """

    def __init__(self, root: Path, quota_bytes: int) -> None:
        self.pending = root / "pending"
        self.uploaded = root / "uploaded"
        self.rejected = root / "rejected"
        self.quota_bytes = quota_bytes
        self.deleted_uploaded = 0
        self.deleted_pending = 0
        self._lock = threading.Lock()  # the recorder deletes while the uploader moves
        for folder in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            for leftover in folder.glob("*.tmp"):  # an interrupted atomic write
                log.info("removing %s, left over from an interrupted write", leftover)
                leftover.unlink()

    @property
    def _folders(self) -> tuple[Path, Path, Path]:
        return self.pending, self.uploaded, self.rejected

    def add(self, name: str, data: bytes) -> None:
        """Write a clip into `pending/` atomically: the name appears only once it is complete."""
        atomic_write_bytes(self.pending / name, data)

    def pending_files(self) -> list[Path]:
        """Clips waiting for upload, oldest first."""
        with self._lock:
            return [f.path for f in _files(self.pending)]

    def mark_uploaded(self, name: str) -> None:
        self._move(name, self.uploaded)

    def mark_rejected(self, name: str) -> None:
        self._move(name, self.rejected)

    def usage_bytes(self) -> int:
        with self._lock:
            return sum(f.size for folder in self._folders for f in _files(folder))

    def enforce_quota(self, keep: str | None = None) -> None:
        """Delete clips until usage fits the quota; never `keep` (the clip just written)."""
        with self._lock:
            done = sorted(_files(self.uploaded) + _files(self.rejected))
            pending = _files(self.pending)
            usage = sum(f.size for f in done + pending)
            for victim in done + pending:
                if usage <= self.quota_bytes:
                    return
                if victim.path.name == keep:
                    continue
                victim.path.unlink(missing_ok=True)
                usage -= victim.size
                if victim.path.parent == self.pending:
                    self.deleted_pending += 1
                    log.warning("clip quota: deleted %s before it was uploaded", victim.path.name)
                else:
                    self.deleted_uploaded += 1
                    log.info("clip quota: deleted %s", victim.path)

    def _move(self, name: str, folder: Path) -> None:
        # No directory fsync: a rename lost to a power cut leaves the clip in pending/ without
        # an entry, so it is queued and sent again, which the cloud tolerates.
        with self._lock, contextlib.suppress(FileNotFoundError):  # the quota came first
            (self.pending / name).replace(folder / name)


@dataclass
class _Clip:
    latest: EventPayload  # the episode's latest event: label, max score, model, end time
    start: int  # sample index of the clip's first sample
    limit: int  # where max_clip_s cuts it
    stop: int  # where it ends: `limit` until the episode's end is known
    next: int  # sample index after the last one held
    chunks: list[FloatArray] = field(default_factory=list)
    end: int | None = None  # sample index where the episode ended


class ClipRecorder:
    """Cuts one clip per episode from the audio the detector sees.

    Feed it exactly what the detector gets (`push`) and every event it raises (`on_event`).
    A clip holds `pre_roll_s` before the episode's start (as much as the history still holds),
    the episode and `post_roll_s` after its end; it is written once the post-roll is in. One
    longer than `max_clip_s` is cut there (`truncated`) but still written at the episode's end,
    when its metadata is complete. Writing happens on the caller's thread: a FLAC encode and an
    fsync, well within the analysis backlog the daemon allows.

    Without an upload URL clips are only kept on disk (nothing is queued). Construct it before
    the uploader starts: it re-queues pending clips that lost their spool entry.
    """

    def __init__(
        self,
        config: ClipsConfig,
        store: ClipStore,
        spool: Spool,
        *,
        rate: int,
        device: str,
        origin: datetime,
        start_delay_s: float = START_DELAY_S,
    ) -> None:
        self._config = config
        self._store = store
        self._spool = spool
        self._rate = rate
        self._device = device
        self._origin = origin
        self._pre = round(config.pre_roll_s * rate)
        self._post = round(config.post_roll_s * rate)
        self._max = round(config.max_clip_s * rate)
        self._capacity = self._pre + round(start_delay_s * rate)
        self._history: deque[FloatArray] = deque()
        self._held = 0  # samples in the history
        self._total = 0  # samples pushed since the origin
        self._clips: dict[str, _Clip] = {}
        self._queue = bool(config.upload_url)
        if self._queue:
            self._requeue_orphans()

    def clip_id_for(self, event: EventPayload) -> str | None:
        """The clip id an `end` event carries: the episode id, None when clips are off."""
        return event.id if self._config.enabled else None

    def push(self, samples: FloatArray) -> list[str]:
        """Feed audio; returns the ids of the clips it finished (to wake the uploader)."""
        if not self._config.enabled:
            return []
        chunk = np.asarray(samples, dtype=np.float32)
        first = self._total
        self._total += chunk.shape[0]
        self._history.append(chunk)
        self._held += chunk.shape[0]
        while self._history and self._held - self._history[0].shape[0] >= self._capacity:
            self._held -= self._history.popleft().shape[0]
        for clip in self._clips.values():
            self._fill(clip, chunk, first)
        return self._finish_complete()

    def skip(self, samples: int) -> list[str]:
        """Audio the daemon dropped because analysis fell behind: the timeline moves on as the
        detector's does, and clips hold silence there, so their times stay true."""
        return self.push(np.zeros(samples, dtype=np.float32))

    def on_event(self, event: EventPayload) -> list[str]:
        """Open, follow and end clips; returns the ids of clips this finished."""
        if not self._config.enabled:
            return []
        clip = self._clips.get(event.id)
        if event.type == "start" and clip is None:
            start = max(self._sample(event.started_at) - self._pre, self._total - self._held)
            limit = start + self._max
            clip = _Clip(latest=event, start=start, limit=limit, stop=limit, next=start)
            self._fill(clip, self._history_since(start), start)
            self._clips[event.id] = clip
            return []
        if clip is None:  # its start came before this recorder existed
            return []
        clip.latest = event
        if event.type == "end":
            clip.end = self._sample(event.ended_at) if event.ended_at else self._total
            clip.stop = min(clip.limit, clip.end + self._post)
        return self._finish_complete()

    def flush(self) -> list[str]:
        """Shutdown: write every open clip with what it has."""
        finished = list(self._clips)
        for clip_id in finished:
            self._save(clip_id, self._clips.pop(clip_id))
        return finished

    def _sample(self, at: datetime) -> int:
        return round((at - self._origin) / timedelta(seconds=1) * self._rate)

    def _at(self, sample: int) -> datetime:
        return self._origin + timedelta(seconds=sample / self._rate)

    def _history_since(self, first: int) -> FloatArray:
        if not self._history:
            return np.empty(0, dtype=np.float32)
        held: FloatArray = np.concatenate(self._history)
        return held[first - (self._total - self._held) :]

    def _fill(self, clip: _Clip, chunk: FloatArray, first: int) -> None:
        """Append the part of `chunk` (whose first sample has index `first`) the clip lacks."""
        room = clip.stop - clip.next
        if room <= 0:
            return
        # A clip with room left has had every sample before `chunk`: no gap to fill.
        piece = chunk[clip.next - first :][:room]
        clip.chunks.append(piece)
        clip.next += piece.shape[0]

    def _finish_complete(self) -> list[str]:
        finished = [
            clip_id
            for clip_id, clip in self._clips.items()
            if clip.end is not None and clip.next >= clip.stop
        ]
        for clip_id in finished:
            self._save(clip_id, self._clips.pop(clip_id))
        return finished

    def _save(self, clip_id: str, clip: _Clip) -> None:
        # An `end` that came after the post-roll was already in (post_roll_s = 0) trims it.
        length = min(clip.next, clip.stop) - clip.start
        audio = np.concatenate(clip.chunks)[:length] if clip.chunks else np.empty(0, np.float32)
        # Cut at max_clip_s: it reached the limit before its post-roll was complete.
        truncated = clip.next >= clip.limit and (
            clip.end is None or clip.end + self._post > clip.limit
        )
        event = clip.latest
        metadata = ClipMetadata(
            id=clip_id,
            device=self._device,
            event_id=event.id,
            label=event.label,
            score=event.max_score,
            model=event.model,
            started_at=self._at(clip.start),
            ended_at=self._at(clip.start + length),
            episode_started_at=event.started_at,
            episode_ended_at=event.ended_at or self._at(self._total),
            sample_rate=self._rate,
            truncated=truncated,
        )
        name = f"{clip_id}.{self._config.format}"
        try:
            self._store.add(name, self._encode(audio, metadata))
            if self._queue:
                self._spool.put(clip_key(clip_id), CLIP_KIND, _entry(name, metadata))
            self._store.enforce_quota(keep=name)
        except OSError:
            log.exception("could not save clip %s; detection goes on without it", name)
            return
        log.info("clip %s saved (%.1f s of %s)", name, length / self._rate, event.label)

    def _encode(self, audio: FloatArray, metadata: ClipMetadata) -> bytes:
        buffer = io.BytesIO()
        fmt = self._config.format.upper()
        with sf.SoundFile(buffer, "w", self._rate, 1, format=fmt, subtype="PCM_16") as handle:
            handle.comment = metadata.model_dump_json()  # FLAC: no limit; WAV: ~2 KB
            handle.write(float_to_int16(audio))
        return buffer.getvalue()

    def _requeue_orphans(self) -> None:
        """Queue pending clips whose entry is missing: a crash between writing the file and
        queueing it, or a spool that dropped its oldest entries."""
        for path in self._store.pending_files():
            if self._spool.has(clip_key(path.stem)):
                continue
            try:
                metadata = read_metadata(path)
            except (RuntimeError, OSError, ValidationError) as exc:
                log.warning("cannot re-queue %s, its metadata is unreadable: %s", path, exc)
                continue
            self._spool.put(clip_key(metadata.id), CLIP_KIND, _entry(path.name, metadata))
            log.info("re-queued %s for upload", path.name)


def _entry(name: str, metadata: ClipMetadata) -> bytes:
    """The spool payload of a clip upload: its file name in `pending/` and its metadata."""
    return json.dumps({"file": name, "metadata": metadata.model_dump(mode="json")}).encode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would replay a redirected POST as a body-less GET, whose 200 would mark a clip
    uploaded that the cloud never got. A redirect means a wrong URL: it stays an error."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def _multipart(parts: list[tuple[str, str | None, str, bytes]]) -> tuple[bytes, str]:
    """multipart/form-data from (field, file name, content type, data); body and its type."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        chunks += [f"{head}Content-Type: {content_type}\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class ClipUploader:
    """Sends queued clips to `{url}/api/v1/clips`, oldest first, one at a time.

    - 2xx: acknowledged, the file moves to `uploaded/` (`uploaded`).
    - 4xx other than 408/429, 401 and 403 included: the cloud refuses this clip for good; the
      status and answer are logged as an error, the entry acknowledged and the file moved to
      `rejected/` (`rejected`). A revoked or wrong token is permanent until someone fixes the
      configuration, and retrying would only hide that; the files stay in `rejected/` to be
      moved back into `pending/` once it is fixed.
    - 5xx, 408, 429, redirects, no connection, timeouts: the entry stays; the next attempt
      waits 1 s, doubling up to `retry_max_s` (`failures` counts attempts). `notify()` does
      not cut a backoff short, so a cloud that is down is not hammered by new clips.
    - The file is gone (the quota took it): acknowledged and counted in `lost`.
    """

    def __init__(
        self,
        store: ClipStore,
        spool: Spool,
        *,
        url: str,
        token: str,
        retry_max_s: float,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._spool = spool
        self._endpoint = url.rstrip("/") + "/api/v1/clips"
        self._token = token
        self._retry_max_s = retry_max_s
        self._timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_NoRedirect())
        self.uploaded = 0
        self.rejected = 0
        self.lost = 0
        self.failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clip-upload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """A clip was queued: look now instead of at the next poll (unless backing off)."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop at once, even mid-backoff; an upload in flight gets `timeout_s` to finish
        (unfinished, its entry stays queued for the next start)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            entries = self._spool.peek(1, kind=CLIP_KIND)
            if not entries:
                self._wake.wait(IDLE_POLL_S)
            elif self._deliver(entries[0]):
                backoff = 0.0
            else:
                backoff = min(self._retry_max_s, backoff * 2 or 1.0)
                self._stop.wait(backoff)

    def _deliver(self, entry: Entry) -> bool:
        """One upload attempt; True when the entry is settled and acknowledged."""
        record = json.loads(entry.payload)
        name: str = record["file"]
        try:
            audio = (self._store.pending / name).read_bytes()
        except FileNotFoundError:
            log.warning("clip %s was deleted by the disk quota before it was uploaded", name)
            self._spool.ack(entry.seq)
            self.lost += 1
            return True
        metadata = json.dumps(record["metadata"]).encode()
        try:
            status, answer = self._post(name, metadata, audio)
        except (OSError, HTTPException) as exc:  # refused, unreachable, timed out, cut off
            status, answer = 0, str(exc)
        if 200 <= status < 300:
            # Acknowledged before the move: a crash between them sends the clip again.
            self._spool.ack(entry.seq)
            self._store.mark_uploaded(name)
            self.uploaded += 1
            log.info("clip %s uploaded", name)
            return True
        if 400 <= status < 500 and status not in _RETRIED_4XX:
            log.error("the cloud rejected clip %s with HTTP %d: %s", name, status, answer)
            self._spool.ack(entry.seq)
            self._store.mark_rejected(name)
            self.rejected += 1
            return True
        self.failures += 1
        reason = f"HTTP {status}: {answer}" if status else answer
        log.warning("clip %s not uploaded (%s); it stays queued", name, reason)
        return False

    def _post(self, name: str, metadata: bytes, audio: bytes) -> tuple[int, str]:
        content_type = _CONTENT_TYPES[Path(name).suffix]
        body, body_type = _multipart(
            [("metadata", None, "application/json", metadata), ("audio", name, content_type, audio)]
        )
        request = urllib.request.Request(
            self._endpoint,
            data=body,
            method="POST",
            headers={"Content-Type": body_type, "Authorization": f"Bearer {self._token}"},
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                return int(response.status), response.read(2000).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(2000).decode("utf-8", "replace")
