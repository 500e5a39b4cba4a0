"""Typed readers for environment variables.

Each reader refuses a bad value with ``ImproperlyConfigured`` naming the variable, so a typo stops
start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    value = _raw(name, environ)
    return default if value is None else value


def env_bool(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {value!r}")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    value = _raw(name, environ)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {number}")
    return number


def env_float(
    name: str, default: float, *, minimum: float | None = None, environ: Mapping[str, str] | None = None
) -> float:
    value = _raw(name, environ)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ImproperlyConfigured(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def env_list(name: str, default: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """A comma-separated list; blank items are dropped."""
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_int_list(
    name: str, default: list[int], *, minimum: int = 0, environ: Mapping[str, str] | None = None
) -> list[int]:
    items = env_list(name, [str(d) for d in default], environ)
    numbers: list[int] = []
    for item in items:
        try:
            number = int(item)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must be comma-separated whole numbers, got {item!r}"
            ) from None
        if number < minimum:
            raise ImproperlyConfigured(f"{name} values must be at least {minimum}, got {number}")
        numbers.append(number)
    if not numbers:
        raise ImproperlyConfigured(f"{name} must name at least one value")
    return numbers


def env_args(name: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Extra command-line arguments, split as a POSIX shell would (never run through a shell)."""
    value = _raw(name, environ)
    if value is None:
        return []
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not a valid argument list: {exc}") from None


def env_choice(
    name: str, default: str, choices: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> str:
    value = env_str(name, default, environ)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
