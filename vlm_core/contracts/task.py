"""The tasks the system serves: every contract names one.

``Task`` is an open set of names: the three built-in tasks are registered here, and a
:class:`vlm_core.tasks.TaskProfile` module registers a new one with :meth:`Task.register`.
A Task is its name (a ``str``), so it compares, hashes and serialises as that name; each
name has one instance, so ``is`` works as with an enum.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class _TaskType(type):
    def __iter__(cls) -> Iterator[Task]:
        return iter(list(Task._known.values()))

    def __len__(cls) -> int:
        return len(Task._known)


class Task(str, metaclass=_TaskType):
    _known: ClassVar[dict[str, Task]] = {}
    CLASSIFICATION: ClassVar[Task]
    DETECTION: ClassVar[Task]
    SEGMENTATION: ClassVar[Task]

    def __new__(cls, value: str) -> Task:
        if isinstance(value, Task):
            return value
        try:
            return cls._known[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a task; known: {', '.join(cls._known)}") from None

    @classmethod
    def register(cls, name: str) -> Task:
        """The Task called ``name``, registering it on first use (idempotent)."""
        if name not in cls._known:
            if not _NAME.fullmatch(name):
                raise ValueError(f"task name {name!r} must match {_NAME.pattern}")
            cls._known[name] = str.__new__(cls, name)
        return cls._known[name]

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Task({self.value!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Task, (self.value,))

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(), serialization=core_schema.plain_serializer_function_ser_schema(str)
        )


Task.CLASSIFICATION = Task.register("classification")
Task.DETECTION = Task.register("detection")
Task.SEGMENTATION = Task.register("segmentation")
