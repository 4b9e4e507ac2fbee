"""A call turned into the authorization requests IAM makes for it (`requests_of`): its own action on the
resources it names with the context it gives, and the requests it implies: `iam:PassRole` for every role it
hands to a service, tag-on-create permissions (`ec2:CreateTags`, `ecs:TagResource`, `sqs:TagQueue`,
`s3:PutObjectTagging`) with their `CreateAction` condition key, and what a fleet request launches as its
caller (`_fleet_launch_requests`: `ec2:RunInstances` from the launch template for a Spot Fleet), each from
AWS's documentation as cited where it is built.

AWS documentation followed:
- "Grant a user permissions to pass a role to an AWS service", IAM User Guide:
  https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_passrole.html
- "Grant permission to tag Amazon EC2 resources during creation", Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/supported-iam-actions-tagging.html
- "Spot Fleet permissions" and "EC2 Fleet prerequisites", Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-prerequisites.html,
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-prerequisites.html
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spotfill.iam.actions import (
    OPERATION_ACTIONS,
    UNAUTHORISED_CALLS,
    VERSIONED_ACTIONS,
    iam_prefix,
    privilege_action,
    privilege_of,
)
from spotfill.iam.conditions import ec2_resource_context, request_context
from spotfill.iam.decision import Request
from spotfill.iam.policies import UnmappedCall
from spotfill.iam.resources import Account, ec2_arn, fix_arn, resources_of

# The service principal a role passed in a call's parameter is passed to: (service, operation, param).
_PASSED_ROLES: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("ecs", "RegisterTaskDefinition"): [
        ("taskRoleArn", "ecs-tasks.amazonaws.com"),
        ("executionRoleArn", "ecs-tasks.amazonaws.com"),
    ],
    ("stepfunctions", "CreateStateMachine"): [("roleArn", "states.amazonaws.com")],
    ("stepfunctions", "UpdateStateMachine"): [("roleArn", "states.amazonaws.com")],
    ("lambda", "CreateFunction"): [("Role", "lambda.amazonaws.com")],
    ("lambda", "UpdateFunctionConfiguration"): [("Role", "lambda.amazonaws.com")],
    # CreateService's `role`: "The name or full ARN of the IAM role that allows Amazon ECS to make calls to
    # your load balancer on your behalf" (Amazon ECS API Reference, CreateService,
    # https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_CreateService.html).
    ("ecs", "CreateService"): [("role", "ecs.amazonaws.com")],
}

# RunTask's overrides pass roles too: the Service Authorization Reference lists iam:PassRole as RunTask's
# dependent action ("Actions, resources, and condition keys for Amazon Elastic Container Service",
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonelasticcontainerservice.html).
_RUN_TASK_OVERRIDE_ROLES = ("taskRoleArn", "executionRoleArn")


def _primary_requests(
    service: str, operation: str, params: Mapping[str, Any], account: Account, call: str
) -> list[Request]:
    prefix = iam_prefix(service)
    action = OPERATION_ACTIONS.get((service, operation), f"{prefix}:{operation}")
    if params.get("VersionId") and (service, operation) in VERSIONED_ACTIONS:
        action = VERSIONED_ACTIONS[(service, operation)]
    try:
        privilege = privilege_of(action)
    except UnmappedCall as exc:
        raise UnmappedCall(f"{call}: {exc}") from None
    prefix = action.split(":", 1)[0]
    context = request_context(prefix, privilege, params, operation, account)
    requests = []
    for resource in resources_of(prefix, privilege, params, operation, account, call):
        extra = ec2_resource_context(resource, account) if prefix == "ec2" else {}
        requests.append(Request(privilege_action(prefix, privilege), resource, {**context, **extra}))
    return requests


def _implied_requests(
    service: str, operation: str, params: Mapping[str, Any], account: Account, primary: list[Request]
) -> list[Request]:
    """What a call needs besides its own action: roles it passes, tags it sets on what it creates."""
    implied: list[Request] = []
    for param, passed_to in _PASSED_ROLES.get((service, operation), []):
        if params.get(param):
            implied.append(Request("iam:PassRole", params[param], {"iam:PassedToService": passed_to}))
    if service == "ec2":
        profiles: list[str] = []
        # RequestSpotFleet nests its request in SpotFleetRequestConfig; CreateFleet takes it at the top.
        config = params.get("SpotFleetRequestConfig") or (params if operation == "CreateFleet" else {})
        if config.get("IamFleetRole"):
            implied.append(
                Request(
                    "iam:PassRole", config["IamFleetRole"], {"iam:PassedToService": "spotfleet.amazonaws.com"}
                )
            )
        for launch_config in config.get("LaunchTemplateConfigs", []):
            specification = launch_config["LaunchTemplateSpecification"]
            template = specification.get("LaunchTemplateId") or specification.get("LaunchTemplateName")
            if not template:
                raise UnmappedCall(f"ec2.{operation}: a launch template specification names no template")
            data = account.launch_template_data(template, str(specification.get("Version", "$Default")))
            profiles.append(data.get("IamInstanceProfile", {}).get("Arn", ""))
        profiles += [
            s.get("IamInstanceProfile", {}).get("Arn", "") for s in config.get("LaunchSpecifications", [])
        ]
        if operation == "RunInstances":
            profiles.append(params.get("IamInstanceProfile", {}).get("Arn", ""))
        for profile in filter(None, profiles):
            implied.append(
                Request(
                    "iam:PassRole",
                    account.role_of_instance_profile(profile),
                    {"iam:PassedToService": "ec2.amazonaws.com"},
                )
            )
        tagged = params.get("TagSpecifications") or config.get("TagSpecifications") or []
        for specification in tagged:
            resource_type = specification["ResourceType"]
            arn = account.fill(f"arn:${{Partition}}:ec2:${{Region}}:${{Account}}:{resource_type}/*", {})
            implied.append(Request("ec2:CreateTags", arn, {"ec2:CreateAction": operation}))
        # A modification names its launch templates at the top; what it passes (if anything) for their
        # instance profiles is undocumented, so it is evaluated on its resources alone.
        modifies = operation in ("ModifyFleet", "ModifySpotFleetRequest")
        implied += _fleet_launch_requests(operation, params if modifies else config, account)
        if operation == "CreateLaunchTemplateVersion":
            image = str(params.get("LaunchTemplateData", {}).get("ImageId", ""))
            if image.startswith("resolve:ssm:"):
                implied.append(_ssm_image_parameter(image, account))
    if (
        service == "ecs"
        and params.get("tags")
        and operation.startswith(("Create", "Register", "Run", "Start"))
    ):
        for request in primary:
            implied.append(Request("ecs:TagResource", request.resource, {"ecs:CreateAction": operation}))
    if service == "ecs" and operation == "RunTask":
        overrides = params.get("overrides") or {}
        for param in _RUN_TASK_OVERRIDE_ROLES:
            if overrides.get(param):
                implied.append(
                    Request(
                        "iam:PassRole", overrides[param], {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
                    )
                )
    if service == "sqs" and operation == "CreateQueue" and params.get("tags"):
        implied += [Request("sqs:TagQueue", r.resource) for r in primary]
    if service == "s3" and operation == "PutObject" and params.get("Tagging"):
        implied += [Request("s3:PutObjectTagging", r.resource) for r in primary]
    if service == "s3" and operation == "CopyObject":
        source = params["CopySource"]
        source = source if isinstance(source, str) else f"{source['Bucket']}/{source['Key']}"
        implied.append(
            Request("s3:GetObject", f"arn:{account.partition}:s3:::{source.split('?')[0].lstrip('/')}")
        )
    return implied


def _ssm_image_parameter(image: str, account: Account) -> Request:
    """An AMI given as `resolve:ssm:<parameter>`: EC2 reads the parameter as the caller (ssm:GetParameters,
    the dependent action of CreateLaunchTemplateVersion and RunInstances in the Service Authorization
    Reference)."""
    name = image.removeprefix("resolve:ssm:").split(":")[0].lstrip("/")
    arn = fix_arn(account.fill("arn:${Partition}:ssm:${Region}:${Account}:parameter/" + name, {}))
    return Request("ssm:GetParameters", arn, {"aws:SecureTransport": "true"})


def _fleet_modify_requests(
    operation: str, configs: list[Mapping[str, Any]], account: Account
) -> list[Request]:
    requests: list[Request] = []
    context = {"aws:SecureTransport": "true"}
    for launch_config in configs:
        specification = launch_config["LaunchTemplateSpecification"]
        template = specification.get("LaunchTemplateId")
        if not template:
            raise UnmappedCall(f"ec2.{operation}: the evaluator needs the launch template's id, not its name")
        data = account.launch_template_data(template, str(specification.get("Version", "$Default")))
        overrides = launch_config.get("Overrides") or [{}]
        arns = [ec2_arn(account, f"launch-template/{template}")]
        if operation == "ModifyFleet":
            images = sorted({str(o.get("ImageId") or data.get("ImageId") or "") for o in overrides} - {""})
            arns += [
                ec2_arn(account, f"image/{i}", regional_account=False)
                for i in images
                if not i.startswith("resolve:ssm:")
            ]
        subnets = sorted(
            {s.strip() for o in overrides for s in str(o.get("SubnetId") or "").split(",") if s.strip()}
        )
        arns += [ec2_arn(account, f"subnet/{s}") for s in subnets]
        requests += [Request(f"ec2:{operation}", arn, dict(context)) for arn in arns]
    return requests


def _fleet_launch_requests(operation: str, config: Mapping[str, Any], account: Account) -> list[Request]:
    """What a fleet request is authorised on besides the fleet, and what it launches as the caller.

    - ec2:CreateFleet and ec2:RequestSpotFleet are also authorised on the resources the fleet uses: the
      Service Authorization Reference lists the launch template, image and subnets for both (and
      instances and volumes for CreateFleet, security groups for RequestSpotFleet).
    - A Spot Fleet launches as the caller: "ec2:RunInstances - Required to launch instances in a Spot
      Fleet" and "ec2:CreateTags - Required to tag the Spot Fleet request, instances, or volumes" ("Spot Fleet
      permissions", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-prerequisites.html). So
      does an `instant` EC2 Fleet ("An instant EC2 Fleet does not require this role", "EC2 Fleet
      prerequisites", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-prerequisites.html); a
      `maintain` or `request` EC2 Fleet launches, tags and terminates through its service-linked role
      AWSServiceRoleForEC2Fleet (same page), so its caller needs no ec2:RunInstances.
    Each ec2:RunInstances request carries `ec2:LaunchTemplate` (the template's ARN) and
    `ec2:IsLaunchTemplateResource`, as RunInstances from a launch template does.
    - ec2:ModifyFleet and ec2:ModifySpotFleetRequest with `LaunchTemplateConfigs` are authorised on the launch
      template and the overrides' subnets too (and ModifyFleet on the image), the resource types the Service
      Authorization Reference lists for them besides the fleet; they launch nothing as the caller."""
    if operation in ("ModifyFleet", "ModifySpotFleetRequest"):
        return _fleet_modify_requests(operation, list(config.get("LaunchTemplateConfigs") or []), account)
    if operation not in ("CreateFleet", "RequestSpotFleet"):
        return []
    launches_as_caller = operation == "RequestSpotFleet" or config.get("Type") == "instant"
    requests: list[Request] = []
    for launch_config in config.get("LaunchTemplateConfigs", []):
        specification = launch_config["LaunchTemplateSpecification"]
        template = specification.get("LaunchTemplateId")
        if not template:
            raise UnmappedCall(f"ec2.{operation}: the evaluator needs the launch template's id, not its name")
        template_arn = ec2_arn(account, f"launch-template/{template}")
        data = account.launch_template_data(template, str(specification.get("Version", "$Default")))
        overrides = launch_config.get("Overrides") or [{}]
        subnets = sorted(
            {s.strip() for o in overrides for s in str(o.get("SubnetId") or "").split(",") if s.strip()}
        )
        images = sorted(
            {str(o.get("ImageId") or data.get("ImageId") or "") for o in overrides}
            - {""}
            - {i for i in [str(data.get("ImageId", ""))] if i.startswith("resolve:ssm:")}
        )
        groups = sorted(set(data.get("SecurityGroupIds", [])))
        template_arns = [template_arn]
        template_arns += [ec2_arn(account, f"security-group/{g}") for g in groups]
        request_arns = [ec2_arn(account, f"subnet/{s}") for s in subnets]
        image_arns = [ec2_arn(account, f"image/{i}", regional_account=False) for i in images]
        (template_arns if "ImageId" in data else request_arns).extend(image_arns)
        created = [ec2_arn(account, f"{t}/*") for t in ("instance", "volume", "network-interface")]
        context = {"aws:SecureTransport": "true"}
        authorised_on = [template_arn, *image_arns, *request_arns[: len(subnets)]]
        authorised_on += created[:2] if operation == "CreateFleet" else template_arns[1:]
        requests += [Request(f"ec2:{operation}", arn, dict(context)) for arn in authorised_on]
        if not launches_as_caller:
            continue
        for arns, from_template in ((template_arns, "true"), (request_arns + created, "false")):
            requests += [
                Request(
                    "ec2:RunInstances",
                    arn,
                    {
                        **context,
                        "ec2:LaunchTemplate": template_arn,
                        "ec2:IsLaunchTemplateResource": from_template,
                    },
                )
                for arn in arns
            ]
        if str(data.get("ImageId", "")).startswith("resolve:ssm:"):
            requests.append(_ssm_image_parameter(str(data["ImageId"]), account))
        tagged = {t.get("ResourceType") for t in data.get("TagSpecifications", [])}
        for resource_type in ("instance", "volume"):
            if resource_type in tagged:
                requests.append(
                    Request(
                        "ec2:CreateTags",
                        ec2_arn(account, f"{resource_type}/*"),
                        {**context, "ec2:CreateAction": "RunInstances"},
                    )
                )
    return list(dict.fromkeys(requests))


def requests_of(service: str, operation: str, params: Mapping[str, Any], account: Account) -> list[Request]:
    """Every authorization request IAM makes for the call (raises UnmappedCall when it cannot tell)."""
    if (service, operation) in UNAUTHORISED_CALLS:
        return []
    call = f"{service}.{operation}"
    primary = _primary_requests(service, operation, params, account, call)
    return primary + _implied_requests(service, operation, params, account, primary)
