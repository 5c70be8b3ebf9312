"""Staged rollouts of registry bundles to devices: functions over the database, nothing sent.

A rollout sends one registry version to a device group, a list of devices, or the whole fleet,
in stages: `stages` such as ["1", "10%", "100%"] are cumulative sizes ("1": one canary device,
"10%": a tenth of the devices, rounded up). A stage is notified once every device of the stages
before it is healthy (it reports `installed` with the target version, which a device does only
after its probation) or has failed and been skipped. A device reporting `rejected` or
`rolled_back` for this rollout's target pauses the rollout with its reason; resuming goes on
without that device. Aborting sends every device already told the version it ran before.

Devices hear of it on their retained `<prefix>/<device>/model/set`. This module only writes the
message a device is owed into its `rollout_devices.outbox`; the MQTT bridge (cloud/bridge.py)
publishes what is owed and clears it once the broker has it. An API call made while the bridge
is down therefore loses nothing, and the bridge needs nothing but the outbox to publish.

Every change to a rollout takes its row's write lock first (`_lock`), so an admin's abort and
the bridge handling a device's report, say, never interleave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import ceil

from sqlalchemy import String, cast, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as Db

from cloud import registry
from cloud.core.config import Settings
from cloud.tables import ACTIVE_ROLLOUT, Device, ModelVersion, Rollout, RolloutDevice, utcnow
from models.contract import ModelRef, ModelSetPayload, ModelStatePayload

# "1" to "999999" devices, or "1%" to "100%" of them.
STAGE_PATTERN = r"^(?:[1-9][0-9]{0,5}|[1-9][0-9]?%|100%)$"
DEFAULT_STAGES = ("1", "10%", "100%")
# The route devices download bundles from (cloud/api/routes/registry.py, `download`).
DOWNLOAD_PATH = "/api/v1/models/{name}/{version}/bundle.tar.gz"


class RolloutError(ValueError):
    """A rollout request that cannot be carried out; the message says why."""


class RolloutNotFoundError(RolloutError):
    pass


class RolloutConflictError(RolloutError):
    """The request does not fit the state the rollout (or another one) is in."""


@dataclass(frozen=True)
class Owed:
    """A retained model/set the bridge must publish; an empty payload clears the topic."""

    rollout_id: int
    device_id: str
    payload: str


def bundle_url(base_url: str, name: str, version: str) -> str:
    return base_url + DOWNLOAD_PATH.format(name=name, version=version)


def stage_sizes(stages: Sequence[str], n_devices: int) -> list[int]:
    """How many devices each stage adds (0 where a stage adds none) for `n_devices` in all."""
    sizes: list[int] = []
    reached = 0
    for spec in stages:
        total = ceil(n_devices * int(spec[:-1]) / 100) if spec.endswith("%") else int(spec)
        total = min(n_devices, max(reached, total))
        sizes.append(total - reached)
        reached = total
    if reached < n_devices:
        raise RolloutError(
            f"the stages {', '.join(stages)} reach {reached} of the {n_devices} devices; "
            "end with 100%"
        )
    return sizes


def create(
    db: Db,
    settings: Settings,
    model: ModelVersion,
    *,
    stages: Sequence[str],
    group: str | None,
    device_ids: Sequence[str] | None,
    base_url: str,
    created_by: int | None,
) -> Rollout:
    """Roll `model` out to `device_ids` (in that order: the first is the canary), or the
    devices of `group`, or the whole fleet (in device id order), and notify the first stage."""
    active = db.scalar(
        select(Rollout).where(Rollout.model_name == model.name, Rollout.state.in_(ACTIVE_ROLLOUT))
    )
    if active is not None:
        raise RolloutConflictError(
            f"rollout {active.id} of {model.name} is {active.state}: abort it first"
        )
    devices = _targets(db, model.name, group, device_ids)
    sizes = stage_sizes(stages, len(devices))
    rollout = Rollout(
        model_name=model.name,
        version=model.version,
        sha256=model.sha256,
        size=registry.archive_size(settings, model),
        base_url=base_url.rstrip("/"),
        group=group,
        stages=list(stages),
        created_by=created_by,
    )
    db.add(rollout)
    try:
        db.flush()
    except IntegrityError:  # the partial unique index: another promotion won the race
        raise RolloutConflictError(f"another rollout of {model.name} has just started") from None
    stage_of = [k for k, size in enumerate(sizes) for _ in range(size)]
    for device, stage in zip(devices, stage_of, strict=True):
        db.add(RolloutDevice(rollout_id=rollout.id, device_id=device.id, stage=stage))
    db.flush()
    _advance(db, rollout)
    return rollout


def _runs_other_model(device: Device, name: str) -> bool:
    # What it last reported running (status heartbeat or model/state); unknown: it may run it.
    return device.model_name is not None and device.model_name != name


def _targets(
    db: Db, name: str, group: str | None, device_ids: Sequence[str] | None
) -> list[Device]:
    if device_ids is None:
        query = select(Device).where(Device.revoked_at.is_(None)).order_by(Device.id)
        if group is not None:
            query = query.where(Device.group == group)
        # A mixed fleet: devices running another model would only reject this one.
        devices = [d for d in db.scalars(query) if not _runs_other_model(d, name)]
        if group is not None and not devices:
            raise RolloutError(f"no enrolled device of group {group!r} runs {name}")
        return devices
    if len(set(device_ids)) < len(device_ids):
        raise RolloutError("a device is listed more than once")
    found = {d.id: d for d in db.scalars(select(Device).where(Device.id.in_(device_ids)))}
    missing = [i for i in device_ids if i not in found or found[i].revoked_at is not None]
    if missing:
        raise RolloutError(f"not enrolled, or revoked: {', '.join(missing)}")
    others = [i for i in device_ids if _runs_other_model(found[i], name)]
    if others:
        raise RolloutError(f"running another model than {name}: {', '.join(others)}")
    return [found[i] for i in device_ids]


def _model_set(rollout: Rollout, version: str, sha256: str, size: int) -> str:
    return ModelSetPayload(
        name=rollout.model_name,
        version=version,
        url=bundle_url(rollout.base_url, rollout.model_name, version),
        sha256=sha256,
        size=size,
        rollout=str(rollout.id),
    ).model_dump_json()


def _healthy(report: ModelStatePayload, rollout: Rollout) -> bool:
    # A device says `installed` only once the model has passed its probation.
    target = ModelRef(name=rollout.model_name, version=rollout.version)
    return report.state == "installed" and report.installed == target


def _members(db: Db, rollout: Rollout) -> Sequence[RolloutDevice]:
    return db.scalars(
        select(RolloutDevice)
        .where(RolloutDevice.rollout_id == rollout.id)
        .execution_options(populate_existing=True)
    ).all()


def _advance(db: Db, rollout: Rollout) -> None:
    """While no told device is still on its way, notify the next stage; with none left, the
    rollout is complete."""
    if rollout.state != "running":
        return
    members = _members(db, rollout)
    while not any(m.state == "notified" for m in members):
        later = [m for m in members if m.stage > rollout.stage]
        if not later:
            rollout.state, rollout.finished_at = "completed", utcnow()
            return
        rollout.stage = min(m.stage for m in later)
        for member in later:
            if member.stage == rollout.stage:
                _notify(db, rollout, member)


def _notify(db: Db, rollout: Rollout, member: RolloutDevice) -> None:
    device = db.get(Device, member.device_id)
    assert device is not None  # rollout_devices rows go with their device
    member.state = "notified"
    if device.model_name == rollout.model_name:
        member.previous_version = device.model_version
    member.outbox = _model_set(rollout, rollout.version, rollout.sha256, rollout.size)
    # Running the target already: it needs the message (so its retained model/set is this
    # one), not the wait.
    if device.model_state and _healthy(
        ModelStatePayload.model_validate(device.model_state), rollout
    ):
        member.state = "healthy"


def _lock(db: Db, rollout_id: int) -> Rollout:
    """The rollout, its row write-locked until the transaction ends: an UPDATE locks the row on
    PostgreSQL and the database on SQLite, so what is read next is current and stays so."""
    db.execute(update(Rollout).where(Rollout.id == rollout_id).values(updated_at=utcnow()))
    rollout = db.get(Rollout, rollout_id, populate_existing=True)
    if rollout is None:
        raise RolloutNotFoundError(f"no rollout {rollout_id}")
    return rollout


def on_model_state(db: Db, device_id: str, report: ModelStatePayload) -> None:
    """A device's model/state: recorded on the rollout it names, and the device's running or
    paused rollouts moved on (healthy, or failed: paused)."""
    named = report.rollout or ""
    rollout_ids = db.scalars(
        select(RolloutDevice.rollout_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(
            RolloutDevice.device_id == device_id,
            or_(Rollout.state.in_(ACTIVE_ROLLOUT), cast(Rollout.id, String) == named),
        )
        .order_by(RolloutDevice.rollout_id)
    ).all()
    for rollout_id in rollout_ids:
        rollout = _lock(db, rollout_id)
        member = db.get(RolloutDevice, (rollout_id, device_id), populate_existing=True)
        assert member is not None
        if named == str(rollout.id):
            member.update_state, member.progress = report.state, report.progress
            member.error, member.reported_at = report.error, report.at
        if rollout.state not in ACTIVE_ROLLOUT or member.state != "notified":
            continue
        target = report.target
        if _healthy(report, rollout):
            member.state = "healthy"
        elif (
            report.state in ("rejected", "rolled_back")
            and named == str(rollout.id)
            and target is not None
            and target.version == rollout.version
        ):
            member.state = "failed"
            rollout.state = "paused"
            rollout.reason = (
                f"{device_id} {report.state.replace('_', ' ')} {rollout.model_name} "
                f"{rollout.version}: {report.error or 'no reason given'}"
            )
        _advance(db, rollout)


def pause(db: Db, rollout_id: int, by: str) -> Rollout:
    """No further stage is notified; devices already told carry on."""
    rollout = _lock(db, rollout_id)
    if rollout.state != "running":
        raise RolloutConflictError(f"rollout {rollout_id} is {rollout.state}, not running")
    rollout.state, rollout.reason = "paused", f"paused by {by}"
    return rollout


def resume(db: Db, rollout_id: int) -> Rollout:
    """Go on; devices that failed stay failed and are skipped."""
    rollout = _lock(db, rollout_id)
    if rollout.state != "paused":
        raise RolloutConflictError(f"rollout {rollout_id} is {rollout.state}, not paused")
    rollout.state, rollout.reason = "running", ""
    _advance(db, rollout)
    return rollout


def abort(db: Db, settings: Settings, rollout_id: int, by: str) -> Rollout:
    """Stop, and send every device already told the version it ran before (the device
    cancels, or switches back); one whose old version the registry lacks has its model/set
    cleared instead. Devices never told are left alone."""
    rollout = _lock(db, rollout_id)
    if rollout.state not in ACTIVE_ROLLOUT:
        raise RolloutConflictError(
            f"rollout {rollout_id} has ended ({rollout.state}); roll out the version you want"
        )
    rollout.state, rollout.reason, rollout.finished_at = "aborted", f"aborted by {by}", utcnow()
    for member in _members(db, rollout):
        if member.state == "waiting":
            continue
        old = registry.find(db, rollout.model_name, member.previous_version or "")
        member.outbox = (
            _model_set(rollout, old.version, old.sha256, registry.archive_size(settings, old))
            if old is not None
            else ""
        )
    return rollout


def owed(db: Db) -> list[Owed]:
    """What the bridge must publish, oldest rollout first, so that a device in two rollouts
    ends with the newer one's message. An aborted rollout's message to a device it never told
    needs no sending (nothing to undo) and is dropped here."""
    rows = db.execute(
        select(RolloutDevice, Rollout.state)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(RolloutDevice.outbox.is_not(None))
        .order_by(RolloutDevice.rollout_id, RolloutDevice.device_id)
    ).all()
    out: list[Owed] = []
    for member, state in rows:
        assert member.outbox is not None
        message = Owed(member.rollout_id, member.device_id, member.outbox)
        if state == "aborted" and member.notified_at is None:
            settle(db, message)
        else:
            out.append(message)
    return out


def sending(db: Db, message: Owed) -> None:
    """The bridge is about to hand `message` to the broker: from now on the device may have
    heard of the rollout."""
    db.execute(
        update(RolloutDevice)
        .where(
            RolloutDevice.rollout_id == message.rollout_id,
            RolloutDevice.device_id == message.device_id,
            RolloutDevice.notified_at.is_(None),
        )
        .values(notified_at=utcnow())
    )


def settle(db: Db, message: Owed) -> None:
    """`message` is out (or needs no sending): no longer owed, unless a newer one replaced it
    meanwhile (an abort while it was being published), which stays owed."""
    db.execute(
        update(RolloutDevice)
        .where(
            RolloutDevice.rollout_id == message.rollout_id,
            RolloutDevice.device_id == message.device_id,
            RolloutDevice.outbox == message.payload,
        )
        .values(outbox=None)
    )
