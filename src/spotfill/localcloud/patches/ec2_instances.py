"""Amazon EC2: an instance and a resource's tags found by id, not by scanning the account.

moto finds an instance by id by copying every reservation, and a resource's tags by matching every tag of the
Region against its id, so `DescribeInstances` of a 1,000-instance fleet is quadratic;
`look_up_instances_and_tags_by_id` looks both up by id, with moto's answers (installed with the fleet model).

AWS documentation followed:
- "DescribeInstances", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html
- "DescribeTags", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeTags.html
"""

from __future__ import annotations

from typing import Any

from spotfill.localcloud.patches.once import once


def look_up_instances_and_tags_by_id() -> None:
    """moto finds an instance by id by copying every reservation of the region (`get_instance`), and a
    resource's tags by matching every tag of the region against a pattern of its id (`get_tags`). Both cost
    as much as the region holds, per instance: `DescribeInstances` of a 1,000-instance fleet looks each
    instance's tags up (quadratic: seconds per call), and so do registration and teardown, which name
    instances. EC2 answers by id whatever the account holds. Here both look the id up directly, with the
    same answers: an id with a wildcard (`*`, `?`, `[`, which no EC2 id has) still goes through moto's match
    (idempotent)."""
    if not once("lookups_by_id"):
        return
    from moto.ec2.exceptions import InvalidInstanceIdError
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def get_instance(self: Any, instance_id: str) -> Any:
        for reservation in list(self.reservations.values()):
            for instance in reservation.instances:
                if instance.id == instance_id:
                    return instance
        raise InvalidInstanceIdError(instance_id)

    scanning_get_tags = TaggedEC2Resource.get_tags

    def get_tags(self: Any) -> list[dict[str, str]]:
        resource_id = getattr(self, "id", None)
        if not resource_id or not isinstance(resource_id, str) or any(c in resource_id for c in "*?["):
            return scanning_get_tags(self)
        tags = dict(self.ec2_backend.tags.get(resource_id) or {})
        resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
        return [
            {"resource_id": resource_id, "key": key, "value": value, "resource_type": resource_type}
            for key, value in tags.items()
        ]

    InstanceBackend.get_instance = get_instance
    TaggedEC2Resource.get_tags = get_tags
