"""The base of every config model: unknown keys are errors, and a validated config never changes.

Plugins (verifiers, environments) take their parameters as a model of this shape; `NoParams` is the one
for a plugin that takes none.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Strict):
    """Parameters of a plugin that takes none."""
