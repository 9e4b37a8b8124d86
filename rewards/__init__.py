"""Reward verifiers: the contract (base), the registry, the rubric
(which scores, in this process or in killable ones) and `temper rewards`.

Kept import-light on purpose: importing `rewards` loads only the contract, so the CLI and config
validation start instantly; the math verifier (sympy) loads when a rubric first names it.
"""

from temper.rewards.base import NoParams, Verifier, VerifyRequest, VerifyResult

__all__ = ["NoParams", "Verifier", "VerifyRequest", "VerifyResult"]
