"""The API's JSON parser: DRF's, except that a body nested too deeply for Python's JSON
decoder (it recurses, and gives up at the interpreter's recursion limit) is malformed
JSON, a 400, rather than a RecursionError that would surface as a 500."""

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
