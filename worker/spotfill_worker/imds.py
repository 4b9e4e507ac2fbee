"""The EC2 instance metadata service (IMDSv2), as the worker reads it: a session token, then paths.

Two readers share it: the spot interruption watcher (`spot/instance-action`) and the instance's facts the
worker records with each output (`instance-life-cycle`: `spot` or `on-demand`, and `instance-type`), from
which the report splits predictions by purchase option. `AWS_EC2_METADATA_SERVICE_ENDPOINT` (the SDKs'
variable) points it elsewhere than the link-local address: the local cloud's agent serves each emulated
instance's metadata there.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = "21600"
# Tries of the background read of the instance's facts when IMDS times out: 1, 2, 4 and 8 s.
FACTS_ATTEMPTS = 4


class Imds:
    def __init__(self, endpoint: str | None = None, timeout: float = 1.0) -> None:
        self.endpoint = (
            endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_IMDS_ENDPOINT
        ).rstrip("/")
        self.timeout = timeout

    def token(self) -> str:
        request = urllib.request.Request(
            self.endpoint + "/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL_SECONDS},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read().decode()

    def get(self, path: str, token: str) -> str:
        """`/latest/meta-data/<path>`; raises urllib's HTTPError (404: not there) or URLError/OSError."""
        request = urllib.request.Request(
            f"{self.endpoint}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read().decode()


@dataclass(frozen=True)
class InstanceFacts:
    purchase_option: str  # "spot" or "on-demand" (IMDS instance-life-cycle)
    instance_type: str

    def as_metadata(self) -> dict[str, str]:
        """The output object's metadata for them (docs/contracts/output-objects.md, "Outputs")."""
        return {
            "spotfill-purchase-option": self.purchase_option,
            "spotfill-instance-type": self.instance_type,
        }


def read_instance_facts(imds: Imds, attempts: int = 1) -> InstanceFacts | None:
    """The instance's purchase option and type; None where no metadata service answers (off EC2).

    A service that answers too slowly (a timeout, as a busy instance's IMDS can be at boot) is asked again,
    up to `attempts` times, each with twice the last one's timeout; one that refuses or is not there is not.
    """
    timeout = imds.timeout
    for attempt in range(attempts):
        patient = Imds(imds.endpoint, timeout=timeout * 2**attempt)
        try:
            token = patient.token()
            return InstanceFacts(
                patient.get("instance-life-cycle", token).strip(), patient.get("instance-type", token).strip()
            )
        except (TimeoutError, urllib.error.URLError) as exc:
            if not _timed_out(exc):
                return None
        except (OSError, ValueError):
            return None
    return None


def _timed_out(exc: BaseException) -> bool:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, TimeoutError)


class InstanceFactsReader(threading.Thread):
    """Reads the facts once in the background, so start-up never waits on a metadata service that is not
    there; `facts` is None until (and unless) they arrive."""

    def __init__(self, imds: Imds) -> None:
        super().__init__(name="instance-facts", daemon=True)
        self._imds = imds
        self.facts: InstanceFacts | None = None

    def run(self) -> None:
        self.facts = read_instance_facts(self._imds, attempts=FACTS_ATTEMPTS)
