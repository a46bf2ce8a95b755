"""The three concept tasks of the world and their registry: ``get_task(name)``."""
from __future__ import annotations

from compdiff.errors import InputError
from compdiff.world.tasks.attributes import VOCAB, Attribute, AttributesTask
from compdiff.world.tasks.base import Task, TaskEncoder
from compdiff.world.tasks.objects import RADIUS, ObjectsTask, Position
from compdiff.world.tasks.relations import (MARGIN, RELATIONS, Desc, Relation,
                                            RelationsTask, relation_holds)

TASKS = ("objects", "relations", "attributes")
_REGISTRY: dict[str, Task] = {"objects": ObjectsTask(), "relations": RelationsTask(),
                              "attributes": AttributesTask()}


def get_task(name: str | Task) -> Task:
    """The task called ``name`` (a Task passes through). Unknown: InputError."""
    if isinstance(name, Task):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "get_task", "Task", "TaskEncoder", "ObjectsTask", "Position", "RADIUS",
           "RelationsTask", "Relation", "Desc", "RELATIONS", "MARGIN", "relation_holds",
           "AttributesTask", "Attribute", "VOCAB"]
