"""The suite's own rules: a test that starts real processes of the service says so with a
marker (`e2e`, or `browser` for Chromium), so that `make test-fast`, which leaves those
out, starts none."""

import re
from pathlib import Path

import pytest

from tests.support.stack import ROOT, SLOW_MARKERS, Stack


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
