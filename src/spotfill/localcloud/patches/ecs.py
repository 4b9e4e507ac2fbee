"""Amazon ECS: deregistering a container instance (an unknown one; the cluster's count).

Deregistering a container instance that is no longer registered is a 500 in moto (a bare `Exception`), which
clients retry for a minute; ECS answers with a client error. So does this. And ECS counts a cluster's
registered instances down again (moto only ever adds to the count).

AWS documentation followed:
- "DeregisterContainerInstance", Amazon ECS API Reference:
  https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DeregisterContainerInstance.html
- "Cluster" (`registeredContainerInstancesCount`), Amazon ECS API Reference:
  https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_Cluster.html
"""

from __future__ import annotations

from typing import Any


def patch_ecs_deregistration_error() -> None:
    from moto.ecs.exceptions import InvalidParameterException
    from moto.ecs.models import EC2ContainerServiceBackend

    original = EC2ContainerServiceBackend.deregister_container_instance

    def deregister_container_instance(
        self: Any, cluster_str: str, container_instance_str: str, force: bool
    ) -> Any:
        cluster = self._get_cluster(cluster_str)
        if container_instance_str.split("/")[-1] not in self.container_instances.get(cluster.name, {}):
            raise InvalidParameterException(f"Container instance {container_instance_str} not found.")
        removed = original(self, cluster_str, container_instance_str, force)
        # ECS counts the cluster's registered instances (DescribeClusters); moto only ever adds to the count.
        cluster.registered_container_instances_count = max(
            0, cluster.registered_container_instances_count - 1
        )
        return removed

    EC2ContainerServiceBackend.deregister_container_instance = deregister_container_instance
