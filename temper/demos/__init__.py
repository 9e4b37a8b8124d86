"""The demos' self-made models and tasks (nothing can come from a model hub): built on first use and cached.

- addition.py: two-digit sums answered directly (`configs/demo.toml`); its byte-level tokenizer, tiny Qwen2
  and seeded splits are the base the tool demo builds on.
- calculator.py: multiplication with the calculator tool (`configs/tool_demo.toml`).
- warm_start.py: the supervised warm start both share, stopped at a target accuracy.
- assets.py: the cache, keyed by the settings: `ensure_demo_assets` is what a run calls.

Imports run one way: warm_start <- addition <- calculator <- assets. This file imports nothing, so the
tokenizer alone (`temper env try`) does not pull in torch.
"""
