"""The APIs the local cloud serves for moto, checked in process (`mock_aws`): the spot market, EC2 Spot vCPU
quotas and instance type offerings.

They live apart from the local-cloud modules on purpose: leaving `mock_aws()` resets the process's moto
backends, which a module's shared local cloud (a moto server in this same process) would lose."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.aws


def test_the_emulated_spot_market_quotes_every_catalog_type_in_every_zone_below_on_demand():
    # given the local cloud's spot market over moto (whose own offerings leave some zones out)
    from datetime import UTC, datetime, timedelta

    import boto3
    from moto import mock_aws
    from spotfill_control.instance_types import CATALOG

    from spotfill.localcloud import patches

    patches.quote_spot_prices()
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]

        # when the cost code asks for one type in one zone over a window, for every type and zone
        quotes = {
            (name, zone): ec2.describe_spot_price_history(
                InstanceTypes=[name],
                ProductDescriptions=["Linux/UNIX (Amazon VPC)"],
                Filters=[{"Name": "availability-zone", "Values": [zone]}],
                StartTime=datetime.now(UTC) - timedelta(hours=1),
                EndTime=datetime.now(UTC),
            )["SpotPriceHistory"]
            for name in CATALOG
            for zone in zones
        }

    # then each gets exactly one price, 35% of on demand, stamped at the window's start
    for (name, zone), history in quotes.items():
        assert [(h["InstanceType"], h["AvailabilityZone"]) for h in history] == [(name, zone)]
        assert float(history[0]["SpotPrice"]) == pytest.approx(CATALOG[name].on_demand_hourly_usd * 0.35)


def test_the_emulator_serves_ec2_spot_quotas_as_aws_does():
    # given the local cloud's Service Quotas over moto (which knows only VPC quotas)
    import boto3
    from moto import mock_aws

    from spotfill.localcloud import patches

    patches.patch_account_limits()
    with mock_aws():
        quotas = boto3.client("service-quotas", region_name="us-east-1")
        # a quota never changed has no applied value; its AWS default is a new account's
        with pytest.raises(ClientError) as never_changed:
            quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-34B43A08")
        assert never_changed.value.response["Error"]["Code"] == "NoSuchResourceException"
        default = quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode="L-34B43A08")["Quota"]
        assert default["Value"] == 5
        assert default["UsageMetric"]["MetricNamespace"] == "AWS/Usage"
        assert default["UsageMetric"]["MetricDimensions"]["Class"] == "Standard/Spot"
        g = quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode="L-3819A6DF")["Quota"]
        assert (g["QuotaName"], g["Value"]) == ("All G and VT Spot Instance Requests", 0)

        # an increase is approved at once and applied; a decrease is refused
        requested = quotas.request_service_quota_increase(
            ServiceCode="ec2", QuotaCode="L-3819A6DF", DesiredValue=32
        )["RequestedQuota"]
        assert requested["Status"] == "APPROVED"
        assert quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-3819A6DF")["Quota"]["Value"] == 32
        with pytest.raises(ClientError, match="IllegalArgumentException"):
            quotas.request_service_quota_increase(ServiceCode="ec2", QuotaCode="L-3819A6DF", DesiredValue=8)

        # tests may set any value, or forget it
        patches.set_service_quota("L-3819A6DF", 4)
        assert quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-3819A6DF")["Quota"]["Value"] == 4
        patches.set_service_quota("L-3819A6DF", None)
        with pytest.raises(ClientError, match="NoSuchResourceException"):
            quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-3819A6DF")


def test_instance_type_offerings_follow_what_a_test_sets():
    import boto3
    from moto import mock_aws

    from spotfill.localcloud import patches

    patches.patch_account_limits()
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")

        def zones_of(instance_type: str, location_type: str = "availability-zone") -> list[str]:
            offerings = ec2.describe_instance_type_offerings(
                LocationType=location_type, Filters=[{"Name": "instance-type", "Values": [instance_type]}]
            )["InstanceTypeOfferings"]
            return sorted(o["Location"] for o in offerings)

        # given moto's snapshot of AWS's offerings (c5.large everywhere but us-east-1e)
        assert "us-east-1a" in zones_of("c5.large")
        # when a test withdraws c5.large from every zone, and offers g5.xlarge in one
        patches.set_instance_type_offerings("c5.large", [])
        patches.set_instance_type_offerings("g5.xlarge", ["us-east-1b"])
        # then the offerings say so, by zone, zone id and Region
        assert zones_of("c5.large") == [] and zones_of("c5.large", "region") == []
        assert zones_of("g5.xlarge") == ["us-east-1b"]
        assert zones_of("g5.xlarge", "region") == ["us-east-1"]
        assert len(zones_of("g5.xlarge", "availability-zone-id")) == 1
        assert zones_of("c5.xlarge")  # other types keep moto's offerings


def test_s3_event_reaches_rule_targets_shaped_as_s3_sends_it():
    from spotfill.localcloud import patches

    # given moto's EventBridge event of a put to an unversioned bucket and of one to a versioned bucket
    moto_event = {
        "source": "aws.s3",
        "time": 1_796_000_000,
        "detail": {"object": {"key": "backfills/a b+c.json", "size": 2, "eTag": "abc", "version-id": None}},
    }
    versioned = {**moto_event, "detail": {"object": {**moto_event["detail"]["object"], "version-id": "v1"}}}

    # when the local cloud shapes them for a rule target
    shaped, shaped_versioned = patches.aws_shaped_event(moto_event), patches.aws_shaped_event(versioned)

    # then they read as S3's: the key URL-encoded, the ETag as `etag`, a version id only where there is one
    assert shaped["detail"]["object"] == {"key": "backfills/a+b%2Bc.json", "size": 2, "etag": "abc"}
    assert shaped_versioned["detail"]["object"]["version-id"] == "v1"
    assert shaped["time"] == "2026-11-30T00:53:20Z"
