"""Every error class in scheduler.errors survives pickling (copies, multiprocessing) and is drawn in the
module's tree; arq does not pickle: task results travel as msgpack (tests/test_task_serializer.py).
The workers' tree has the same tests in tests/workers/test_errors.py."""

from __future__ import annotations

import inspect
import pickle
from types import ModuleType

import pytest

from scheduler import errors
from workers import errors as worker_errors

CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.SchedulerError) and cls.__module__ == errors.__name__
]
API_CLASSES = [cls for cls in CLASSES if issubclass(cls, errors.BatchshiftError)]
SAMPLE_ARGS: dict[type[errors.SchedulerError], tuple[object, ...]] = {
    errors.SchedulerError: ("something is wrong",),
    errors.Fenced: (41,),
    errors.UnknownProvider: ("openai:gpt-4o-mini:/v1/chat/completions", "openai"),
    errors.InvalidCron: ("61 * * * *", "not a valid cron expression"),
    errors.TaskFailed: ("ProviderNotFound", "404 not_found: no such batch"),
}


def test_every_class_is_covered():
    assert len(API_CLASSES) >= 11
    assert set(CLASSES) == set(API_CLASSES) | set(SAMPLE_ARGS)


@pytest.mark.parametrize("cls", API_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("field", [None, "body.model"])
def test_error_round_trips_through_pickle(cls: type[errors.BatchshiftError], field: str | None):
    error = cls("something is wrong", field)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, made one line above
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert copy.to_dict() == error.to_dict()
    assert copy.status_code == error.status_code


@pytest.mark.parametrize("cls", list(SAMPLE_ARGS), ids=lambda c: c.__name__)
def test_internal_error_round_trips_through_pickle(cls: type[errors.SchedulerError]):
    error = cls(*SAMPLE_ARGS[cls])
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, made one line above
    assert type(copy) is cls
    assert copy.args == error.args
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def test_every_class_is_drawn_in_the_module_tree():
    doc = errors.__doc__ or ""
    assert [cls.__name__ for cls in CLASSES if cls.__name__ not in doc] == []


def test_callers_of_the_builtin_bases_still_catch_them():
    """UnknownProvider and InvalidCron joined the tree without leaving the builtin classes they had."""
    assert issubclass(errors.UnknownProvider, LookupError)
    assert issubclass(errors.InvalidCron, ValueError)


def test_the_two_trees_share_no_class_name():
    def names(module: ModuleType, root: type[Exception]) -> set[str]:
        return {
            name
            for name, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, root) and cls.__module__ == module.__name__
        }

    shared = names(errors, errors.SchedulerError) & names(worker_errors, worker_errors.WorkerError)
    assert shared == set()


@pytest.mark.parametrize("module", [errors, worker_errors], ids=lambda m: m.__name__)
def test_every_class_says_when_it_is_raised(module: ModuleType):
    classes = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == module.__name__
    ]
    roots = [cls for cls in classes if not any(base in classes for base in cls.__mro__[1:])]
    assert len(roots) == 1, "one root per package"
    unsaid = [
        cls.__name__
        for cls in classes
        if cls not in roots and not (cls.__doc__ or "").startswith("Raised when ")
    ]
    assert unsaid == []
