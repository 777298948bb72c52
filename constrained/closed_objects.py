"""Objects closed to unlisted properties, as xgrammar's strict mode and OpenAI's strict
structured outputs treat them: a model left free to add properties to a schema that lists its
own rambles on with invented keys until its token limit (seen with llguidance on the
template-heavy JSON benchmark), though every such output is valid.

Closing only narrows what a schema admits, so outputs stay valid, except under a negation
(``not``, ``if``), where narrowing the inner schema widens the outer one: a schema with either
keyword anywhere is left as it is. ``allOf`` branches (and nodes beside an ``allOf`` / ``$ref``)
stay open, since closing them separately would reject properties another branch adds.
"""

from __future__ import annotations

from typing import Any

# An object node with any of these already says what unlisted properties may be.
_OPEN_KEYWORDS = frozenset({"additionalProperties", "patternProperties", "unevaluatedProperties"})
_NEGATIONS = frozenset({"not", "if"})
# Keywords whose value is one subschema / a list of them / a name -> subschema map.
_ONE = ("items", "additionalItems", "contains", "propertyNames", "additionalProperties")
_LIST = ("anyOf", "oneOf", "prefixItems", "items")
_MAP = ("properties", "$defs", "definitions")


def close_objects(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object node that lists
    ``properties`` and says nothing about other properties (see the module docstring)."""
    if _has_negation(schema):
        return schema
    return _close(schema, in_all_of=False)


def _close(node: Any, in_all_of: bool) -> Any:
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for k in _ONE:
        if isinstance(out.get(k), dict):
            out[k] = _close(out[k], False)
    for k in _LIST:
        if isinstance(out.get(k), list):
            out[k] = [_close(v, False) for v in out[k]]
    for k in _MAP:
        if isinstance(out.get(k), dict):
            out[k] = {name: _close(v, False) for name, v in out[k].items()}
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [_close(v, True) for v in out["allOf"]]
    closable = (
        "properties" in out
        and not in_all_of
        and not _OPEN_KEYWORDS & out.keys()
        and "allOf" not in out
        and "$ref" not in out
    )
    if closable:
        out["additionalProperties"] = False
    return out


def _has_negation(node: Any) -> bool:
    if isinstance(node, dict):
        return bool(_NEGATIONS & node.keys()) or any(_has_negation(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_negation(v) for v in node)
    return False
