"""Labelling: giving clips labels (each change audited), undo, the queue and dataset statistics.

The API routes and the console pages both go through here, so a label given by a key press, a
bulk action or the "false positive" button leaves the same trail.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, tuple_
from sqlalchemy.orm import Session as Db

from cloud.splits import SPLITS, Split, split_of
from cloud.tables import Clip, Label, LabelChange, User, utcnow

# What "false positive" labels a clip with: the catch-all for sounds that are none of the
# detector's classes. Created on first use, so a fresh install needs no setup for the button.
NEGATIVE_LABEL = "other"
# Label names become dataset folder names (ROOT/<label>/) and model output names.
LABEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class LabellingError(ValueError):
    """A labelling request that cannot be carried out; the message says why."""


class NotFoundError(LabellingError):
    pass


class ConflictError(LabellingError):
    pass


def check_label_name(name: str) -> str:
    if not LABEL_NAME.fullmatch(name):
        raise LabellingError(
            f"label {name!r}: use 1-64 lower-case letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def is_false_positive(device_label: str | None, label: str | None) -> bool:
    """A person heard something other than what the device reported."""
    return device_label is not None and label is not None and label != device_label


def _change(db: Db, clip: Clip, label: str | None, user: User, at: datetime) -> None:
    db.add(
        LabelChange(clip_id=clip.id, old_label=clip.label, new_label=label, user_id=user.id, at=at)
    )
    clip.label = label
    clip.labelled_by = user.id if label is not None else None
    clip.labelled_at = at if label is not None else None
    clip.false_positive = is_false_positive(clip.device_label, label)


def set_labels(db: Db, clips: Sequence[Clip], label: str | None, user: User) -> None:
    """Label `clips` (None takes the label away) as one action.

    Every clip whose label changes gets a LabelChange; all rows of one action share their `at`,
    which is how undo finds the whole action again (a bulk label is undone in one go).
    """
    if label is not None and db.get(Label, label) is None:
        raise NotFoundError(f"no label {label!r}")
    at = utcnow()
    for clip in clips:
        if clip.label != label:
            _change(db, clip, label, user, at)


def undo(db: Db, user: User) -> list[Clip]:
    """Revert the user's last action and return the clips it touched.

    The revert is itself recorded as a change (the audit trail keeps everything), so undoing
    twice redoes. Refuses when someone relabelled one of the clips since.
    """
    last = db.scalar(select(func.max(LabelChange.at)).where(LabelChange.user_id == user.id))
    if last is None:
        raise NotFoundError("nothing to undo: you have not labelled anything")
    changes = db.scalars(
        select(LabelChange)
        .where(LabelChange.user_id == user.id, LabelChange.at == last)
        .order_by(LabelChange.id)
    ).all()
    ids = [ch.clip_id for ch in changes]
    clips = {c.id: c for c in db.scalars(select(Clip).where(Clip.id.in_(ids)))}
    stale = [ch.clip_id for ch in changes if clips[ch.clip_id].label != ch.new_label]
    if stale:
        raise ConflictError(f"clips {', '.join(stale)} were relabelled since; not undoing")
    wanted = {ch.old_label for ch in changes if ch.old_label is not None}
    gone = wanted - set(db.scalars(select(Label.name).where(Label.name.in_(wanted))))
    if gone:
        raise ConflictError(f"labels {', '.join(sorted(gone))} no longer exist; not undoing")
    at = utcnow()
    for ch in changes:
        _change(db, clips[ch.clip_id], ch.old_label, user, at)
    return [clips[i] for i in ids]


def mark_false_positive(db: Db, clip: Clip, user: User) -> None:
    """Label the clip NEGATIVE_LABEL: the device's detection was wrong."""
    if clip.device_label is None:
        raise LabellingError(f"clip {clip.id} has no device label to call a false positive")
    if clip.device_label == NEGATIVE_LABEL:
        raise LabellingError(f"clip {clip.id} was reported as {NEGATIVE_LABEL!r} already")
    if db.get(Label, NEGATIVE_LABEL) is None:
        db.add(Label(name=NEGATIVE_LABEL, description="none of the detector's sounds"))
        db.flush()
    set_labels(db, [clip], NEGATIVE_LABEL, user)


def label_counts(db: Db) -> list[tuple[Label, int]]:
    """Every label (by key, then name) with how many clips carry it."""
    counts = dict(
        db.execute(
            select(Clip.label, func.count()).where(Clip.label.is_not(None)).group_by(Clip.label)
        ).all()
    )
    labels = db.scalars(select(Label).order_by(Label.key.is_(None), Label.key, Label.name))
    return [(label, counts.get(label.name, 0)) for label in labels]


# --- the queue -----------------------------------------------------------------------------
#
# Order: scored clips, most uncertain (smallest |score - threshold|) first; then clips no model
# has scored; ties newest first. The two parts are read as two queries because "nulls last"
# cannot walk ix_clips_queue (label, uncertainty, received_at) on SQLite, while each part alone
# is a range of that index read in order, so a page costs the same with 100 or 100,000 clips.


@dataclass(frozen=True)
class ClipFilter:
    """The filters the clip list and the queue share."""

    device: str | None = None
    device_label: str | None = None
    min_score: float | None = None  # on the device's score
    max_score: float | None = None
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.device is not None:
            where.append(Clip.device_id == self.device)
        if self.device_label is not None:
            where.append(Clip.device_label == self.device_label)
        if self.min_score is not None:
            where.append(Clip.device_score >= self.min_score)
        if self.max_score is not None:
            where.append(Clip.device_score <= self.max_score)
        if self.since is not None:
            where.append(Clip.received_at >= self.since)
        if self.until is not None:
            where.append(Clip.received_at < self.until)
        return where


@dataclass(frozen=True)
class QueueFilter(ClipFilter):
    label: str | None = None  # None: the clips still to label; a name: review that label

    def conditions(self) -> list[ColumnElement[bool]]:
        label = Clip.label.is_(None) if self.label is None else Clip.label == self.label
        return [label, *super().conditions()]


@dataclass(frozen=True)
class QueueKey:
    """A clip's place in queue order (also the paging cursor)."""

    uncertainty: float | None
    received_at: datetime
    id: str

    @classmethod
    def of(cls, clip: Clip) -> QueueKey:
        return cls(clip.uncertainty, clip.received_at, clip.id)


def _part(f: QueueFilter, scored: bool, forward: bool, after: QueueKey | None) -> Select[Clip]:
    """One part of the queue, in queue order (or reversed), past `after` if it lies in it."""
    query = select(Clip).where(
        *f.conditions(), Clip.uncertainty.is_not(None) if scored else Clip.uncertainty.is_(None)
    )
    if after is not None:
        # Within equal uncertainty, newer first: "later in the queue" means older. A row
        # value, unlike the equivalent OR, lets SQLite seek the index and stop early.
        age, key = tuple_(Clip.received_at, Clip.id), tuple_(after.received_at, after.id)
        later = age < key if forward else age > key
        if scored:
            u = after.uncertainty
            beyond = Clip.uncertainty > u if forward else Clip.uncertainty < u
            # The plain range (>=, <=) is redundant but lets the planner seek the index.
            bound = Clip.uncertainty >= u if forward else Clip.uncertainty <= u
            later = and_(bound, or_(beyond, and_(Clip.uncertainty == u, later)))
        query = query.where(later)
    # Newest first within a part: received_at and id run against the walking direction.
    newest = [Clip.received_at, Clip.id]
    by_time = [c.desc() for c in newest] if forward else [c.asc() for c in newest]
    # label and uncertainty are constant within a part (or, scored, lead the order); naming
    # them lets PostgreSQL see that ix_clips_queue is presorted (it does not treat IS NULL as
    # an equality), and giving them the direction of what follows lets it read the index
    # backwards instead of sorting the whole part.
    lead = forward if scored else not forward
    prefix = [Clip.label, Clip.uncertainty]
    return query.order_by(*(c.asc() if lead else c.desc() for c in prefix), *by_time)


def _walk(db: Db, f: QueueFilter, after: QueueKey | None, limit: int, forward: bool) -> list[Clip]:
    parts = [True, False] if forward else [False, True]  # scored part first
    if after is not None:
        parts = parts[parts.index(after.uncertainty is not None) :]
    found: list[Clip] = []
    for n, scored in enumerate(parts):
        key = after if n == 0 else None
        found += db.scalars(_part(f, scored, forward, key).limit(limit - len(found))).all()
        if len(found) >= limit:
            break
    return found


def queue_page(db: Db, f: QueueFilter, after: QueueKey | None, limit: int) -> list[Clip]:
    """Up to `limit` clips in queue order, starting after `after` (None: from the top)."""
    return _walk(db, f, after, limit, forward=True)


def neighbour(db: Db, f: QueueFilter, clip: Clip, forward: bool) -> Clip | None:
    """The clip after (or before) this one in the queue; the clip itself need not be in it,
    so "next" still works once the clip has been labelled out of the queue."""
    found = _walk(db, f, QueueKey.of(clip), 1, forward)
    return found[0] if found else None


# --- statistics ------------------------------------------------------------------------------


@dataclass
class LabelStats:
    label: str
    clips: dict[Split, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    groups: dict[Split, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))

    @property
    def total(self) -> int:
        return sum(self.clips.values())


@dataclass(frozen=True)
class DatasetStats:
    labels: list[LabelStats]
    unlabelled: int
    false_positives: int


def dataset_stats(db: Db) -> DatasetStats:
    """Labelled clips and their groups per label and split (see cloud.splits)."""
    by_label = {label.name: LabelStats(label.name) for label, _ in label_counts(db)}
    unlabelled = 0
    rows = db.execute(
        select(Clip.label, Clip.group_id, func.count()).group_by(Clip.label, Clip.group_id)
    )
    for label, group, count in rows:
        if label is None:
            unlabelled += count
            continue
        stats = by_label.setdefault(label, LabelStats(label))  # one created meanwhile
        split = split_of(group)
        stats.clips[split] += count
        stats.groups[split] += 1
    false_positives = db.scalar(
        select(func.count()).select_from(Clip).where(Clip.false_positive.is_(True))
    )
    return DatasetStats(list(by_label.values()), unlabelled, false_positives or 0)
