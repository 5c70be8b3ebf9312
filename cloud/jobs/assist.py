"""Model assistance (job kind `assist`): a bundle scores clips so the console can suggest a
label and put the clips the model is least sure of first.

Each clip's 16 kHz audio is scored in 1 s windows at the edge's 0.25 s hop
(`models.evaluate.window_scores`, the same front end and runtime the device uses). The clip's
score is its highest window score for the bundle's thresholded label (`cry`, or `abnormal` for
an anomaly bundle); the suggestion is that label at or above the threshold and the bundle's
other label below it; uncertainty is the score's distance from the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, true
from sqlalchemy.orm import Session as Db

from cloud import registry
from cloud.ingest import read_clip_audio
from cloud.jobs.core import JobContext, job
from cloud.tables import Clip, ModelVersion
from models.audio import TARGET_SAMPLE_RATE, resample
from models.bundle import Bundle
from models.evaluate import window_scores
from models.frontend import FloatArray
from models.inference import BundleModel, choose_runtime

_PAGE = 200  # clips loaded per query while scoring


class AssistParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("cry-detector", description="A model in the registry, e.g. cry-detector.")
    version: str | None = Field(None, description="Its version; default the current one.")
    only_unlabelled: bool = Field(True, description="Score only clips nobody has labelled yet.")


def resolve_bundle(db: Db, name: str, version: str | None = None) -> ModelVersion:
    """The model assistance uses: `version` of `name`, or its current (last promoted) version.
    The registry holds the shipped bundles, uploads and trained models alike; RegistryError
    says when there is no such model."""
    if version is not None:
        return registry.get(db, name, version)
    row = registry.current(db, name)
    if row is None:
        raise registry.RegistryError(f"no promoted version of model {name!r}")
    return row


@dataclass(frozen=True)
class _Scorer:
    model: BundleModel
    ref: str  # name@version, what clips record as suggestion_model
    positive: str
    other: str
    threshold: float

    @classmethod
    def of(cls, bundle: Bundle) -> _Scorer:
        manifest = bundle.manifest
        ref = f"{manifest.name}@{manifest.version}"
        thresholded = [label for label in manifest.labels if label in manifest.thresholds]
        others = [label for label in manifest.labels if label not in manifest.thresholds]
        if len(thresholded) != 1 or not others:
            raise ValueError(
                f"{ref}: assistance needs one label with a threshold and another to suggest "
                f"below it; the bundle has labels {manifest.labels}, thresholds "
                f"{manifest.thresholds}"
            )
        model = BundleModel(bundle, runtime=choose_runtime("auto", bundle))
        positive = thresholded[0]
        return cls(model, ref, positive, others[0], manifest.thresholds[positive])

    def score(self, clip: Clip, audio: FloatArray) -> None:
        scores = window_scores(self.model, audio, self.positive)
        top = float(np.max(scores))
        clip.window_scores = [round(float(s), 6) for s in scores]
        clip.suggestion_score = top
        clip.suggestion = self.positive if top >= self.threshold else self.other
        clip.suggestion_model = self.ref
        clip.uncertainty = abs(top - self.threshold)


@job("assist")
def run_assist(ctx: JobContext) -> dict[str, Any]:
    params = AssistParams.model_validate(ctx.params)
    with ctx.sessions() as db:
        row = resolve_bundle(db, params.model, params.version)
    # Verified here, against the trusted keys, every time: a bundle altered on disk fails the
    # job with the reason instead of suggesting labels.
    scorer = _Scorer.of(registry.open_bundle(ctx.settings, row))
    rate = scorer.model.manifest.features.sample_rate
    wanted = Clip.label.is_(None) if params.only_unlabelled else true()
    with ctx.sessions() as db:
        total = db.scalar(select(func.count()).select_from(Clip).where(wanted)) or 0
    ctx.log(f"scoring {total} clip(s) with {scorer.ref} ({scorer.positive} >= {scorer.threshold})")
    counts = {scorer.positive: 0, scorer.other: 0}
    unreadable: list[str] = []
    stopped, last_id = False, ""
    while not stopped:
        with ctx.sessions() as db:
            # Pages by id, so clips added while the job runs are scored too.
            page = db.scalars(
                select(Clip).where(wanted, Clip.id > last_id).order_by(Clip.id).limit(_PAGE)
            ).all()
            if not page:
                break
            for clip in page:
                stopped = ctx.cancelled()
                if stopped:
                    break
                last_id = clip.id
                try:
                    audio = resample(read_clip_audio(ctx.storage, clip), TARGET_SAMPLE_RATE, rate)
                except (OSError, sf.LibsndfileError) as exc:
                    unreadable.append(clip.id)
                    ctx.log(f"clip {clip.id}: audio unreadable, not scored ({exc})")
                    continue
                scorer.score(clip, audio)
                db.commit()
                counts[clip.suggestion or scorer.other] += 1
                scored = sum(counts.values())
                message = f"scored {scored} of {total} clip(s) with {scorer.ref}"
                ctx.progress(scored / max(total, scored), message)
    scored = sum(counts.values())
    message = f"scored {scored} clip(s) with {scorer.ref}: " + ", ".join(
        f"{n} {label}" for label, n in counts.items()
    )
    if unreadable:
        message += f"; {len(unreadable)} unreadable (see the log)"
    ctx.progress(ctx.fraction if stopped else 1.0, message)
    return {"model": scorer.ref, "scored": scored, "suggested": counts, "unreadable": unreadable}
