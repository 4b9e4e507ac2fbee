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


def test_a_metadata_service_slower_than_the_timeout_is_asked_again_with_more_patience():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    # given an IMDS whose first answer (the session token) takes far longer than the reader's first timeout
    first = threading.Event()

    class SlowFirstAnswer(BaseHTTPRequestHandler):
        def do_PUT(self):
            if not first.is_set():
                first.set()
                threading.Event().wait(2.0)  # the reader gave up on this one long ago
            self._answer(b"token")

        def do_GET(self):
            self._answer(b"on-demand" if self.path.endswith("instance-life-cycle") else b"c5.xlarge")

        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowFirstAnswer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        # when the facts are read once, and then with retries (timeouts 0.25, 0.5, 1, 2 and 4 s)
        once = read_instance_facts(Imds(endpoint, timeout=0.25))
        first.clear()
        patient = read_instance_facts(Imds(endpoint, timeout=0.25), attempts=5)
    finally:
        server.shutdown()
        server.server_close()

    # then one try gives up, and the retries get the facts
    assert once is None
    assert patient == InstanceFacts("on-demand", "c5.xlarge")
