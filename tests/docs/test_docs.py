"""docs/ against the code: the API page names every error code the service can answer,
every field and header of the OpenAPI schema, every job status and priority, every
WebSocket message type and close code; its table of job error codes says which are
retried as the code decides; the architecture page's transition table is `TRANSITIONS`.

What the code defines is found where it is now, not at fixed import paths: the source
files of the project's packages are read (their syntax trees, for the error codes and
constants), the models through Django's app registry, the schema through drf-spectacular.
So modules may move or split without this test changing.
"""

import ast
import importlib
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from drf_spectacular.generators import SchemaGenerator

PACKAGES = ("jobs", "realtime", "webhooks", "downloads_project")
ROOT = Path(settings.BASE_DIR)
API_DOC = ROOT / "docs" / "api.md"
ARCHITECTURE_DOC = ROOT / "docs" / "architecture.md"
UPPER_SNAKE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z]{3,}")


def _mentioned(name: str, doc: str) -> bool:
    """Named as code (`NAME`) or as a JSON key or value ("name")."""
    return f"`{name}`" in doc or f'"{name}"' in doc


def _missing(names: set[str], doc_path: Path) -> list[str]:
    doc = doc_path.read_text(encoding="utf-8")
    return sorted(name for name in names if not _mentioned(name, doc))


# --- the code, found by reading it ---------------------------------------------------------


def _source_files() -> Iterator[Path]:
    """The project's own modules: not tests, not migrations."""
    for package in PACKAGES:
        root = Path(importlib.import_module(package).__path__[0])
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).parts
            if "tests" not in parts and "migrations" not in parts:
                yield path


@cache
def _trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in _source_files()}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _called_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _error_code_class() -> tuple[Path, ast.ClassDef]:
    found = [
        (path, node)
        for path, tree in _trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == "ErrorCode"
    ]
    assert len(found) == 1, f"expected one ErrorCode class, found {[str(path) for path, _ in found]}"
    return found[0]


def job_error_codes() -> set[str]:
    """The members of ErrorCode: what a job's `error.code` can be."""
    _, cls = _error_code_class()
    return {
        value
        for node in cls.body
        if isinstance(node, ast.Assign) and (value := _string(node.value)) is not None
    }


def retryable_job_error_codes() -> set[str]:
    path, _ = _error_code_class()
    module = importlib.import_module(_module_name(path))
    return {str(code) for code in module.ErrorCode if module.JobError(code, "").retryable}


def api_error_codes() -> set[str]:
    """Codes the HTTP side answers with, as written in the code: `error_body("CODE", ...)`
    and any `code="CODE"` keyword (ApiError and friends)."""
    codes = set()
    for tree in _trees().values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            if _called_name(node) == "error_body" and node.args:
                codes.add(_string(node.args[0]))
            codes.update(_string(keyword.value) for keyword in node.keywords if keyword.arg == "code")
    return {code for code in codes if code is not None and UPPER_SNAKE.fullmatch(code)}


def websocket_close_codes() -> set[str]:
    """Module constants `CLOSE_<NAME> = 4xxx`."""
    return {
        str(node.value.value)
        for tree in _trees().values()
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id.startswith("CLOSE_") for target in node.targets)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, int)
    }


def websocket_message_types() -> set[str]:
    """`"type": "<name>"` in the messages the code builds (those with a `timestamp`), the
    event types its publishing calls name, and the terminal event types."""
    types: set[str | None] = set()
    for tree in _trees().values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                message = {_string(key): value for key, value in zip(node.keys, node.values, strict=True)}
                if "timestamp" in message:  # a message, not (say) a JSON schema
                    types.add(_string(message.get("type")))
            elif isinstance(node, ast.Call) and "publish" in _called_name(node) and len(node.args) >= 2:
                types.add(_string(node.args[1]))
            elif isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id.endswith("EVENT_TYPES") for target in node.targets
            ):
                types.update(_string(each) for each in ast.walk(node.value))
    return {name for name in types if name is not None and re.fullmatch(r"[a-z_]+", name)}


def model_choices(field: str) -> set[str]:
    model = apps.get_model("jobs", "DownloadJob")
    choices = getattr(model._meta.get_field(field), "choices", None) or []
    return {str(value) for value, _label in choices}


def transitions() -> dict[str, set[str]]:
    model = apps.get_model("jobs", "DownloadJob")
    table = importlib.import_module(model.__module__).TRANSITIONS
    return {str(source): {str(target) for target in targets} for source, targets in table.items()}


# --- the OpenAPI schema ----------------------------------------------------------------------


@cache
def openapi_schema() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


def _resolve(schema: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema["components"]["schemas"][name]
    return node


def _walk_schema(schema: dict[str, Any], node: Any, seen: set[int] | None = None) -> Iterator[dict[str, Any]]:
    """Every object schema reachable from `node`, references resolved."""
    seen = set() if seen is None else seen
    node = _resolve(schema, node)
    if not isinstance(node, dict) or id(node) in seen:
        return
    seen.add(id(node))
    yield node
    for key in ("allOf", "oneOf", "anyOf"):
        for part in node.get(key, []):
            yield from _walk_schema(schema, part, seen)
    for child in node.get("properties", {}).values():
        yield from _walk_schema(schema, child, seen)
    if "items" in node:
        yield from _walk_schema(schema, node["items"], seen)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk_schema(schema, node["additionalProperties"], seen)


def _operations(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for methods in schema["paths"].values():
        for method, operation in methods.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield operation


def _bodies(operation: dict[str, Any]) -> Iterator[Any]:
    """The schemas of the operation's request body and of its responses."""
    for content in operation.get("requestBody", {}).get("content", {}).values():
        yield content.get("schema")
    for response in operation["responses"].values():
        for content in response.get("content", {}).values():
            yield content.get("schema")


def schema_properties() -> set[str]:
    """Every field name of every request and answer body of the API."""
    schema = openapi_schema()
    return {
        name
        for operation in _operations(schema)
        for body in _bodies(operation)
        for node in _walk_schema(schema, body)
        for name in node.get("properties", {})
    }


def schema_error_codes() -> set[str]:
    """The `code` enums of the error bodies the schema declares."""
    schema = openapi_schema()
    codes: set[str] = set()
    for operation in _operations(schema):
        for body in _bodies(operation):
            for node in _walk_schema(schema, body):
                code = _resolve(schema, node.get("properties", {}).get("code"))
                if isinstance(code, dict):
                    codes.update(str(value) for value in code.get("enum", []))
    return codes


def schema_parameters_and_headers() -> set[str]:
    """Query, path and header parameters, and the response headers."""
    schema = openapi_schema()
    names: set[str] = set()
    for operation in _operations(schema):
        names.update(parameter["name"] for parameter in operation.get("parameters", []))
        for response in operation["responses"].values():
            names.update(response.get("headers", {}))
    return names


def schema_paths() -> set[str]:
    return {re.sub(r"\{(\w+)\}", r"<\1>", path) for path in openapi_schema()["paths"]}


# --- the checks ------------------------------------------------------------------------------


def test_the_collectors_still_find_the_code() -> None:
    """Guards the checks below against finding nothing after a refactor."""
    assert {"NETWORK_ERROR", "DOWNLOAD_TIMEOUT"} <= job_error_codes()
    assert {"VALIDATION_ERROR", "JOB_NOT_FOUND", "SERVICE_UNAVAILABLE"} <= api_error_codes()
    assert {"4401", "4404"} <= websocket_close_codes()
    assert {"snapshot", "progress", "completed"} <= websocket_message_types()
    assert {"job_id", "status", "download_url", "websocket_url"} <= schema_properties()
    assert {"JOB_NOT_READY", "RATE_LIMIT_EXCEEDED"} <= schema_error_codes()
    assert "queued" in model_choices("status")


def test_every_error_code_is_documented() -> None:
    codes = job_error_codes() | api_error_codes() | schema_error_codes()
    assert not _missing(codes, API_DOC), "error codes missing from docs/api.md"


def test_every_job_error_code_says_whether_it_is_retried() -> None:
    doc = API_DOC.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| (yes|no) \|", doc, re.MULTILINE))
    retryable = retryable_job_error_codes()
    expected = {code: "yes" if code in retryable else "no" for code in job_error_codes()}
    assert {code: rows.get(code) for code in expected} == expected


def test_every_field_parameter_and_header_of_the_schema_is_documented() -> None:
    names = schema_properties() | schema_parameters_and_headers()
    assert not _missing(names, API_DOC), "OpenAPI fields, parameters or headers missing from docs/api.md"


def test_every_endpoint_is_documented() -> None:
    doc = API_DOC.read_text(encoding="utf-8")
    assert not sorted(path for path in schema_paths() if path not in doc)


def test_every_status_and_priority_is_documented() -> None:
    assert not _missing(model_choices("status") | model_choices("priority"), API_DOC)


def test_every_websocket_message_type_and_close_code_is_documented() -> None:
    assert not _missing(websocket_message_types() | websocket_close_codes(), API_DOC)


def test_the_architecture_transition_table_is_transitions() -> None:
    doc = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    statuses = model_choices("status")
    documented = {}
    for source, targets in re.findall(r"^\| `(\w+)` \| (.+?) \|$", doc, re.MULTILINE):
        if source in statuses and source not in documented:
            documented[source] = set(re.findall(r"`(\w+)`", targets))
    assert documented == transitions()
