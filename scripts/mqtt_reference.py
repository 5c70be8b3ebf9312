"""Write docs/mqtt.md, the MQTT API reference, from the wire contract itself.

    .venv/bin/python scripts/mqtt_reference.py           # rewrite docs/mqtt.md
    .venv/bin/python scripts/mqtt_reference.py --check   # exit 1 if docs/mqtt.md is stale

Topics come from the `*_topic` functions of `models/contract.py` (and Home Assistant's, in
`edge/homeassistant.py`), payloads from the contract's pydantic models: a field, its type and
its description are written once, in the code. `tests/deploy/test_docs.py` fails while
docs/mqtt.md differs from what this script writes, so whoever changes the contract re-runs it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

from edge import homeassistant  # noqa: E402
from models import contract  # noqa: E402

OUT = REPO / "docs" / "mqtt.md"
HA_EXAMPLE = REPO / "tests" / "contract" / "ha_device_discovery.json"

# What a topic function cannot say about itself: who publishes, whether the broker keeps the
# last message, and what it means where neither the function nor its payload model says.
# A new topic function stops this script until it has a row here.
TOPICS: dict[str, tuple[str, bool, str]] = {
    "events_topic": ("device", False, ""),
    "availability_topic": ("device; the broker sends its last will", True, ""),
    "state_topic": ("device", True, ""),
    "status_topic": ("device", True, ""),
    "model_set_topic": ("cloud", True, ""),
    "model_state_topic": ("device", True, ""),
    "birth_topic": ("Home Assistant", True, ""),
    "device_discovery_topic": (
        "device",
        True,
        "Home Assistant device discovery (HA 2024.11 and later), re-sent when HA says `online`.",
    ),
    "component_discovery_topic": ("device, with `homeassistant.per_component = true`", True, ""),
}


def topic_functions() -> list[Callable[..., str]]:
    found: list[Callable[..., str]] = []
    for module in (contract, homeassistant):
        for name, function in vars(module).items():
            if name.endswith("_topic") and inspect.isfunction(function):
                if function.__module__ != module.__name__:
                    continue  # imported from elsewhere, listed there
                if name not in TOPICS:
                    raise SystemExit(
                        f"{module.__name__}.{name} is a new topic: add it to TOPICS in {__file__}"
                    )
                found.append(function)
    return found


def pattern(function: Callable[..., str]) -> str:
    """The topic with its variable parts as <name>; Home Assistant's prefix as its default."""
    arguments = {
        name: parameter.default if name == "discovery_prefix" else f"<{name}>"
        for name, parameter in inspect.signature(function).parameters.items()
    }
    return function(**arguments)


def contract_models() -> list[type[BaseModel]]:
    """The contract's models in source order."""
    models = [
        value
        for value in vars(contract).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == contract.__name__
    ]
    return sorted(models, key=lambda model: inspect.getsourcelines(model)[1])


def summary(text: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join(inspect.cleandoc(text or "").split("\n\n")[0].split())


def anchor(model: type[BaseModel]) -> str:
    return f"[{model.__name__}](#{model.__name__.lower()})"


def payload_of(topic: str, models: list[type[BaseModel]]) -> type[BaseModel] | None:
    """The model whose docstring begins with this topic in backticks."""
    for model in models:
        if inspect.cleandoc(model.__doc__ or "").startswith(f"`{topic}`"):
            return model
    return None


def type_of(schema: dict[str, Any]) -> str:
    """A JSON schema property as a short type: `string (date-time)`, `ModelRef | null`..."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " \\| ".join(type_of(option) for option in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    text = str(schema.get("type", "any"))
    if text == "array":
        text = f"array of {type_of(schema.get('items', {}))}"
    if "format" in schema:
        text += f" ({schema['format']})"
    if "pattern" in schema:
        text += f", matching `{schema['pattern']}`"
    return text


def fields_table(model: type[BaseModel]) -> list[str]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    lines = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in schema["properties"].items():
        description = (model.model_fields[name].description or "").replace("|", "\\|")
        needed = "yes" if name in required else "no"
        lines.append(f"| `{name}` | {type_of(prop)} | {needed} | {description} |")
    return lines


def render() -> str:
    models = contract_models()
    nested = {
        ref
        for model in models
        for ref in model.model_json_schema().get("$defs", {})
        if ref != model.__name__
    }
    out = [
        "# MQTT API reference",
        "",
        "<!-- Generated by scripts/mqtt_reference.py from models/contract.py and "
        "edge/homeassistant.py: do not edit by hand; re-run the script. -->",
        "",
        "Every device publishes under `<prefix>/<device>/` (prefix `soundwarden` unless "
        "`mqtt.prefix` says otherwise; the device id is lowercase letters, digits, `-` and "
        "`_`). All messages use QoS 1. JSON payloads are UTF-8 objects whose times are ISO 8601 "
        "with a UTC offset; fields are never added to a payload without changing this page, "
        "and unknown fields are refused (`extra=forbid`), so a subscriber can validate "
        "strictly. The schemas are frozen by `tests/test_contract.py`.",
        "",
        "With the production broker (`deploy/mosquitto/`), a device's username is its device "
        "id and the ACL lets it publish only its own topics below and read only its own "
        "`model/set` and `homeassistant/status`.",
        "",
        "## Topics",
        "",
        "| topic | from | retained | payload | meaning |",
        "|---|---|---|---|---|",
    ]
    for function in topic_functions():
        topic = pattern(function)
        source, retained, note = TOPICS[function.__name__]
        model = payload_of(topic, models)
        meaning = summary(function.__doc__) or note
        if model is not None:
            payload = f"JSON {anchor(model)}"
            # "`topic`, QoS 1: what it is." -> "What it is."
            meaning = meaning or summary(model.__doc__).split(": ", 1)[-1].capitalize()
        elif function.__module__ == homeassistant.__name__ and "discovery" in function.__name__:
            payload = "JSON, [below](#home-assistant-discovery)"
        else:
            payload = "text"
        out.append(
            f"| `{topic}` | {source} | {'yes' if retained else 'no'} | {payload} | {meaning} |"
        )
    out += ["", "## Payloads", ""]
    for model in models:
        out += [f"### {model.__name__}", "", inspect.cleandoc(model.__doc__ or ""), ""]
        out += fields_table(model)
        if model.__name__ not in nested:
            schema = json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
            out += ["", "<details><summary>JSON schema</summary>", "", "```json", schema]
            out += ["```", "", "</details>"]
        out.append("")
    example = json.loads(HA_EXAMPLE.read_text())
    out += [
        "## Home Assistant discovery",
        "",
        inspect.cleandoc(homeassistant.__doc__ or ""),
        "",
        f"The device form for a cry detector on device `nursery` (frozen in "
        f"`{HA_EXAMPLE.relative_to(REPO)}`), on `{example['topic']}`:",
        "",
        "```json",
        json.dumps(example["payload"], indent=2),
        "```",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/mqtt.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run scripts/mqtt_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
