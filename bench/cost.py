"""Cost per million predictions on real instance types, from the worker's throughput per vCPU (aws setting).

Throughput: the worker's predictions per second pinned to ``worker_vcpus`` CPUs of this machine, divided by
them, times the instance type's vCPUs; that is, throughput assumed to grow in proportion to vCPUs, and every
family assumed as fast per vCPU as this machine's CPU (only this one CPU is measured). Prices (USD per hour,
us-east-1, Linux): on demand from the project's fallback table
(``spotfill_control.instance_types.STATIC_ON_DEMAND_USD``) where it lists the type, else
``OTHER_ON_DEMAND_USD`` (its source beside it); spot as ``SPOT_FRACTION`` of on demand, an assumption (runs
price spot from the live spot history, which the bench does not read).
"""

from __future__ import annotations

from typing import Any

# (CPU family, instance type, vCPUs): 4-vCPU compute types of each family.
TYPES = (
    ("Intel", "c6i.xlarge", 4),
    ("Intel", "c7i.xlarge", 4),
    ("AMD", "c5a.xlarge", 4),
    ("AMD", "c6a.xlarge", 4),
    ("Graviton", "m7g.xlarge", 4),
)
# Not in the project's table: m7g.xlarge at twice m7g.large's $0.0816 per hour (us-east-1, Linux, June 2026,
# as quoted by https://www.factualminds.com/blog/amazon-ec2-on-demand-pricing-instance-families-2026/).
OTHER_ON_DEMAND_USD = {"m7g.xlarge": 0.1632}
# Spot at 0.35 of on demand: the write-up's own ratio ($0.50 / $1.42 per million) and the local cloud's
# emulated spot market (spotfill.localcloud.pricing.SPOT_DISCOUNT).
SPOT_FRACTION = 0.35
# The write-up spotfill grew from (one machine, its model): USD per million predictions and its throughput.
WRITE_UP = {"spot": 0.50, "on_demand": 1.42, "sagemaker": 3.97, "predictions_per_minute": 1000}


def on_demand_price(instance_type: str) -> tuple[float, str]:
    """(USD per hour, where it came from)."""
    from spotfill_control.instance_types import STATIC_ON_DEMAND_USD

    if instance_type in STATIC_ON_DEMAND_USD:
        return STATIC_ON_DEMAND_USD[instance_type], "static-table"
    return OTHER_ON_DEMAND_USD[instance_type], "third-party page"


def per_million(usd_per_hour: float, predictions_per_second: float) -> float:
    return usd_per_hour / (predictions_per_second * 3600) * 1e6


def costs(cases: dict[str, Any], worker_vcpus: int) -> dict[str, Any]:
    """Per case and instance type: predictions per second, and USD per million predictions on demand and on
    spot."""
    result: dict[str, Any] = {
        "worker_vcpus": worker_vcpus,
        "spot_fraction": SPOT_FRACTION,
        "write_up": WRITE_UP,
        "cases": {},
    }
    for name, case in cases.items():
        per_vcpu = case["worker"] / worker_vcpus
        rows = []
        for family, instance_type, vcpus in TYPES:
            price, source = on_demand_price(instance_type)
            throughput = per_vcpu * vcpus
            rows.append(
                {
                    "family": family,
                    "instance_type": instance_type,
                    "vcpus": vcpus,
                    "on_demand_usd_per_hour": price,
                    "price_source": source,
                    "predictions_per_second": throughput,
                    "on_demand_usd_per_million": per_million(price, throughput),
                    "spot_usd_per_million": per_million(price * SPOT_FRACTION, throughput),
                }
            )
        result["cases"][name] = {"title": case["title"], "per_vcpu": per_vcpu, "types": rows}
    return result


def table(costs: dict[str, Any]) -> list[str]:
    write_up = costs["write_up"]
    rows = [
        f"cost per million predictions (throughput per vCPU measured on {costs['worker_vcpus']} pinned "
        f"CPU(s), scaled by vCPUs; spot = {costs['spot_fraction']} x on demand); the write-up: "
        f"${write_up['spot']:.2f} spot, ${write_up['on_demand']:.2f} on demand, "
        f"${write_up['sagemaker']:.2f} SageMaker, "
        f"~{write_up['predictions_per_minute']:,} predictions/min per machine",
        "",
        "| case | type (family) | $/h on demand | predictions/s | $/M on demand | $/M spot |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for case in costs["cases"].values():
        for t in case["types"]:
            rows.append(
                f"| {case['title']} | {t['instance_type']} ({t['family']}) | "
                f"{t['on_demand_usd_per_hour']:.4f} | {t['predictions_per_second']:,.0f} | "
                f"{t['on_demand_usd_per_million']:.3g} | "
                f"{t['spot_usd_per_million']:.3g} |"
            )
    return rows
