"""Environments turn a dataset row into episodes: single-turn, or multi-turn with tools.

What a plugin needs is importable from here: `Environment` (the low-level `run_group` contract),
`MultiTurnEnvironment` (setup / step / teardown), `ToolEnvironment` (tools and Hermes tool calls), `tool`,
`Tool`, `ToolError`, and the built-in `calculator`.
"""

from temper.environments.base import Environment, Episode
from temper.environments.calculator import calculator
from temper.environments.multi_turn import EpisodeStart, MultiTurnEnvironment, MultiTurnParams, StepResult
from temper.environments.tool_env import ToolEnvironment, ToolParams
from temper.environments.tools import Tool, ToolError, tool

__all__ = [
    "Environment", "Episode", "EpisodeStart", "MultiTurnEnvironment", "MultiTurnParams", "StepResult",
    "Tool", "ToolEnvironment", "ToolError", "ToolParams", "calculator", "tool",
]
