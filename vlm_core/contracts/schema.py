"""The JSON Schemas shipped with the contracts, loaded once and validated the same way."""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from typing import Any

from vlm_core.errors import VlmError


@cache
def json_schema(name: str) -> dict[str, Any]:
    """A shipped schema by file name, e.g. ``json_schema("result-v1.json")``."""
    return json.loads(resources.files(__package__).joinpath("schemas", name).read_text())


@cache
def _validator(name: str) -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(json_schema(name))


def validate(doc: Any, name: str, error: type[VlmError]) -> None:
    """Raise ``error`` naming the first violation of schema ``name``."""
    problem = next(iter(sorted(_validator(name).iter_errors(doc), key=lambda e: list(e.path))), None)
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "<root>"
        raise error(f"{where}: {problem.message}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(data: bytes | str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and overflowing numbers.

    Python's reader accepts them, but they are not JSON and the contracts' writers
    (``allow_nan=False``) could not write them back, so a record that carries one is
    refused at the door with a ``ValueError`` like any other malformed document.
    """
    return json.loads(data, parse_float=_finite, parse_constant=_no_constant)


def json_object(data: bytes, error: type[VlmError], noun: str) -> dict[str, Any]:
    """A JSON document that must be an object, or ``error`` saying why it is not."""
    try:
        doc = strict_json(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{noun} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error(f"{noun} must be a JSON object")
    return doc
