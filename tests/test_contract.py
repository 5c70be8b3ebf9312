"""The MQTT wire contract is frozen: integrations (Home Assistant, scripts, the cloud bridge)
must never break silently. Changing a payload means changing the snapshot here, DESIGN.md and
the MQTT reference in the same commit, on purpose."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ValidationError

from models.contract import (
    ClipMetadata,
    EventPayload,
    ModelRef,
    ModelSetPayload,
    ModelStatePayload,
    StatusPayload,
    availability_topic,
    events_topic,
    model_set_topic,
    model_state_topic,
    state_topic,
    status_topic,
)
from tests.conftest import REPO

SNAPSHOTS = REPO / "tests" / "contract"


@pytest.mark.parametrize(
    ("model", "snapshot"),
    [
        (EventPayload, "event.schema.json"),
        (StatusPayload, "status.schema.json"),
        (ClipMetadata, "clip_metadata.schema.json"),
        (ModelSetPayload, "model_set.schema.json"),
        (ModelStatePayload, "model_state.schema.json"),
    ],
)
def test_payload_schemas_are_frozen(model: type[BaseModel], snapshot: str) -> None:
    path = SNAPSHOTS / snapshot
    if os.environ.get("SOUNDWARDEN_UPDATE_SNAPSHOTS"):
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n")
    frozen = json.loads(path.read_text())
    assert model.model_json_schema() == frozen, (
        f"{model.__name__} changed: if on purpose, run with SOUNDWARDEN_UPDATE_SNAPSHOTS=1 and "
        "update DESIGN.md and the MQTT reference in the same commit"
    )


def test_topics() -> None:
    assert events_topic("nursery") == "soundwarden/nursery/events"
    assert events_topic("shop-2", prefix="home/sw") == "home/sw/shop-2/events"
    assert availability_topic("nursery") == "soundwarden/nursery/availability"
    assert state_topic("nursery", "cry") == "soundwarden/nursery/state/cry"
    assert status_topic("nursery", prefix="x") == "x/nursery/status"
    assert model_set_topic("nursery") == "soundwarden/nursery/model/set"
    assert model_state_topic("nursery") == "soundwarden/nursery/model/state"


def test_an_event_round_trips_through_json_exactly() -> None:
    event = EventPayload(
        id="6cde0f658876414596a1cafc12e9b8cf",
        type="start",
        label="cry",
        score=0.99,
        max_score=0.99,
        started_at=datetime(2026, 11, 21, 8, 0, tzinfo=UTC),
        level_dbfs=-20.5,
        model=ModelRef(name="cry-detector", version="1.1.0"),
        device="nursery",
    )
    wire = json.loads(event.model_dump_json())
    assert wire == {
        "id": "6cde0f658876414596a1cafc12e9b8cf",
        "type": "start",
        "label": "cry",
        "score": 0.99,
        "max_score": 0.99,
        "started_at": "2026-11-21T08:00:00Z",
        "ended_at": None,
        "level_dbfs": -20.5,
        "model": {"name": "cry-detector", "version": "1.1.0"},
        "device": "nursery",
        "clip": None,
    }
    assert EventPayload.model_validate(wire) == event


def test_unknown_fields_and_types_are_refused() -> None:
    with pytest.raises(ValidationError):
        EventPayload.model_validate({"id": "x", "type": "begin"})
