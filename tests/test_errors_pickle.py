"""Every error class in scheduler.errors survives pickling (copies, multiprocessing); arq does not pickle:
task results travel as msgpack (tests/test_task_serializer.py)."""

from __future__ import annotations

import inspect
import pickle

import pytest

from scheduler import errors

CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.BatchshiftError) and cls.__module__ == errors.__name__
]


def test_every_class_is_covered():
    assert len(CLASSES) >= 11


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("field", [None, "body.model"])
def test_error_round_trips_through_pickle(cls: type[errors.BatchshiftError], field: str | None):
    error = cls("something is wrong", field)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, made one line above
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert copy.to_dict() == error.to_dict()
    assert copy.status_code == error.status_code
