"""What the benchmarks print and keep: log lines, percentiles and ratios, fixed-width tables,
and the results files in bench/results/."""

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def log(message: str = "") -> None:
    print(message, flush=True)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest rank; NaN for no values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def ratio(a: float, b: float) -> float:
    """a / b; NaN when b is not positive."""
    return a / b if b > 0 else float("nan")


@dataclass(frozen=True)
class Column:
    """One column of a `Table`: its header (a line of it per "\\n"), its width, the format
    of its values after the width (".1f") and its alignment; `before` goes in front of it
    (except in the first column)."""

    header: str
    width: int = 0
    spec: str = ""
    align: str = ">"
    before: str = " "


class Table:
    """Fixed-width lines: a header (one line or more) and rows, each value formatted to its
    column as an f-string `{value:>width.spec}` would."""

    def __init__(self, *columns: Column) -> None:
        self.columns = columns

    def line(self, cells: Sequence[Any], specs: Sequence[str]) -> str:
        parts = []
        for index, (column, cell, spec) in enumerate(zip(self.columns, cells, specs, strict=True)):
            width = column.width or ""
            parts.append(("" if index == 0 else column.before) + format(cell, f"{column.align}{width}{spec}"))
        return "".join(parts)

    def header(self) -> list[str]:
        split = [column.header.split("\n") for column in self.columns]
        depth = max(len(lines) for lines in split)
        no_spec = [""] * len(self.columns)
        return [
            self.line([lines[depth_index] if depth_index < len(lines) else "" for lines in split], no_spec)
            for depth_index in range(depth)
        ]

    def row(self, *values: Any) -> str:
        return self.line(values, [column.spec for column in self.columns])

    def print_header(self) -> None:
        for line in self.header():
            log(line)

    def print_row(self, *values: Any) -> None:
        log(self.row(*values))


def results_save(name: str, data: Any) -> Path:
    """Writes a run's figures to bench/results/<name>-<time>.json (git ignores them) and
    says where."""
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    path = results_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    log(f"results: {path.relative_to(ROOT)}")
    return path
