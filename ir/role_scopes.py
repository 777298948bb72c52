"""Chat roles and variable scopes as methods of anything programs append nodes to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from plait.ir.nodes import RoleBegin, RoleEnd, VarScopeBegin, VarScopeEnd


class RoleScopes:
    """``s.user("...")`` appends a whole message; ``with s.user():`` opens one; ``with
    s.var_scope("x"):`` makes everything appended inside variable ``x``. The host class only
    needs ``__iadd__`` accepting nodes and lists of nodes."""

    def _role(self, role: str, expr: Any = None) -> Any:
        if expr is not None:
            self += [RoleBegin(role), expr, RoleEnd(role)]
            return None
        return self._role_scope(role)

    @contextmanager
    def _role_scope(self, role: str) -> Iterator[None]:
        self += RoleBegin(role)
        yield
        self += RoleEnd(role)

    def system(self, expr: Any = None) -> Any:
        return self._role("system", expr)

    def user(self, expr: Any = None) -> Any:
        return self._role("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        return self._role("assistant", expr)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        self += VarScopeBegin(name)
        yield
        self += VarScopeEnd(name)
