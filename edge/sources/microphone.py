"""A sound card through PyAudio (PortAudio), opened the way the hardware likes it.

USB microphones often run at 44.1 or 48 kHz only, or deliver two channels, so the device is
opened at its native rate with up to two channels (unless the configuration says otherwise), then
downmixed and resampled here. PortAudio's callback thread must never wait on Python: it only
drops the bytes into a bounded queue, and when the reader has fallen that far behind the chunk
is discarded and counted rather than delaying the sound card, which would overrun it.

A fresh PortAudio instance per `open` is deliberate: PortAudio lists devices only when it starts,
so this is what lets a reopen find a USB microphone that was plugged in (again) meanwhile.
"""

from __future__ import annotations

import math
import queue
from typing import Any, ClassVar

from edge.config import MicrophoneSourceConfig
from edge.sources.base import AudioSource, PcmConverter, SourceError, empty
from models.audio import FloatArray

QUEUE_S = 2.0  # audio the callback may queue before it starts dropping
_LIST_HINT = "run `soundwarden-edge devices` to list the inputs"


class MicrophoneSource(AudioSource):
    kind: ClassVar[str] = "microphone"

    def __init__(self, config: MicrophoneSourceConfig, rate: int) -> None:
        super().__init__(config, rate)
        self.config = config
        self.name = "default input" if config.device is None else str(config.device)
        self.native_rate = 0  # known once open
        self.channels = 0
        self._queue: queue.Queue[bytes] = queue.Queue(math.ceil(QUEUE_S / config.chunk_s))
        self._audio: Any = None
        self._stream: Any = None
        self._converter: PcmConverter | None = None

    def open(self) -> None:
        try:
            import pyaudio
        except ImportError:
            raise SourceError(
                "the microphone source needs PyAudio: pip install 'soundwarden[mic]' "
                "(after `apt install portaudio19-dev`)"
            ) from None
        self._audio = pyaudio.PyAudio()
        try:
            info = self._find_device()
        except SourceError:
            self.close()
            raise
        self.name = str(info["name"])
        self.native_rate = self.config.sample_rate or int(info["defaultSampleRate"])
        # Virtual ALSA devices (default, pulse) report up to 128 channels that only upmix: take
        # at most two unless the configuration asks for more (a microphone array).
        self.channels = self.config.channels or min(int(info["maxInputChannels"]), 2)
        self._converter = PcmConverter(self.native_rate, self.channels, self.rate)
        try:
            self._stream = self._audio.open(
                format=pyaudio.paInt16,
                channels=self.channels,
                rate=self.native_rate,
                input=True,
                input_device_index=int(info["index"]),
                frames_per_buffer=max(1, round(self.config.chunk_s * self.native_rate)),
                stream_callback=self._callback,
            )
        except (OSError, ValueError) as exc:
            self.close()
            raise SourceError(
                f"microphone {self.name!r}: cannot open it at {self.native_rate} Hz with "
                f"{self.channels} channel(s) ({exc}); set audio.source.sample_rate/channels "
                f"to what it supports, or pick another device ({_LIST_HINT})"
            ) from exc

    def _find_device(self) -> dict[str, Any]:
        every = map(self._audio.get_device_info_by_index, range(self._audio.get_device_count()))
        inputs: list[dict[str, Any]] = [info for info in every if int(info["maxInputChannels"]) > 0]
        device = self.config.device
        if device is None:
            try:
                info: dict[str, Any] = self._audio.get_default_input_device_info()
            except OSError:
                raise SourceError(
                    f"microphone: there is no default input; {_available(inputs)}"
                ) from None
            return info
        if isinstance(device, int):
            matches = [info for info in inputs if int(info["index"]) == device]
        else:
            wanted = device.casefold()
            matches = [info for info in inputs if wanted in str(info["name"]).casefold()]
            exact = [info for info in matches if str(info["name"]).casefold() == wanted]
            matches = exact or matches
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise SourceError(f"microphone {device!r}: no such input; {_available(inputs)}")
        raise SourceError(
            f"microphone {device!r}: ambiguous, it matches {len(matches)} inputs; use the index "
            f"or more of the name; {_available(matches)}"
        )

    def _callback(
        self, data: bytes | None, frames: int, time_info: object, status: int
    ) -> tuple[None, int]:
        """Runs on PortAudio's real-time thread: queue the bytes or count them, never wait."""
        if data:
            try:
                self._queue.put_nowait(data)
            except queue.Full:
                # Only this thread writes it; counted at the model's rate, like capture's drops.
                self.dropped_samples += round(frames * self.rate / self.native_rate)
        return None, 0  # paContinue

    def read(self, timeout_s: float) -> FloatArray | None:
        if self._stream is None or self._converter is None:
            raise SourceError(f"microphone {self.name!r} is not open")
        try:
            pieces = [self._queue.get(timeout=timeout_s)]
        except queue.Empty:
            if not self._stream.is_active():
                raise SourceError(
                    f"microphone {self.name!r} stopped delivering audio (unplugged?); {_LIST_HINT}"
                ) from None
            return empty()
        while True:  # catch up with everything already queued
            try:
                pieces.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return self._converter.convert(b"".join(pieces))

    def close(self) -> None:
        stream, audio = self._stream, self._audio
        self._stream = self._audio = None
        if stream is not None:
            # Closing an active stream aborts it instead of waiting for the callback thread,
            # which may sit in a read that never returns on a failed device.
            stream.close()
        if audio is not None:
            audio.terminate()


def _available(inputs: list[dict[str, Any]]) -> str:
    if not inputs:
        return f"no audio inputs found ({_LIST_HINT})"
    listed = ", ".join(f"{info['index']}: {info['name']!r}" for info in inputs)
    return f"inputs: {listed} ({_LIST_HINT})"
