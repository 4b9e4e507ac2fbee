"""Amazon EC2: a spot market with prices.

`DescribeSpotPriceHistory` in moto answers a placeholder price of $0.00001 stamped 2006, so every run would
cost nothing. The emulated spot market quotes each type EC2 knows at `pricing.SPOT_DISCOUNT` of its emulated
us-east-1 on-demand price (the article's $0.50 against $1.42 per million predictions), from the start of the
window asked for, in every zone.

AWS documentation followed:
- "DescribeSpotPriceHistory", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotPriceHistory.html
- "View Spot Instance pricing history", Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-instances-history.html
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from spotfill.localcloud.pricing import spot_price


def quote_spot_prices() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.responses.spot_instances import SpotInstances

    def describe_spot_price_history(self: Any) -> Any:
        # Each type asked for (else those of the static price table) in every zone (moto's offerings leave
        # some zones out, e.g. no c5 in us-east-1e, while its fleets still place instances there).
        from spotfill_control.instance_types import STATIC_ON_DEMAND_USD

        types = self._get_param("InstanceTypes", []) or sorted(STATIC_ON_DEMAND_USD)
        zones = self._filters_from_querystring().get("availability-zone") or [
            zone.name for zone in self.ec2_backend.describe_availability_zones()
        ]
        start = self._get_param("StartTime") or datetime.now(UTC).isoformat()
        history = [
            {
                "InstanceType": instance_type,
                "ProductDescription": "Linux/UNIX (Amazon VPC)",
                "SpotPrice": f"{price:.6f}",
                "AvailabilityZone": zone,
                "Timestamp": start,
            }
            for instance_type in types
            if (price := spot_price(instance_type)) is not None
            for zone in zones
        ]
        return ActionResult({"SpotPriceHistory": history})

    SpotInstances.describe_spot_price_history = describe_spot_price_history
