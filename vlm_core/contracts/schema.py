"""The JSON Schemas shipped with the contracts, loaded once and validated the same way."""

from __future__ import annotations

import json
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


def json_object(data: bytes, error: type[VlmError], noun: str) -> dict[str, Any]:
    """A JSON document that must be an object, or ``error`` saying why it is not."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{noun} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error(f"{noun} must be a JSON object")
    return doc
