"""The bench's AWS latency model (bench.latency) and cost per million predictions (bench.cost): no timing."""

from __future__ import annotations

import pytest

from bench.cost import costs, per_million
from bench.latency import Latency, LatencyModel

MODEL = LatencyModel(s3_ms=30.0, sqs_ms=20.0, connection_mb_per_s=100.0, instance_mb_per_s=200.0)


def test_a_request_waits_its_services_latency_plus_its_bytes_at_the_connections_bandwidth():
    latency = Latency(app=None, model=MODEL)

    # an SQS call with a small body, and an S3 GET of 1 MB (10 ms at 100 MB/s), far apart in time
    assert latency.seconds("sqs", 1_000, now=0.0) == pytest.approx(0.020 + 0.00001)
    assert latency.seconds("s3", 1_000_000, now=100.0) == pytest.approx(0.030 + 0.010)


def test_concurrent_transfers_share_the_instances_link():
    latency = Latency(app=None, model=MODEL)

    # given 10 MB reserved on the 200 MB/s link at t=0 (done at 50 ms)
    latency.seconds("s3", 10_000_000, now=0.0)

    # then 4 MB more asked at t=0 finish when the link has sent both (70 ms), later than latency + 40 ms
    assert latency.seconds("s3", 4_000_000, now=0.0) == pytest.approx(0.070)
    # and a small request once the link is free again waits only its latency
    assert latency.seconds("s3", 0, now=1.0) == pytest.approx(0.030)


def test_the_middleware_delays_responses_but_not_motos_own_api(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("bench.latency.time.sleep", slept.append)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"x" * 500_000]

    clock = iter([0.0, 0.001, 5.0, 5.0]).__next__
    latency = Latency(app, MODEL, clock=clock)

    # an S3 GET whose 500 KB body left the app after 1 ms: it waits the rest of 30 ms + 5 ms of transfer
    body = latency({"PATH_INFO": "/bucket/key", "REQUEST_METHOD": "GET"}, lambda *a: None)
    assert body == [b"x" * 500_000]
    assert slept == [pytest.approx(0.034)]

    # moto's API answers at once
    latency({"PATH_INFO": "/moto-api/reset"}, lambda *a: None)
    assert len(slept) == 1


def test_an_sqs_request_is_told_by_its_target_header(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("bench.latency.time.sleep", slept.append)
    latency = Latency(lambda environ, start_response: [b""], MODEL, clock=lambda: 0.0)

    latency({"PATH_INFO": "/", "HTTP_X_AMZ_TARGET": "AmazonSQS.ReceiveMessage"}, lambda *a: None)

    assert slept == [pytest.approx(0.020)]


def test_the_latency_model_passes_itself_on_the_command_line():
    import argparse

    from bench.latency import add_arguments, model_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert model_from(parser.parse_args(MODEL.arguments())) == MODEL
    assert model_from(parser.parse_args([])) == LatencyModel()


def test_cost_per_million_scales_the_measured_throughput_per_vcpu_to_each_type():
    # given a worker that made 1,000 predictions/s on 1 pinned CPU
    result = costs({"digits_cnn": {"title": "(b)", "worker": 1_000.0}}, worker_vcpus=1)

    # then a 4-vCPU c6i.xlarge ($0.17/h, the project's static table) makes 4,000/s: $0.17 / 14.4M per hour
    c6i = next(t for t in result["cases"]["digits_cnn"]["types"] if t["instance_type"] == "c6i.xlarge")
    assert c6i["predictions_per_second"] == 4_000.0
    assert c6i["price_source"] == "static-table"
    assert c6i["on_demand_usd_per_million"] == pytest.approx(0.17 / 14.4)
    assert c6i["spot_usd_per_million"] == pytest.approx(0.17 * 0.35 / 14.4)
    assert {t["family"] for t in result["cases"]["digits_cnn"]["types"]} == {"Intel", "AMD", "Graviton"}
    assert per_million(3.6, 1.0) == pytest.approx(1e6 / 1000)
