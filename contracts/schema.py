"""The event contract as documents, generated from the models: the models are the one source.

- ``event_json_schema(E)``: the JSON Schema of a public event's body (serialisation
  mode: what is on the wire), with ``$id`` and ``x-schema-version``;
- ``asyncapi_document(namespace)``: the AsyncAPI 3.0 document of the public events,
  made by FastStream from a documentation-only ``RabbitBroker`` (it never connects);
- ``breaking_changes(old, new)``: what a consumer of ``old`` would trip over in ``new``;
- ``contracts/published/<Type>.v<N>.json``: the frozen schema of each published
  version. Within a version only additive changes (a new optional field, a new
  description) are allowed; the generator records those and refuses the rest.

Regenerate after changing a model (from the repository root)::

    python -m contracts.schema            # writes docs/ and contracts/published/
    python -m contracts.schema --check    # exit 1 if anything committed is stale

Output is deterministic (sorted keys, no timestamps), so "committed == generated"
can be a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange
from faststream.specification import AsyncAPI
from pydantic.json_schema import models_json_schema

from contracts.envelope import CONTENT_TYPE, SCHEMA_VERSION_HEADER, Message
from contracts.events import PUBLIC_EVENTS

DEFAULT_NAMESPACE = "checkout"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.0.0"
CONTRACT_VERSION = "1.0.0"  # of the document; each event carries its own schema version
GENERATE_COMMAND = "python -m contracts.schema"

PACKAGE_DIR = Path(__file__).resolve().parent
PUBLISHED_DIR = PACKAGE_DIR / "published"
DEFAULT_DOCS_DIR = PACKAGE_DIR.parent / "docs"
ASYNCAPI_FILES = ("asyncapi.json", "asyncapi.yaml")
SCHEMAS_SUBDIR = "schemas"


# -- JSON Schema per event ---------------------------------------------------------


def schema_file_name(event: type[Message], version: int | None = None) -> str:
    """``OrderPaid.v1.json``: the file of an event's schema at a version (default: current)."""
    return f"{event.message_type}.v{event.schema_version if version is None else version}.json"


def event_json_schema(event: type[Message]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of the event's body as published, with its version."""
    body = event.model_json_schema(mode="serialization")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:checkout:event:{event.message_type}:v{event.schema_version}",
        **body,
        "x-message-type": event.message_type,
        "x-routing-key": event.routing_key,
        "x-schema-version": event.schema_version,
    }


def render_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# Multi-line strings as literal blocks, so descriptions read as written. (A subclass
# made with `type`, so the shared SafeDumper is untouched whether or not stubs exist.)
_Dumper: Any = type("_Dumper", (yaml.SafeDumper,), {})


def _represent_str(dumper: Any, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render_yaml(data: Any) -> str:
    return str(
        yaml.dump(
            data,
            Dumper=_Dumper,
            sort_keys=True,
            allow_unicode=True,
            default_flow_style=False,
            width=100,
        )
    )


def _paragraphs(text: str) -> str:
    """Hard-wrapped source text as one line per paragraph (documents wrap themselves)."""
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


# -- AsyncAPI ------------------------------------------------------------------------

_INFO = """\
Public events of the checkout system, for downstream teams. The JSON bodies are
generated from the pydantic models in `contracts/events.py`.

**Exchange.** One durable topic exchange, `{{namespace}}.orders`. The prefix is the
deployment's namespace (setting `CHECKOUT_NAMESPACE`, default `checkout`); this
document shows `{exchange}`. Bind your own durable queue with the routing key of
each event you want (or `order.*` for all of them); nothing else is needed.

**Envelope** (AMQP properties on every message): `message_id` (UUID, unique per
event: the de-duplication key), `correlation_id` (the checkout_id; for a cancellation's
events the cancellation_id), `type` (the event name, e.g. `OrderPaid`), `content_type`
`application/json`, `timestamp`, delivery mode 2 (persistent), and the header
`x-schema-version` (integer version of the body). These are AMQP message properties,
not application headers: each message's `correlationId` points at the body field that
carries the same value, and `x-amqp-properties` describes them all.

**Delivery** is at-least-once: de-duplicate by `message_id`. There is no ordering
across checkouts.

**Versioning.** Within a schema version only additive changes happen (a new optional
field). A breaking change (a field removed, renamed, retyped or made required) raises
`x-schema-version`; park or dead-letter a version you do not understand. JSON Schemas
per version: `docs/schemas/<Type>.v<N>.json`; this document is served by the API at
`GET /asyncapi.json` (and `/asyncapi.yaml`). Guide: `docs/downstream.md`.
"""

_MESSAGE = """\
AMQP properties: `message_id` = UUID, unique per event (de-duplicate by it);
`correlation_id` = the {correlation}; `type` = `{type}`; `content_type` =
`application/json`; `timestamp`; delivery mode 2 (persistent). Header
`x-schema-version` = {version}. Routing key `{routing_key}` on `{exchange}`.
"""


def _orders_exchange(namespace: str) -> str:
    return f"{namespace}.orders"


def _documentation_broker(namespace: str, events: Sequence[type[Message]]) -> RabbitBroker:
    """A broker that only describes: it has publishers and is never connected."""
    broker = RabbitBroker(
        specification_url="amqp://127.0.0.1:5672/",
        description=(
            "The checkout system's RabbitMQ (local development address; ask the checkout "
            "team for other environments). Virtual host `/`."
        ),
    )
    exchange = RabbitExchange(_orders_exchange(namespace), type=ExchangeType.TOPIC, durable=True)
    for event in events:
        broker.publisher(
            exchange=exchange,
            routing_key=event.routing_key,
            title=event.message_type,
            description=(event.__doc__ or "").strip(),
            schema=event,
            persist=True,
            mandatory=True,
            message_type=event.message_type,
            content_type=CONTENT_TYPE,
            headers={SCHEMA_VERSION_HEADER: event.schema_version},
        )
    return broker


def _version_headers(event: type[Message]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            SCHEMA_VERSION_HEADER: {
                "type": "integer",
                "const": event.schema_version,
                "description": "Version of the body's schema; raised on a breaking change.",
            }
        },
        "required": [SCHEMA_VERSION_HEADER],
    }


def _correlation_field(event: type[Message]) -> str | None:
    """The body field whose value the AMQP `correlation_id` carries, if the body has it."""
    field = getattr(event, "correlation_field", None)
    return field if isinstance(field, str) and field in event.model_fields else None


def _amqp_properties(event: type[Message], correlation: str | None) -> dict[str, Any]:
    """The AMQP message properties of `event`, as a schema (an `x-` extension).

    AsyncAPI has no place for them: message `headers` are application headers and
    "MUST NOT define the protocol headers", a runtime expression reaches only
    `$message.header` or `$message.payload`, and the AMQP 0-9-1 message binding
    (0.3.0) carries only `messageType` (the `type` property) and `contentEncoding`.
    """
    same = f"the body's `{correlation}`" if correlation else "the saga the event belongs to"
    return {
        "type": "object",
        "properties": {
            "message_id": {
                "type": "string",
                "format": "uuid",
                "description": "Unique per event: the de-duplication key.",
            },
            "correlation_id": {
                "type": "string",
                "format": "uuid",
                "description": f"The same value as {same}.",
            },
            "type": {"type": "string", "const": event.message_type},
            "content_type": {"type": "string", "const": CONTENT_TYPE},
            "delivery_mode": {"type": "integer", "const": 2, "description": "Persistent."},
            "timestamp": {"type": "integer", "description": "Seconds since the epoch."},
        },
        "required": [
            "message_id",
            "correlation_id",
            "type",
            "content_type",
            "delivery_mode",
            "timestamp",
        ],
    }


def asyncapi_document(
    namespace: str = DEFAULT_NAMESPACE, events: Sequence[type[Message]] = PUBLIC_EVENTS
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the public events, for one namespace.

    FastStream builds servers, channels (with the AMQP exchange binding) and
    operations; the payloads are then replaced by the serialisation-mode schemas
    (e.g. `amount` is a string on the wire) and each message gets its name, content
    type, `x-schema-version` header and AMQP message binding, which FastStream's
    generator does not emit.
    """
    exchange = _orders_exchange(namespace)
    spec = AsyncAPI(
        _documentation_broker(namespace, events),
        title="Checkout events",
        version=CONTRACT_VERSION,
        description=_paragraphs(_INFO.format(exchange=exchange)),
        schema_version=ASYNCAPI_VERSION,
    ).to_specification()
    document: dict[str, Any] = spec.to_jsonable()

    _, defs = models_json_schema(
        [(event, "serialization") for event in events],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    for event in events:
        schemas[event.message_type]["x-schema-version"] = event.schema_version
    components = document.setdefault("components", {})
    components["schemas"] = schemas

    by_type = {event.message_type: event for event in events}
    for message in components.get("messages", {}).values():
        ref = message["payload"]["$ref"]
        event = by_type[ref.rsplit("/", 1)[-1]]
        correlation = _correlation_field(event)
        message.update(
            name=event.message_type,
            contentType=CONTENT_TYPE,
            description=_paragraphs(
                _MESSAGE.format(
                    type=event.message_type,
                    correlation=correlation or "id of the saga the event belongs to",
                    version=event.schema_version,
                    routing_key=event.routing_key,
                    exchange=exchange,
                )
            ),
            headers=_version_headers(event),
            bindings={"amqp": {"messageType": event.message_type, "bindingVersion": "0.3.0"}},
        )
        message["x-amqp-properties"] = _amqp_properties(event, correlation)
        # The correlation id travels as the AMQP property `correlation_id`, which no
        # runtime expression can reach (see `_amqp_properties`); FastStream's default,
        # `$message.header#/correlation_id`, names an application header that is never
        # sent. The body carries the same value, so the expression points there.
        if correlation is None:
            message.pop("correlationId", None)
        else:
            message["correlationId"] = {
                "location": f"$message.payload#/{correlation}",
                "description": (
                    f"The {correlation}; the AMQP property `correlation_id` carries the same value."
                ),
            }
    # A round trip through JSON makes the result plain data with sorted keys.
    result: dict[str, Any] = json.loads(render_json(document))
    return result


# -- Breaking changes ------------------------------------------------------------------

_ANNOTATIONS = frozenset(
    {"title", "description", "examples", "default", "$comment", "deprecated", "$id", "$schema"}
)


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow local `$ref`s (``#/$defs/X``, ``#/components/schemas/X``); siblings win."""
    seen: set[str] = set()
    while "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/") or ref in seen:
            return schema  # foreign or recursive: compared as written
        seen.add(ref)
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _normalise(schema: Any, root: Mapping[str, Any], depth: int = 0) -> Any:
    """The schema with refs inlined and annotations dropped: what types a value."""
    if depth > 32:
        return schema
    if isinstance(schema, Mapping):
        resolved = _resolve(schema, root)
        return {
            key: _normalise(value, root, depth + 1)
            for key, value in resolved.items()
            if key not in _ANNOTATIONS and not key.startswith("x-") and key != "$defs"
        }
    if isinstance(schema, list):
        return [_normalise(item, root, depth + 1) for item in schema]
    return schema


def _describe(schema: Any) -> str:
    if not isinstance(schema, Mapping):
        return json.dumps(schema)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_describe(s) for s in schema[key])
    if "type" in schema:
        kind = schema["type"]
        text = "|".join(kind) if isinstance(kind, list) else str(kind)
        if "format" in schema:
            text += f" ({schema['format']})"
        if "items" in schema:
            text += f" of {_describe(schema['items'])}"
        rest = {k: v for k, v in schema.items() if k not in ("type", "format", "items")}
        return text + (f" {json.dumps(rest, sort_keys=True)}" if rest else "")
    return json.dumps(schema, sort_keys=True)


def _is_record(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "object" and isinstance(schema.get("properties"), Mapping)


@dataclass(frozen=True)
class _Side:
    schema: Mapping[str, Any]
    root: Mapping[str, Any]

    def resolved(self) -> Mapping[str, Any]:
        return _resolve(self.schema, self.root)

    def at(self, sub: Mapping[str, Any]) -> _Side:
        return _Side(sub, self.root)


def _compare(old: _Side, new: _Side, path: str, problems: list[str]) -> None:
    old_schema, new_schema = old.resolved(), new.resolved()
    if _is_record(old_schema) and _is_record(new_schema):
        old_props, new_props = old_schema["properties"], new_schema["properties"]
        old_required = set(old_schema.get("required", ()))
        new_required = set(new_schema.get("required", ()))
        for name, old_field in old_props.items():
            field = f"{path}{name}"
            if name not in new_props:
                problems.append(f"field '{field}' was removed (or renamed)")
                continue
            _compare(old.at(old_field), new.at(new_props[name]), f"{field}.", problems)
            if name in new_required and name not in old_required:
                problems.append(f"field '{field}' became required")
            elif name in old_required and name not in new_required:
                problems.append(f"field '{field}' is no longer required")
        for name in new_props:
            if name not in old_props and name in new_required:
                problems.append(f"new field '{path}{name}' is required (add it as optional)")
        return
    if old_schema.get("type") == "array" and new_schema.get("type") == "array":
        old_items, new_items = old_schema.get("items", {}), new_schema.get("items", {})
        old_rest = {k: v for k, v in old_schema.items() if k != "items"}
        new_rest = {k: v for k, v in new_schema.items() if k != "items"}
        if _normalise(old_rest, old.root) == _normalise(new_rest, new.root):
            items = f"{path.rstrip('.')}[]."
            _compare(old.at(old_items), new.at(new_items), items, problems)
            return
    old_type, new_type = _normalise(old_schema, old.root), _normalise(new_schema, new.root)
    if old_type != new_type:
        where = path.rstrip(".") or "(the body)"
        problems.append(
            f"field '{where}' changed type: {_describe(old_type)} -> {_describe(new_type)}"
        )


def breaking_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """How `new` breaks a consumer written against `old` (two JSON Schemas); [] if it doesn't.

    Breaking: a field removed or renamed, retyped (type, format, enum, nested shape),
    made required, made optional, or a new required field. Allowed: a new optional
    field, changed titles, descriptions or examples.
    """
    problems: list[str] = []
    _compare(_Side(old, old), _Side(new, new), "", problems)
    return problems


# -- Published versions -----------------------------------------------------------------


def load_published(directory: Path = PUBLISHED_DIR) -> dict[str, dict[str, Any]]:
    """The frozen schemas, by file name (``OrderPaid.v1.json``)."""
    if not directory.is_dir():
        return {}
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob("*.json"))
    }


def _published_versions(event: type[Message], published: Iterable[str]) -> list[int]:
    prefix = f"{event.message_type}.v"
    versions = []
    for name in published:
        number = name.removeprefix(prefix).removesuffix(".json")
        if name.startswith(prefix) and number.isdigit():
            versions.append(int(number))
    return sorted(versions)


@dataclass(frozen=True)
class ContractProblem:
    """What is wrong with one event's version: `breaking`, `unpublished` or `lowered`."""

    kind: Literal["breaking", "unpublished", "lowered"]
    event: str
    message: str

    def __str__(self) -> str:
        return self.message


def check_published(
    events: Iterable[type[Message]], published: Mapping[str, Mapping[str, Any]]
) -> list[ContractProblem]:
    """One problem per event whose current schema breaks its published version.

    Also reported: a version with no published file yet (`unpublished`: the generator
    publishes it), and a version lower than one already published (`lowered`).
    """
    problems: list[ContractProblem] = []
    for event in events:
        name, version = event.message_type, event.schema_version
        file = f"contracts/published/{schema_file_name(event)}"
        newest = max(_published_versions(event, published), default=0)
        if newest > version:
            problems.append(
                ContractProblem(
                    "lowered",
                    name,
                    f"{name}.schema_version is {version} but version {newest} is already "
                    f"published: versions only go up.",
                )
            )
            continue
        frozen = published.get(schema_file_name(event))
        if frozen is None:
            problems.append(
                ContractProblem(
                    "unpublished",
                    name,
                    f"{name} v{version} is not published: no {file}. Run "
                    f"`{GENERATE_COMMAND}` to freeze it (and generate docs/), then commit both.",
                )
            )
            continue
        changes = breaking_changes(frozen, event_json_schema(event))
        if changes:
            problems.append(
                ContractProblem(
                    "breaking",
                    name,
                    f"{name} changed incompatibly with its published version {version} "
                    f"({file}): {'; '.join(changes)}. Either undo the change, or raise "
                    f"{name}.schema_version to {version + 1} and run `{GENERATE_COMMAND}` "
                    f"to publish {schema_file_name(event, version + 1)} (v{version} stays).",
                )
            )
    return problems


# -- Generation ----------------------------------------------------------------------------


def generate(
    published: Mapping[str, Mapping[str, Any]],
    events: Sequence[type[Message]] = PUBLIC_EVENTS,
) -> tuple[dict[str, str], dict[str, str]]:
    """(docs files, published files): relative path -> content, all generated in memory.

    The published files are the given ones with each event's current version
    (re)recorded; docs/schemas holds every published version.
    """
    frozen = {name: render_json(schema) for name, schema in published.items()}
    for event in events:
        frozen[schema_file_name(event)] = render_json(event_json_schema(event))
    document = asyncapi_document(DEFAULT_NAMESPACE, events)
    docs = {
        "asyncapi.json": render_json(document),
        "asyncapi.yaml": render_yaml(document),
    }
    for name, content in frozen.items():
        docs[f"{SCHEMAS_SUBDIR}/{name}"] = content
    return dict(sorted(docs.items())), dict(sorted(frozen.items()))


Events = Sequence[type[Message]]


def _generated_files(docs_dir: Path, published_dir: Path, events: Events) -> dict[Path, str]:
    docs, frozen = generate(load_published(published_dir), events)
    files = {docs_dir / name: content for name, content in docs.items()}
    files.update({published_dir / name: content for name, content in frozen.items()})
    return files


def _extra_files(docs_dir: Path, expected: Iterable[Path]) -> list[Path]:
    schemas = docs_dir / SCHEMAS_SUBDIR
    present = set(schemas.glob("*.json")) if schemas.is_dir() else set()
    return sorted(present - set(expected))


def stale_files(
    docs_dir: Path = DEFAULT_DOCS_DIR,
    published_dir: Path = PUBLISHED_DIR,
    events: Events = PUBLIC_EVENTS,
) -> list[str]:
    """The committed files that differ from what the models generate (or should not exist)."""
    files = _generated_files(docs_dir, published_dir, events)
    stale = [
        str(path)
        for path, content in files.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != content
    ]
    stale += [f"{path} (no longer generated)" for path in _extra_files(docs_dir, files)]
    return stale


def write(
    docs_dir: Path = DEFAULT_DOCS_DIR,
    published_dir: Path = PUBLISHED_DIR,
    events: Events = PUBLIC_EVENTS,
) -> list[Path]:
    """Write the documents; return the files that changed.

    Publishes each event's current version: a new version gets its frozen file, an
    additive change within a version is recorded in it. Anything else (a breaking
    change, a lowered version) raises `ContractError` and nothing is written.
    """
    problems = check_published(events, load_published(published_dir))
    refused = [p.message for p in problems if p.kind != "unpublished"]
    if refused:
        raise ContractError(refused)
    files = _generated_files(docs_dir, published_dir, events)
    changed = []
    for path, content in files.items():
        if path.is_file() and path.read_text(encoding="utf-8") == content:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        changed.append(path)
    for path in _extra_files(docs_dir, files):
        path.unlink()
        changed.append(path)
    return changed


class ContractError(Exception):
    """The models break a published version; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=GENERATE_COMMAND,
        description="Generate docs/asyncapi.*, docs/schemas/ and contracts/published/ "
        "from the models in contracts/.",
    )
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS_DIR, help="docs directory")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check_published(PUBLIC_EVENTS, load_published())
        stale = stale_files(args.docs)
        for line in [p.message for p in problems] + [f"stale: {s}" for s in stale]:
            print(line, file=sys.stderr)
        if stale:
            print(f"regenerate with `{GENERATE_COMMAND}`", file=sys.stderr)
        return 1 if problems or stale else 0
    try:
        changed = write(args.docs)
    except ContractError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    for path in changed:
        print(f"wrote {path}")
    if not changed:
        print("up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
