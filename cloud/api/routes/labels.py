"""Labelling: the labels (admin), giving clips labels, undo, the queue, dataset statistics."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update

from cloud import labelling
from cloud.api.deps import AdminDep, DbDep, UserDep
from cloud.api.routes.clips import UNLABELLED, ClipDetail, as_utc
from cloud.api.routes.clips import get_clip_or_404 as get_clip
from cloud.splits import PERCENT, SPLITS
from cloud.tables import Clip, Label, LabelChange

router = APIRouter(tags=["labelling"])

Key = Annotated[
    int, Field(ge=1, le=9, description="The digit that gives this label in the console.")
]


class LabelOut(BaseModel):
    name: str
    key: int | None
    description: str
    clips: int = Field(description="Clips carrying this label.")


class NewLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    key: Key | None = None
    description: str = Field("", max_length=1000)


class LabelChangeIn(BaseModel):
    """Only the fields sent change; `"key": null` frees the digit."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=64, description="A new name.")
    key: Key | None = None
    description: str | None = Field(None, max_length=1000)


class Labelling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(description="A label's name; null takes the label away.")


class BulkLabelling(Labelling):
    clip_ids: list[str] = Field(min_length=1, max_length=1000)


class Applied(BaseModel):
    changed: int = Field(description="Clips whose label changed (the rest had it already).")


class Undone(BaseModel):
    clips: list[ClipDetail] = Field(description="The clips the undone action touched.")


class QueueClip(ClipDetail):
    uncertainty: float | None = Field(
        description="|suggestion score - threshold|: the queue's order, smallest first."
    )


class QueuePage(BaseModel):
    items: list[QueueClip]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class SplitCounts(BaseModel):
    train: int
    val: int
    test: int


class LabelStatsOut(BaseModel):
    label: str
    clips: SplitCounts
    groups: SplitCounts = Field(description="Distinct groups (devices, recordings) per split.")
    total: int


class StatsOut(BaseModel):
    splits: dict[str, int] = Field(description="Each split's share of groups, percent.")
    labels: list[LabelStatsOut]
    unlabelled: int
    false_positives: int


def _label(db: DbDep, name: str) -> Label:
    label = db.get(Label, name)
    if label is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no label {name!r}")
    return label


def _count(db: DbDep, name: str) -> int:
    return db.scalar(select(func.count()).select_from(Clip).where(Clip.label == name)) or 0


def _out(label: Label, clips: int) -> LabelOut:
    return LabelOut(name=label.name, key=label.key, description=label.description, clips=clips)


def _check_name(db: DbDep, name: str) -> None:
    try:
        labelling.check_label_name(name)
    except labelling.LabellingError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if name == UNLABELLED:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{UNLABELLED!r} is reserved: filters use it for unlabelled clips",
        )
    if db.get(Label, name) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"label {name!r} exists already")


def _check_key(db: DbDep, key: int | None, name: str | None = None) -> None:
    holder = db.scalar(select(Label.name).where(Label.key == key)) if key is not None else None
    if holder is not None and holder != name:
        raise HTTPException(status.HTTP_409_CONFLICT, f"key {key} is taken by label {holder!r}")


def _fail(exc: labelling.LabellingError) -> HTTPException:
    code = status.HTTP_400_BAD_REQUEST
    if isinstance(exc, labelling.NotFoundError):
        code = status.HTTP_404_NOT_FOUND
    elif isinstance(exc, labelling.ConflictError):
        code = status.HTTP_409_CONFLICT
    return HTTPException(code, str(exc))


@router.get("/labels")
def list_labels(_: UserDep, db: DbDep) -> list[LabelOut]:
    """Every label, by key then name, with how many clips carry it."""
    return [_out(label, n) for label, n in labelling.label_counts(db)]


@router.post(
    "/labels",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "The name or key is taken"}},
)
def create_label(body: NewLabel, _: AdminDep, db: DbDep) -> LabelOut:
    _check_name(db, body.name)
    _check_key(db, body.key)
    label = Label(name=body.name, key=body.key, description=body.description)
    db.add(label)
    db.commit()
    return _out(label, 0)


@router.patch(
    "/labels/{name}",
    responses={404: {"description": "No such label"}, 409: {"description": "Name or key taken"}},
)
def change_label(name: str, body: LabelChangeIn, _: AdminDep, db: DbDep) -> LabelOut:
    """Rename (clips and their history follow), set or free the key, reword the description."""
    label = _label(db, name)
    new_name = body.name if body.name is not None and body.name != name else None
    if new_name is not None:
        _check_name(db, new_name)
    if "key" in body.model_fields_set:
        _check_key(db, body.key, name)
        label.key = body.key
    if body.description is not None:
        label.description = body.description
    if new_name is not None:
        # clips.label follows through its ON UPDATE CASCADE foreign key; the history is
        # plain text and is renamed here so undo still matches the clips' labels.
        label.name = new_name
        db.flush()
        for column in (LabelChange.old_label, LabelChange.new_label):
            db.execute(update(LabelChange).where(column == name).values({column: new_name}))
    db.commit()
    return _out(label, _count(db, label.name))


@router.delete(
    "/labels/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "No such label"}, 409: {"description": "Clips carry it"}},
)
def delete_label(name: str, _: AdminDep, db: DbDep) -> None:
    label = _label(db, name)
    used = _count(db, name)
    if used:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{used} clip(s) carry label {name!r}: relabel them first, or rename the label",
        )
    db.delete(label)
    db.commit()


@router.post(
    "/clips/{clip_id}/label",
    responses={404: {"description": "No such clip or label"}},
)
def label_clip(clip_id: str, body: Labelling, user: UserDep, db: DbDep) -> ClipDetail:
    """Give the clip a label (or take it away with null); the change is recorded."""
    clip = get_clip(db, clip_id)
    try:
        labelling.set_labels(db, [clip], body.label, user)
    except labelling.LabellingError as exc:
        raise _fail(exc) from None
    db.commit()
    return ClipDetail.model_validate(clip)


@router.post(
    "/clips/{clip_id}/false-positive",
    responses={
        400: {"description": "The clip has no device label to contradict"},
        404: {"description": "No such clip"},
    },
)
def false_positive(clip_id: str, user: UserDep, db: DbDep) -> ClipDetail:
    """The device's detection was wrong: label the clip `other` (created if missing). Undo
    takes it back like any other label."""
    clip = get_clip(db, clip_id)
    try:
        labelling.mark_false_positive(db, clip, user)
    except labelling.LabellingError as exc:
        raise _fail(exc) from None
    db.commit()
    return ClipDetail.model_validate(clip)


@router.post(
    "/labels/apply",
    responses={404: {"description": "A clip or the label does not exist; nothing changed"}},
)
def apply_label(body: BulkLabelling, user: UserDep, db: DbDep) -> Applied:
    """Label many clips at once: one action, which one undo takes back."""
    ids = list(dict.fromkeys(body.clip_ids))
    clips = db.scalars(select(Clip).where(Clip.id.in_(ids))).all()
    missing = set(ids) - {clip.id for clip in clips}
    if missing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no clips {', '.join(sorted(missing))}")
    changed = sum(clip.label != body.label for clip in clips)
    try:
        labelling.set_labels(db, clips, body.label, user)
    except labelling.LabellingError as exc:
        raise _fail(exc) from None
    db.commit()
    return Applied(changed=changed)


@router.post(
    "/labels/undo",
    responses={
        404: {"description": "Nothing to undo"},
        409: {"description": "Someone relabelled the clips since"},
    },
)
def undo(user: UserDep, db: DbDep) -> Undone:
    """Take back your last action (one label, a bulk label, a false positive). The revert is
    recorded like any change, so a second undo redoes."""
    try:
        clips = labelling.undo(db, user)
    except labelling.LabellingError as exc:
        raise _fail(exc) from None
    db.commit()
    return Undone(clips=[ClipDetail.model_validate(clip) for clip in clips])


def encode_cursor(key: labelling.QueueKey) -> str:
    raw = json.dumps([key.uncertainty, key.received_at.isoformat(), key.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> labelling.QueueKey:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        uncertainty, at, clip_id = json.loads(raw)
        if not (uncertainty is None or isinstance(uncertainty, float | int)):
            raise ValueError("uncertainty")
        return labelling.QueueKey(uncertainty, as_utc(datetime.fromisoformat(at)), str(clip_id))
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a cursor from this queue") from None


@router.get(
    "/queue",
    responses={400: {"description": "A bad cursor"}, 422: {"description": "Bad filters"}},
)
def queue(
    _: UserDep,
    db: DbDep,
    label: Annotated[
        str,
        Query(description=f"`{UNLABELLED}`: the clips still to label; a label: review those."),
    ] = UNLABELLED,
    device: Annotated[str | None, Query(description="Only this device's clips.")] = None,
    device_label: Annotated[str | None, Query(description="Only what devices called so.")] = None,
    min_score: Annotated[
        float | None, Query(allow_inf_nan=False, description="Device score at least this.")
    ] = None,
    max_score: Annotated[
        float | None, Query(allow_inf_nan=False, description="Device score at most this.")
    ] = None,
    received_after: Annotated[
        datetime | None, Query(description="Received at or after (ISO 8601; no offset: UTC).")
    ] = None,
    received_before: Annotated[
        datetime | None, Query(description="Received before (ISO 8601; no offset: UTC).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Clips per page.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> QueuePage:
    """Clips to label, the ones the model is least sure of first (smallest uncertainty), then
    clips no model has scored; newest first among equals."""
    if min_score is not None and max_score is not None and min_score > max_score:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "min_score is above max_score")
    f = labelling.QueueFilter(
        label=None if label == UNLABELLED else label,
        device=device,
        device_label=device_label,
        min_score=min_score,
        max_score=max_score,
        since=as_utc(received_after) if received_after else None,
        until=as_utc(received_before) if received_before else None,
    )
    after = decode_cursor(cursor) if cursor is not None else None
    clips = labelling.queue_page(db, f, after, limit + 1)
    more = len(clips) > limit
    clips = clips[:limit]
    return QueuePage(
        items=[QueueClip.model_validate(clip) for clip in clips],
        next_cursor=encode_cursor(labelling.QueueKey.of(clips[-1])) if more else None,
    )


@router.get("/stats")
def stats(_: UserDep, db: DbDep) -> StatsOut:
    """Labelled clips per label and split (train/val/test by group, as training splits)."""
    data = labelling.dataset_stats(db)
    return StatsOut(
        splits=dict(zip(SPLITS, PERCENT, strict=True)),
        labels=[
            LabelStatsOut(
                label=s.label,
                clips=SplitCounts(**s.clips),
                groups=SplitCounts(**s.groups),
                total=s.total,
            )
            for s in data.labels
        ],
        unlabelled=data.unlabelled,
        false_positives=data.false_positives,
    )
