"""The AWS API emulator: moto's server on loopback, in this process.

In-process (not a separate `moto_server`) so the local cloud can patch what moto lacks (Lambda code run in
process, Step Functions rule targets, the launch template version a fleet names) and read its state.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import urllib.request
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from spotfill.localcloud.guard import Credentials, Guard
from spotfill.localcloud.pricing import PriceListRouter

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
# The emulator's own control calls (reset, configure): the first one builds every moto backend, which takes
# seconds of CPU and far longer on a machine busy with other work.
CONTROL_TIMEOUT = 120.0


def generate_credentials() -> Credentials:
    """A fresh access key for one local cloud: the endpoint refuses requests signed with any other."""
    return Credentials("SPOTFILLLOCAL" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))


def credential_environment(credentials: Credentials) -> dict[str, str]:
    """What every client of the emulator uses: its credentials (never real ones: an empty session token, so a
    real one in the environment is not sent along) and its Region."""
    return {
        "AWS_ACCESS_KEY_ID": credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
        "AWS_SESSION_TOKEN": "",
        "AWS_SECURITY_TOKEN": "",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int) -> None:
    """OSError naming the port when something already listens on it (`local up` and `run --local` say so)."""
    if port_in_use(port):
        raise OSError(f"port {port} on {HOST} is already in use")


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) == 0


class _GuardedMotoServer(ThreadedMotoServer):
    """moto's threaded server with its app behind `spotfill.localcloud.guard.Guard`, and the Price List API
    (`spotfill.localcloud.pricing`, which moto lacks) in front of moto."""

    def __init__(self, ip_address: str, port: int, credentials: Credentials) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self._credentials = credentials

    def _server_entry(self) -> None:
        origins = (f"http://{HOST}:{self._port}", f"http://localhost:{self._port}")
        app = Guard(
            PriceListRouter(DomainDispatcherApplication(create_backend_app)), origins, self._credentials
        )
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


class EmulatorServer:
    """moto's threaded server on 127.0.0.1 with Step Functions execution switched on, answering only requests
    signed with `credentials` and no browser's cross-origin request (`spotfill.localcloud.guard`).

    moto keeps its state per process, so one process runs one emulator at a time (start resets it)."""

    def __init__(self, port: int | None = None, credentials: Credentials | None = None) -> None:
        self.port = port or free_port()
        self.credentials = credentials or generate_credentials()
        self._server: ThreadedMotoServer | None = None
        self._moto_config: dict | None = None  # moto's process-wide configuration before start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        from moto.core.config import default_user_config

        check_port_free(self.port)
        # moto's configuration is per process too: what configure() changes is put back at stop(), so a
        # later in-process moto (a test's mock_aws) does not run with this emulator's settings.
        self._moto_config = dict(default_user_config)
        # moto's Step Functions interpreter calls back into http://localhost:$MOTO_PORT for every Task.
        os.environ["MOTO_PORT"] = str(self.port)
        _sign_step_functions_calls(self.credentials)
        self._server = _GuardedMotoServer(HOST, self.port, self.credentials)
        self._server.start()
        # moto's backends are per process, not per server: start from an empty account.
        self._post("/moto-api/reset", None)
        self.configure({"stepfunctions": {"execute_state_machine": True}})

    def configure(self, config: dict) -> None:
        self._post("/moto-api/config", config)

    def _post(self, path: str, body: dict | None) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials as BotoCredentials

        url, data = f"{self.endpoint_url}{path}", json.dumps(body or {}).encode()
        signed = AWSRequest(method="POST", url=url, data=data, headers={"Content-Type": "application/json"})
        keys = BotoCredentials(self.credentials.access_key_id, self.credentials.secret_access_key)
        SigV4Auth(keys, "moto", REGION).add_auth(signed)
        request = urllib.request.Request(url, data=data, headers=dict(signed.headers.items()), method="POST")
        with urllib.request.urlopen(request, timeout=CONTROL_TIMEOUT) as response:
            response.read()

    def stop(self) -> None:
        from moto.core.config import default_user_config

        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._moto_config is not None:
            default_user_config.clear()
            default_user_config.update(self._moto_config)
            self._moto_config = None


def _sign_step_functions_calls(credentials: Credentials) -> None:
    """moto's Step Functions interpreter calls the emulator back over HTTP for every Task, signed with fixed
    fake keys: it signs with the local cloud's credentials instead."""
    from moto.stepfunctions.parser.asl.utils import boto_client

    boto_client.boto3 = _Boto3WithCredentials(credentials)  # type: ignore[attr-defined]


class _Boto3WithCredentials:
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def client(self, *args: Any, **kwargs: Any) -> Any:
        import boto3

        kwargs["aws_access_key_id"] = self._credentials.access_key_id
        kwargs["aws_secret_access_key"] = self._credentials.secret_access_key
        return boto3.client(*args, **kwargs)
