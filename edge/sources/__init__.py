"""Audio sources, one module per `audio.source.type`, all behind `AudioSource`.

A new kind of source is a module here with an `AudioSource` subclass naming its `kind`, added to
`SOURCES`, plus its configuration model in `edge.config`.
"""

from __future__ import annotations

from edge.config import SourceConfig
from edge.sources.base import AudioSource, SourceError
from edge.sources.file import FileSource
from edge.sources.microphone import MicrophoneSource
from edge.sources.stdin import StdinSource

SOURCES: dict[str, type[AudioSource]] = {
    source.kind: source for source in (MicrophoneSource, FileSource, StdinSource)
}

__all__ = ["SOURCES", "AudioSource", "SourceError", "create_source"]


def create_source(config: SourceConfig, rate: int) -> AudioSource:
    """The source `config.type` names, unopened; its output is mono float32 at `rate` Hz."""
    return SOURCES[config.type](config, rate)
