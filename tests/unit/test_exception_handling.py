"""The conversation never swallows an error silently: every handler that catches Exception (or
everything) logs it or raises on; `contextlib.suppress(Exception)` is not used."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sipagent

PACKAGE = Path(sipagent.__file__).parent
CHECKED = sorted(
    [
        *(PACKAGE / "conversation").glob("*.py"),
        *(PACKAGE / "tools").glob("*.py"),
        PACKAGE / "apps" / "receptionist.py",
    ]
)
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def catches_everything(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        name is None or (isinstance(name, ast.Name) and name.id in ("Exception", "BaseException"))
        for name in names
    )


def speaks_up(handler: ast.ExceptHandler) -> bool:
    for node in ast.walk(ast.Module(body=handler.body, type_ignores=[])):
        if isinstance(node, ast.Raise):
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LOG_METHODS
        ):
            return True
    return False


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_broad_except_is_silent(path: Path) -> None:
    tree = ast.parse(path.read_text())
    silent = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.ExceptHandler) and catches_everything(node) and not speaks_up(node)
    ]
    suppressed = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "suppress"
        and any(
            isinstance(a, ast.Name) and a.id in ("Exception", "BaseException") for a in node.args
        )
    ]
    assert (silent, suppressed) == ([], []), (
        f"{path.name}: silent handlers at {silent + suppressed}"
    )
