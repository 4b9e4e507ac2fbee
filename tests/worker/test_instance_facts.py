"""The worker records its instance's purchase option and type, read from IMDSv2 (the local cloud's agent
serves them per emulated instance)."""

from __future__ import annotations

from spotfill_worker.imds import Imds, InstanceFacts, read_instance_facts

from spotfill.localcloud.fleet import Machine
from spotfill.localcloud.imds import InstanceMetadataService


def test_each_emulated_instance_answers_its_own_purchase_option_and_type_over_imdsv2():
    machines = {
        "i-spot": Machine("i-spot", "c5.xlarge", "fleet-1", 0.0, lifecycle="spot"),
        "i-od": Machine("i-od", "m5.large", "fleet-1", 0.0, lifecycle="on-demand"),
    }
    service = InstanceMetadataService(machines.get)
    service.start()
    try:
        spot = read_instance_facts(Imds(service.endpoint_for("i-spot")))
        on_demand = read_instance_facts(Imds(service.endpoint_for("i-od")))
        unknown = read_instance_facts(Imds(service.endpoint_for("i-gone")))
    finally:
        service.stop()
    assert spot == InstanceFacts("spot", "c5.xlarge")
    assert on_demand == InstanceFacts("on-demand", "m5.large")
    assert unknown is None
    assert on_demand.as_metadata() == {
        "spotfill-purchase-option": "on-demand",
        "spotfill-instance-type": "m5.large",
    }


def test_metadata_without_a_session_token_is_refused_as_imdsv2_refuses_it():
    import urllib.error
    import urllib.request

    import pytest

    service = InstanceMetadataService({"i-1": Machine("i-1", "c5.xlarge", "f", 0.0)}.get)
    service.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                service.endpoint_for("i-1") + "/latest/meta-data/instance-life-cycle", timeout=2
            )
    finally:
        service.stop()
    assert refused.value.code == 401


def test_no_metadata_service_means_no_facts_and_no_wait():
    assert read_instance_facts(Imds("http://127.0.0.1:9", timeout=0.5)) is None
