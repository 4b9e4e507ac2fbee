"""Confirm, without creating anything, that the caller may request a run's fleet: a DryRun of the request.

Some of what a fleet request needs of its caller is documented but can only be confirmed on a real account
(docs/contracts/iam.md, "IAM"): which `ec2:CreateAction` a Spot Fleet's instance tags carry, what a `maintain`
EC2 Fleet checks of its caller, and any service control policy or permissions boundary of the account. EC2
answers a request sent with `DryRun=True` with `DryRunOperation` when the caller has the permissions and
`UnauthorizedOperation` when not ("Checks whether you have the required permissions for the action, without
actually making the request", the DryRun parameter of CreateFleet and RequestSpotFleet in the Amazon EC2 API
Reference: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleet.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RequestSpotFleet.html).

The dry run sends exactly the request RequestFleet would send for the run, so it must run as the role that
requests fleets: RequestFleet's handler runs it when its event says `"confirm_permissions": true`, and
`spotfill plan --confirm-permissions` invokes it so.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.aws import is_transient
from spotfill_control.config import Settings
from spotfill_control.errors import FleetRequestError, TransientAwsError
from spotfill_control.fleet.fleet import build_fleet_request
from spotfill_control.run import RunState, utcnow

# What each fleet API needs of its caller (template.yaml, RequestFleetFunction, cites the documentation).
NEEDED = {
    "spot-fleet": (
        "ec2:RequestSpotFleet; ec2:RunInstances from the stack's launch template (condition "
        "ec2:LaunchTemplate) on its instances, volumes, network interfaces, subnets, security group and "
        "image; ec2:CreateTags on the spot-fleet-request, instances and volumes it creates; iam:PassRole of "
        "the fleet role (to spotfleet.amazonaws.com) and of the instance role (to ec2.amazonaws.com)"
    ),
    "ec2-fleet": (
        "ec2:CreateFleet on the fleet, the launch template, image, subnets, instances and volumes; "
        "ec2:CreateTags on the fleet it creates (ec2:CreateAction CreateFleet); iam:PassRole of the instance "
        "role (to ec2.amazonaws.com)"
    ),
}
OPERATIONS = {"spot-fleet": "RequestSpotFleet", "ec2-fleet": "CreateFleet"}


class FleetPermissionError(FleetRequestError):
    """The caller may not request the run's fleet: EC2 refused a DryRun of the request."""


def with_stack_template(run: RunState, settings: Settings) -> RunState:
    """The run, launching from its own launch template version or, before PrepareRun made one, the stack's."""
    if run.resources.launch_template_version is not None:
        return run
    version = int(settings.launch_template_version)
    return run.model_copy(
        update={"resources": run.resources.model_copy(update={"launch_template_version": version})}
    )


def _send_dry_run(api: str, config: dict[str, Any], ec2: Any) -> None:
    if api == "spot-fleet":
        ec2.request_spot_fleet(SpotFleetRequestConfig=config, DryRun=True)
    else:
        ec2.create_fleet(**config, DryRun=True)


def confirm_fleet_permissions(
    run: RunState, ec2: Any, settings: Settings, now: datetime | None = None
) -> str:
    """A DryRun of the run's fleet request; answers what EC2 confirmed, raises `FleetPermissionError` naming
    what the caller needs when EC2 refuses it, `FleetRequestError` when EC2 rejects the request otherwise
    (the dry run then confirms nothing), `TransientAwsError` when worth retrying."""
    api = run.spec.fleet.api
    operation = OPERATIONS[api]
    config = build_fleet_request(with_stack_template(run, settings), settings, now or utcnow())
    try:
        _send_dry_run(api, config, ec2)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", ""))
        if code == "DryRunOperation":
            return f"ec2:{operation} for the run's {api} fleet: allowed (DryRunOperation)"
        if code == "UnauthorizedOperation":
            raise FleetPermissionError(
                f"the fleet's requester may not request the run's {api} fleet: EC2 refused a DryRun of "
                f"{operation} ({message}). It needs {NEEDED[api]}. An encoded message names the missing "
                "permission once decoded (aws sts decode-authorization-message --encoded-message ...)."
            ) from None
        if is_transient(exc):
            raise TransientAwsError(f"{operation} (DryRun): {exc}") from exc
        raise FleetRequestError(
            f"a DryRun of {operation} for the run's {api} fleet confirmed nothing: EC2 answered {code}: "
            f"{message}"
        ) from None
    raise FleetRequestError(
        f"EC2 accepted a DryRun of {operation} as a real request: a fleet may have been made for the run"
    )
