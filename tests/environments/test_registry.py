"""Environments resolve by built-in name or `module:attr`, and mistakes say what is known."""

import pytest

from temper.environments.registry import resolve_environment
from temper.environments.single_turn import SingleTurnEnvironment


def test_builtin_and_import_string():
    assert resolve_environment("single_turn") is SingleTurnEnvironment
    assert resolve_environment("temper.environments.single_turn:SingleTurnEnvironment") is SingleTurnEnvironment


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown environment 'multi'; known: .*single_turn"):
        resolve_environment("multi")


def test_import_string_that_does_not_import():
    with pytest.raises(ValueError, match="cannot import it"):
        resolve_environment("environments.nope:Env")


def test_not_an_environment():
    with pytest.raises(TypeError, match="not a temper.environments.base.Environment"):
        resolve_environment("temper.environments.base:Episode")
