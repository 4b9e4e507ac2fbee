"""The EC2 instance types a fleet may use: size, accelerator and on-demand price.

On-demand prices are a static table (us-east-1, Linux, USD per hour) used only for the report's
"what it would have cost on demand" comparison; the spot cost itself comes from DescribeSpotPriceHistory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_mib: int
    gpus: int
    on_demand_hourly_usd: float

    @property
    def is_gpu(self) -> bool:
        return self.gpus > 0


def _table(*rows: tuple[str, int, int, int, float]) -> dict[str, InstanceType]:
    return {name: InstanceType(name, vcpus, mem, gpus, price) for name, vcpus, mem, gpus, price in rows}


CATALOG: dict[str, InstanceType] = _table(
    # name, vCPUs, memory MiB, GPUs, on-demand USD/h (us-east-1)
    ("c5.large", 2, 4096, 0, 0.085),
    ("c5.xlarge", 4, 8192, 0, 0.17),
    ("c5.2xlarge", 8, 16384, 0, 0.34),
    ("c5.4xlarge", 16, 32768, 0, 0.68),
    ("c5.9xlarge", 36, 73728, 0, 1.53),
    ("c5a.xlarge", 4, 8192, 0, 0.154),
    ("c5a.2xlarge", 8, 16384, 0, 0.308),
    ("c6i.xlarge", 4, 8192, 0, 0.17),
    ("c6i.2xlarge", 8, 16384, 0, 0.34),
    ("c6i.4xlarge", 16, 32768, 0, 0.68),
    ("c6a.xlarge", 4, 8192, 0, 0.153),
    ("c7i.xlarge", 4, 8192, 0, 0.1785),
    ("m5.large", 2, 8192, 0, 0.096),
    ("m5.xlarge", 4, 16384, 0, 0.192),
    ("m5.2xlarge", 8, 32768, 0, 0.384),
    ("m6i.xlarge", 4, 16384, 0, 0.192),
    ("m6i.2xlarge", 8, 32768, 0, 0.384),
    ("r5.xlarge", 4, 32768, 0, 0.252),
    ("g4dn.xlarge", 4, 16384, 1, 0.526),
    ("g4dn.2xlarge", 8, 32768, 1, 0.752),
    ("g4dn.4xlarge", 16, 65536, 1, 1.204),
    ("g5.xlarge", 4, 16384, 1, 1.006),
    ("g5.2xlarge", 8, 32768, 1, 1.212),
    ("g6.xlarge", 4, 16384, 1, 0.805),
    ("p3.2xlarge", 8, 62464, 1, 3.06),
)


def lookup(name: str) -> InstanceType:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(name) from None
