"""The suite's own rules: a test that starts real processes of the service says so with a
marker (`e2e`, or `browser` for Chromium), so that `make test-fast`, which leaves those
out, starts none."""

import ast
import re
from pathlib import Path

import pytest

from tests.support.stack import ROOT, SLOW_MARKERS, Stack

# A call that builds the command line of a process of the service (downloads_project's
# processes): a test that makes one starts that process itself, without a Stack.
SERVICE_COMMAND = re.compile(r"\b(?:web|worker|beat)_argv\(")


def _marked(node: ast.AST, source: str) -> bool:
    text = ast.get_source_segment(source, node) or ""
    return any(f"mark.{marker}" in text for marker in SLOW_MARKERS)


def unmarked_tests_starting_processes(source: str) -> list[str]:
    """The test functions of a module that build a service process's command line while
    neither they nor their module carry a slow marker."""
    tree = ast.parse(source)
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets)
            and _marked(node.value, source)
        ):
            return []
    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("test_")
        and SERVICE_COMMAND.search(ast.get_source_segment(source, node) or "")
        and not any(_marked(decorator, source) for decorator in node.decorator_list)
    ]


def test_a_stack_refuses_to_start_for_a_test_without_a_slow_marker():
    stack = Stack("unmarked", {})

    with pytest.raises(RuntimeError, match="marked e2e"):
        stack.start(worker=False)

    assert (stack.web, stack.worker) == (None, None)


def test_the_fast_target_leaves_out_every_slow_marker_and_the_markers_are_declared():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    fast = re.search(r"^test-fast:.*\n((?:\t.*\n)+)", makefile, re.M)
    pyproject = Path(ROOT / "pyproject.toml").read_text(encoding="utf-8")

    assert fast is not None
    assert all(f"not {marker}" in fast.group(1) for marker in SLOW_MARKERS)
    assert all(f'"{marker}: ' in pyproject for marker in SLOW_MARKERS)


def test_every_test_that_starts_a_service_process_itself_is_marked():
    modules = [*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("clients/*/tests/**/test_*.py")]

    unmarked = {
        str(path.relative_to(ROOT)): names
        for path in modules
        if "node_modules" not in path.parts
        and (names := unmarked_tests_starting_processes(path.read_text(encoding="utf-8")))
    }

    assert unmarked == {}
