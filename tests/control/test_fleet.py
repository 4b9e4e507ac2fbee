"""RequestFleet and CheckRegistration: one weighted, bounded, tagged fleet per run (EC2 Fleet by default, Spot
Fleet when the spec says so), and its arrival."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from spotfill_control import state_store
from spotfill_control.errors import (
    FleetRequestError,
    RegistrationTimeoutError,
    RunTimeoutError,
    TransientAwsError,
)
from spotfill_control.fleet import fleet, registration
from spotfill_control.handlers import check_registration as check_handler
from spotfill_control.handlers import request_fleet as request_handler
from spotfill_control.run import FAILED_POOLS_LIMIT, RUN_ID_TAG, Resources, RunState, Timeline
from spotfill_control.spec import BackfillSpec

from spotfill.localcloud.pricing import emulated_facts

from .conftest import FailingClient, prepared_run, sample_spec

STARTED = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def pure_run(**overrides) -> RunState:
    spec = BackfillSpec.model_validate(sample_spec(**overrides))
    return RunState(
        run_id="demo-20261127060000-abcdef",
        spec=spec,
        instance_types=emulated_facts(spec.fleet.instance_types),
        shards_total=10,
        resources=Resources(launch_template_version=7),
        timeline=Timeline(started_at=STARTED),
    )


# ---------------------------------------------------------------------------------------------- pure


def test_capacity_is_weighted_by_vcpus_relative_to_the_smallest_type():
    assert fleet.capacity_weights(emulated_facts(["c5.xlarge", "c5.2xlarge", "c5.9xlarge"])) == {
        "c5.xlarge": 1.0,
        "c5.2xlarge": 2.0,
        "c5.9xlarge": 9.0,
    }
    weights = fleet.capacity_weights(emulated_facts(["c5.2xlarge", "c5.9xlarge"]))
    assert weights == {"c5.2xlarge": 1.0, "c5.9xlarge": 4.5}
    # Graviton types weigh by vCPUs alike
    assert fleet.capacity_weights(emulated_facts(["m7g.large", "m7g.2xlarge"])) == {
        "m7g.large": 1.0,
        "m7g.2xlarge": 4.0,
    }


def test_gpu_fleet_capacity_is_weighted_by_gpus_not_vcpus():
    # g4dn.xlarge: 1 GPU / 4 vCPUs, g4dn.2xlarge: 1 GPU / 8 vCPUs, g4dn.12xlarge: 4 GPUs / 48 vCPUs
    weights = fleet.capacity_weights(emulated_facts(["g4dn.xlarge", "g4dn.2xlarge", "g4dn.12xlarge"]))
    assert weights == {"g4dn.xlarge": 1.0, "g4dn.2xlarge": 1.0, "g4dn.12xlarge": 4.0}


@pytest.mark.parametrize(
    ("target_capacity", "remaining_shards", "tasks_per_instance", "expected"),
    [
        (6, 4, 1, 4),  # 4 shards keep 4 one-task instances busy, not 6
        (5000, 4, 1, 4),
        (6, 4, 2, 2),  # two tasks per instance: 2 instances run all 4 shards
        (6, 5, 2, 3),  # ceil(5 / 2)
        (2, 40, 1, 2),  # the spec asks less than the work could use: kept
        (3, 0, 1, 1),  # never zero (a run whose shards are all done skips the fleet anyway)
    ],
)
def test_fleet_target_capacity_is_capped_at_the_instances_the_remaining_shards_keep_busy(
    target_capacity, remaining_shards, tasks_per_instance, expected
):
    assert fleet.fleet_target_capacity(target_capacity, remaining_shards, tasks_per_instance) == expected


def _total(request: dict) -> int:
    """The requested total capacity on either API."""
    if "TargetCapacitySpecification" in request:
        return request["TargetCapacitySpecification"]["TotalTargetCapacity"]
    return request["TargetCapacity"]


@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_fleet_request_asks_no_more_capacity_than_the_pending_shards_use(s3_world, api):
    # given a spec asking 4 units, 10 shards of which 8 already have their outputs
    run = pure_run(fleet__api=api).model_copy(update={"shards_total": 10, "shards_skipped": 8})
    # when the request is built
    request = fleet.build_fleet_request(run, s3_world.settings, STARTED)
    # then it asks for the 2 instances the 2 pending shards use (one task each)
    assert run.spec.fleet.target_capacity == 4
    assert _total(request) == 2


@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_fleet_request_has_one_override_per_instance_type_and_subnet(s3_world, api):
    request = fleet.build_fleet_request(pure_run(fleet__api=api), s3_world.settings, STARTED)
    [config] = request["LaunchTemplateConfigs"]
    assert config["LaunchTemplateSpecification"] == {
        "LaunchTemplateId": s3_world.settings.launch_template_id,
        "Version": "7",
    }
    assert config["Overrides"] == [
        {"InstanceType": name, "SubnetId": subnet, "WeightedCapacity": weight}
        for name, weight in (("c5.xlarge", 1.0), ("c5.2xlarge", 2.0))
        for subnet in s3_world.subnets
    ]


TWENTY_TYPES = [
    f"{family}.{size}"
    for family in ("c5", "m5", "r5", "c6i")
    for size in ("large", "xlarge", "2xlarge", "4xlarge", "12xlarge")
]


@pytest.mark.aws
@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_ec2_refuses_a_fleet_request_with_more_than_300_overrides(world, api):
    # given a request for 20 types x 16 subnets (320 overrides): a fleet of type maintain takes 300 across
    # its launch templates (FleetLaunchTemplateConfigRequest.Overrides, EC2 API reference); Validate refuses
    # such a spec, and the local cloud refuses the request as EC2 does
    from botocore.exceptions import ClientError

    from spotfill.localcloud.patches import install_fleet_model

    install_fleet_model()
    subnets = [f"subnet-{i:017x}" for i in range(16)]
    run = pure_run(fleet__api=api, fleet__instance_types=TWENTY_TYPES, fleet__subnets=subnets)
    request = fleet.build_fleet_request(run, world.settings, STARTED)
    assert sum(len(c["Overrides"]) for c in request["LaunchTemplateConfigs"]) == 320
    # when it is sent, then EC2 refuses it, and no fleet exists
    with pytest.raises(ClientError) as refused:
        fleet.api_of(run).request(request, world.ec2)
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "maximum allowed number of launch template overrides (300)" in str(refused.value)
    assert world.ec2.describe_fleets()["Fleets"] == []
    assert world.ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []


def test_ec2_fleet_is_the_default_a_maintain_fleet_of_spot_beyond_the_on_demand_base(s3_world):
    run = pure_run()
    request = fleet.build_fleet_request(run, s3_world.settings, STARTED + timedelta(minutes=2))
    assert run.spec.fleet.api == "ec2-fleet"
    assert request["ClientToken"] == run.run_id
    assert request["Type"] == "maintain"
    assert request["TargetCapacitySpecification"] == {
        "TotalTargetCapacity": 4,
        "OnDemandTargetCapacity": 0,
        "SpotTargetCapacity": 4,
        "DefaultTargetCapacityType": "spot",
    }
    assert request["SpotOptions"] == {
        "AllocationStrategy": "price-capacity-optimized",
        "InstanceInterruptionBehavior": "terminate",
    }
    assert request["OnDemandOptions"] == {"AllocationStrategy": "lowest-price"}
    assert request["ExcessCapacityTerminationPolicy"] == "termination"
    assert request["ValidUntil"] == STARTED + timedelta(seconds=3600)
    assert request["TerminateInstancesWithExpiration"] is True
    assert "IamFleetRole" not in request  # EC2 Fleet launches through its service-linked role
    assert request["TagSpecifications"] == [
        {
            "ResourceType": "fleet",
            "Tags": [
                {"Key": RUN_ID_TAG, "Value": run.run_id},
                {"Key": "Name", "Value": f"spotfill-{run.run_id}"},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("spec_name", "ec2_fleet_name"),
    [
        ("priceCapacityOptimized", "price-capacity-optimized"),
        ("capacityOptimized", "capacity-optimized"),
        ("capacityOptimizedPrioritized", "capacity-optimized-prioritized"),
        ("lowestPrice", "lowest-price"),
        ("diversified", "diversified"),
    ],
)
def test_allocation_strategies_are_spelled_as_each_api_spells_them(s3_world, spec_name, ec2_fleet_name):
    ec2_fleet = fleet.build_fleet_request(
        pure_run(fleet__allocation_strategy=spec_name), s3_world.settings, STARTED
    )
    spot_fleet = fleet.build_fleet_request(
        pure_run(fleet__allocation_strategy=spec_name, fleet__api="spot-fleet"), s3_world.settings, STARTED
    )
    assert ec2_fleet["SpotOptions"]["AllocationStrategy"] == ec2_fleet_name
    assert spot_fleet["AllocationStrategy"] == spec_name


@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_the_on_demand_base_is_requested_on_demand_and_the_hourly_cap_bounds_each_purchase_option(
    s3_world, api
):
    run = pure_run(fleet__api=api, fleet__on_demand_base=1, fleet__max_hourly_price=2.5)
    request = fleet.build_fleet_request(run, s3_world.settings, STARTED)
    if api == "ec2-fleet":
        assert request["TargetCapacitySpecification"]["OnDemandTargetCapacity"] == 1
        assert request["TargetCapacitySpecification"]["SpotTargetCapacity"] == 3
        assert (
            request["SpotOptions"]["MaxTotalPrice"] == request["OnDemandOptions"]["MaxTotalPrice"] == "2.5000"
        )
    else:
        assert request["OnDemandTargetCapacity"] == 1
        assert request["OnDemandAllocationStrategy"] == "lowestPrice"
        assert request["SpotMaxTotalPrice"] == request["OnDemandMaxTotalPrice"] == "2.5000"


def test_an_on_demand_base_above_the_target_capacity_is_refused():
    with pytest.raises(ValueError, match=r"on_demand_base \(5\) exceeds target_capacity \(4\)"):
        BackfillSpec.model_validate(sample_spec(fleet__on_demand_base=5))


def test_an_unknown_fleet_api_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="ec2-fleet"):
        BackfillSpec.model_validate(sample_spec(fleet__api="auto-scaling"))


def test_spot_fleet_request_is_bounded_idempotent_tagged_and_terminates_on_expiry(s3_world):
    run = pure_run(fleet__api="spot-fleet")
    request = fleet.build_fleet_request(run, s3_world.settings, STARTED + timedelta(minutes=2))
    assert request["ClientToken"] == run.run_id
    assert request["Type"] == "maintain"
    assert request["TargetCapacity"] == 4
    assert request["AllocationStrategy"] == "priceCapacityOptimized"
    assert request["ValidUntil"] == STARTED + timedelta(seconds=3600)
    assert request["TerminateInstancesWithExpiration"] is True
    assert request["InstanceInterruptionBehavior"] == "terminate"
    assert request["IamFleetRole"] == s3_world.settings.fleet_role_arn
    assert request["TagSpecifications"] == [
        {
            "ResourceType": "spot-fleet-request",
            "Tags": [
                {"Key": RUN_ID_TAG, "Value": run.run_id},
                {"Key": "Name", "Value": f"spotfill-{run.run_id}"},
            ],
        }
    ]
    assert "SpotMaxTotalPrice" not in request
    assert request["OnDemandTargetCapacity"] == 0


def test_budget_cap_strategy_and_subnets_come_from_the_spec_when_given(s3_world):
    run = pure_run(
        fleet__api="spot-fleet",
        fleet__max_hourly_price=1.5,
        fleet__allocation_strategy="capacityOptimized",
        fleet__subnets=["subnet-aaaa"],
    )
    request = fleet.build_fleet_request(run, s3_world.settings, STARTED)
    assert request["SpotMaxTotalPrice"] == "1.5000"
    assert request["AllocationStrategy"] == "capacityOptimized"
    assert {o["SubnetId"] for o in request["LaunchTemplateConfigs"][0]["Overrides"]} == {"subnet-aaaa"}


def test_fleet_cannot_be_requested_before_its_launch_template_version_exists(s3_world):
    run = pure_run().model_copy(update={"resources": Resources()})
    with pytest.raises(FleetRequestError, match="no launch template version"):
        fleet.build_fleet_request(run, s3_world.settings, STARTED)


@pytest.mark.parametrize(
    ("state", "activity", "error"),
    [
        ("failed", None, "is failed"),
        ("cancelled_terminating", "fulfilled", "is cancelled_terminating"),
        ("cancelled_running", "fulfilled", "is cancelled_running"),
    ],
)
def test_fleet_errors_and_cancellations_end_the_run(state, activity, error):
    with pytest.raises(FleetRequestError, match=error):
        registration.check_fleet_healthy("sfr-1", fleet.FleetStatus(state, activity, 4, 0))


def test_a_fleet_starting_up_is_healthy():
    registration.check_fleet_healthy("sfr-1", fleet.FleetStatus("submitted", "pending_fulfillment", 4, 0))
    registration.check_fleet_healthy("sfr-1", fleet.FleetStatus("active", "fulfilled", 4, 4))


TYPES = ["c5.xlarge", "c5.2xlarge"]


def _error_event(sub_type: str, description: str) -> dict:
    return {
        "EventType": "error",
        "EventInformation": {"EventSubType": sub_type, "EventDescription": description},
        "Timestamp": STARTED,
    }


UNSUPPORTED_IN_ZONE = _error_event(
    "spotFleetRequestConfigurationInvalid",
    "c5.2xlarge, ami-0123456789abcdef0, Linux/UNIX (Amazon VPC), us-east-1e, Unsupported: The requested "
    "instance type is not supported in the requested Availability Zone.",
)
NO_CAPACITY = _error_event(
    "spotFleetRequestConfigurationInvalid",
    "c5.xlarge, ami-0123456789abcdef0, Linux/UNIX, us-east-1a, InsufficientInstanceCapacity: There is no "
    "Spot capacity available that matches your request.",
)


def test_a_pool_error_names_its_instance_type_zone_and_code():
    error = registration.parse_fleet_error(UNSUPPORTED_IN_ZONE, TYPES)
    assert (error.instance_type, error.availability_zone, error.code) == (
        "c5.2xlarge",
        "us-east-1e",
        "Unsupported",
    )
    assert not error.fatal
    assert str(error.as_failed_pool()) == "c5.2xlarge in us-east-1e: Unsupported"


def test_an_error_without_a_code_keeps_its_sub_type_and_the_platform_is_not_taken_for_one():
    event = _error_event(
        "spotFleetRequestConfigurationInvalid",
        "c5.xlarge, ami-0123, Linux/UNIX: The associatePublicIPAddress parameter can only be specified for "
        "the network interface with DeviceIndex 0.",
    )
    pool = registration.parse_fleet_error(event, TYPES).as_failed_pool()
    assert (pool.instance_type, pool.availability_zone, pool.error) == (
        "c5.xlarge",
        None,
        "spotFleetRequestConfigurationInvalid",
    )


def _information_event(sub_type: str, description: str) -> dict:
    return {
        "EventType": "information",
        "EventInformation": {"EventSubType": sub_type, "EventDescription": description},
        "Timestamp": STARTED,
    }


# Spot Fleet reports a pool it gave up on as an information event, not an error ("EC2 Spot Fleet Information",
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-event-types.html)
BLACKLISTED = _information_event(
    "launchSpecTemporarilyBlacklisted",
    "c5.2xlarge, ami-0123456789abcdef0, Linux/UNIX (Amazon VPC), us-east-1e, Unsupported: The requested "
    "instance type is not supported in the requested Availability Zone.",
)
UNUSABLE = _information_event(
    "launchSpecUnusable",
    "c5.xlarge, ami-0947d2ba12ee1ff75, Linux/UNIX, us-east-1a, Spot price in either "
    "SpotFleetRequestConfigData or SpotFleetLaunchSpecification or LaunchTemplate or "
    "LaunchTemplateOverrides is less than Spot market price $0.1",
)


def test_a_spot_fleet_pools_information_events_name_the_pool_and_are_not_fatal():
    blacklisted = registration.parse_fleet_error(BLACKLISTED, TYPES)
    unusable = registration.parse_fleet_error(UNUSABLE, TYPES)
    assert str(blacklisted.as_failed_pool()) == "c5.2xlarge in us-east-1e: Unsupported"
    assert str(unusable.as_failed_pool()) == "c5.xlarge in us-east-1a: launchSpecUnusable"
    assert not blacklisted.fatal and not unusable.fatal


class _SpotFleetHistory:
    """DescribeSpotFleetRequestHistory over fixed records, filtered by EventType as EC2 filters them."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records
        self.asked: list[str] = []

    def describe_spot_fleet_request_history(self, **kwargs) -> dict:
        self.asked.append(kwargs["EventType"])
        return {"HistoryRecords": [r for r in self.records if r["EventType"] == kwargs["EventType"]]}


def test_spot_fleet_failures_are_its_error_events_and_the_information_events_that_name_a_pool():
    from spotfill_control.fleet.fleet_api import SpotFleetApi

    other_information = _information_event("registerWithLoadBalancersFailed", "no load balancer")
    launched = {"EventType": "instanceChange", "EventInformation": {"EventSubType": "launched"}}
    ec2 = _SpotFleetHistory([NO_CAPACITY, BLACKLISTED, UNUSABLE, other_information, launched])
    records = SpotFleetApi().failure_records("sfr-1", ec2, STARTED)
    assert records == [NO_CAPACITY, BLACKLISTED, UNUSABLE]
    assert ec2.asked == ["error", "information"]


def test_a_fleet_whose_pools_fail_while_others_may_fill_is_healthy():
    # given EC2's ActivityStatus `error` for one pool not supported in its zone and one without capacity
    errors = [registration.parse_fleet_error(e, TYPES) for e in (UNSUPPORTED_IN_ZONE, NO_CAPACITY)]
    # then the run goes on: other pools may still fill
    registration.check_fleet_healthy("sfr-1", fleet.FleetStatus("active", "error", 4, 2), errors)


@pytest.mark.parametrize(
    ("event", "named"),
    [
        (
            _error_event("iamFleetRoleInvalid", "The fleet role may not launch instances."),
            "iamFleetRoleInvalid",
        ),
        (
            _error_event(
                "allLaunchSpecsTemporarilyBlacklisted", "None of the launch specifications is valid."
            ),
            "allLaunchSpecsTemporarilyBlacklisted",
        ),
        (
            _error_event(
                "spotFleetRequestConfigurationInvalid",
                "c5.xlarge, ami-0123, Linux/UNIX, us-east-1a, InvalidAMIID.NotFound: No such image",
            ),
            "InvalidAMIID.NotFound",
        ),
    ],
)
def test_errors_that_no_pool_escapes_end_the_run_naming_the_failed_pools(event, named):
    # given a pool that failed on its own and an error every pool shares
    errors = [registration.parse_fleet_error(e, TYPES) for e in (UNSUPPORTED_IN_ZONE, event)]
    # then the run ends with both in the reason
    with pytest.raises(FleetRequestError, match="can never be fulfilled") as raised:
        registration.check_fleet_healthy("sfr-1", fleet.FleetStatus("active", "error", 4, 0), errors)
    assert named in str(raised.value)
    assert "c5.2xlarge in us-east-1e: Unsupported" in str(raised.value)


def test_failed_pools_are_kept_once_each_and_bounded():
    run = pure_run()
    errors = [
        registration.parse_fleet_error(e, TYPES)
        for e in (UNSUPPORTED_IN_ZONE, NO_CAPACITY, UNSUPPORTED_IN_ZONE)
    ]
    run = registration.with_failed_pools(run, errors)
    assert [str(p) for p in run.failed_pools] == [
        "c5.2xlarge in us-east-1e: Unsupported",
        "c5.xlarge in us-east-1a: InsufficientInstanceCapacity",
    ]
    many = [
        registration.FleetError(
            "spotFleetRequestConfigurationInvalid", "x", "c5.xlarge", f"us-east-1{z}", "Unsupported"
        )
        for z in "abcdefghijklmnopqrstuvwxyz"
    ]
    assert len(registration.with_failed_pools(run, many).failed_pools) == FAILED_POOLS_LIMIT


# ----------------------------------------------------------------------------------------- handlers, moto


def _live_fleets(world, run_id: str) -> list[dict]:
    return [
        f
        for f in world.ec2.describe_fleets()["Fleets"]
        if {"Key": RUN_ID_TAG, "Value": run_id} in f.get("Tags", []) and f["FleetState"] in fleet.LIVE_STATES
    ]


@pytest.mark.aws
def test_request_fleet_requests_a_tagged_fleet_and_persists_it(world, lambda_context):
    prepared = prepared_run(world, lambda_context)
    run = request_handler.handler({"run": prepared}, lambda_context)
    fleet_id = run["resources"]["fleet_id"]
    assert [f["FleetId"] for f in _live_fleets(world, run["run_id"])] == [fleet_id]
    assert run["phase"] == "fleet_requested"
    assert run["timeline"]["fleet_requested_at"]
    assert state_store.load(run["run_id"], world.s3).resources.fleet_id == fleet_id
    instances = world.ec2.describe_fleet_instances(FleetId=fleet_id)["ActiveInstances"]
    assert instances, "moto fulfils the fleet at once"
    assert all(i.get("SpotInstanceRequestId") for i in instances)  # all spot: no on-demand base


@pytest.mark.aws
def test_request_fleet_retry_does_not_create_second_fleet(world, lambda_context):
    # given a prepared run / when RequestFleet runs twice with the same input (a retried Lambda)
    prepared = prepared_run(world, lambda_context)
    first = request_handler.handler({"run": prepared}, lambda_context)
    second = request_handler.handler({"run": prepared}, lambda_context)
    # then one fleet is active and both attempts name it
    live = _live_fleets(world, prepared["run_id"])
    assert len(live) == 1
    assert first["resources"]["fleet_id"] == second["resources"]["fleet_id"]


@pytest.mark.aws
def test_invalid_fleet_parameters_are_a_fleet_request_error(world, lambda_context):
    run = RunState.model_validate(prepared_run(world, lambda_context))
    ec2 = FailingClient(world.ec2, "create_fleet", code="InvalidFleetConfiguration")
    with pytest.raises(FleetRequestError, match="InvalidFleetConfiguration"):
        fleet.start_fleet(run, ec2, world.settings)


@pytest.mark.aws
@pytest.mark.parametrize("code", ["RequestLimitExceeded", "InternalError", "Unavailable"])
def test_throttling_and_outages_are_transient(world, lambda_context, code):
    run = RunState.model_validate(prepared_run(world, lambda_context))
    ec2 = FailingClient(world.ec2, "create_fleet", code=code)
    with pytest.raises(TransientAwsError, match=code):
        fleet.start_fleet(run, ec2, world.settings)


@pytest.mark.aws
def test_no_fleet_is_requested_once_the_maximum_runtime_is_spent(world, lambda_context):
    run = RunState.model_validate(prepared_run(world, lambda_context))
    too_late = run.timeline.started_at + timedelta(seconds=run.spec.limits.max_runtime_seconds)
    with pytest.raises(RunTimeoutError, match=r"limits\.max_runtime_seconds"):
        fleet.start_fleet(run, world.ec2, world.settings, now=too_late)
    assert not _live_fleets(world, run.run_id)


@pytest.fixture
def requested(world, lambda_context) -> dict:
    return request_handler.handler({"run": prepared_run(world, lambda_context)}, lambda_context)


@pytest.mark.aws
def test_registration_waits_while_no_instance_has_joined(world, lambda_context, requested):
    run = check_handler.handler({"run": requested}, lambda_context)
    assert run["phase"] == "fleet_requested"
    assert run["timeline"]["registered_at"] is None
    assert run["timeline"]["fleet_fulfilled_at"], "moto fulfils the target capacity at once"


@pytest.mark.aws
def test_one_registered_instance_ends_the_wait(world, lambda_context, requested):
    world.register_instance(requested["resources"]["cluster_name"])
    run = check_handler.handler({"run": requested}, lambda_context)
    assert run["phase"] == "registered"
    assert run["timeline"]["registered_at"]
    assert state_store.load(run["run_id"], world.s3).phase == "registered"


@pytest.mark.aws
def test_instances_of_another_cluster_do_not_count(world, lambda_context, requested):
    world.ecs.create_cluster(clusterName="someone-else")
    world.register_instance("someone-else")
    assert check_handler.handler({"run": requested}, lambda_context)["phase"] == "fleet_requested"


@pytest.mark.aws
def test_no_registration_within_the_timeout_ends_the_run(world, lambda_context, requested):
    timeout = requested["spec"]["limits"]["registration_timeout_seconds"]
    run = RunState.model_validate(requested)
    later = run.timeline.fleet_requested_at + timedelta(seconds=timeout + 1)
    with pytest.raises(RegistrationTimeoutError, match=rf"within {timeout} s"):
        registration.check_registration(run, world.ec2, world.ecs, now=later)


@pytest.mark.aws
def test_a_deleted_fleet_ends_the_run(world, lambda_context, requested):
    fleet_id = requested["resources"]["fleet_id"]
    world.ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=False)
    with pytest.raises(FleetRequestError, match="deleted_running"):
        check_handler.handler({"run": requested}, lambda_context)


@pytest.mark.aws
def test_a_fleet_that_no_longer_exists_ends_the_run(world, lambda_context, requested):
    # given a fleet deleted long ago: EC2 has forgotten it
    fleet_id = requested["resources"]["fleet_id"]
    world.ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=True)
    ec2 = FailingClient(world.ec2, "describe_fleets", code="InvalidFleetId.NotFound")
    run = RunState.model_validate(requested)
    later = run.timeline.fleet_requested_at + fleet.CONSISTENCY_GRACE
    # then the run ends, saying so
    with pytest.raises(FleetRequestError, match="no longer exists"):
        registration.check_registration(run, ec2, world.ecs, now=later)


@pytest.mark.aws
@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_a_fleet_ec2_does_not_know_yet_keeps_registration_waiting(world, lambda_context, fleet_lag, api):
    # given a fleet EC2's eventually consistent API does not know yet (NotFound to describe calls)
    requested = request_handler.handler(
        {"run": prepared_run(world, lambda_context, fleet__api=api)}, lambda_context
    )
    run = RunState.model_validate(requested)
    # when CheckRegistration looks seconds after the request
    checked = registration.check_registration(
        run, world.ec2, world.ecs, now=run.timeline.fleet_requested_at + timedelta(seconds=10)
    )
    # then the run waits (not "no longer exists"), and once EC2 knows the fleet it is read as usual
    assert checked.phase == "fleet_requested" and checked.failed_pools == []
    fleet_lag.advance(fleet_lag.seconds)
    later = run.timeline.fleet_requested_at + timedelta(seconds=70)
    assert (
        registration.check_registration(run, world.ec2, world.ecs, now=later).timeline.fleet_fulfilled_at
        == later
    )


@pytest.mark.aws
def test_a_fleet_ec2_never_knows_ends_the_run_after_the_grace(world, lambda_context, fleet_lag, requested):
    # given EC2 still answering NotFound when the grace is over (the test's EC2 clock stands still)
    run = RunState.model_validate(requested)
    with pytest.raises(FleetRequestError, match="300 s or more after it was requested"):
        registration.check_registration(
            run, world.ec2, world.ecs, now=run.timeline.fleet_requested_at + fleet.CONSISTENCY_GRACE
        )


# ------------------------------------------------------------------------- failing pools, EC2's history


@pytest.fixture
def failing_pools():
    """EC2 as the local cloud models it (request history, ActivityStatus), with pools made to fail."""
    from spotfill.localcloud.patches import install_fleet_model
    from spotfill.localcloud.patches.fleets import set_failing_pools

    install_fleet_model()
    yield set_failing_pools
    set_failing_pools({})


@pytest.mark.aws
@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_one_failing_pool_while_the_others_fill_is_recorded_and_registration_goes_on(
    world, lambda_context, failing_pools, api
):
    # given c5.2xlarge unsupported in every zone, c5.xlarge filling the fleet
    failing_pools({"c5.2xlarge": "Unsupported"})
    prepared = prepared_run(world, lambda_context, fleet__api=api)
    requested = request_handler.handler({"run": prepared}, lambda_context)
    fleet_id = requested["resources"]["fleet_id"]
    if api == "ec2-fleet":
        (described,) = world.ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"]
        assert described["ActivityStatus"] == "error"
    else:
        # Spot Fleet reports the pool it gave up on as an information event, no error
        history = world.ec2.describe_spot_fleet_request_history(
            SpotFleetRequestId=fleet_id, StartTime=STARTED
        )["HistoryRecords"]
        failed = [
            r for r in history if r["EventInformation"]["EventSubType"] == "launchSpecTemporarilyBlacklisted"
        ]
        assert failed and {r["EventType"] for r in failed} == {"information"}
        assert not [r for r in history if r["EventType"] == "error"]
    # when CheckRegistration looks at the fleet, then the run waits on and records the pool that failed
    run = check_handler.handler({"run": requested}, lambda_context)
    assert run["phase"] == "fleet_requested"
    assert {(p["instance_type"], p["error"]) for p in run["failed_pools"]} == {("c5.2xlarge", "Unsupported")}
    assert all(p["availability_zone"] for p in run["failed_pools"])
    assert state_store.load(run["run_id"], world.s3).failed_pools


@pytest.mark.aws
def test_a_spot_fleet_that_never_registers_names_its_failed_pools_in_the_timeout(
    world, lambda_context, failing_pools
):
    # given a Spot Fleet one of whose pools EC2 gave up on (an information event), and no instance registered
    failing_pools({"c5.2xlarge": "Unsupported"})
    prepared = prepared_run(world, lambda_context, fleet__api="spot-fleet")
    run = RunState.model_validate(request_handler.handler({"run": prepared}, lambda_context))
    timeout = run.spec.limits.registration_timeout_seconds
    later = run.timeline.fleet_requested_at + timedelta(seconds=timeout + 1)
    # when CheckRegistration looks past the timeout, then the reason names the pool
    with pytest.raises(
        RegistrationTimeoutError, match=r"failed pools: c5\.2xlarge in us-east-1.*: Unsupported"
    ):
        registration.check_registration(run, world.ec2, world.ecs, now=later)


@pytest.mark.aws
@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_every_pool_failing_ends_the_run_with_a_reason_naming_the_pools(
    world, lambda_context, failing_pools, api
):
    # given no pool of the request can launch
    failing_pools({"c5.xlarge": "InsufficientInstanceCapacity", "c5.2xlarge": "Unsupported"})
    prepared = prepared_run(world, lambda_context, fleet__api=api)
    requested = request_handler.handler({"run": prepared}, lambda_context)
    # when CheckRegistration looks, then the run fails at once, before any capacity is paid for
    with pytest.raises(FleetRequestError, match="allLaunchSpecsTemporarilyBlacklisted") as raised:
        check_handler.handler({"run": requested}, lambda_context)
    assert "c5.xlarge in us-east-1" in str(raised.value) and "InsufficientInstanceCapacity" in str(
        raised.value
    )
    assert "c5.2xlarge in us-east-1" in str(raised.value) and "Unsupported" in str(raised.value)


# ------------------------------------------------------------------------- the local cloud's EC2: consistency


@pytest.mark.aws
def test_the_local_ec2_does_not_know_a_new_ec2_fleet_for_its_lag(world, lambda_context, fleet_lag):
    from botocore.exceptions import ClientError

    fleet_id = request_handler.handler({"run": prepared_run(world, lambda_context)}, lambda_context)[
        "resources"
    ]["fleet_id"]
    # within the lag: describe calls answer NotFound, and DeleteFleets deletes nothing
    for call in (
        lambda: world.ec2.describe_fleets(FleetIds=[fleet_id]),
        lambda: world.ec2.describe_fleet_instances(FleetId=fleet_id),
    ):
        with pytest.raises(ClientError, match=r"InvalidFleetId\.NotFound"):
            call()
    answer = world.ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=True)
    assert answer["SuccessfulFleetDeletions"] == []
    assert [f["Error"]["Code"] for f in answer["UnsuccessfulFleetDeletions"]] == ["fleetIdDoesNotExist"]
    # after it: the fleet, active all along, and deleted when asked
    fleet_lag.advance(fleet_lag.seconds)
    assert world.ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"][0]["FleetState"] == "active"
    answer = world.ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=True)
    assert [f["FleetId"] for f in answer["SuccessfulFleetDeletions"]] == [fleet_id]


@pytest.mark.aws
def test_the_local_ec2_does_not_know_a_new_spot_fleet_for_its_lag(world, lambda_context, fleet_lag):
    from botocore.exceptions import ClientError

    run = prepared_run(world, lambda_context, fleet__api="spot-fleet")
    fleet_id = request_handler.handler({"run": run}, lambda_context)["resources"]["fleet_id"]
    with pytest.raises(ClientError, match=r"InvalidSpotFleetRequestId\.NotFound"):
        world.ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])
    answer = world.ec2.cancel_spot_fleet_requests(
        SpotFleetRequestIds=[fleet_id, "sfr-unknown"], TerminateInstances=True
    )
    assert answer["SuccessfulFleetRequests"] == []
    assert [(f["SpotFleetRequestId"], f["Error"]["Code"]) for f in answer["UnsuccessfulFleetRequests"]] == [
        (fleet_id, "fleetRequestIdDoesNotExist"),
        ("sfr-unknown", "fleetRequestIdDoesNotExist"),
    ]
    fleet_lag.advance(fleet_lag.seconds)
    answer = world.ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=True)
    assert answer["SuccessfulFleetRequests"] == [
        {
            "SpotFleetRequestId": fleet_id,
            "CurrentSpotFleetRequestState": "cancelled_terminating",
            "PreviousSpotFleetRequestState": "active",
        }
    ]


@pytest.mark.aws
def test_a_fleet_whose_instances_ec2_does_not_know_is_not_read_as_every_instance_lost(world, requested):
    from spotfill_control.monitoring import fleet_watch

    # given DescribeFleets knowing the fleet just requested but DescribeFleetInstances not yet
    run = RunState.model_validate(requested)
    ec2 = FailingClient(world.ec2, "describe_fleet_instances", code="InvalidFleetId.NotFound")
    # then the poll's view is "not known" (waited for within the grace), not a fleet with no live instance
    assert fleet_watch.describe_fleet(run, ["i-known"], {"c5.xlarge": 1.0}, ec2) is None
    assert fleet_watch.describe_fleet(run, ["i-known"], {"c5.xlarge": 1.0}, world.ec2) is not None
