"""The concept tasks of the world and their one registry.

``get_task(name)`` looks a task up; ``register_task(task)`` adds one (a ``Task``
subclass instance), after which the CLI's ``--task``, training, sampling and
evaluation accept its name. ``task_names()`` and ``task_help()`` list what is
registered, for CLI help. ``TASKS`` names the built-in tasks.
"""
from __future__ import annotations

from compdiff.errors import InputError
from compdiff.world.tasks.attributes import VOCAB, Attribute, AttributesTask
from compdiff.world.tasks.base import Task, TaskEncoder
from compdiff.world.tasks.described import DescribedTask
from compdiff.world.tasks.objects import RADIUS, ObjectsTask, Position
from compdiff.world.tasks.relations import (MARGIN, RELATIONS, Desc, Relation,
                                            RelationsTask, relation_holds)

_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, replace: bool = False) -> Task:
    """Make ``task`` available under ``task.name``; returns it. Taking a name that is
    already registered is a ValueError unless ``replace``, so that two tasks cannot
    silently shadow each other."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task takes a Task instance, got {type(task).__name__}")
    if not task.name:
        raise ValueError(f"{type(task).__name__} has an empty name")
    if task.name in _REGISTRY and not replace:
        raise ValueError(f"task {task.name!r} is already registered; pass replace=True to replace it")
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> Task:
    """Remove the task called ``name`` and return it (unknown: InputError), e.g. to undo
    a test's ``register_task``."""
    task = get_task(name)
    del _REGISTRY[task.name]
    return task


def get_task(name: str | Task) -> Task:
    """The task called ``name`` (a Task passes through). Unknown: InputError."""
    if isinstance(name, Task):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown task {name!r}; accepted: {', '.join(task_names())}") from None


def task_names() -> tuple[str, ...]:
    """The registered task names, in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


def task_help() -> str:
    """One line per registered task, ``name: its help``, for a CLI epilog."""
    return "\n".join(f"  {name}: {task.help}" for name, task in _REGISTRY.items())


#: the built-in tasks (``task_names()`` also lists tasks registered later)
TASKS = tuple(register_task(t).name
              for t in (ObjectsTask(), RelationsTask(), AttributesTask(), DescribedTask()))

__all__ = ["TASKS", "get_task", "register_task", "unregister_task", "task_names", "task_help",
           "Task", "TaskEncoder", "ObjectsTask", "Position", "RADIUS",
           "RelationsTask", "Relation", "Desc", "RELATIONS", "MARGIN", "relation_holds",
           "AttributesTask", "Attribute", "VOCAB", "DescribedTask"]
