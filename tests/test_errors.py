"""One exception family: every error button_ray defines is a ButtonRayError, and the CLI
handles a branch, not a list of classes."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import button_ray
from button_ray import cli
from button_ray.errors import ButtonRayError, LLMUnavailableError, ParseError, RecordError, UserError


def _defined_exceptions() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(button_ray.__path__, "button_ray."):
        module = importlib.import_module(info.name)
        found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, BaseException) and cls.__module__ == module.__name__]
    return found


def test_every_exception_class_of_button_ray_is_a_button_ray_error() -> None:
    defined = _defined_exceptions()
    # The walk sees more than errors.py: the simulation's private early exit, for one.
    assert {c.__module__ for c in defined} > {"button_ray.errors"}
    assert [c for c in defined if not issubclass(c, ButtonRayError)] == []


def test_record_errors_are_not_user_errors() -> None:
    assert issubclass(ParseError, RecordError) and not issubclass(ParseError, UserError)


class _NewUserError(UserError):
    """A user error no code handles by name."""


@pytest.mark.parametrize(("error", "code", "text"), [
    (_NewUserError("the frobnicator is off: turn it on"), 2, "button-ray: the frobnicator is off: turn it on\n"),
    (LLMUnavailableError("pool 'main' is gone"), 3, None),
])
def test_the_cli_turns_a_family_error_into_one_line_and_its_exit_code(monkeypatch, capsys, error, code, text) -> None:
    def fail(_args):
        raise error

    monkeypatch.setattr(cli, "cmd_validate", fail)
    assert cli.main(["validate", "any.jsonl"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    if text is not None:
        assert err == text
    else:
        assert str(error) in err and "resumes" in err
