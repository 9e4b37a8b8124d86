"""The `temper` command. Subcommands import only what they need: `temper rewards` never loads torch,
vLLM or Ray, and config mistakes are reported before anything heavy starts."""

from __future__ import annotations

import argparse
import signal
import sys

from temper.stops import on_sigterm  # no torch, vLLM or Ray


def _train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="temper train", description="Run an RL post-training job.")
    parser.add_argument("config", help="run config (TOML), e.g. configs/demo.toml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set learner.optimizer.lr=1e-4 (repeatable)",
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR|CHECKPOINT|latest", default=None,
        help="continue a run: its folder (newest complete checkpoint), one checkpoint folder "
             "(RUN_DIR/checkpoints/step-N), or `latest` (the newest run of this config's name that has one)",
    )
    args = parser.parse_args(argv)
    from temper.configs.load import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        from temper.prepare import prepare

        # Config, paths, every data line, plugins and the checkpoint: all before Ray or torch-heavy work.
        prepared = prepare(cfg, resume=args.resume)
    except ConfigError as e:
        print(f"temper train: {e}", file=sys.stderr)
        return 2
    from temper.job import RunStopped, train

    # `kill` and `ray job stop` send SIGTERM: treat it like Ctrl-C so the same cleanup runs.
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        train(prepared.cfg, prepared=prepared)
    except ConfigError as e:
        print(f"temper train: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(e.message(["temper", "train", *argv]), file=sys.stderr)
        return 130 if e.interrupted else 1
    return 0


def _clean(argv: list[str]) -> int:
    argparse.ArgumentParser(
        prog="temper clean",
        description="Remove the shared memory (/dev/shm) that runs killed outright on this machine left behind: "
                    "only segments a run recorded, whose run is dead and that no live process uses.",
    ).parse_args(argv)
    from temper.cleanup import remove_dead_weights_folders
    from temper.shm_records import describe, reap

    removed = reap()
    for r in removed:
        print(f"removed /dev/shm/{r.name} ({r.bytes:,} bytes) of dead run {r.pid}")
    folders = remove_dead_weights_folders()
    for folder in folders:
        print(f"removed {folder} (published weights of a dead run)")
    print(f"temper clean: {describe(removed)}" if removed else "temper clean: no recorded segment of a dead run left")
    return 0


def _check_config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="temper check-config", description="Validate a run config and exit.")
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from temper.configs.load import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        from temper.rewards.rubric import validate_rewards_config

        validate_rewards_config(cfg.rewards)
    except ConfigError as e:
        print(f"temper check-config: {e}", file=sys.stderr)
        return 2
    print(cfg.model_dump_json(indent=1))
    return 0


COMMANDS = {
    "train": ("run an RL post-training job from a TOML config", _train),
    "rewards": ("debug rewards without a model: list, score, check, replay", None),
    "check-config": ("validate a run config (with --set overrides) and print it resolved", _check_config),
    "env": ("run one episode of an environment against scripted replies: env try CONFIG --row --reply", None),
    "clean": ("remove shared memory that runs killed outright (kill -9, OOM) left in /dev/shm", _clean),
    "report": ("re-render runs' plots and headline numbers from their folders; compare several", None),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<13} {help_}" for name, (help_, _) in COMMANDS.items()]
        print("usage: temper COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "rewards":
        from temper.rewards.cli import main as rewards_main

        return rewards_main(argv[1:])
    if argv[0] == "report":
        from temper.report_cli import main as report_main

        return report_main(argv[1:])
    if argv[0] == "env":
        from temper.env_cli import main as env_main

        return env_main(argv[1:])
    return COMMANDS[argv[0]][1](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
