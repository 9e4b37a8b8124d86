"""What a run asks of the cluster vs what it can ever offer, with numbers derived by hand."""

import pytest

from temper import resources
from temper.configs.schema import RunConfig


def cfg(**ray) -> RunConfig:
    workers = ray.pop("workers", 1)
    return RunConfig.model_validate({"model": {"path": "m"}, "data": {"train": "t"},
                                     "rollout": {"num_workers": workers}, "ray": ray})


def test_the_issue_case_two_workers_and_a_learner_on_two_cores():
    # 2 workers x 1 CPU + learner 1 CPU = 3 CPUs > 2
    problem = resources.shortfall(resources.asks(cfg(workers=2)), [{"CPU": 2.0}], "; ray.num_cpus = 2")
    assert problem == ("this run asks for 3 CPUs (rollout.num_workers = 2 x ray.worker_cpus = 1 + ray.learner_cpus = 1) "
                       "but the cluster has 2 (1 node; ray.num_cpus = 2). Lower those fields, or give the cluster more CPUs.")
    assert resources.shortfall(resources.asks(cfg(workers=2)), [{"CPU": 3.0}]) is None


def test_fractions_add_up_and_gpus_are_checked_per_node():
    # 4 x 0.5 + 1 = 3 CPUs: fits 2 nodes of 2
    assert resources.shortfall(resources.asks(cfg(workers=4, worker_cpus=0.5)), [{"CPU": 2.0}, {"CPU": 2.0}]) is None
    # a learner on 2 GPUs never fits nodes of 1 GPU each, although the cluster has 2 in total
    problem = resources.shortfall(resources.asks(cfg(learner_gpus=2.0)), [{"CPU": 8, "GPU": 1.0}, {"CPU": 8, "GPU": 1.0}])
    assert problem == "one learner asks for 2 GPUs (ray.learner_gpus) but the largest node has 1. Lower ray.learner_gpus."
    problem = resources.shortfall(resources.asks(cfg(worker_gpus=1.0)), [{"CPU": 8.0}])
    assert problem.startswith("this run asks for 1 GPUs (rollout.num_workers = 1 x ray.worker_gpus = 1) but the cluster has 0")


def test_a_private_cluster_is_checked_before_it_starts():
    with pytest.raises(RuntimeError, match=r"asks for 3 CPUs .* but the cluster has 2 \(1 node; ray.num_cpus = 2\)"):
        resources.check_local(cfg(workers=2, num_cpus=2))
    resources.check_local(cfg(workers=1, num_cpus=2))


def test_an_autoscaling_cluster_is_waited_for_with_a_message_and_a_timeout(monkeypatch):
    """Fakes for the cluster's view: it has 1 CPU now and can grow to 4 nodes of 2."""
    nodes = [[{"CPU": 1.0}], [{"CPU": 1.0}], [{"CPU": 1.0}, {"CPU": 2.0}, {"CPU": 2.0}]]
    monkeypatch.setattr(resources, "alive_nodes", lambda: nodes.pop(0) if len(nodes) > 1 else nodes[0])
    monkeypatch.setattr(resources, "autoscaling_limit", lambda: [{"CPU": 2.0}] * 4)
    said = []
    resources.check(cfg(workers=2), private_cluster=False, log=said.append, sleep=lambda s: None)
    assert len(said) == 1 and said[0].startswith("waiting for the autoscaler (600s left of ray.resource_wait_s)")

    monkeypatch.setattr(resources, "alive_nodes", lambda: [{"CPU": 1.0}])
    with pytest.raises(RuntimeError, match=r"did not grow enough within ray.resource_wait_s = 0s"):
        resources.check(cfg(workers=2, resource_wait_s=0), private_cluster=False, log=said.append, sleep=lambda s: None)
    monkeypatch.setattr(resources, "autoscaling_limit", lambda: [{"CPU": 2.0}])  # can never grow enough
    with pytest.raises(RuntimeError, match=r"asks for 3 CPUs"):
        resources.check(cfg(workers=2), private_cluster=False, log=said.append, sleep=lambda s: None)


def test_learner_ranks_and_custom_resources_are_counted():
    # 2 ranks x 1 CPU + 1 worker x 1 CPU = 3 CPUs > 2
    two_ranks = RunConfig.model_validate({"model": {"path": "m"}, "data": {"train": "t"},
                                          "learner": {"world_size": 2}})
    problem = resources.shortfall(resources.asks(two_ranks), [{"CPU": 2.0}])
    assert problem.startswith("this run asks for 3 CPUs (rollout.num_workers = 1 x ray.worker_cpus = 1 + "
                              "learner.world_size = 2 x ray.learner_cpus = 1)")
    # workers pinned to nodes started with --resources='{"rollout": 1}': one node has 1, two workers need 2
    pinned = cfg(workers=2, worker_cpus=0.5, worker_resources={"rollout": 1})
    problem = resources.shortfall(resources.asks(pinned), [{"CPU": 4.0}, {"CPU": 4.0, "rollout": 1.0}])
    assert problem == ("this run asks for 2 of resource 'rollout' (rollout.num_workers = 2 x "
                       "ray.worker_resources.rollout = 1) but the cluster has 1 (2 nodes). Lower those fields, or "
                       "give the cluster more nodes with 'rollout' (ray start --resources).")
    assert resources.shortfall(resources.asks(pinned), [{"CPU": 4.0}, {"CPU": 4.0, "rollout": 2.0}]) is None
