"""A real capture device without a sound card: ALSA's `file` plugin reading a FIFO.

PortAudio sees `soundwarden_test_mic`, a two-channel device whose samples are whatever the test
writes into the FIFO, paced by the writer (a regular file would not be paced). PortAudio reads
`~/.asoundrc` when it starts, so the code under test runs in a process whose HOME is the folder
`install` prepares.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

DEVICE_NAME = "soundwarden_test_mic"
NATIVE_RATE = 44100  # the plugin leaves the rate open; PortAudio reports 44.1 kHz as native
CHANNELS = 2
PERIOD_S = 0.01

# Two single-channel null slaves under `multi` make the device report two channels (a bare
# null takes any count, so PortAudio would report 128); the file plugin copies the FIFO's
# interleaved bytes into them.
_ASOUNDRC = """
pcm.soundwarden_test_mic {{
    type file
    slave.pcm {{
        type multi
        slaves.a {{ pcm {{ type null }} channels 1 }}
        slaves.b {{ pcm {{ type null }} channels 1 }}
        bindings.0 {{ slave a channel 0 }}
        bindings.1 {{ slave b channel 0 }}
    }}
    file "/dev/null"
    infile "{fifo}"
    format "raw"
}}
"""

Signal = Callable[[int, int], npt.NDArray[np.int16]]
"""(first frame, frame count) -> interleaved int16 frames (count, CHANNELS)."""


class FifoMicrophone:
    """Plays `signal` into the FIFO in real time, reopening it whenever the reader goes away
    (PortAudio opens and closes every device while listing them). `pause()` stops the sound
    the way a dead microphone does: the device stays open and delivers nothing.

    Each write is one PortAudio period, under PIPE_BUF so the kernel keeps it whole: the file
    plugin takes a short read as a full period and fills the rest with stale samples.
    """

    def __init__(self, fifo: Path, signal: Signal, block: int = round(PERIOD_S * NATIVE_RATE)):
        self._fifo, self._signal, self._block = fifo, signal, block
        self._stop = threading.Event()
        self._playing = threading.Event()
        self._playing.set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def pause(self) -> None:
        self._playing.clear()

    def resume(self) -> None:
        self._playing.set()

    def _run(self) -> None:
        written = 0
        while not self._stop.is_set():
            try:
                fd = os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO until PortAudio opens the device
                time.sleep(0.005)
                continue
            os.set_blocking(fd, True)
            started, sent = time.monotonic(), 0
            try:
                while not self._stop.is_set():
                    if not self._playing.wait(0.1):
                        started, sent = time.monotonic(), 0  # the clock restarts on resume
                        continue
                    due = started + sent * self._block / NATIVE_RATE
                    time.sleep(max(0.0, due - time.monotonic()))
                    os.write(fd, self._signal(written, self._block).tobytes())
                    written += self._block
                    sent += 1
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)

    def stop(self) -> None:
        self._stop.set()
        self._playing.set()
        self._thread.join(10)


def install(home: Path, signal: Signal) -> FifoMicrophone:
    """Make `home` a HOME whose ALSA has the FIFO device, and start playing into it."""
    fifo = home / "mic.fifo"
    os.mkfifo(fifo)
    (home / ".asoundrc").write_text(_ASOUNDRC.format(fifo=fifo))
    return FifoMicrophone(fifo, signal)
