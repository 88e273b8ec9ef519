"""The package's shape, checked: the layers of docs/design.md ("Architecture") import only downwards,
and no module imports itself back through others (no import cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mupath"

#: lower layers never import higher ones (docs/design.md, "Layers")
LAYERS = {"errors": 0, "data": 1, "model": 2, "train": 3, "store": 4, "runtime": 5, "search": 6, "track": 6,
          "export": 7, "system": 7, "viz": 8, "serve": 8, "cli": 9, "__init__": 9}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """mupath modules `path` imports (at any depth, lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mupath"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mupath"))
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def test_layers_import_only_downwards():
    modules = _modules()
    upward = [f"{m} -> {t}" for m, p in modules.items() if m != "mupath" for t in _imports(p, modules)
              if t in modules and t != "mupath" and _layer(t) > _layer(m)]
    assert not upward, upward


def test_no_import_cycle():
    modules = _modules()
    graph = {m: {t for t in _imports(p, modules) if t in modules and t != "mupath"} for m, p in modules.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, [" -> ".join(c) for c in cycles]


def _functions():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE.parent), node


def test_functions_are_short_and_take_few_positional_parameters():
    """No function over 60 lines; none with more than 6 positional parameters (self/cls aside), but the
    command-line commands, whose parameters are typer's options."""
    def is_command(node: ast.AST) -> bool:
        return any(isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command"
                   for d in getattr(node, "decorator_list", []))
    long = [f"{p}:{f.name} ({f.end_lineno - f.lineno + 1} lines)" for p, f in _functions()
            if f.end_lineno - f.lineno + 1 > 60]
    wide = [f"{p}:{f.name}" for p, f in _functions() if not is_command(f)
            and len([a for a in f.args.posonlyargs + f.args.args if a.arg not in ("self", "cls")]) > 6]
    assert not long and not wide, long + wide
