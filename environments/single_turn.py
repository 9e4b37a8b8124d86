"""One user turn, one sampled answer: the environment of math/code RLVR.

All n samples are requested in one engine call so they share the prompt's prefix cache.
"""

from __future__ import annotations

from typing import Any

from temper.environments.base import Environment, Episode, Generate


class SingleTurnEnvironment(Environment):
    async def run_group(self, row: dict[str, Any], generate: Generate, n: int) -> list[Episode]:
        messages = self.messages(row)
        prompt_ids = self.encode_messages(messages)
        completions = await generate(prompt_ids, n)
        return [
            Episode(
                prompt=row[self.prompt_key],
                prompt_token_ids=tuple(prompt_ids),
                completion_token_ids=tuple(c.token_ids),
                logprobs=tuple(c.logprobs),
                loss_mask=(1,) * len(c.token_ids),
                response=c.text,
                versions=c.versions,
                stop_reason=c.finish_reason,
                token_versions=tuple(c.token_versions),
            )
            for c in completions
        ]
