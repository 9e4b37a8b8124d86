"""temper: asynchronous RL post-training for language models.

Every part imports as `temper.<part>`: `temper.configs`, `temper.rollout`, `temper.learner`,
`temper.rewards`, `temper.environments` (top-level folders of the repository, mapped by pyproject.toml), and
the job itself here: `temper.cli`, `temper.job` (the driver loop), `temper.actors` (Ray at the edge),
`temper.demos` and `temper.report`.
"""
