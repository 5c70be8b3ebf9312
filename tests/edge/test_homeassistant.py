"""Home Assistant discovery is wire contract too: HA users' dashboards and automations point at
the entities it creates, so its payloads are frozen in `tests/contract/ha_*_discovery.json`.

The value templates are rendered with jinja2 the way HA renders them (`value` and `value_json`,
a sandboxed environment), against payloads built with the contract's pydantic models, and the
result is judged by the rules HA's MQTT platforms apply (cited per helper below).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from edge.homeassistant import (
    EVENT_ATTRIBUTES,
    EVENT_TYPES,
    birth_topic,
    component_discovery_topic,
    device_discovery_topic,
    discovery_messages,
)
from models.contract import (
    OFFLINE,
    ONLINE,
    STATE_OFF,
    STATE_ON,
    EventPayload,
    ModelRef,
    SourceStatus,
    SpoolStatus,
    StatusPayload,
    WindowCounts,
    availability_topic,
    events_topic,
    model_state_topic,
    state_topic,
    status_topic,
)
from tests.conftest import REPO

SNAPSHOTS = REPO / "tests" / "contract"
UPDATE_ENV = "SOUNDWARDEN_UPDATE_SNAPSHOTS"
MODEL = ModelRef(name="cry-detector", version="1.1.0")
# What the daemon passes for the default cry-detector bundle: only labels with thresholds.
SNAPSHOT_ARGS: dict[str, Any] = {
    "device": "nursery",
    "prefix": "soundwarden",
    "discovery_prefix": "homeassistant",
    "labels": ["cry"],
    "model": MODEL,
    "software_version": "0.1.0",
}
# homeassistant/components/mqtt/discovery.py, TOPIC_MATCHER (applied after the prefix).
HA_TOPIC_MATCHER = re.compile(
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)
# homeassistant/core.py, VALID_ENTITY_ID (what `default_entity_id` is validated against).
HA_VALID_ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")
# homeassistant/components/mqtt/schemas.py, SHARED_OPTIONS we use at device level.
HA_SHARED_OPTIONS = ("availability_topic", "payload_available", "payload_not_available", "qos")


def _messages(**overrides: Any) -> list[tuple[str, str]]:
    args = {**SNAPSHOT_ARGS, "per_component": False, **overrides}
    return discovery_messages(**args)


def _device_payload(**overrides: Any) -> dict[str, Any]:
    [(_topic, payload)] = _messages(per_component=False, **overrides)
    parsed: dict[str, Any] = json.loads(payload)
    return parsed


def _components(**overrides: Any) -> dict[str, dict[str, Any]]:
    components: dict[str, dict[str, Any]] = _device_payload(**overrides)["components"]
    return components


def _check_snapshot(name: str, actual: Any) -> None:
    """Equal as parsed JSON; a deliberate change rewrites the file under UPDATE_ENV."""
    path = SNAPSHOTS / name
    if os.environ.get(UPDATE_ENV) == "1":
        path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    frozen = json.loads(path.read_text(encoding="utf-8"))
    assert actual == frozen, (
        f"Home Assistant discovery differs from {path.relative_to(REPO)}. HA entities, their "
        "ids and templates are a contract with users' automations. If the change is intended, "
        f"regenerate with `{UPDATE_ENV}=1 .venv/bin/python -m pytest "
        "tests/edge/test_homeassistant.py`, review the diff, and update ../shared/DESIGN.md "
        "(section MQTT) in the same commit."
    )


def test_device_discovery_is_frozen() -> None:
    [(topic, payload)] = _messages(per_component=False)
    _check_snapshot("ha_device_discovery.json", {"topic": topic, "payload": json.loads(payload)})


def test_per_component_discovery_is_frozen() -> None:
    messages = _messages(per_component=True)
    _check_snapshot(
        "ha_component_discovery.json",
        [{"topic": topic, "payload": json.loads(payload)} for topic, payload in messages],
    )


def test_device_form_is_one_message_with_what_ha_requires() -> None:
    """DEVICE_DISCOVERY_SCHEMA (homeassistant/components/mqtt/schemas.py): `device` with an
    identifier, `origin` with a name, `components`, each with a `platform` and, being entities,
    a `unique_id`."""
    messages = _messages(per_component=False, labels=["cry", "other"])
    assert [topic for topic, _ in messages] == [device_discovery_topic("nursery")]
    payload = json.loads(messages[0][1])
    assert payload["device"]["identifiers"] and payload["device"]["name"] == "nursery"
    assert payload["device"]["model"] == MODEL.name
    assert payload["device"]["manufacturer"] == "soundwarden"
    assert payload["device"]["sw_version"] == "0.1.0"
    assert payload["origin"] == {"name": "soundwarden", "sw_version": "0.1.0"}
    platforms = {key: c["platform"] for key, c in payload["components"].items()}
    assert sorted(platforms.values()) == sorted(
        ["event", "event", "binary_sensor", "binary_sensor", "sensor", "sensor", "sensor", "update"]
    )
    assert all(c["unique_id"] for c in payload["components"].values())


def test_per_component_messages_are_the_device_components_with_the_shared_options() -> None:
    """HA expands a device message into per-component configs by merging the shared options
    into each component (discovery.py, `_merge_common_device_options`) and keys both forms by
    (platform, "<node id> <object id>"): the two forms must describe the same entities."""
    labels = ["cry", "other"]
    device = _device_payload(labels=labels)
    separate = _messages(per_component=True, labels=labels)
    assert len(separate) == len(device["components"])
    device_ids = {(c["platform"], f"nursery {key}"): c for key, c in device["components"].items()}
    for topic, payload in separate:
        match = HA_TOPIC_MATCHER.fullmatch(topic.removeprefix("homeassistant/"))
        assert match, topic
        component, node_id, object_id = match.groups()
        config = json.loads(payload)
        assert "platform" not in config  # only allowed inside device messages
        expected = dict(device_ids.pop((component, f"{node_id} {object_id}")))
        del expected["platform"]
        for option in HA_SHARED_OPTIONS:
            if option in device and option not in expected:
                expected[option] = device[option]
        expected |= {"device": device["device"], "origin": device["origin"]}
        assert config == expected
        assert topic == component_discovery_topic(component, "nursery", object_id)
    assert not device_ids


def test_every_topic_is_a_contract_topic() -> None:
    """A renamed topic in models/contract.py must break discovery here, not in users' homes."""
    device, prefix, labels = "shop-2", "home/sw", ["cry", "other"]
    payload = _device_payload(device=device, prefix=prefix, labels=labels)
    assert payload["availability_topic"] == availability_topic(device, prefix)
    assert (payload["payload_available"], payload["payload_not_available"]) == (ONLINE, OFFLINE)
    expected = {
        **{f"event_{label}": events_topic(device, prefix) for label in labels},
        **{f"sound_{label}": state_topic(device, label, prefix) for label in labels},
        "audio_level": status_topic(device, prefix),
        "spool_depth": status_topic(device, prefix),
        "dropped_windows": status_topic(device, prefix),
        "model_update": model_state_topic(device, prefix),
    }
    components = payload["components"]
    assert {key: c["state_topic"] for key, c in components.items()} == expected
    contract_topics = {
        availability_topic(device, prefix),
        events_topic(device, prefix),
        status_topic(device, prefix),
        model_state_topic(device, prefix),
        *(state_topic(device, label, prefix) for label in labels),
    }
    for _topic, message in _messages(
        per_component=True, device=device, prefix=prefix, labels=labels
    ):
        config = json.loads(message)
        topics = {value for key, value in config.items() if key.endswith("_topic")}
        assert topics and topics <= contract_topics, topics - contract_topics
    for label in labels:
        sound = components[f"sound_{label}"]
        assert (sound["payload_on"], sound["payload_off"]) == (STATE_ON, STATE_OFF)
        assert sound["device_class"] == "sound"


def test_unique_ids_are_unique_and_stable() -> None:
    """Derived from device id and label only: a restart, a new model, a new software version or
    another label order must give HA the same ids, or it would duplicate the entities."""
    first = _components(labels=["cry", "other"])
    ids = [c["unique_id"] for c in first.values()]
    assert len(ids) == len(set(ids))
    later = _components(
        labels=["other", "cry"],
        model=ModelRef(name="cry-detector-xl", version="2.0.0"),
        software_version="9.9.9",
    )
    assert {k: c["unique_id"] for k, c in later.items()} == {
        k: c["unique_id"] for k, c in first.items()
    }
    assert first["event_cry"]["unique_id"] == "soundwarden:nursery:event_cry"
    # Devices and labels may both contain `_`: they must still never produce the same id.
    a = {c["unique_id"] for c in _components(device="a_event", labels=["x"]).values()}
    b = {c["unique_id"] for c in _components(device="a", labels=["event_x"]).values()}
    assert not a & b
    assert not {c["unique_id"] for c in _components(device="kitchen").values()} & set(ids)


def test_default_entity_ids_are_valid_entity_ids_of_their_platform() -> None:
    components = _components(device="shop-2", labels=["cry", "Dog_Bark"])
    for component in components.values():
        entity_id = component["default_entity_id"]
        assert HA_VALID_ENTITY_ID.match(entity_id), entity_id
        assert entity_id.split(".")[0] == component["platform"]
    assert components["event_cry"]["default_entity_id"] == "event.shop_2_cry_episode"
    assert components["sound_Dog_Bark"]["default_entity_id"] == "binary_sensor.shop_2_dog_bark"


@pytest.mark.parametrize("label", ["baby cry", "a/b", "+", "#", "", "_x", "é"])
def test_labels_that_cannot_be_topic_levels_are_refused(label: str) -> None:
    with pytest.raises(ValueError, match="label"):
        _messages(labels=["cry", label])


def test_repeated_labels_and_bad_devices_are_refused() -> None:
    with pytest.raises(ValueError, match="repeat"):
        _messages(labels=["cry", "cry"])
    with pytest.raises(ValueError, match="device"):
        _messages(device="nursery/1")


# --- templates, rendered as Home Assistant renders them -------------------------------------


def _render(template: str, payload: str) -> str:
    """HA's `Template.async_render_with_possible_json_value` (homeassistant/helpers/template):
    `value` is the payload, `value_json` its JSON when it parses, the result is stripped.
    StrictUndefined is stricter than HA, which logs a warning on undefined use: any undefined
    access here fails the test instead of warning in a user's log."""
    jinja2 = pytest.importorskip(
        "jinja2",
        reason="jinja2 is not installed here (it comes with the dev/train extras); the "
        "templates are checked where it is",
    )
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    variables: dict[str, Any] = {"value": payload}
    with contextlib.suppress(ValueError):
        variables["value_json"] = json.loads(payload)
    rendered: str = env.from_string(template).render(variables).strip()
    return rendered


def _ha_event(config: dict[str, Any], payload: str) -> tuple[str, dict[str, Any]] | None:
    """What HA's MQTT event entity makes of a message (homeassistant/components/mqtt/event.py,
    `_event_received`): an empty, `None` or `{}` rendering is ignored at DEBUG level; otherwise
    the rendering must be a JSON object whose `event_type` is one of `event_types`, or HA logs
    a warning. Returns None when ignored, else (event type, attributes)."""
    rendered = _render(config["value_template"], payload)
    if not rendered or rendered in ("None", "{}"):
        return None
    attributes = json.loads(rendered)  # HA: warning "No valid JSON event payload detected"
    assert isinstance(attributes, dict)
    assert "event_type" in attributes  # HA: warning "`event_type` missing in JSON event payload"
    event_type = str(attributes.pop("event_type"))
    assert event_type in config["event_types"]  # HA: warning "Invalid event type"
    return event_type, attributes


def _event(label: str, step: str, **changes: Any) -> str:
    event = EventPayload(
        id="6cde0f658876414596a1cafc12e9b8cf",
        type=step,
        label=label,
        score=0.998,
        max_score=0.999,
        started_at=datetime(2026, 11, 21, 8, 0, tzinfo=UTC),
        ended_at=datetime(2026, 11, 21, 8, 0, 4, tzinfo=UTC) if step == "end" else None,
        level_dbfs=-20.5,
        model=MODEL,
        device="nursery",
        **changes,
    )
    return event.model_dump_json()


def test_event_types_and_attributes_follow_the_contract() -> None:
    assert EVENT_TYPES == ("start", "update", "end")
    assert {field for _attr, field in EVENT_ATTRIBUTES} <= set(EventPayload.model_fields)
    # HA refuses these as attributes (MQTT_EVENT_ATTRIBUTES_BLOCKED in event.py).
    assert not {attr for attr, _field in EVENT_ATTRIBUTES} & {"event_type", "event_types"}
    for component in _components(labels=["cry", "other"]).values():
        if component["platform"] == "event":
            assert component["event_types"] == list(EVENT_TYPES)


@pytest.mark.parametrize("step", ["start", "update", "end"])
def test_an_own_label_event_triggers_its_step_with_the_episode_as_attributes(step: str) -> None:
    cry = _components(labels=["cry", "other"])["event_cry"]
    outcome = _ha_event(cry, _event("cry", step, clip="6cde0f65" if step == "end" else None))
    assert outcome is not None
    event_type, attributes = outcome
    assert event_type == step
    assert attributes == {
        "episode_id": "6cde0f658876414596a1cafc12e9b8cf",
        "label": "cry",
        "score": 0.998,
        "max_score": 0.999,
        "level_dbfs": -20.5,
        "started_at": "2026-11-21T08:00:00Z",
        "ended_at": "2026-11-21T08:00:04Z" if step == "end" else None,
        "clip": "6cde0f65" if step == "end" else None,
        "model": {"name": "cry-detector", "version": "1.1.0"},
    }


def test_other_labels_and_stray_payloads_are_ignored_quietly() -> None:
    """The events topic carries every label: the `cry` entity must render nothing (HA's quiet
    DEBUG path) for `other`'s events, and for payloads that are not event objects at all."""
    components = _components(labels=["cry", "other"])
    cry, other = components["event_cry"], components["event_other"]
    for step in EVENT_TYPES:
        assert _render(cry["value_template"], _event("other", step)) == ""
        assert _ha_event(cry, _event("other", step)) is None
        outcome = _ha_event(other, _event("other", step))
        assert outcome is not None and outcome[0] == step
    for stray in ["not json", "[1, 2]", "42", "null", "{}", '{"label": "dog"}']:
        assert _render(cry["value_template"], stray) == ""


def test_a_label_with_hyphens_and_case_matches_exactly() -> None:
    components = _components(labels=["Dog-bark", "dog-bark"])
    upper, lower = components["event_Dog-bark"], components["event_dog-bark"]
    assert _ha_event(upper, _event("dog-bark", "start")) is None
    outcome = _ha_event(lower, _event("dog-bark", "start"))
    assert outcome is not None and outcome[1]["label"] == "dog-bark"


def _status(level_dbfs: float | None) -> str:
    return StatusPayload(
        device="nursery",
        at=datetime(2026, 11, 21, 8, 0, tzinfo=UTC),
        uptime_s=3600.0,
        model=MODEL,
        source=SourceStatus(
            type="microphone", name="USB mic", state="running", level_dbfs=level_dbfs
        ),
        windows=WindowCounts(processed=14400, dropped=3),
        spool=SpoolStatus(depth=7, dropped=0),
        clips=None,
        cpu_percent=12.5,
        rss_mb=80.0,
    ).model_dump_json()


def test_status_sensors_read_the_heartbeat() -> None:
    components = _components()
    level, spool, dropped = (
        components["audio_level"],
        components["spool_depth"],
        components["dropped_windows"],
    )
    assert float(_render(level["value_template"], _status(-31.25))) == -31.25
    # Before the first window: HA's MQTT sensor turns the rendered "None" into an unknown state
    # (PAYLOAD_NONE in homeassistant/components/mqtt/sensor.py), not an invalid number.
    assert _render(level["value_template"], _status(None)) == "None"
    assert int(_render(spool["value_template"], _status(-31.25))) == 7
    assert int(_render(dropped["value_template"], _status(-31.25))) == 3
    attributes = json.loads(_render(level["json_attributes_template"], _status(-31.25)))
    assert attributes == {
        "type": "microphone",
        "name": "USB mic",
        "state": "running",
        "level_dbfs": -31.25,
    }
    assert level["unit_of_measurement"] == "dBFS"
    assert level["state_class"] == spool["state_class"] == "measurement"
    assert dropped["state_class"] == "total_increasing"
    assert {c["entity_category"] for c in (level, spool, dropped)} == {"diagnostic"}


def test_birth_topic_follows_the_discovery_prefix() -> None:
    assert birth_topic() == "homeassistant/status"
    assert birth_topic("ha") == "ha/status"
    assert device_discovery_topic("nursery", "ha") == "ha/device/nursery/config"
