"""AWS IAM: the service-linked roles of EC2's fleets named, and refused twice, as IAM does.

AWS documentation followed:
- "CreateServiceLinkedRole", AWS IAM API Reference:
  https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateServiceLinkedRole.html
- "EC2 Fleet prerequisites" (AWSServiceRoleForEC2Fleet), Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-prerequisites.html
- "Service-linked role for Spot Fleet" (AWSServiceRoleForEC2SpotFleet), Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-fleet-requests.html
- "Service-linked role for Spot Instance requests" (AWSServiceRoleForEC2Spot), Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html
"""

from __future__ import annotations

from typing import Any

from spotfill.localcloud.patches.once import once

# The service-linked roles of EC2's fleets, by service: IAM's names for them (moto derives `...Forec2fleet`).
SERVICE_LINKED_ROLE_NAMES = {"ec2fleet": "EC2Fleet", "spotfleet": "EC2SpotFleet", "spot": "EC2Spot"}


def service_linked_roles_as_iam_does() -> None:
    """`CreateServiceLinkedRole` names EC2's fleet roles as IAM does (AWSServiceRoleForEC2Fleet, ...), and a
    role that exists answers `InvalidInput` ("... has been taken in this account"), not moto's
    `EntityAlreadyExists` (idempotent)."""
    if not once("service_linked_roles_as_iam_does"):
        return
    from moto.iam import models
    from moto.iam.exceptions import EntityAlreadyExists, InvalidInput

    models.SERVICE_NAME_CONVERSION.update(SERVICE_LINKED_ROLE_NAMES)
    original = models.IAMBackend.create_service_linked_role

    def create_service_linked_role(self: Any, service_name: str, description: str, suffix: str) -> Any:
        try:
            return original(self, service_name, description, suffix)
        except EntityAlreadyExists as exc:
            name = str(exc).split("Role with name ", 1)[-1].split(" already exists", 1)[0]
            raise InvalidInput(
                f"Service role name {name} has been taken in this account, please try a different suffix."
            ) from exc

    models.IAMBackend.create_service_linked_role = create_service_linked_role
