"""Exact rewrites that let the xgrammar backend enforce more: ``S + anyOf/oneOf [A, B]`` becomes
``anyOf/oneOf [S + A, S + B]`` (xgrammar would otherwise drop the siblings ``S``)."""

from __future__ import annotations

from typing import Any

from plait.constrained.schema_check import ANNOTATIONS
from plait.runtime.errors import InvalidRequestError

# Keywords that are no constraint on the instance where they stand.
NON_VALIDATING = ANNOTATIONS | {"$defs", "definitions", "$id", "$schema", "$anchor"}
_KEEP = NON_VALIDATING


def distribute_alternatives(node: Any, path: str = "#") -> Any:
    """The schema with every ``anyOf`` / ``oneOf`` that has sibling validation keywords
    rewritten into one whose branches carry those siblings.

    Exact: S and (A or B) is (S and A) or (S and B), and a merged branch keeps each keyword of
    S and of A with its own meaning. Refused (InvalidRequestError naming the keyword and path)
    when a branch and S both set a keyword other than ``properties`` / ``required`` with
    different values, or when S limits additional properties and a branch adds properties.
    """
    if isinstance(node, list):
        return [distribute_alternatives(v, f"{path}/{i}") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    node = {k: distribute_alternatives(v, f"{path}/{k}") for k, v in node.items()}
    for keyword in ("anyOf", "oneOf"):
        branches = node.get(keyword)
        siblings = {k: v for k, v in node.items() if k not in _KEEP and k != keyword}
        if not isinstance(branches, list) or not siblings:
            continue
        if "anyOf" in siblings or "oneOf" in siblings or "allOf" in siblings:
            continue  # the first pass handles one; a second is refused by the backend check
        merged = [
            _merge(siblings, b, keyword, f"{path}/{keyword}/{i}") for i, b in enumerate(branches)
        ]
        node = {k: v for k, v in node.items() if k not in siblings}
        node[keyword] = merged
    return node


def _merge(s: dict[str, Any], branch: Any, keyword: str, path: str) -> Any:
    if branch is True or branch == {}:
        return dict(s)
    if not isinstance(branch, dict):
        return branch  # false stays false
    out = dict(s)
    for k, v in branch.items():
        if k == "properties" and isinstance(v, dict):
            props = dict(s.get("properties", {}))
            if "additionalProperties" in s and any(p not in props for p in v):
                _refuse(keyword, path, "a branch adds properties next to additionalProperties")
            for name, sub in v.items():
                if name in props and props[name] != sub:
                    _refuse(keyword, path, f"property {name!r} is also defined next to it")
                props[name] = sub
            out["properties"] = props
        elif k == "required" and isinstance(v, list):
            out["required"] = list(dict.fromkeys([*s.get("required", []), *v]))
        elif k in out and out[k] != v:
            _refuse(keyword, path, f"{k!r} is set both next to it and in the branch")
        else:
            out[k] = v
    return out


def _refuse(keyword: str, path: str, why: str) -> None:
    msg = f"keyword {keyword!r} at {path} cannot be enforced by the xgrammar grammar backend: "
    msg += f"it cannot be combined with its siblings exactly ({why})"
    raise InvalidRequestError("json_schema", msg)
