"""Where moto 5.2.5 differs from AWS in ways a backfill would notice, the local cloud fills the gap here.

One module per AWS service or behaviour, each opening with the AWS documentation it follows:

- `fleets`: what EC2's two fleet APIs share (request history, failing pools, short spot capacity, launch
  template overrides, `ValidUntil`); `spot_fleet` and `ec2_fleet`: each API as EC2 runs it; `fleet_clock`:
  what EC2 does between calls (`maintain_fleets`); `fleet_visibility`: a new fleet not visible at once.
- `ec2_instances`: instances and tags found by id; `launch_templates`: versions from a source version, and
  deleted; `spot_prices`: a spot market with prices; `account_limits`: Spot vCPU quotas and instance type
  offerings.
- `cloudformation`: stack updates; `step_functions`: executions named by UUID; `ecs`: deregistering a
  container instance; `eventbridge`: Step Functions and Lambda targets; `sqs`: the 12-hour visibility limit;
  `s3`: conditional writes that lose a race; `service_linked_roles`: IAM's names for EC2's fleet roles.
- `routing`: moto's request routing computed once (speed only).

Each patch is installed once per process and changes moto's in-process models only (the server runs in this
process), never the code under test. `install()` installs them all, in the order of its body, which matters:
a later patch wraps what an earlier one installed (the Spot Fleet's on-demand part wraps its lifecycle, the
fleet visibility wraps both fleet APIs); `install_fleet_model()` installs only the fleet patches (the Step
Functions harness uses moto in process, without the rest).
"""

from __future__ import annotations

import threading

from spotfill.localcloud.patches.account_limits import patch_account_limits
from spotfill.localcloud.patches.cloudformation import update_stacks_as_cloudformation_does
from spotfill.localcloud.patches.ec2_fleet import patch_ec2_fleet
from spotfill.localcloud.patches.ec2_instances import look_up_instances_and_tags_by_id
from spotfill.localcloud.patches.ecs import patch_ecs_deregistration_error
from spotfill.localcloud.patches.eventbridge import patch_rule_targets, set_delivery_endpoint
from spotfill.localcloud.patches.fleet_visibility import patch_fleet_visibility
from spotfill.localcloud.patches.launch_templates import (
    delete_launch_template_versions_as_ec2_does,
    inherit_launch_template_source_versions,
)
from spotfill.localcloud.patches.routing import route_requests_once
from spotfill.localcloud.patches.s3 import install_conditional_write_conflicts
from spotfill.localcloud.patches.service_linked_roles import service_linked_roles_as_iam_does
from spotfill.localcloud.patches.spot_fleet import (
    launch_fleets_from_requested_versions,
    patch_pending_fleet_instances,
    patch_spot_fleet_lifecycle,
    patch_spot_fleet_on_demand,
)
from spotfill.localcloud.patches.sqs import patch_sqs_visibility_limit
from spotfill.localcloud.patches.step_functions import patch_execution_names

__all__ = ["install", "install_fleet_model"]

_lock = threading.Lock()
_installed = False
_fleet_model_installed = False


def install(endpoint_url: str) -> None:
    """Install the patches (idempotent) and point deliveries at this emulator endpoint."""
    global _installed
    with _lock:
        set_delivery_endpoint(endpoint_url)
        if _installed:
            return
        _install_fleet_model()
        patch_pending_fleet_instances()
        inherit_launch_template_source_versions()
        update_stacks_as_cloudformation_does()
        delete_launch_template_versions_as_ec2_does()
        patch_execution_names()
        patch_ecs_deregistration_error()
        patch_rule_targets()
        patch_sqs_visibility_limit()
        install_conditional_write_conflicts()
        route_requests_once()
        _installed = True
    patch_account_limits()


def install_fleet_model() -> None:
    """The fleet patches alone (idempotent): launch template versions and every override, request history,
    ActivityStatus, ValidUntil and failing pools, on both fleet APIs."""
    with _lock:
        _install_fleet_model()


def _install_fleet_model() -> None:
    global _fleet_model_installed
    if _fleet_model_installed:
        return
    launch_fleets_from_requested_versions()
    patch_spot_fleet_lifecycle()
    patch_ec2_fleet()
    patch_spot_fleet_on_demand()
    patch_fleet_visibility()
    service_linked_roles_as_iam_does()
    look_up_instances_and_tags_by_id()
    _fleet_model_installed = True
