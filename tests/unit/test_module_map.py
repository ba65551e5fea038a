"""docs/architecture.md's module map matches the code: it names every module
of mcr_xdp/, and no module imports a module of the package its row does not
list (the layering stays as documented)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mcr_xdp"
DOC = ROOT / "docs" / "architecture.md"


def _short(path: Path) -> str:
    """mcr_xdp/backends/bpf.py -> backends.bpf; a package's __init__ -> its name."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _documented() -> dict[str, set[str]]:
    text = DOC.read_text()
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `mcr_xdp/([\w/]+\.py)` \|[^|]*\|([^|]*)\|$", section, re.M)
    assert rows, "no module rows found under ## Module map"
    return {_short(PACKAGE / path): {m.strip() for m in imports.split(",") if m.strip()} for path, imports in rows}


def _is_module(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The package's modules path imports, outside `if TYPE_CHECKING:`."""
    me = _short(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == "mcr_xdp" or node.module.startswith("mcr_xdp.")):
                module = node.module.removeprefix("mcr_xdp").lstrip(".")
            else:
                module = None
            if module is not None:
                for alias in node.names:
                    sub = f"{module}.{alias.name}" if module else alias.name
                    found.add(sub if _is_module(sub) else module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mcr_xdp."):
                    found.add(alias.name.removeprefix("mcr_xdp."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(me)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_the_map():
    documented = _documented()
    assert sorted(documented) == sorted(_short(p) for p in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_stay_within_the_row(path):
    allowed = _documented().get(_short(path), set())
    extra = _imports(path) - allowed
    assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}, which its row in docs/architecture.md omits"


def test_nothing_imports_the_cli():
    """The library never reaches up into the CLI (mcr_xdp_cli)."""
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "mcr_xdp_cli" for n in names), path
