"""Every early stop is one message: what died, the newest usable checkpoint, the exact resume command."""

from pathlib import Path

from temper.stops import RunError, RunStopped, describe, resume_command

# What Ray's ActorDiedError says when a worker process is SIGKILLed (copied from a real run, shortened).
ACTOR_DIED = """The actor died unexpectedly before finishing this task.
\tclass_name: RolloutWorker
\tactor_id: 5a2b
\tpid: 14279
\tip: 192.0.2.2
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: \
Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: ..."""


def test_the_message_names_the_checkpoint_and_the_exact_command():
    cmd = ["temper", "train", "configs/demo.toml", "--set", "name=my run", "--resume", "old/ckpt"]
    stop = RunStopped("the learner's process died", Path("/r/demo-1"), Path("/r/demo-1/checkpoints/step-20"), step=33)
    assert stop.message(cmd) == (
        "temper train: stopped: the learner's process died\n"
        "  last completed step: 33\n"
        "  run directory: /r/demo-1\n"
        "  newest usable checkpoint: /r/demo-1/checkpoints/step-20\n"
        "  resume with: temper train configs/demo.toml --set 'name=my run' --resume /r/demo-1/checkpoints/step-20"
    )


def test_without_a_checkpoint_it_says_so_and_how_to_start_again():
    msg = RunStopped("stopped by a signal", Path("/r/x"), None, interrupted=True).message(["temper", "train", "c.toml"])
    assert msg.startswith("temper train: interrupted: stopped by a signal\n")
    assert "no checkpoint to resume from (checkpoint.every_steps = N writes them)" in msg and msg.endswith("temper train c.toml")


def test_resume_command_replaces_an_earlier_resume():
    assert resume_command(["temper", "train", "c.toml", "--resume=latest"], Path("/c/step-2")) == \
        "temper train c.toml --resume /c/step-2"


def test_ray_failures_are_described_in_one_line():
    import ray.exceptions as rex

    died = rex.ActorDiedError()
    died.error_msg = ACTOR_DIED
    assert describe(died) == ("a rollout worker's process (pid 14279) died (SYSTEM_ERROR: Worker unexpectedly exits "
                              "with a connection error code 2)")
    task = rex.RayTaskError("ReplayBuffer.get_batch", "tb", TimeoutError("no batch of 4 fresh groups within 9s"))
    assert describe(task.as_instanceof_cause()) == "no batch of 4 fresh groups within 9s"
    bug = rex.RayTaskError("train_step", "Traceback (most recent call last):\nValueError: bad shape",
                           ValueError("bad shape"), proctitle="ray::Learner.train_step")
    assert describe(bug.as_instanceof_cause()) == "Learner.train_step raised ValueError: bad shape"
    assert describe(RunError("rollout worker 0: gone")) == "rollout worker 0: gone"


def test_every_ending_has_its_name_in_the_summary():
    from temper.stops import RunError, Terminated, WorkersLost, ending_of

    assert ending_of(None) == "finished"
    assert ending_of(Terminated()) == "sigterm"  # raised by `temper train`'s SIGTERM handler
    assert ending_of(KeyboardInterrupt()) == "interrupt"
    assert ending_of(WorkersLost("rollout worker 0: died; rollout.max_restarts = 0")) == "worker_died"
    assert ending_of(RunError("bad data")) == "error" and ending_of(ValueError("bug")) == "error"


def test_sigterm_is_told_apart_even_when_ray_rewraps_it(monkeypatch):
    """Inside a blocking ray.get Ray raises a plain KeyboardInterrupt for whatever the handler raised."""
    import signal

    import pytest

    from temper import stops

    monkeypatch.setattr(stops, "_sigterm_seen", [])
    assert stops.ending_of(KeyboardInterrupt()) == "interrupt"
    with pytest.raises(stops.Terminated):
        stops.on_sigterm(signal.SIGTERM, None)
    assert stops.ending_of(KeyboardInterrupt()) == "sigterm"
