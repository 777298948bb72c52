"""Fail closed: a JSON-schema keyword a backend would not enforce is an error naming the keyword
and its path, checked before the backend ever sees the schema."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from plait.runtime.errors import InvalidRequestError

# Keywords that never constrain an instance.
ANNOTATIONS = frozenset(
    "title description default examples $comment deprecated readOnly writeOnly "
    "contentEncoding contentMediaType contentSchema".split()
)
# JSON Schema's own formats (2020-12); validators ignore any other name: an annotation.
STANDARD_FORMATS = frozenset(
    "date-time date time duration email idn-email hostname idn-hostname ipv4 ipv6 uri "
    "uri-reference iri iri-reference uuid uri-template json-pointer relative-json-pointer "
    "regex".split()
)
TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})

# keyword -> how its value holds subschemas: one schema, a list, or a name -> schema map
SUBSCHEMA_ONE = ("additionalProperties", "additionalItems", "contains", "not", "if", "then", "else")
SUBSCHEMA_ONE += ("propertyNames", "unevaluatedProperties", "unevaluatedItems", "items")
SUBSCHEMA_LIST = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
SUBSCHEMA_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")

# keywords whose values are instances, not schemas
_INSTANCES = frozenset({"const", "enum", "default", "examples"})

# A refusal rule: (keyword, its value, the schema holding it) -> why it cannot be enforced, or
# None. Keywords outside JSON Schema's vocabulary have no validation meaning and pass.
Refusal = Callable[[str, Any, dict[str, Any]], "str | None"]


def parse_schema(spec: str) -> dict[str, Any] | bool:
    """The schema of a ``json_schema`` field; InvalidRequestError when it is not one."""
    try:
        schema = json.loads(spec)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError("json_schema", f"is not valid JSON: {e}") from None
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequestError("json_schema", "must be a JSON object (a JSON schema)")
    return schema


def check_schema(schema: dict[str, Any] | bool, backend: str, refuse: Refusal) -> None:
    """Raises InvalidRequestError("json_schema", ...) at the first keyword ``refuse`` rejects
    or the first malformed ``type``; walks every subschema, ``$defs`` included."""
    for path, node in _subschemas(schema, "#"):
        types = node.get("type")
        for t in types if isinstance(types, list) else [types]:
            if t is not None and t not in TYPES:
                msg = f"invalid schema: type {t!r} at {path} is not a JSON Schema type"
                raise InvalidRequestError("json_schema", msg)
        for keyword, value in node.items():
            why = refuse(keyword, value, node)
            if why is not None:
                msg = f"keyword {keyword!r} at {path} cannot be enforced by the {backend} "
                raise InvalidRequestError("json_schema", msg + f"grammar backend ({why})")


def keyword_paths(node: Any, keyword: str, path: str = "#") -> list[str]:
    """The JSON-pointer paths of the schema objects that hold ``keyword``."""
    out: list[str] = []
    if isinstance(node, dict):
        if keyword in node:
            out.append(path)
        for k, v in node.items():
            out += keyword_paths(v, keyword, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += keyword_paths(v, keyword, f"{path}/{i}")
    return out


def drop_annotation_formats(node: Any) -> Any:
    """The schema without ``format`` values outside ``STANDARD_FORMATS`` (exact: no validator
    checks them), so a backend that rejects names it does not know need not refuse them."""
    if isinstance(node, list):
        return [drop_annotation_formats(v) for v in node]
    if not isinstance(node, dict):
        return node
    return {
        k: v if k in _INSTANCES else drop_annotation_formats(v)
        for k, v in node.items()
        if not (k == "format" and isinstance(v, str) and v not in STANDARD_FORMATS)
    }


def _subschemas(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for key in SUBSCHEMA_ONE:
        if isinstance(node.get(key), dict):
            yield from _subschemas(node[key], f"{path}/{key}")
    for key in SUBSCHEMA_LIST:
        if isinstance(node.get(key), list):
            for i, sub in enumerate(node[key]):
                yield from _subschemas(sub, f"{path}/{key}/{i}")
    for key in SUBSCHEMA_MAP:
        if isinstance(node.get(key), dict):
            for name, sub in node[key].items():
                yield from _subschemas(sub, f"{path}/{key}/{_escape(name)}")


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def node_types(node: dict[str, Any]) -> set[str]:
    """The JSON types a schema object's ``type`` names (empty: it does not say)."""
    t = node.get("type")
    return set(t if isinstance(t, list) else [t]) & TYPES
