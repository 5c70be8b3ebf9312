"""What the console draws for a clip: its spectrogram as a PNG and its waveform's peaks."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response
from pydantic import AfterValidator, BaseModel, Field

from cloud import spectrogram
from cloud.api.deps import DbDep, StorageDep, UserDep
from cloud.api.routes.clips import get_clip_or_404 as get_clip
from cloud.ingest import read_clip_audio
from models.audio import TARGET_SAMPLE_RATE

router = APIRouter(tags=["clips"])

# A clip's audio never changes once stored, so the browser may keep the pictures a while
# (private: they sit behind the sign-in).
CACHE = {"Cache-Control": "private, max-age=3600"}


def _power_of_two(n: int) -> int:
    if n & (n - 1):
        raise ValueError("n_fft must be a power of two")
    return n


class Waveform(BaseModel):
    sample_rate: int
    duration_s: float
    min: list[float] = Field(description="Lowest sample of each column, -1..1.")
    max: list[float] = Field(description="Highest sample of each column, -1..1.")


@router.get(
    "/clips/{clip_id}/spectrogram.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The spectrogram"},
        404: {"description": "No such clip"},
        422: {"description": "Bad settings"},
    },
)
def get_spectrogram(
    clip_id: str,
    _: UserDep,
    db: DbDep,
    storage: StorageDep,
    scale: Annotated[spectrogram.Scale, Query(description="Mel (the detector's bands) or Hz.")] = (
        "mel"
    ),
    window: Annotated[spectrogram.WindowName, Query(description="Analysis window.")] = "hann",
    n_fft: Annotated[
        int,
        Query(ge=256, le=2048, description="FFT size, a power of two."),
        AfterValidator(_power_of_two),
    ] = 512,
    overlap: Annotated[float, Query(ge=0.0, le=0.95, description="Frame overlap, 0-0.95.")] = 0.75,
) -> Response:
    """Time left to right, low frequencies at the bottom, the loudest 80 dB through viridis."""
    # A plain `def`, so FastAPI runs the decoding and FFTs in a worker thread, off the loop.
    samples, rate = read_clip_audio(storage, get_clip(db, clip_id)), TARGET_SAMPLE_RATE
    power = spectrogram.spectrogram_db(
        samples, rate, n_fft=n_fft, overlap=overlap, window=window, scale=scale
    )
    return Response(spectrogram.to_png(power), media_type="image/png", headers=CACHE)


@router.get("/clips/{clip_id}/waveform", responses={404: {"description": "No such clip"}})
def get_waveform(
    clip_id: str,
    _: UserDep,
    db: DbDep,
    storage: StorageDep,
    response: Response,
    width: Annotated[int, Query(ge=16, le=4096, description="Columns (pixels) wanted.")] = 1000,
) -> Waveform:
    """The lowest and highest sample per column, for drawing the waveform at any width."""
    clip = get_clip(db, clip_id)
    samples, rate = read_clip_audio(storage, clip), TARGET_SAMPLE_RATE
    low, high = spectrogram.peaks(samples, width)
    response.headers.update(CACHE)
    return Waveform(
        sample_rate=rate,
        duration_s=samples.shape[0] / rate,
        # Four decimals are finer than any screen's pixel; float64 so JSON shows just those.
        min=np.round(low.astype(np.float64), 4).tolist(),
        max=np.round(high.astype(np.float64), 4).tolist(),
    )
