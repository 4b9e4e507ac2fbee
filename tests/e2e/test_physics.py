"""The simulated physics on their own: EC2 boot delay, maintained fleets, the ECS agent's worker processes.

These drive EC2 and ECS by hand (no state machine), as the control plane would."""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotfill.localcloud.agent import session_processes

from .helpers import eventually

pytestmark = pytest.mark.e2e

# A stand-in worker (reports its environment, then waits; on SIGTERM it writes "drained" and exits 0), which
# the module's local cloud allows besides the worker (tests/e2e/conftest.py); found on PYTHONPATH.
STANDIN = Path(__file__).resolve().parent / "standin"
FAKE_WORKER_MODULE = "spotfill_fake_worker"


@pytest.fixture
def local_cloud(shared_cloud, monkeypatch):
    """The module's cloud; each test works in its own clusters and cleans up its fleets and services."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(STANDIN), os.environ.get("PYTHONPATH")) if p)
    )
    yield shared_cloud
    ec2, ecs = shared_cloud.client("ec2"), shared_cloud.client("ecs")
    fleets = [c["SpotFleetRequestId"] for c in ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]]
    if fleets:
        ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=fleets, TerminateInstances=True)
    clusters = ecs.list_clusters()["clusterArns"]
    for cluster in clusters:
        for service in ecs.list_services(cluster=cluster)["serviceArns"]:
            ecs.delete_service(cluster=cluster, service=service, force=True)
    eventually(lambda: not shared_cloud.agent.tasks and not shared_cloud.fleet.running_machines(), timeout=30)
    for cluster in clusters:
        for instance in ecs.list_container_instances(cluster=cluster)["containerInstanceArns"]:
            ecs.deregister_container_instance(cluster=cluster, containerInstance=instance, force=True)
        ecs.delete_cluster(cluster=cluster)
    assert shared_cloud.wait_idle(), shared_cloud.leftovers()


def tasks_in(cloud, cluster: str):
    return [t for t in cloud.agent.running_tasks() if t.cluster == cluster]


def _launch_template_version(cloud, cluster: str) -> str:
    ec2 = cloud.client("ec2")
    user_data = base64.b64encode(
        f"#!/bin/bash\ncat >> /etc/ecs/ecs.config <<EOF\nECS_CLUSTER={cluster}\nEOF\n".encode()
    ).decode()
    image = ec2.describe_images()["Images"][0]["ImageId"]
    version = ec2.create_launch_template_version(
        LaunchTemplateId=cloud.outputs.launch_template_id,
        LaunchTemplateData={"ImageId": image, "UserData": user_data},
    )
    return str(version["LaunchTemplateVersion"]["VersionNumber"])


def _run_scope(
    cloud,
    cluster: str,
    desired: int,
    stop_timeout: int = 2,
    service: str = "workers",
    platform: dict | None = None,
    **container: object,
) -> None:
    ecs = cloud.client("ecs")
    ecs.create_cluster(clusterName=cluster)
    task_definition = ecs.register_task_definition(
        **({"runtimePlatform": platform} if platform else {}),
        family=f"{cluster}-{service}",
        cpu="1024",
        memory="2048",
        containerDefinitions=[
            {
                "name": "worker",
                "image": "spotfill-worker:local",
                "command": ["python", "-m", FAKE_WORKER_MODULE],
                "environment": [{"name": "SPOTFILL_RUN_ID", "value": cluster}],
                "stopTimeout": stop_timeout,
                **container,
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(
        cluster=cluster, serviceName=service, taskDefinition=task_definition, desiredCount=desired
    )


def _request_fleet(
    cloud, version: str, capacity: int, types: tuple[str, ...] = ("c5.xlarge",), **config: object
) -> str:
    ec2 = cloud.client("ec2")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    return ec2.request_spot_fleet(
        SpotFleetRequestConfig={
            "IamFleetRole": cloud.outputs.outputs["SpotFleetRoleArn"],
            "TargetCapacity": capacity,
            "AllocationStrategy": "priceCapacityOptimized",
            "LaunchTemplateConfigs": [
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateId": cloud.outputs.launch_template_id,
                        "Version": version,
                    },
                    "Overrides": [
                        {"InstanceType": t, "SubnetId": subnet, "WeightedCapacity": 1.0} for t in types
                    ],
                }
            ],
            **config,
        }
    )["SpotFleetRequestId"]


def _instance_states(cloud, fleet_id: str) -> list[str]:
    ec2 = cloud.client("ec2")
    ids = [
        i["InstanceId"]
        for i in ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]
    ]
    if not ids:
        return []
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return [i["State"]["Name"] for r in reservations for i in r["Instances"]]


def test_fleet_instances_boot_join_the_cluster_in_their_user_data_and_run_the_services_tasks(local_cloud):
    # given a run scope with a service, and a launch template version that joins it
    _run_scope(local_cloud, "run-one", desired=0)
    version = _launch_template_version(local_cloud, "run-one")

    # when a fleet of two is requested
    fleet_id = _request_fleet(local_cloud, version, capacity=2)

    # then its instances are pending first, running after the boot delay, and registered into run-one
    assert eventually(lambda: _instance_states(local_cloud, fleet_id)) == ["pending", "pending"]
    eventually(lambda: _instance_states(local_cloud, fleet_id) == ["running", "running"])
    ecs = local_cloud.client("ecs")
    eventually(lambda: len(ecs.list_container_instances(cluster="run-one")["containerInstanceArns"]) == 2)
    # and once the service wants two tasks, two worker processes run, spread one per instance, with the task's
    # environment and the emulator's endpoint
    ecs.update_service(cluster="run-one", service="workers", desiredCount=2)
    tasks = eventually(
        lambda: len(tasks_in(local_cloud, "run-one")) == 2 and tasks_in(local_cloud, "run-one")
    )
    assert len({t.instance_id for t in tasks}) == 2
    first_lines = [eventually(lambda t=t: t.log_path.read_text().splitlines()) for t in tasks]
    for lines in first_lines:
        environment = json.loads(lines[0])
        assert environment == {"AWS_ENDPOINT_URL": local_cloud.endpoint_url, "SPOTFILL_RUN_ID": "run-one"}


def test_a_task_runs_only_on_an_instance_of_its_runtime_platforms_architecture(local_cloud):
    # given an arm64 task definition, and an x86_64 instance registered in its cluster
    arm64 = {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}
    _run_scope(local_cloud, "run-arm", desired=0, platform=arm64)
    version = _launch_template_version(local_cloud, "run-arm")
    _request_fleet(local_cloud, version, capacity=1, types=("c5.xlarge",))
    ecs, ec2 = local_cloud.client("ecs"), local_cloud.client("ec2")
    eventually(lambda: len(ecs.list_container_instances(cluster="run-arm")["containerInstanceArns"]) == 1)
    # when the service wants a task, and only then an arm64 (Graviton) instance joins
    ecs.update_service(cluster="run-arm", service="workers", desiredCount=1)
    _request_fleet(local_cloud, version, capacity=1, types=("m7g.xlarge",))
    # then the task waits for the arm64 instance and runs there, never on the x86_64 one
    (task,) = eventually(lambda: tasks_in(local_cloud, "run-arm"), timeout=60)
    (reservation,) = ec2.describe_instances(InstanceIds=[task.instance_id])["Reservations"]
    assert reservation["Instances"][0]["InstanceType"] == "m7g.xlarge"


def test_a_second_run_scope_gets_its_own_instances_from_its_own_launch_template_version(local_cloud):
    # given two runs, each with its own cluster and launch template version
    _run_scope(local_cloud, "run-a", desired=1)
    _run_scope(local_cloud, "run-b", desired=1)
    version_a = _launch_template_version(local_cloud, "run-a")
    version_b = _launch_template_version(local_cloud, "run-b")

    # when both fleets are requested (run-a's version is not the template's latest)
    _request_fleet(local_cloud, version_a, capacity=1)
    _request_fleet(local_cloud, version_b, capacity=1)

    # then each cluster gets exactly one instance and one task
    ecs = local_cloud.client("ecs")
    for cluster in ("run-a", "run-b"):
        eventually(
            lambda c=cluster: len(ecs.list_container_instances(cluster=c)["containerInstanceArns"]) == 1
        )
    eventually(lambda: len(tasks_in(local_cloud, "run-a")) == 1 and len(tasks_in(local_cloud, "run-b")) == 1)


def test_scale_down_stops_tasks_with_sigterm_and_a_dead_task_is_replaced(local_cloud):
    # given a service with two running tasks
    _run_scope(local_cloud, "run-scale", desired=2)
    _request_fleet(local_cloud, _launch_template_version(local_cloud, "run-scale"), capacity=2)
    agent = local_cloud.agent
    tasks = eventually(
        lambda: len(tasks_in(local_cloud, "run-scale")) == 2 and tasks_in(local_cloud, "run-scale")
    )
    for task in tasks:
        eventually(lambda t=task: t.log_path.read_text())

    # when one task dies, the service starts a new one
    agent.kill_task(tasks[0])
    eventually(lambda: len(tasks_in(local_cloud, "run-scale")) == 2 and tasks[0] not in agent.running_tasks())
    assert tasks[0].process.returncode == -9

    # when the service is scaled to zero, its tasks get SIGTERM and exit 0
    local_cloud.client("ecs").update_service(cluster="run-scale", service="workers", desiredCount=0)
    eventually(lambda: not [t for t in agent.tasks if t.cluster == "run-scale"])
    assert tasks[1].process.returncode == 0
    assert "drained" in tasks[1].log_path.read_text()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc for the tasks' processes")
def test_a_process_an_exited_task_left_running_is_a_leftover(local_cloud):
    # given a task whose worker forks a child that outlives it
    stray = [{"name": "SPOTFILL_RUN_ID", "value": "run-stray"}, {"name": "SPOTFILL_FAKE_STRAY", "value": "1"}]
    _run_scope(local_cloud, "run-stray", desired=1, environment=stray)
    _request_fleet(local_cloud, _launch_template_version(local_cloud, "run-stray"), capacity=1)
    (task,) = eventually(lambda: tasks_in(local_cloud, "run-stray"))
    eventually(lambda: task.log_path.read_text())

    # when the service is scaled to zero and the worker exits
    local_cloud.client("ecs").update_service(cluster="run-stray", service="workers", desiredCount=0)
    eventually(lambda: not [t for t in local_cloud.agent.tasks if t.cluster == "run-stray"])
    assert task.process.returncode == 0

    # then the child it left running is a leftover of the local cloud, named with its task
    strays = [item for item in local_cloud.leftovers() if item.startswith("process ")]
    assert len(strays) == 1 and f"of task {task.task_id}: " in strays[0] and FAKE_WORKER_MODULE in strays[0]
    os.kill(int(strays[0].split()[1]), signal.SIGKILL)  # the test's own process: the fixture checks the rest
    eventually(lambda: not [item for item in local_cloud.leftovers() if item.startswith("process ")])


def test_a_killed_task_takes_every_process_it_started_with_it(local_cloud):
    # given a task whose worker forked a child
    stray = [
        {"name": "SPOTFILL_RUN_ID", "value": "run-killed"},
        {"name": "SPOTFILL_FAKE_STRAY", "value": "1"},
    ]
    _run_scope(local_cloud, "run-killed", desired=1, environment=stray)
    _request_fleet(local_cloud, _launch_template_version(local_cloud, "run-killed"), capacity=1)
    (task,) = eventually(lambda: tasks_in(local_cloud, "run-killed"))
    eventually(lambda: task.log_path.read_text())
    assert len(session_processes(task.process.pid)) == 1  # the child (the worker leads the session)

    # when the task is killed (a crash, the OOM killer: the container stops)
    local_cloud.agent.kill_task(task)
    task.process.wait(timeout=30)

    # then its child went with it, as a container's processes go with the container: nothing is left over
    eventually(lambda: not session_processes(task.process.pid))
    local_cloud.client("ecs").update_service(cluster="run-killed", service="workers", desiredCount=0)
    eventually(lambda: not [t for t in local_cloud.agent.tasks if t.cluster == "run-killed"])
    assert not [item for item in local_cloud.leftovers() if item.startswith("process ")]


def test_an_interrupted_instance_is_drained_terminated_and_replaced_by_the_fleet(local_cloud):
    # given a fleet of one with one task
    _run_scope(local_cloud, "run-spot", desired=1)
    fleet_id = _request_fleet(local_cloud, _launch_template_version(local_cloud, "run-spot"), capacity=1)
    agent, fleet = local_cloud.agent, local_cloud.fleet
    task = eventually(lambda: tasks_in(local_cloud, "run-spot") and tasks_in(local_cloud, "run-spot")[0])
    eventually(lambda: task.log_path.read_text())
    machine = fleet.machines[task.instance_id]

    # when the spot service reclaims the instance
    drained = agent.drain(machine.instance_id)
    eventually(lambda: not any(t.alive for t in drained))
    fleet.interrupt(machine)

    # then the task got SIGTERM, the instance is terminated for a spot reason, and a replacement runs the task
    assert task.process.returncode == 0
    ec2 = local_cloud.client("ec2")
    old = ec2.describe_instances(InstanceIds=[machine.instance_id])["Reservations"][0]["Instances"][0]
    assert old["State"]["Name"] == "terminated"
    assert old["StateReason"]["Code"] == "Server.SpotInstanceTermination"
    eventually(lambda: _instance_states(local_cloud, fleet_id) == ["running"])
    replacement = eventually(
        lambda: tasks_in(local_cloud, "run-spot") and tasks_in(local_cloud, "run-spot")[0]
    )
    assert replacement.instance_id != machine.instance_id

    # and cancelling the fleet with termination leaves nothing running
    ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=True)
    eventually(
        lambda: not [t for t in agent.tasks if t.cluster == "run-spot"] and not fleet.running_machines()
    )


def test_instances_boot_one_by_one_and_a_failing_pool_is_reported_while_the_others_fill(local_cloud):
    from spotfill.localcloud.patches.fleets import set_failing_pools

    # given c5.xlarge unsupported in every zone
    set_failing_pools({"c5.xlarge": "Unsupported"})
    try:
        # when a fleet of three over c5.xlarge and m5.xlarge is requested
        _run_scope(local_cloud, "run-pools", desired=3)
        fleet_id = _request_fleet(
            local_cloud,
            _launch_template_version(local_cloud, "run-pools"),
            capacity=3,
            types=("c5.xlarge", "m5.xlarge"),
        )
    finally:
        set_failing_pools({})

    # then EC2 reports the failed pool as Spot Fleet reports a launch specification it gave up on (an
    # information event, launchSpecTemporarilyBlacklisted, naming the type and zone; no error) ...
    ec2 = local_cloud.client("ec2")
    config = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"][0]
    assert config["SpotFleetRequestState"] == "active"
    since = datetime.now(UTC) - timedelta(minutes=5)
    history = ec2.describe_spot_fleet_request_history(
        SpotFleetRequestId=fleet_id, StartTime=since, EventType="information"
    )["HistoryRecords"]
    (information,) = history
    assert information["EventInformation"]["EventSubType"] == "launchSpecTemporarilyBlacklisted"
    assert information["EventInformation"]["EventDescription"].startswith("c5.xlarge, ")
    assert "Unsupported: " in information["EventInformation"]["EventDescription"]
    errors = ec2.describe_spot_fleet_request_history(
        SpotFleetRequestId=fleet_id, StartTime=since, EventType="error"
    )["HistoryRecords"]
    assert errors == []
    # ... while the other pool fills, its instances running one by one, at least the boot interval apart
    eventually(lambda: _instance_states(local_cloud, fleet_id) == ["running"] * 3)
    machines = [m for m in local_cloud.fleet.machines.values() if m.fleet_id == fleet_id]
    assert {m.instance_type for m in machines} == {"m5.xlarge"}
    boots = sorted(m.booted_at for m in machines)
    assert all(b - a >= local_cloud.fleet.boot_interval for a, b in itertools.pairwise(boots))
    eventually(lambda: len(tasks_in(local_cloud, "run-pools")) == 3)


def test_a_fleet_past_its_valid_until_expires_and_its_instances_are_terminated(local_cloud):
    # given a fleet of two with a ValidUntil, which terminates its instances on expiry, running its tasks
    _run_scope(local_cloud, "run-expiry", desired=2)
    valid_until = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    fleet_id = _request_fleet(
        local_cloud,
        _launch_template_version(local_cloud, "run-expiry"),
        capacity=2,
        ValidUntil=valid_until,
        TerminateInstancesWithExpiration=True,
    )
    ec2 = local_cloud.client("ec2")
    config = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"][0]
    assert config["SpotFleetRequestConfig"]["ValidUntil"] == valid_until
    eventually(lambda: len(tasks_in(local_cloud, "run-expiry")) == 2)
    instance_ids = {m.instance_id for m in local_cloud.fleet.machines.values() if m.fleet_id == fleet_id}

    # when EC2's clock reaches its ValidUntil (the hour is skipped by moving the request's ValidUntil to now)
    local_cloud.fleet.backend.spot_fleet_requests[fleet_id].valid_until = datetime.now(UTC)

    # then EC2 expires it, terminates its instances and their tasks stop
    eventually(
        lambda: (
            ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"][0][
                "SpotFleetRequestState"
            ]
            == "cancelled"
        ),
        timeout=30,
    )
    reservations = ec2.describe_instances(InstanceIds=sorted(instance_ids))["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} == {"terminated"}
    events = ec2.describe_spot_fleet_request_history(
        SpotFleetRequestId=fleet_id, StartTime=datetime.now(UTC) - timedelta(minutes=5)
    )["HistoryRecords"]
    assert ("fleetRequestChange", "expired") in [
        (e["EventType"], e["EventInformation"]["EventSubType"]) for e in events
    ]
    eventually(lambda: not tasks_in(local_cloud, "run-expiry"), timeout=30)


def test_the_local_cloud_uses_python_of_this_environment_for_worker_commands():
    from spotfill.localcloud.agent import worker_command

    assert worker_command(["python", "-m", "spotfill_worker"]) == [sys.executable, "-m", "spotfill_worker"]
    assert worker_command(["/usr/bin/python3.12", "-m", "spotfill_worker"]) == [
        sys.executable,
        "-m",
        "spotfill_worker",
    ]
    assert worker_command(None) == [sys.executable, "-m", "spotfill_worker"]


@pytest.mark.parametrize(
    ("command", "entry_point"),
    [
        (["/bin/sh", "-c", "id"], None),
        (["python", "-c", "import os"], None),
        (["python", "-m", "spotfill_worker", "--extra"], None),
        (["python", "-m", "http.server"], None),
        (["python", "-m", "spotfill_worker"], ["/bin/sh", "-c"]),
    ],
)
def test_the_agent_runs_no_command_but_the_worker(command, entry_point):
    from spotfill.localcloud.agent import TaskRefused, worker_command

    with pytest.raises(TaskRefused, match="runs only the worker"):
        worker_command(command, entry_point)


@pytest.mark.parametrize(
    "name", ["PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "SPOTFILL_IAM_ROLE_ARN", "AWS_CA_BUNDLE"]
)
def test_a_task_definition_may_set_only_the_workers_settings_in_its_environment(name):
    from spotfill.localcloud.agent import TaskRefused, task_environment

    assert task_environment([{"name": "SPOTFILL_RUN_ID", "value": "r"}]) == {"SPOTFILL_RUN_ID": "r"}
    with pytest.raises(TaskRefused, match=name):
        task_environment([{"name": "SPOTFILL_RUN_ID", "value": "r"}, {"name": name, "value": "/tmp/x"}])


def test_a_task_definition_that_runs_anything_but_the_worker_starts_no_process_and_is_reported_stopped(
    local_cloud, tmp_path
):
    # given three services whose task definitions would each write a marker file: a shell command, an entry
    # point, and a PYTHONPATH that plants a sitecustomize module in front of the (allowed) command
    markers = {name: tmp_path / f"{name}.marker" for name in ("shell", "entry", "env")}
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(f"open({str(markers['env'])!r}, 'w').write('planted')\n")
    _run_scope(
        local_cloud, "run-inject", 0, service="shell", command=["/bin/sh", "-c", f"id > {markers['shell']}"]
    )
    _run_scope(
        local_cloud,
        "run-inject",
        0,
        service="entry",
        entryPoint=["/bin/sh", "-c"],
        command=[f"id > {markers['entry']}"],
    )
    _run_scope(
        local_cloud,
        "run-inject",
        0,
        service="env",
        environment=[
            {"name": "SPOTFILL_RUN_ID", "value": "run-inject"},
            {"name": "PYTHONPATH", "value": str(planted)},
        ],
    )
    _request_fleet(local_cloud, _launch_template_version(local_cloud, "run-inject"), capacity=1)
    ecs = local_cloud.client("ecs")
    eventually(lambda: len(ecs.list_container_instances(cluster="run-inject")["containerInstanceArns"]) == 1)

    # when each service wants a task
    for service in markers:
        ecs.update_service(cluster="run-inject", service=service, desiredCount=1)

    # then every one is reported stopped with the reason, as ECS reports a task that cannot start
    stopped = eventually(
        lambda: (
            len(arns := ecs.list_tasks(cluster="run-inject", desiredStatus="STOPPED")["taskArns"]) == 3
            and arns
        )
    )
    described = ecs.describe_tasks(cluster="run-inject", tasks=stopped)["tasks"]
    assert {t["lastStatus"] for t in described} == {"STOPPED"}
    reasons = sorted(t["stoppedReason"] for t in described)
    assert all(r.startswith("CannotStartContainerError: ") for r in reasons), reasons
    assert sum("runs only the worker" in r for r in reasons) == 2
    assert sum("'PYTHONPATH'" in r for r in reasons) == 1
    # and the refusals are in the agent's log, and no process ran: no marker was ever written
    log = (local_cloud.run_dir / "emulator.log").read_text()
    assert log.count("refused to start a task of") >= 3
    assert not tasks_in(local_cloud, "run-inject")
    assert not [m.name for m in markers.values() if m.exists()]


def test_the_local_cloud_account_has_raised_spot_quotas(local_cloud):
    quotas = local_cloud.client("service-quotas")
    assert quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-34B43A08")["Quota"]["Value"] == 256
    assert quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-3819A6DF")["Quota"]["Value"] == 64


_CLOUD = """
import os, subprocess, sys, time
from pathlib import Path
from spotfill.localcloud import worker_iam

site = Path(sys.argv[1])
environment = {**os.environ, **worker_iam.lifeline_environment(site, os.environ.get("PYTHONPATH"))}
forks = "import os, time\\nif os.fork() == 0:\\n    time.sleep(600)\\n    os._exit(0)\\ntime.sleep(600)"
worker = subprocess.Popen([sys.executable, "-c", forks], env=environment, start_new_session=True)
print(worker.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc for the worker's processes")
def test_a_worker_whose_local_cloud_is_killed_exits_taking_what_it_started_with_it(tmp_path):
    # given a local cloud's process that started a worker as the agent does (a session of its own, the
    # lifeline's sitecustomize), and the worker forked a child (as a library may)
    from spotfill.localcloud import worker_iam

    site = worker_iam.site_directory(tmp_path)
    cloud = subprocess.Popen([sys.executable, "-c", _CLOUD, str(site)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(cloud.stdout.readline())
        eventually(lambda: len(session_processes(worker)) == 1)

        # when the local cloud is killed with SIGKILL (no chance to stop its workers)
        cloud.kill()
        cloud.wait(timeout=30)

        # then the worker exits, and its child with it
        eventually(lambda: not _running(worker) and not session_processes(worker), timeout=60)
    finally:
        cloud.kill()
        cloud.wait()
