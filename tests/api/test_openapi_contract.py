"""The OpenAPI description's promises that a client reads before it calls: it is a valid
OpenAPI 3.0 document (openapi-spec-validator), its API-key scheme is HTTP bearer (Swagger
UI's Authorize takes the key alone), the WebSocket is opened with its ticket, the old
endpoint is there, deprecated with its sunset, and the choices of a field are listed."""

import json
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from openapi_spec_validator import validate


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    out = StringIO()
    call_command("spectacular", "--format", "openapi-json", stdout=out)
    built: dict[str, Any] = json.loads(out.getvalue())
    return built


def test_the_schema_is_valid_openapi(schema: dict[str, Any]) -> None:
    validate(schema)  # raises on any violation of the OpenAPI 3.0 schema


def test_an_api_key_is_an_http_bearer_scheme(schema: dict[str, Any]) -> None:
    scheme = schema["components"]["securitySchemes"]["tokenAuth"]

    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "Authorization: Token <key>" in scheme["description"]
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert operations
    assert all({"tokenAuth": []} in op["security"] for op in operations)


def test_the_websocket_is_opened_with_its_ticket_not_a_token(schema: dict[str, Any]) -> None:
    assert "?token=" not in json.dumps(schema)
    assert "`?ticket=`" in schema["info"]["description"]
    assert "Authorization: Bearer <key>" in schema["info"]["description"]


def test_the_old_endpoint_is_described_deprecated_with_its_sunset(schema: dict[str, Any]) -> None:
    start = schema["paths"]["/download/start"]["post"]

    assert start["deprecated"] is True
    assert settings.LEGACY_SUNSET_AT is not None
    assert start["x-sunset"] == settings.LEGACY_SUNSET_AT.date().isoformat() == "2027-06-01"
    assert "retired on 2027-06-01" in start["description"]
    assert start["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DownloadJobInitiateRequest"
    }
    assert set(start["responses"]) == {"202", "302", "400", "401", "403", "409", "410", "415", "429"}
    for code, response in start["responses"].items():
        assert response["headers"]["Deprecation"]["required"] is True, code
        assert response["headers"]["Link"]["required"] is True, code
        assert "Sunset" in response["headers"], code
    assert start["responses"]["202"]["headers"]["Location"]["required"] is True
    assert start["responses"]["302"]["headers"]["Location"]["required"] is True
    retired = start["responses"]["410"]["content"]["application/json"]["schema"]["$ref"]
    components = schema["components"]["schemas"]
    error = components[retired.rsplit("/", 1)[1].replace("Response", "")]
    assert components["EndpointRetiredErrorCodeEnum"]["enum"] == ["ENDPOINT_RETIRED"]
    assert {"successor", "documentation"} <= set(error["properties"])
    # The answer the ASGI wait asks for is not an endpoint of clients.
    assert "/download/start/{job_id}" not in schema["paths"]


def test_priority_and_the_status_filter_list_their_choices(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    priority = components["DownloadJobInitiateRequest"]["properties"]["priority"]
    assert components[priority["allOf"][0]["$ref"].rsplit("/", 1)[1]]["enum"] == ["low", "normal", "high"]
    assert priority["default"] == "normal"
    parameters = schema["paths"]["/v1/downloads"]["get"]["parameters"]
    status = next(parameter for parameter in parameters if parameter["name"] == "status")
    assert status["schema"]["enum"] == [
        "active", "queued", "processing", "completed", "failed", "cancelled", "expired"
    ]  # fmt: skip
