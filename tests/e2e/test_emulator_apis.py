"""The APIs the local cloud serves for moto, checked in process (`mock_aws`): the spot market, the Price List,
EC2 Spot vCPU quotas and instance type offerings.

They live apart from the local-cloud modules on purpose: leaving `mock_aws()` resets the process's moto
backends, which a module's shared local cloud (a moto server in this same process) would lose."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.aws


# Types of the old static table and beyond it: Graviton, current generations, GPUs.
QUOTED_TYPES = ["c5.xlarge", "g4dn.xlarge", "m7g.large", "c7g.xlarge", "c7i.large", "m7i.large", "g6e.xlarge"]


def test_the_emulated_spot_market_quotes_any_type_in_every_zone_below_on_demand():
    # given the local cloud's spot market over moto (whose own offerings leave some zones out)
    from datetime import UTC, datetime, timedelta

    import boto3
    from moto import mock_aws

    from spotfill.localcloud import pricing
    from spotfill.localcloud.patches.account_limits import patch_account_limits

    patch_account_limits()
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
            for name in QUOTED_TYPES
            for zone in zones
        }

    # then each gets exactly one price, 35% of its us-east-1 on-demand price, stamped at the window's start
    for (name, zone), history in quotes.items():
        assert [(h["InstanceType"], h["AvailabilityZone"]) for h in history] == [(name, zone)]
        on_demand = pricing.on_demand_price(name, "us-east-1")
        assert float(history[0]["SpotPrice"]) == pytest.approx(on_demand * 0.35, abs=1e-6)


def test_the_emulated_price_list_answers_get_products_as_aws_shapes_it():
    # given the local cloud's Price List Query API over moto (which has no Pricing service)
    import json

    import boto3
    from moto import mock_aws

    from spotfill.localcloud import pricing
    from spotfill.localcloud.patches.account_limits import patch_account_limits

    patch_account_limits()
    with mock_aws():
        client = boto3.client("pricing", region_name="us-east-1")

        def products(name: str, region: str, **attributes: str) -> list[dict]:
            filters = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": name}]
            filters += [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]
            filters += [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in attributes.items()]
            pages = client.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters)
            return [json.loads(entry) for page in pages for entry in page["PriceList"]]

        linux = {
            "operatingSystem": "Linux",
            "tenancy": "Shared",
            "preInstalledSw": "NA",
            "capacitystatus": "Used",
        }
        # when a type is asked for with the plain Linux filters, in two regions, and without them
        east = products("m7g.large", "us-east-1", **linux)
        west = products("m7g.large", "eu-west-1", **linux)
        every = products("m7g.large", "us-east-1")
        unknown = products("z9.mega", "us-east-1", **linux)

    # then one product matches, shaped as AWS's, priced per region; other variants match looser filters
    (product,) = east
    assert product["product"]["attributes"]["operation"] == "RunInstances"
    (offer,) = product["terms"]["OnDemand"].values()
    (dimension,) = offer["priceDimensions"].values()
    assert dimension["unit"] == "Hrs"
    east_usd = float(dimension["pricePerUnit"]["USD"])
    assert east_usd == pricing.on_demand_price("m7g.large", "us-east-1")
    (west_product,) = west
    (west_offer,) = west_product["terms"]["OnDemand"].values()
    (west_dimension,) = west_offer["priceDimensions"].values()
    assert float(west_dimension["pricePerUnit"]["USD"]) > east_usd
    assert len(every) > 1 and unknown == []
    # and the on-demand price is no round multiple of the spot price, so a mix-up shows
    ratio = east_usd / pricing.spot_price("m7g.large")
    assert abs(ratio - round(ratio)) > 0.1


def test_a_refusing_price_list_answers_its_error_until_restored():
    import boto3
    from moto import mock_aws

    from spotfill.localcloud.patches.account_limits import (
        patch_account_limits,
    )
    from spotfill.localcloud.pricing import PRICE_LIST_OUTAGE

    patch_account_limits()
    filters = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": "c5.xlarge"}]
    with mock_aws():
        client = boto3.client("pricing", region_name="us-east-1")
        PRICE_LIST_OUTAGE.refuse("AccessDeniedException")
        try:
            with pytest.raises(ClientError) as refused:
                client.get_products(ServiceCode="AmazonEC2", Filters=filters)
        finally:
            PRICE_LIST_OUTAGE.restore()
        assert client.get_products(ServiceCode="AmazonEC2", Filters=filters)["PriceList"]
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


def test_the_emulator_serves_ec2_spot_quotas_as_aws_does():
    # given the local cloud's Service Quotas over moto (which knows only VPC quotas)
    import boto3
    from moto import mock_aws

    from spotfill.localcloud.patches.account_limits import (
        patch_account_limits,
        set_service_quota,
    )

    patch_account_limits()
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
        set_service_quota("L-3819A6DF", 4)
        assert quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-3819A6DF")["Quota"]["Value"] == 4
        set_service_quota("L-3819A6DF", None)
        with pytest.raises(ClientError, match="NoSuchResourceException"):
            quotas.get_service_quota(ServiceCode="ec2", QuotaCode="L-3819A6DF")


def test_instance_type_offerings_follow_what_a_test_sets():
    import boto3
    from moto import mock_aws

    from spotfill.localcloud.patches.account_limits import (
        patch_account_limits,
        set_instance_type_offerings,
    )

    patch_account_limits()
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
        set_instance_type_offerings("c5.large", [])
        set_instance_type_offerings("g5.xlarge", ["us-east-1b"])
        # then the offerings say so, by zone, zone id and Region
        assert zones_of("c5.large") == [] and zones_of("c5.large", "region") == []
        assert zones_of("g5.xlarge") == ["us-east-1b"]
        assert zones_of("g5.xlarge", "region") == ["us-east-1"]
        assert len(zones_of("g5.xlarge", "availability-zone-id")) == 1
        assert zones_of("c5.xlarge")  # other types keep moto's offerings


def test_s3_event_reaches_rule_targets_shaped_as_s3_sends_it():
    from spotfill.localcloud.patches.eventbridge import aws_shaped_event

    # given moto's EventBridge event of a put to an unversioned bucket and of one to a versioned bucket
    moto_event = {
        "source": "aws.s3",
        "time": 1_796_000_000,
        "detail": {"object": {"key": "backfills/a b+c.json", "size": 2, "eTag": "abc", "version-id": None}},
    }
    versioned = {**moto_event, "detail": {"object": {**moto_event["detail"]["object"], "version-id": "v1"}}}

    # when the local cloud shapes them for a rule target
    shaped, shaped_versioned = aws_shaped_event(moto_event), aws_shaped_event(versioned)

    # then they read as S3's: the key URL-encoded, the ETag as `etag`, a version id only where there is one
    assert shaped["detail"]["object"] == {"key": "backfills/a+b%2Bc.json", "size": 2, "etag": "abc"}
    assert shaped_versioned["detail"]["object"]["version-id"] == "v1"
    assert shaped["time"] == "2026-11-30T00:53:20Z"


def test_instances_and_their_tags_are_found_by_id_with_the_answers_of_a_scan(monkeypatch):
    import boto3
    from moto import mock_aws
    from moto.ec2 import ec2_backends

    from spotfill.localcloud.patches.ec2_instances import look_up_instances_and_tags_by_id

    look_up_instances_and_tags_by_id()
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        # given two reservations of tagged instances, and a tagged volume whose tags no instance may take
        runs = [
            ec2.run_instances(
                ImageId=image,
                MinCount=count,
                MaxCount=count,
                TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "run", "Value": run}]}],
            )["Instances"]
            for run, count in (("a", 3), ("b", 2))
        ]
        ids = [i["InstanceId"] for instances in runs for i in instances]
        more = [{"Key": "zeta", "Value": "1"}, {"Key": "alpha", "Value": ""}]
        ec2.create_tags(Resources=[ids[0]], Tags=more)
        volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
        ec2.create_tags(Resources=[volume], Tags=[{"Key": "run", "Value": "volume"}])
        backend = ec2_backends["123456789012"]["us-east-1"]

        # when instances and their tags are looked up by id, with moto's scans of the region made to fail
        def no_scan(*_args, **_kwargs):
            raise AssertionError("a lookup by id scanned the region")

        scan = backend.describe_tags
        with monkeypatch.context() as scans:
            scans.setattr(backend, "describe_tags", no_scan)
            scans.setattr(backend, "all_reservations", no_scan)
            found = {i: backend.get_instance(i) for i in ids}
            tags = {i: found[i].get_tags() for i in ids}
        described = ec2.describe_instances(InstanceIds=[ids[0], ids[4]])["Reservations"]

        # then each is the instance of that id, with the tags moto's scan of the region finds, in its order
        assert [found[i].id for i in ids] == ids
        assert tags == {i: scan(filters={"resource-id": [i]}) for i in ids}
        assert [t["key"] for t in tags[ids[0]]] == ["run", "zeta", "alpha"]
        assert {t["resource_type"] for i in ids for t in tags[i]} == {"instance"}
        assert [{t["Key"]: t["Value"] for t in r["Instances"][0]["Tags"]} for r in described] == [
            {"run": "a", "zeta": "1", "alpha": ""},
            {"run": "b"},
        ]
        # and an unknown id is EC2's error
        with pytest.raises(ClientError, match=r"InvalidInstanceID\.NotFound"):
            ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"])
