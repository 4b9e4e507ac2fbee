"""The AWS API emulator: moto's server on loopback, in this process.

In-process (not a separate `moto_server`) so the local cloud can patch what moto lacks (Lambda code run in
process, Step Functions rule targets, the launch template version a fleet names) and read its state.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request

from moto.moto_server.threaded_moto_server import ThreadedMotoServer

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"

# What every client of the emulator uses; moto accepts any credentials, these make sure none are real.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) == 0


class EmulatorServer:
    """moto's threaded server on 127.0.0.1 with Step Functions execution switched on.

    moto keeps its state per process, so one process runs one emulator at a time (start resets it)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server: ThreadedMotoServer | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        if port_in_use(self.port):
            raise OSError(f"port {self.port} on {HOST} is already in use")
        # moto's Step Functions interpreter calls back into http://localhost:$MOTO_PORT for every Task.
        os.environ["MOTO_PORT"] = str(self.port)
        self._server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
        self._server.start()
        # moto's backends are per process, not per server: start from an empty account.
        self._post("/moto-api/reset", None)
        self.configure({"stepfunctions": {"execute_state_machine": True}})

    def configure(self, config: dict) -> None:
        self._post("/moto-api/config", config)

    def _post(self, path: str, body: dict | None) -> None:
        request = urllib.request.Request(
            f"{self.endpoint_url}{path}",
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
