"""Password masking: any text that came in as a database URL, rendered safe to show.

Error messages quote the URL a user gave so they can see what was wrong, and that URL is
often malformed: a missing ``:`` or ``//``, a stray space, an unencoded ``@`` in the
password, a libpq keyword string (``host=... password=...``) where a URL was expected.
So masking never relies on the text parsing as a URL: it works on the raw text and errs
on the side of hiding too much (a user name, a port) rather than a fragment of a password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import URL

__all__ = ["MASK", "mask_mapping", "mask_url"]

MASK = "***"

# ``password=...`` anywhere: a URL's query (libpq reads the password there too), a libpq
# keyword string, an environment-style assignment; also ``sslpassword``, ``PGPASSWORD``.
# A value is taken to run up to the next ``key=`` (or the end), so that a space, an ``&``
# or a quote inside it cannot leave its tail showing.
# A quoted value is taken whole first, so that a "key=" inside the quotes does not end it.
_KEYWORD_SECRET = re.compile(
    r"""(?is)([\w.-]*pass(?:word|wd)?[\w.-]*\s*=\s*)"""
    r"""((?:'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?)?.*?)(?=[\s&;,]+[\w.-]+\s*=|\s*$)"""
)
# Where the user info starts: after "scheme://" (or "scheme//"), else after "scheme:".
_AUTHORITY = re.compile(r"\s*[A-Za-z][\w+.-]*:?\s*//")
_SCHEME = re.compile(r"\s*[A-Za-z][\w+.-]*:")
# ``scheme://user:secret`` with no ``@`` puts the password where the port goes.
_PORT_WITHOUT_USER = re.compile(r"(?s)(//[^/?#:@\s]*:)(.*)")
_PORT_AND_PATH = re.compile(r"(?s)(\d{0,5})(?:[/?#].*)?")


def mask_url(url: str | URL) -> str:
    """``url`` for humans and logs, every password replaced by ``***``.

    A :class:`~sqlalchemy.engine.URL` is rendered with its password hidden; a string is
    masked as text, however malformed: the user-info part (up to the *last* ``@``, since
    a password may contain ``@``) and every ``password=`` value.
    """
    if isinstance(url, URL):
        return _mask_keywords(url.render_as_string(hide_password=True))
    # Encoded letters and digits decoded first, so that an encoded "password" key is still
    # one; encoded separators ("%40", "%2F") stay, or they would move the user info's end.
    return _mask_user_info(_mask_keywords(_ENCODED_WORD_CHARACTER.sub(_decoded, str(url))))


def mask_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` (``connect_args``, ``engine_options``) with password values
    masked, nested mappings included; for reprs.
    """
    return {key: _masked_value(key, value) for key, value in values.items()}


def _masked_value(key: object, value: Any) -> Any:
    if "pass" in str(key).lower():
        return MASK
    if isinstance(value, Mapping):
        return mask_mapping(value)
    if isinstance(value, str) and ("://" in value or "pass" in value.lower()):
        return mask_url(value)  # a DSN
    return value


_ENCODED_WORD_CHARACTER = re.compile(r"%([0-9A-Fa-f]{2})")


def _decoded(escape: re.Match[str]) -> str:
    char = chr(int(escape[1], 16))
    return char if char.isalnum() or char == "_" else escape[0]


def _is_port(text: str) -> bool:
    """Whether what follows "host:" reads as a port (and a path), not a password."""
    found = _PORT_AND_PATH.fullmatch(text)
    return found is not None and (not found[1] or int(found[1]) <= 65535)


def _mask_keywords(text: str) -> str:
    return _KEYWORD_SECRET.sub(lambda m: m[1] + MASK, text)


def _mask_user_info(text: str) -> str:
    at = text.rfind("@")
    if at < 0:
        return _PORT_WITHOUT_USER.sub(lambda m: m[0] if _is_port(m[2]) else m[1] + MASK, text)
    authority = _AUTHORITY.match(text)
    if authority is not None and authority.end() <= at:
        user, colon, _ = text[authority.end() : at].partition(":")
        # "user:***", or just "user" when there is no password
        return f"{text[: authority.end()]}{user}{colon and ':' + MASK}{text[at:]}"
    # No "//": nothing tells a user name from a password, so all of it is hidden.
    scheme = _SCHEME.match(text)
    start = scheme.end() if scheme is not None and scheme.end() <= at else 0
    return f"{text[:start]}{MASK}{text[at:]}"
