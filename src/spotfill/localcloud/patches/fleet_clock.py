"""Amazon EC2's clock for both fleet APIs: what EC2 does between calls.

`maintain_fleets` (run by the EC2 emulator's tick, `spotfill.localcloud.fleet`, and the Step Functions
harness) expires fleets past `ValidUntil`, finishes deletions, and keeps each live `maintain` fleet at its
targets (replacing lost instances), as EC2 does on its own.

AWS documentation followed:
- "EC2 Fleet request types" (maintain), Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-request-type.html
- "Spot Fleet request types" (maintain), Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-request-type.html
"""

from __future__ import annotations

from typing import Any

from spotfill.localcloud.patches.ec2_fleet import maintain_ec2_fleet
from spotfill.localcloud.patches.fleets import expire_fleets, finish_deleted_fleets
from spotfill.localcloud.patches.spot_fleet import maintain_spot_fleet


def maintain_fleets(backend: Any) -> None:
    """EC2's clock for both fleet APIs: ValidUntil, deletions finishing, and each live maintain fleet kept at
    its targets (replacing lost instances)."""
    expire_fleets(backend)
    finish_deleted_fleets(backend)
    for fleet in list(backend.fleets.values()):
        maintain_ec2_fleet(fleet)
    for spot_fleet in list(backend.spot_fleet_requests.values()):
        maintain_spot_fleet(spot_fleet)
