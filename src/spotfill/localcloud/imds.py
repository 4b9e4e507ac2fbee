"""The instance metadata service (IMDSv2) of every emulated instance, on one loopback server.

An instance's worker finds it at `AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:<port>/<instance id>`
(the agent sets it): `PUT /latest/api/token` answers a session token, and with that token
`GET /latest/meta-data/instance-life-cycle` answers `spot` or `on-demand` (the instance's purchase option),
`instance-type` and `instance-id` answer what they name, as on EC2. No spot interruption is ever scheduled
here (`spot/instance-action` answers 404): the local cloud's interruptions arrive as SIGTERM, as ECS spot
draining sends them. A request without a valid token answers 401, as IMDSv2 does.
"""

from __future__ import annotations

import http.server
import secrets
import threading
from collections.abc import Callable

from spotfill.localcloud.fleet import Machine


class InstanceMetadataService:
    def __init__(self, machine_of: Callable[[str], Machine | None]) -> None:
        self._machine_of = machine_of
        self._token = secrets.token_urlsafe(24)
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                instance, path = service._split(self.path)
                if instance is None or path != "/latest/api/token":
                    self._reply(404, b"")
                elif not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._reply(400, b"")
                else:
                    self._reply(200, service._token.encode())

            def do_GET(self) -> None:
                instance, path = service._split(self.path)
                if self.headers.get("X-aws-ec2-metadata-token") != service._token:
                    self._reply(401, b"")
                    return
                value = service._value(instance, path)
                if value is None:
                    self._reply(404, b"")
                else:
                    self._reply(200, value.encode())

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="localcloud-imds", daemon=True
        )

    def endpoint_for(self, instance_id: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/{instance_id}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _split(self, path: str) -> tuple[str | None, str]:
        _, instance, rest = (path.split("?", 1)[0] + "/").split("/", 2)
        rest = "/" + rest.rstrip("/")
        return (instance if self._machine_of(instance) is not None else None), rest

    def _value(self, instance: str | None, path: str) -> str | None:
        machine = self._machine_of(instance) if instance else None
        if machine is None:
            return None
        return {
            "/latest/meta-data/instance-life-cycle": machine.lifecycle,
            "/latest/meta-data/instance-type": machine.instance_type,
            "/latest/meta-data/instance-id": machine.instance_id,
        }.get(path)
