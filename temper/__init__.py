"""temper: asynchronous RL post-training for language models.

Every part imports as `temper.<part>`: `temper.configs`, `temper.rollout`, `temper.learner`,
`temper.rewards`, `temper.environments` (top-level folders of the repository, mapped by pyproject.toml), and
the job itself here, above all of them (nothing in those packages imports it; tests/test_layering.py checks):
`temper.cli`, `temper.prepare` (every check before anything starts), `temper.cluster` (the Ray bootstrap),
`temper.job` (the driver loop, a `Run`), `temper.actors` (Ray at the edge), `temper.demos` (the demos' models and data) and
`temper.report`.
"""
