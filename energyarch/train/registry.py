"""The registry of tasks: a task is one file, a :class:`~energyarch.train.tasks.Task` subclass and a builder
registered under its name(s), which ``TrainConfig.task`` then accepts.

This module holds only the table, so that :mod:`energyarch.train.config` (which checks ``task``) and
:mod:`energyarch.train.tasks` (which registers the built-in tasks) both import it without importing each other.

>>> sorted(TASKS)[:3]
['cifar10', 'cifar100', 'digits']
"""

from __future__ import annotations

from typing import Callable

#: task name → builder ``(TrainConfig) -> Task``, in registration order
TASKS: dict[str, Callable] = {}


def register_task(*names: str) -> Callable:
    """Decorator: register a task builder ``build(cfg) -> Task`` under one or more names (``TrainConfig.task``).

    The builder reads the config's settings it needs (``data_dir``, ``limit_train``, ``limit_test``, ...)."""

    def decorate(builder: Callable) -> Callable:
        for name in names:
            TASKS[name] = builder
        return builder

    return decorate
