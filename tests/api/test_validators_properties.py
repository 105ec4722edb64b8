"""Properties of the API's request validators (jobs/api/serializers.py), over generated input:
what each accepts is exactly what docs/api.md allows, and everything else is a field error,
never an exception. Derandomized, so a failure reproduces on the next run. Only the last
two tests touch the database (through the API, to show no input reaches a 500)."""

import base64
import json
import string
from typing import Any
from urllib.parse import urlencode

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rest_framework import serializers

from jobs.api.serializers import (
    MAX_FILE_ID,
    METADATA_MAX_DEPTH,
    DownloadJobInitiateSerializer,
    DownloadJobListFilterSerializer,
    idempotency_key_validate,
)
from jobs.models import Priority, Status

PROPERTIES = settings(derandomize=True, max_examples=200, deadline=None)
PRIORITIES = {"low", "normal", "high"}
LIST_STATUSES = {"active", *Status.values}

# JSON values as the parser hands them over (no NaN or infinities: JSON has none).
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def errors_of(data: dict[str, Any]) -> dict[str, Any]:
    serializer = DownloadJobInitiateSerializer(data=data)
    return {} if serializer.is_valid() else dict(serializer.errors)


def serialized_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def depth(value: Any) -> int:
    """Levels of objects and arrays: {} is 1, {"a": []} is 2."""
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    return 0


def has_nul(value: Any) -> bool:
    return "\\u0000" in json.dumps(value)  # ASCII-escaped, U+0000 is written \u0000


# --- file_id ---------------------------------------------------------------------------------


@PROPERTIES
@given(st.integers(min_value=1, max_value=MAX_FILE_ID))
def test_file_id_accepts_every_positive_integer_below_2_63(file_id: int) -> None:
    serializer = DownloadJobInitiateSerializer(data={"file_id": file_id})
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data["file_id"] == file_id
    assert type(serializer.validated_data["file_id"]) is int


@PROPERTIES
@given(st.integers(max_value=0) | st.integers(min_value=MAX_FILE_ID + 1))
def test_file_id_rejects_integers_out_of_range(file_id: int) -> None:
    assert set(errors_of({"file_id": file_id})) == {"file_id"}


@PROPERTIES
@given(
    json_values.filter(lambda value: type(value) is not int)
    | st.integers(min_value=1, max_value=MAX_FILE_ID).map(str)
    | st.integers(min_value=1, max_value=2**53).map(float)
)
def test_file_id_rejects_everything_but_a_json_integer(file_id: Any) -> None:
    """Booleans, floats (even 5.0), digit strings, null, arrays and objects alike."""
    assert set(errors_of({"file_id": file_id})) == {"file_id"}


@PROPERTIES
@given(st.dictionaries(st.sampled_from(["priority", "metadata", "user_id"]), st.just("")))
def test_file_id_is_required(body: dict[str, Any]) -> None:
    assert "file_id" in errors_of(body)


# --- priority ----------------------------------------------------------------------------------


@PROPERTIES
@given(
    json_values
    | st.sampled_from(sorted(PRIORITIES))
    | st.sampled_from(["LOW", " high", "normal\n", "Normal"])
)
def test_priority_is_exactly_low_normal_or_high(priority: Any) -> None:
    errors = errors_of({"file_id": 1, "priority": priority})
    if isinstance(priority, str) and priority in PRIORITIES:
        assert errors == {}
    else:
        assert set(errors) == {"priority"}


def test_priority_defaults_to_normal() -> None:
    serializer = DownloadJobInitiateSerializer(data={"file_id": 1})
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data["priority"] == Priority.NORMAL


# --- metadata ----------------------------------------------------------------------------------

# Objects around the 4 KiB limit: a filler string sized to land near it, multi-byte
# characters included (the limit counts UTF-8 bytes, not characters).
near_the_limit = st.builds(
    lambda key, char, count, extra: {key: char * count, **extra},
    st.text(min_size=1, max_size=8),
    st.sampled_from(["x", "é", "€", "😀", '"', "\\"]),
    st.integers(min_value=0, max_value=4200),
    st.dictionaries(st.text(max_size=8), json_scalars, max_size=3),
)


@PROPERTIES
@given(st.dictionaries(st.text(max_size=16), json_values, max_size=6) | near_the_limit)
def test_metadata_objects_are_accepted_iff_at_most_4_kib_serialized(metadata: dict[str, Any]) -> None:
    assume(not has_nul(metadata))
    errors = errors_of({"file_id": 1, "metadata": metadata})
    if serialized_size(metadata) <= django_settings.JOB_METADATA_MAX_BYTES:
        assert errors == {}
        serializer = DownloadJobInitiateSerializer(data={"file_id": 1, "metadata": metadata})
        assert serializer.is_valid()
        assert serializer.validated_data["metadata"] == metadata  # stored as is
    else:
        assert set(errors) == {"metadata"}


@PROPERTIES
@given(st.integers(min_value=0, max_value=4 * METADATA_MAX_DEPTH), st.booleans())
def test_metadata_nests_at_most_32_levels(levels: int, in_arrays: bool) -> None:
    nested: Any = 1
    for _ in range(levels):
        nested = [nested] if in_arrays else {"k": nested}
    metadata = {"a": nested}
    errors = errors_of({"file_id": 1, "metadata": metadata})
    assert (errors == {}) == (depth(metadata) <= METADATA_MAX_DEPTH), errors


@PROPERTIES
@given(st.text(), st.text(), st.booleans())
def test_metadata_with_a_nul_character_is_refused(before: str, after: str, in_key: bool) -> None:
    """PostgreSQL's jsonb cannot hold U+0000: refused up front on every database."""
    text = f"{before}\x00{after}"
    metadata = {text: 1} if in_key else {"k": [{"v": text}]}
    assert set(errors_of({"file_id": 1, "metadata": metadata})) == {"metadata"}


@PROPERTIES
@given(json_values.filter(lambda value: not isinstance(value, dict)))
def test_metadata_must_be_an_object(metadata: Any) -> None:
    assert set(errors_of({"file_id": 1, "metadata": metadata})) == {"metadata"}


# --- Idempotency-Key ---------------------------------------------------------------------------

PRINTABLE_NO_SPACE = "".join(chr(code) for code in range(0x21, 0x7F))
valid_keys = st.text(alphabet=PRINTABLE_NO_SPACE, min_size=1, max_size=255)


@PROPERTIES
@given(valid_keys)
def test_idempotency_key_accepts_1_to_255_printable_ascii(key: str) -> None:
    assert idempotency_key_validate(key) == key


@PROPERTIES
@given(
    st.text()
    | st.text(alphabet=PRINTABLE_NO_SPACE, min_size=256, max_size=400)
    | st.tuples(
        valid_keys, st.sampled_from([" ", "\n", "\t", "\r\n", "\x00", "\x7f", "é", "\u2028"]), st.booleans()
    ).map(lambda parts: parts[0] + parts[1] if parts[2] else parts[1] + parts[0])
)
def test_idempotency_key_refuses_anything_else(key: str) -> None:
    """Spaces, controls (a final newline too), non-ASCII, empty or over 255 characters."""
    valid = 1 <= len(key) <= 255 and all(0x21 <= ord(char) <= 0x7E for char in key)
    if valid:
        assert idempotency_key_validate(key) == key
    else:
        with pytest.raises(serializers.ValidationError) as refused:
            idempotency_key_validate(key)
        assert set(refused.value.detail) == {"Idempotency-Key"}


def test_no_idempotency_key_is_none() -> None:
    assert idempotency_key_validate(None) is None


# --- the list's filter ------------------------------------------------------------------------


@PROPERTIES
@given(st.text() | st.sampled_from(sorted(LIST_STATUSES)) | st.sampled_from(["ACTIVE", "queued ", "done"]))
def test_list_status_filter_is_active_or_a_status(status: str) -> None:
    filters = DownloadJobListFilterSerializer(data={"status": status})
    if status in LIST_STATUSES:
        assert filters.is_valid(), filters.errors
        assert filters.validated_data["status"] == status
    else:
        assert not filters.is_valid()
        assert set(filters.errors) == {"status"}


@PROPERTIES
@given(
    st.dictionaries(
        st.text(alphabet=string.ascii_lowercase, min_size=1).filter(lambda k: k != "status"), st.text()
    )
)
def test_list_filter_ignores_other_parameters(params: dict[str, str]) -> None:
    """`cursor` and `page_size` belong to the paginator; anything else is ignored."""
    filters = DownloadJobListFilterSerializer(data=params)
    assert filters.is_valid(), filters.errors
    assert filters.validated_data == {}


# --- through the API: no input reaches a 500 ---------------------------------------------------

THROUGH_THE_API = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.mark.django_db
@THROUGH_THE_API
@given(
    st.dictionaries(
        st.sampled_from(["p", "o", "r", "x"]),
        st.text() | st.integers().map(str) | st.datetimes().map(lambda moment: moment.isoformat()),
    ).map(lambda tokens: base64.b64encode(urlencode(tokens).encode()).decode())
    | st.text()
)
def test_any_cursor_answers_a_page_or_a_validation_error(api_client: Any, cursor: str) -> None:
    """DRF checks a cursor's offset but not its position; a crafted one was a 500."""
    response = api_client.get("/v1/downloads", {"cursor": cursor})
    assert response.status_code in (200, 400), response.content
    body = response.json()
    if response.status_code == 400:
        assert body["error"]["code"] == "VALIDATION_ERROR"
        assert set(body["error"]["fields"]) == {"cursor"}


@pytest.mark.django_db
@THROUGH_THE_API
@given(
    json_values.map(json.dumps)
    | st.builds(lambda metadata: json.dumps({"file_id": 1, "metadata": metadata}), json_values)
    | st.integers(min_value=1, max_value=4000).map(lambda levels: "[" * levels + "]" * levels)
)
def test_any_json_body_to_initiate_is_an_answer_not_a_500(
    api_client: Any, dispatched: Any, content: str
) -> None:
    """Deeply nested bodies included (Python's decoder recurses): a 400, not a 500."""
    response = api_client.post("/v1/download/initiate", content, content_type="application/json")
    assert response.status_code in (200, 400, 429), response.content
    assert response.json()["success"] is (response.status_code == 200)
