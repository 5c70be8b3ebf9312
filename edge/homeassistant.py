"""Home Assistant MQTT discovery: the retained messages that make a device appear in HA.

The daemon is to publish what `discovery_messages` returns, retained, on connect and again whenever
Home Assistant's birth message (`birth_topic`, payload `online`) arrives, so HA picks up the
device after its own restart even on a broker that lost its retained messages. Every entity
reads one of the wire-contract topics of `models.contract`; this module only describes them.
Nothing here talks to a broker, so the payloads can be frozen by snapshot tests
(`tests/contract/ha_*_discovery.json`) like the rest of the wire contract.

Two forms, chosen by `homeassistant.per_component` in the configuration:

* device discovery (HA 2024.11 and later): one message on
  `<discovery_prefix>/device/<device>/config` holding `device`, `origin`, the shared
  availability and a `components` mapping. HA's `DEVICE_DISCOVERY_SCHEMA`
  (`homeassistant/components/mqtt/schemas.py`) requires `device`, `origin` and `components`,
  a `platform` in every component and a `unique_id` in every entity component.
* per-component discovery (older HA): one message per entity on
  `<discovery_prefix>/<platform>/<device>/<key>/config`, each repeating device, origin and
  availability, without `platform` (which HA allows only inside device messages).

HA maps both forms onto the same discovery id, `(platform, "<device> <key>")`
(`homeassistant/components/mqtt/discovery.py`: the device topic's object id becomes every
component's node id, the component key its object id), and the unique ids are the same, so the
entities are the same whichever form put them there. Keys are written in full, not abbreviated:
HA expands abbreviations before validating either form (`_replace_all_abbreviations`), so
abbreviating would only save bytes on a Pi that has plenty, at the cost of readable snapshots.

Entities, all unavailable while `<prefix>/<device>/availability` says `offline`:

* per label, an `event` entity on the shared events topic, event types `start`/`update`/`end`
  (see `_event_template` for why one entity per label, and how it ignores the other labels);
* per label, a `binary_sensor` (device class `sound`) on the retained `ON`/`OFF` state topic;
* diagnostic `sensor`s read from the retained status heartbeat: audio level (dBFS), spool depth
  and dropped windows;
* an `update` entity for the model, read from the retained `model/state`.

Identity: every `unique_id` is `soundwarden:<device>:<key>`, built only from the device id and
the entity's key (kind + label), never from names, the model or the software version, so a
restart, a model update or a renamed entity never makes HA create a duplicate. The colon cannot
occur in a device id or a label, so two devices can never produce the same id. Entity ids are
suggested with `default_entity_id` (`<platform>.<device>_<...>`), which replaced the `object_id`
option deprecated in HA 2025.10; HA validates it as a full entity id (domain and object id),
and older HA versions ignore unknown discovery keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from models.contract import (
    OFFLINE,
    ONLINE,
    STATE_OFF,
    STATE_ON,
    EventPayload,
    ModelRef,
    availability_topic,
    events_topic,
    model_state_topic,
    state_topic,
    status_topic,
)

JsonDict = dict[str, Any]

ORIGIN_NAME = "soundwarden"
MANUFACTURER = "soundwarden"
BIRTH_ONLINE = "online"
"""What Home Assistant publishes on `birth_topic` when it (re)starts; rediscover then."""

EVENT_TYPES: tuple[str, ...] = tuple(get_args(EventPayload.model_fields["type"].annotation))
"""The event entity's event types are exactly the contract's episode steps."""

EVENT_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("episode_id", "id"),
    ("label", "label"),
    ("score", "score"),
    ("max_score", "max_score"),
    ("level_dbfs", "level_dbfs"),
    ("started_at", "started_at"),
    ("ended_at", "ended_at"),
    ("clip", "clip"),
    ("model", "model"),
)
"""(HA event attribute, `EventPayload` field) pairs passed along with every event.

`id` is renamed because HA shows attributes next to the entity's own ids; `event_type` and
`event_types` must not appear here, HA blocks them as attributes
(`MQTT_EVENT_ATTRIBUTES_BLOCKED` in `homeassistant/components/mqtt/event.py`).
"""

# HA's discovery topic matcher allows only these in node and object ids (discovery.py,
# TOPIC_MATCHER); labels also become MQTT topic levels, where `+`, `#` and `/` would break.
_TOPIC_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def birth_topic(discovery_prefix: str = "homeassistant") -> str:
    """Where Home Assistant announces itself (`online`) after a start.

    HA's default birth topic is `homeassistant/status`; it is configurable in HA separately from
    the discovery prefix, but follows it in every standard setup, so it is derived from it here.
    """
    return f"{discovery_prefix}/status"


def device_discovery_topic(device: str, discovery_prefix: str = "homeassistant") -> str:
    return f"{discovery_prefix}/device/{device}/config"


def component_discovery_topic(
    platform: str, device: str, key: str, discovery_prefix: str = "homeassistant"
) -> str:
    """Per-component form: the device id as node id keeps all of a device's topics together."""
    return f"{discovery_prefix}/{platform}/{device}/{key}/config"


@dataclass(frozen=True)
class _Entity:
    """One HA entity: `key` names it within the device (component id / object id)."""

    platform: str
    key: str
    config: JsonDict


def discovery_messages(
    *,
    device: str,
    prefix: str,
    discovery_prefix: str,
    per_component: bool,
    labels: Sequence[str],
    model: ModelRef,
    software_version: str,
) -> list[tuple[str, str]]:
    """(topic, JSON payload) pairs to publish retained (QoS 1) so HA discovers the device.

    `labels` are the labels that raise events (those with thresholds), in a stable order.
    `per_component=False` gives exactly one device-discovery message; True gives one message
    per entity. Raises ValueError for a device id or label that cannot be part of a topic.
    """
    entities = _entities(device, prefix, labels)
    device_block = _device_block(device, model, software_version)
    origin = _origin(software_version)
    availability = _availability(device, prefix)
    if not per_component:
        payload: JsonDict = {
            "device": device_block,
            "origin": origin,
            **availability,
            "components": {e.key: {"platform": e.platform, **e.config} for e in entities},
        }
        return [(device_discovery_topic(device, discovery_prefix), _dumps(payload))]
    return [
        (
            component_discovery_topic(e.platform, device, e.key, discovery_prefix),
            _dumps({**e.config, **availability, "device": device_block, "origin": origin}),
        )
        for e in entities
    ]


def unique_id(device: str, key: str) -> str:
    """Stable across restarts and model updates: nothing but the device id and the entity key."""
    return f"soundwarden:{device}:{key}"


def _entities(device: str, prefix: str, labels: Sequence[str]) -> list[_Entity]:
    return [
        *_label_entities(device, prefix, labels),
        *_status_entities(device, prefix),
        _update_entity(device, prefix),
    ]


def _update_entity(device: str, prefix: str) -> _Entity:
    """The model as an `update` entity, read straight from the retained `model/state` JSON,
    whose `installed_version`, `latest_version`, `title`, `in_progress`, `update_percentage`
    and `release_summary` are the keys HA's MQTT update entity takes from a JSON state
    (`homeassistant/components/mqtt/update.py`). No command topic: the cloud's rollout decides
    what a device installs, so HA shows progress and outcome but offers no install button."""
    key = "model_update"
    return _Entity(
        "update",
        key,
        {
            "name": "Model",
            "unique_id": unique_id(device, key),
            "default_entity_id": _entity_id("update", device, "model"),
            "state_topic": model_state_topic(device, prefix),
            "qos": 1,
            "entity_category": "diagnostic",
        },
    )


def _label_entities(device: str, prefix: str, labels: Sequence[str]) -> list[_Entity]:
    """Keys are `<kind>_<label>`; the device-wide keys start with none of the kinds, so no label
    can make two entities of one device share a key."""
    _check_id("device", device)
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels repeat: {list(labels)}")
    entities: list[_Entity] = []
    for label in labels:
        _check_id("label", label)
        entities += [_event_entity(device, prefix, label), _sound_entity(device, prefix, label)]
    return entities


def _event_entity(device: str, prefix: str, label: str) -> _Entity:
    key = f"event_{label}"
    return _Entity(
        "event",
        key,
        {
            "name": f"{_title(label)} episode",
            "unique_id": unique_id(device, key),
            "default_entity_id": _entity_id("event", device, label, "episode"),
            "state_topic": events_topic(device, prefix),
            "qos": 1,
            "event_types": list(EVENT_TYPES),
            "value_template": _event_template(label),
        },
    )


def _event_template(label: str) -> str:
    """Jinja for one label's event entity: JSON with `event_type` for its own label, else "".

    Why one event entity per label, all subscribed to the one events topic, instead of a single
    entity per device with event types `<label>_<type>`: HA's MQTT event entity
    (`homeassistant/components/mqtt/event.py`, `_event_received`) renders the value template
    and then

    * ignores, logging at DEBUG only, a rendering that is empty, `None` or `{}`;
    * warns when the JSON has no `event_type`, when it is not JSON, and when `event_type` is not
      one of the entity's `event_types` ("Invalid event type ...").

    So rendering "" for other labels' messages is the documented-quiet way to skip them, and
    the per-label entity never warns on a well-formed event. A device-wide entity would have to
    list every `<label>_<type>` up front, warn for a label it was not told about, and change its
    `event_types` (a reconfiguration of an existing entity that automations point at) whenever
    a model update changes the labels; per label, a new label is simply a new entity, and the
    event types stay the contract's three steps. It also pairs each event entity with its
    label's binary sensor, which is how automations think about it ("cry started").

    The template guards with `is mapping` and `.get`, which neither fail nor trigger HA's
    undefined-variable warnings on a payload that is not an event object; retained messages
    never reach it (HA ignores replayed retained events, and events are not retained).
    """
    # Label and names are all `_TOPIC_SAFE` or fixed identifiers, so plain single-quoted Jinja
    # string literals need no escaping.
    attributes = ", ".join(
        f"'{attr}': value_json.get('{field}')" for attr, field in EVENT_ATTRIBUTES
    )
    return (
        f"{{% if value_json is mapping and value_json.get('label') == '{label}' %}}"
        f"{{{{ {{'event_type': value_json.get('type'), {attributes}}} | tojson }}}}"
        "{% endif %}"
    )


def _sound_entity(device: str, prefix: str, label: str) -> _Entity:
    key = f"sound_{label}"
    return _Entity(
        "binary_sensor",
        key,
        {
            "name": _title(label),
            "unique_id": unique_id(device, key),
            "default_entity_id": _entity_id("binary_sensor", device, label),
            "device_class": "sound",
            "state_topic": state_topic(device, label, prefix),
            "payload_on": STATE_ON,
            "payload_off": STATE_OFF,
            "qos": 1,
        },
    )


def _status_entities(device: str, prefix: str) -> list[_Entity]:
    """Diagnostics from the retained heartbeat.

    A null `source.level_dbfs` (no window analysed yet) renders as `None`, which HA's MQTT
    sensor turns into an unknown state rather than an invalid number (`PAYLOAD_NONE` in
    `homeassistant/components/mqtt/sensor.py`). No device class on the level: HA's
    `sound_pressure` class means dB SPL/dBA, and dB full scale is not that. Dropped windows
    count since the daemon started, so a restart resets them: `total_increasing` is the state
    class HA treats a decrease in as a reset.
    """
    status = status_topic(device, prefix)
    common: JsonDict = {"state_topic": status, "qos": 1, "entity_category": "diagnostic"}
    specs: list[tuple[str, str, JsonDict]] = [
        (
            "audio_level",
            "Audio level",
            {
                "value_template": "{{ value_json.source.level_dbfs }}",
                "unit_of_measurement": "dBFS",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "json_attributes_topic": status,
                "json_attributes_template": "{{ value_json.source | tojson }}",
            },
        ),
        (
            "spool_depth",
            "Spool depth",
            {"value_template": "{{ value_json.spool.depth }}", "state_class": "measurement"},
        ),
        (
            "dropped_windows",
            "Dropped windows",
            {
                "value_template": "{{ value_json.windows.dropped }}",
                "state_class": "total_increasing",
            },
        ),
    ]
    return [
        _Entity(
            "sensor",
            key,
            {
                "name": name,
                "unique_id": unique_id(device, key),
                "default_entity_id": _entity_id("sensor", device, key),
                **common,
                **extra,
            },
        )
        for key, name, extra in specs
    ]


def _device_block(device: str, model: ModelRef, software_version: str) -> JsonDict:
    """The HA device: the model is the bundle's name, its version shows in the events."""
    return {
        "identifiers": [f"soundwarden:{device}"],
        "name": device,
        "manufacturer": MANUFACTURER,
        "model": model.name,
        "sw_version": software_version,
    }


def _origin(software_version: str) -> JsonDict:
    """Who published the discovery; HA names it (and its version) when it logs the discovery."""
    return {"name": ORIGIN_NAME, "sw_version": software_version}


def _availability(device: str, prefix: str) -> JsonDict:
    """The daemon's retained LWT topic; shared by every entity (a device-level option in the
    device form, repeated per entity in the per-component form)."""
    return {
        "availability_topic": availability_topic(device, prefix),
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
    }


def _entity_id(platform: str, *parts: str) -> str:
    """`<platform>.<slug>`: HA validates `default_entity_id` as a full entity id, lowercase
    letters, digits and single underscores, none leading or trailing."""
    slug = re.sub(r"[^a-z0-9]+", "_", "_".join(parts).lower()).strip("_")
    return f"{platform}.{slug}"


def _title(label: str) -> str:
    words = re.sub(r"[_-]+", " ", label).strip()
    return words[:1].upper() + words[1:]


def _check_id(what: str, value: str) -> None:
    if not _TOPIC_SAFE.match(value):
        raise ValueError(
            f"{what} {value!r} cannot name an MQTT topic level or a Home Assistant discovery "
            "id: use letters, digits, _ and -, starting with a letter or digit"
        )


def _dumps(payload: JsonDict) -> str:
    return json.dumps(payload, separators=(",", ":"))
