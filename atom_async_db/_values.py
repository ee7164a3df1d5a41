"""Setting values: the parsers that turn a keyword's value, or an environment variable's
text, into a checked value, with an error that names the setting and what it accepts.

Each parser takes the value and the label to name it by (the option, or the variable).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from sqlalchemy.engine import URL

from ._masking import mask_url
from .exceptions import ConfigurationError

__all__ = [
    "application_name",
    "choice",
    "class_option",
    "int_at_least",
    "non_negative_float",
    "overflow",
    "parse_bool",
    "positive_float",
    "recycle",
    "url_list",
]


def parse_bool(value: object, label: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    raise ConfigurationError(f"{label} must be a boolean (true/false, 1/0, yes/no), got {value!r}")


def _number(value: object, label: str, kind: type[int] | type[float], expectation: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
    try:
        number = kind(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}") from None
    if kind is int and isinstance(value, float) and number != value:
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
    return number


def int_at_least(minimum: int) -> Callable[[object, str], int]:
    expectation = f"a whole number >= {minimum}"

    def parse(value: object, label: str) -> int:
        number = int(_number(value, label, int, expectation))
        if number < minimum:
            raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
        return number

    return parse


def positive_float(value: object, label: str) -> float:
    number = _number(value, label, float, "a number of seconds > 0")
    if not number > 0:
        raise ConfigurationError(f"{label} must be a number of seconds > 0, got {value!r}")
    return number


def non_negative_float(value: object, label: str) -> float:
    number = _number(value, label, float, "a number of seconds >= 0")
    if not number >= 0:
        raise ConfigurationError(f"{label} must be a number of seconds >= 0, got {value!r}")
    return number


def recycle(value: object, label: str) -> int:
    expectation = "a whole number of seconds >= 1, or -1 to never recycle"
    number = int(_number(value, label, int, expectation))
    if number != -1 and number < 1:
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
    return number


def url_list(value: object, label: str) -> tuple[str | URL, ...]:
    """A list of URLs: a list or tuple, or (an environment variable) separated by commas
    or spaces. Checked as URLs once the primary's URL is known (``build_settings``).

    Raises:
        ConfigurationError: ``value`` is none of these.
    """
    if isinstance(value, str):
        return tuple(part for part in value.replace(",", " ").split() if part)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, URL)) for v in value):
        return tuple(value)
    raise ConfigurationError(
        f"{label} must be a list of database URLs (or, in an environment variable, URLs "
        f"separated by commas), got {mask_url(str(value))!r}"
    )


def choice(*choices: str) -> Callable[[object, str], str]:
    def parse(value: object, label: str) -> str:
        lowered = value.strip().lower() if isinstance(value, str) else value
        if lowered not in choices:
            raise ConfigurationError(
                f"{label} must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return str(lowered)

    return parse


def overflow(value: object, label: str) -> int:
    expectation = "a whole number >= 0, or -1 for no limit"
    number = int(_number(value, label, int, expectation))
    if number < -1:
        raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
    return number


def application_name(value: object, label: str) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > 63:
        raise ConfigurationError(
            f"{label} must be a non-empty string of at most 63 bytes, got {value!r}"
        )
    return value


def pool_name(value: object, label: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ConfigurationError(
            f"{label} must be a non-empty name of at most 200 characters, got {value!r}"
        )
    return value.strip()


def class_option(base: type, example: str) -> Callable[[object, str], type]:
    """A parser for a class option: a subclass of ``base``, or its import path as
    ``"package.module:Name"`` (how an environment variable names it).
    """
    expectation = f"a subclass of {base.__module__}.{base.__qualname__} (such as {example})"

    def parse(value: object, label: str) -> type:
        if isinstance(value, str):
            value = _import_class(value.strip(), label, expectation)
        if not isinstance(value, type) or not issubclass(value, base):
            raise ConfigurationError(f"{label} must be {expectation}, got {value!r}")
        return value

    return parse


def _import_class(path: str, label: str, expectation: str) -> object:
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ConfigurationError(
            f"{label} must be {expectation}, or its import path as 'package.module:Name', "
            f"got {path!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(f"{label}: cannot import {module_name!r} ({error})") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigurationError(f"{label}: {module_name!r} has no {name!r}") from None
