"""The import graph inside `jobs/` and from `realtime/`, read from the code.

A package of `jobs/` (api, web, services, transfer, ops, ...) is one unit, and so is each
module that stands alone in `jobs/`; no two units may import each other, however many
modules the circle runs through, or the layers of docs/architecture.md stop being true
even while no file imports itself. Imports inside functions and under TYPE_CHECKING count:
they tie the code together just the same.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _imported(module: str, path: Path) -> set[str]:
    """The dotted names a module imports, relative imports made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.update(f"{base}.{alias.name}" if alias.name != "*" else base for alias in node.names)
    return names


def _unit(module: str) -> str | None:
    """The unit a module of the app belongs to: `jobs.<package>` or `jobs.<module>`, or
    `realtime` for the WebSocket app."""
    parts = module.split(".")
    if parts[0] == "realtime":
        return "realtime"
    if parts[0] != "jobs" or len(parts) < 2:
        return None
    return f"jobs.{parts[1]}"


def _known(name: str, modules: set[str]) -> str | None:
    """The module of the app that an imported name is, or is defined in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def unit_imports() -> dict[tuple[str, str], list[str]]:
    """Each pair of units that one imports from the other, with the modules that do."""
    found = dict(_modules("jobs")) | dict(_modules("realtime"))
    modules = set(found)
    edges: dict[tuple[str, str], set[str]] = {}
    for module, path in found.items():
        source = _unit(module)
        for name in _imported(module, path):
            target_module = _known(name, modules)
            target = _unit(target_module) if target_module else None
            if source and target and target != source:
                edges.setdefault((source, target), set()).add(f"{module} -> {target_module}")
    return {pair: sorted(lines) for pair, lines in edges.items()}


def circles(edges: dict[tuple[str, str], list[str]] | set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected sets of units (Tarjan), those of more than one."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(unit: str) -> None:
        index[unit] = low[unit] = len(index)
        stack.append(unit)
        for other in sorted(graph[unit]):
            if other not in index:
                visit(other)
                low[unit] = min(low[unit], low[other])
            elif other in stack:
                low[unit] = min(low[unit], index[other])
        if low[unit] == index[unit]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == unit:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for unit in sorted(graph):
        if unit not in index:
            visit(unit)
    return found


def test_the_collector_sees_the_imports_it_should() -> None:
    edges = unit_imports()
    assert ("jobs.api", "jobs.services") in edges
    assert ("realtime", "jobs.events") in edges
    assert circles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]


def test_no_two_packages_of_jobs_import_each_other() -> None:
    edges = unit_imports()
    ties = [
        f"{' <-> '.join(circle)}: "
        + "; ".join(
            line
            for (source, target), lines in sorted(edges.items())
            for line in lines
            if source in circle and target in circle
        )
        for circle in circles(edges)
    ]
    assert ties == [], "\n".join(ties)


def test_the_websocket_routes_take_the_job_id_rule_from_no_api_module() -> None:
    """realtime/ stands above jobs/ and may read it, but its routes must not depend on the
    REST API's modules for what a job id looks like in a path."""
    module, path = "realtime.routing", ROOT / "realtime" / "routing.py"
    assert sorted(name for name in _imported(module, path) if name.startswith("jobs.api")) == []


def test_jobs_never_imports_the_apps_above_it() -> None:
    """webhooks/ and notices/ stand above jobs/ (they connect to `jobs.signals`); jobs/
    reaches them only through those signals, never by an import."""
    above = ("webhooks", "notices", "realtime", "legacy", "edge", "stack")
    found = [
        f"{module} -> {name}"
        for module, path in _modules("jobs")
        for name in sorted(_imported(module, path))
        if name.split(".")[0] in above
    ]
    assert found == []
