"""Objects closed to unlisted properties, as xgrammar's strict mode and OpenAI's strict
structured outputs treat them: a model left free to add properties to a schema that lists its
own rambles on with invented keys until its token limit (seen with llguidance on the
template-heavy JSON benchmark), though every such output is valid.

Closing only narrows what a schema admits, so outputs stay valid, except under a negation
(``not``, ``if``), where narrowing the inner schema widens the outer one: a schema with either
keyword anywhere is left as it is. ``allOf`` / ``dependentSchemas`` branches (and nodes beside
one, or beside a ``$ref``) stay open, since closing them separately would reject properties another branch adds.
"""

from __future__ import annotations

from typing import Any

from plait.constrained.schema_check import (
    SUBSCHEMA_LIST,
    SUBSCHEMA_MAP,
    SUBSCHEMA_ONE,
    keyword_paths,
)

# An object node with any of these already says what unlisted properties may be.
_OPEN_KEYWORDS = frozenset({"additionalProperties", "patternProperties", "unevaluatedProperties"})
# Conjunctions: their branches apply together to one instance, so each stays open.
_CONJUNCTIONS = frozenset({"allOf", "dependentSchemas"})


def close_objects(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object node that lists
    ``properties`` and says nothing about other properties (see the module docstring)."""
    if keyword_paths(schema, "not") or keyword_paths(schema, "if"):
        return schema
    return _close(schema, in_conjunction=False)


def _close(node: Any, in_conjunction: bool) -> Any:
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for k in SUBSCHEMA_ONE:
        if isinstance(out.get(k), dict):
            out[k] = _close(out[k], False)
    for k in SUBSCHEMA_LIST:
        if isinstance(out.get(k), list):
            out[k] = [_close(v, k in _CONJUNCTIONS) for v in out[k]]
    for k in SUBSCHEMA_MAP:
        if isinstance(out.get(k), dict):
            out[k] = {name: _close(v, k in _CONJUNCTIONS) for name, v in out[k].items()}
    closable = (
        "properties" in out
        and not in_conjunction
        and not (_OPEN_KEYWORDS | _CONJUNCTIONS | {"$ref"}) & out.keys()
    )
    if closable:
        out["additionalProperties"] = False
    return out
