"""The local cloud: moto on loopback plus the EC2 and ECS physics."""

from spotfill.localcloud.chaos import ChaosSpec
from spotfill.localcloud.cloud import LocalCloud, LocalCloudOptions

__all__ = ["ChaosSpec", "LocalCloud", "LocalCloudOptions"]
