"""Every file and module that the README, docs/, the deploy and bench READMEs, and the
comments and docstrings of the code name exists in the tree.

A name counts when it reads as a path inside the repository (a folder such as `deploy/`,
a file such as `jobs/models.py`, or a lone `models.py`) or as a dotted name in one of the
project's own packages (`jobs.models.DownloadJob`). A path is found when a tracked file or
folder is it or ends with it (so `api/urls.py` stands for `jobs/api/urls.py`), or when
.gitignore names it (what a run writes); a dotted name when it is a Celery task's or a
model's label, or its longest module prefix is a file of the tree and the name after that
prefix is defined at the top of that module. When modules move, the test lists each stale
name with the file and line that names it.
"""

import ast
import io
import re
import subprocess
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from django.apps import apps

from tests.support.celery_tasks import tasks_modules_import

ROOT = Path(__file__).resolve().parents[2]

# Files whose whole text is prose or configuration that names paths (the deploy files name
# the modules the processes run: `downloads_project.asgi:application`).
PROSE_PATTERNS = (
    "README.md",
    "docs/*.md",
    "deploy/**/README.md",
    "bench/README.md",
    "Dockerfile",
    "Makefile",
    "docker-compose.yml",
    "deploy/**/*.yaml",
    "deploy/**/*.template",
    ".ci/run",
    ".env.example",
    ".pre-commit-config.yaml",
    "pyproject.toml",
)
# Python files are read for their comments and strings (docstrings included) only: their
# code is checked by running it.
PYTHON_ROOTS = ("jobs", "realtime", "downloads_project", "stack", "edge", "legacy", "infra")
PYTHON_ALSO = ("tests", "bench", "devtools", "conftest.py", "manage.py")
# Files whose names are read by suffixes the tree uses.
SUFFIXES = "py|md|yml|yaml|toml|txt|json|html|js|ts|tsx|conf|template|sh|cfg|ini|lua|css"
PATH = re.compile(
    rf"(?<![\w./~$@{{:-])((?:\.ci|[A-Za-z_][\w-]*)(?:/[\w.-]+)*(?:/|\.(?:{SUFFIXES})\b))(?![\w/{{}}-])"
)
DOTTED = re.compile(r"(?<![\w./~-])([a-z_][a-z0-9_]*(?:\.[A-Za-z_]\w*)+)(?![\w(/-])")


@dataclass(frozen=True)
class Mention:
    where: str  # file:line
    name: str

    def __str__(self) -> str:
        return f"{self.where}: {self.name}"


@cache
def tracked() -> tuple[frozenset[str], frozenset[str]]:
    """The files git tracks (and any new file not yet added), and every folder above them."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tree's files are what git lists")
    files = frozenset(name for name in listed if (ROOT / name).exists())
    folders = frozenset(str(parent) for name in files for parent in Path(name).parents if str(parent) != ".")
    return files, folders


def packages() -> set[str]:
    """The project's own top-level Python packages, as the tree holds them now."""
    files, _ = tracked()
    return {name.split("/")[0] for name in files if name.count("/") == 1 and name.endswith("/__init__.py")}


def top_level() -> set[str]:
    """What a path inside the repository starts with: a top-level folder or file of the
    tree, or one of the packages the layout names (docs/architecture.md)."""
    files, _ = tracked()
    return {name.split("/")[0] for name in files} | set(PYTHON_ROOTS)


def _ignored(name: str) -> bool:
    """Made by a run, not kept in the tree (`bench/results/`): .gitignore names it."""
    return subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT, check=False).returncode == 0


def _path_exists(name: str) -> bool:
    files, folders = tracked()
    if _ignored(name):
        return True
    if name.endswith("/"):
        name = name.rstrip("/")
        return name in folders or any(folder.endswith("/" + name) for folder in folders)
    return name in files or any(file.endswith("/" + name) for file in files)


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _top_level_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.If | ast.Try):
            # Names defined under a guard count too (a fallback import, say).
            for inner in ast.walk(node):
                if isinstance(inner, ast.FunctionDef | ast.ClassDef):
                    names.add(inner.name)
                elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                    names.add(inner.id)
    return frozenset(names)


@cache
def dotted_names() -> frozenset[str]:
    """Dotted names that are not modules: the Celery tasks' names (`jobs.download_job_stage`)
    and the models' labels (`jobs.ApiKey`)."""
    from celery import current_app

    tasks_modules_import()
    return frozenset({*current_app.tasks, *(model._meta.label for model in apps.get_models())})


def _module_exists(dotted: str) -> bool:
    """The longest prefix of `dotted` that is a module of the tree, and the name after it
    (if any) defined there; anything beyond that is an attribute of that name."""
    if dotted in dotted_names():
        return True
    parts = dotted.split(".")
    for length in range(len(parts), 0, -1):
        module = _module_file(parts[:length])
        if module is None:
            continue
        if length == len(parts):
            return True
        return parts[length] in _top_level_names(module)
    return False


# --- where names are read from --------------------------------------------------------------


def _prose_files() -> Iterator[Path]:
    seen: set[Path] = set()
    for pattern in PROSE_PATTERNS:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and path not in seen:
                seen.add(path)
                yield path


def _python_files() -> Iterator[Path]:
    files, _ = tracked()
    for name in sorted(files):
        top = name.split("/")[0]
        if not name.endswith(".py") or "/migrations/" in name:
            continue
        if top in PYTHON_ROOTS or top in PYTHON_ALSO:
            yield ROOT / name


def _prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    yield from enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)


def _python_text(path: Path) -> Iterator[tuple[int, str]]:
    """The comments and docstrings of a module, line by line. Other strings are values
    (a signing salt, a logger's name) that only read like module names."""
    source = path.read_text(encoding="utf-8")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                for offset, line in enumerate(first.value.value.splitlines()):
                    yield first.lineno + offset, line


def _mentions(lines: Iterator[tuple[int, str]], relative: str) -> Iterator[Mention]:
    own = packages()
    roots = top_level()
    for number, line in lines:
        where = f"{relative}:{number}"
        for match in PATH.finditer(line):
            name = match.group(1)
            if "/" in name:
                if name.split("/")[0] not in roots:
                    continue  # a URL path, a storage key, a MIME type: not a file of the tree
            elif not name.endswith(".py"):
                continue  # a lone name with another suffix (`index.html`) may be anyone's
            if any(Path(part).stem.isupper() for part in name.split("/")):
                continue  # a placeholder: `bench/NAME.py`
            if not _path_exists(name):
                yield Mention(where, name)
        for match in DOTTED.finditer(line):
            name = match.group(1)
            if name.split(".")[0] not in own or re.search(rf"\.(?:{SUFFIXES})$", name):
                continue
            if not _module_exists(name):
                yield Mention(where, name)


def stale_mentions() -> list[Mention]:
    found: list[Mention] = []
    for path in _prose_files():
        found += _mentions(_prose_lines(path), str(path.relative_to(ROOT)))
    for path in _python_files():
        found += _mentions(_python_text(path), str(path.relative_to(ROOT)))
    return found


def test_a_stale_file_or_module_is_found_with_where_it_is_named():
    lines = iter(
        [
            (1, "Kept in `jobs/models.py` and `api/urls.py`, read by jobs.models.DownloadJob."),
            (2, "Moved: `jobs/gone.py`, `gone.py`, jobs.gone and jobs.models.Gone (see deploy/)."),
            (3, "Not paths: /v1/download/status/, image/png, `https://example.com/jobs/x.py`."),
            (4, 'command: ["uvicorn", "jobs.gone:application", "--app-dir", "jobs/"]'),
        ]
    )

    found = list(_mentions(lines, "README.md"))

    assert [str(mention) for mention in found] == [
        "README.md:2: jobs/gone.py",
        "README.md:2: gone.py",
        "README.md:2: jobs.gone",
        "README.md:2: jobs.models.Gone",
        "README.md:4: jobs.gone",
    ]


def test_every_file_and_module_named_in_docs_and_comments_exists():
    stale = stale_mentions()

    assert not stale, "names of files or modules that are not in the tree:\n" + "\n".join(map(str, stale))
