"""How a stored file is handed to a browser: its `Content-Disposition` (the name it saves
as) and a `Content-Type` from a safe list, so that no origin's type makes a browser
render or run the file as a page of the site."""

import re
import unicodedata
from urllib.parse import quote

from django.utils.http import parse_header_parameters

from jobs.transfer.origins import DEFAULT_CONTENT_TYPE, media_type_or_default, safe_file_name

# What the plain `filename="..."` may hold raw: printable ASCII but the quote, backslash,
# semicolon and percent (which some clients would decode), so that no client can misread it.
_FALLBACK_UNSAFE = re.compile(r"[^A-Za-z0-9 !#$&'()+,\-.=@\[\]^_`{}~]")
# The media types a download is served with as they are: a browser neither runs them nor
# renders them as a page (it shows, plays or saves them). Anything else is served as
# application/octet-stream: HTML, XML, SVG, scripts, JSON, multipart, ...
_SAFE_MEDIA_TYPES = frozenset(
    {
        DEFAULT_CONTENT_TYPE,
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-bzip2",
        "application/x-xz",
        "application/zstd",
        "application/x-7z-compressed",
        "application/vnd.rar",
        "text/plain",
        "text/csv",
    }
)
_SAFE_MEDIA_KINDS = ("image/", "audio/", "video/")  # but SVG and any other XML
_CHARSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,39}", re.ASCII)


def attachment_disposition(file_name: str) -> str:
    """`Content-Disposition: attachment` naming the file as RFC 6266 says: a plain ASCII
    `filename` (accents dropped, anything else `_`) and, when that is not the name itself,
    the exact name as `filename*=UTF-8''<percent-encoded>` (RFC 5987), which clients
    prefer. Whatever the origin called the file, no CR/LF, quote or semicolon is sent raw:
    it cannot end the header, add a parameter, or carry a path."""
    name = safe_file_name(file_name, fallback="download")
    decomposed = unicodedata.normalize("NFKD", name)
    plain = _FALLBACK_UNSAFE.sub("_", "".join(c for c in decomposed if not unicodedata.combining(c)))
    if plain == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def safe_content_type(content_type: str) -> str:
    """The type a stored file is served with, by every way of serving it (the S3 object's
    own type, a presigned link's override, a signed local link): the stored type if it is
    one of the safe list above, in lower case and with only a text type's charset as a
    parameter; else application/octet-stream. The file is served as an attachment too,
    but a browser told `text/html` may still render it from the site's own origin."""
    if media_type_or_default(content_type) != content_type:
        return DEFAULT_CONTENT_TYPE
    media_type, parameters = parse_header_parameters(content_type)
    safe = media_type in _SAFE_MEDIA_TYPES or (
        media_type.startswith(_SAFE_MEDIA_KINDS)
        and "svg" not in media_type
        and not media_type.endswith("xml")
    )
    if not safe:
        return DEFAULT_CONTENT_TYPE
    charset = parameters.get("charset", "")
    if media_type.startswith("text/") and _CHARSET.fullmatch(charset):
        return f"{media_type}; charset={charset.lower()}"
    return media_type
