"""The worker pool's decisions that need no cluster (the real restarts run in test_faults.py)."""

from temper.supervisor import hung


def test_a_worker_is_hung_only_with_groups_in_flight_past_the_deadline():
    progress = {0: {"in_flight": 3, "idle_s": 601.0}, 1: {"in_flight": 1, "idle_s": 599.0},
                2: {"in_flight": 2, "idle_s": 900.0}}
    # worker 1 is within the deadline; worker 2 is already being replaced
    assert hung(progress, starting={2}, stall_s=600) == [
        (0, "hung: 3 group(s) in flight and none finished in 601s (rollout.stall_timeout_s = 600)")
    ]
    # the buffer lists only workers with groups in flight: one waiting on the throttle is never hung
    assert hung({}, starting=set(), stall_s=1) == []
