"""Error types the state machine routes on.

A Lambda error reaches Step Functions as its class name (`errorType`), so these names are part of the
contract with `statemachine/backfill.asl.json`: `Retry` lists the transient ones, every `Catch` sends the
rest to teardown.
"""


class SpotfillError(Exception):
    """Base of every error the control plane raises on purpose."""


class InvalidSpecError(SpotfillError):
    """The backfill request is malformed or names something unusable. Never retried."""


class ConfigurationError(SpotfillError):
    """A function's environment is missing or invalid (a deployment fault, not a user fault)."""


class FleetRequestError(SpotfillError):
    """The fleet (EC2 Fleet or Spot Fleet) could not be requested, or it reported an error while starting."""


class RegistrationTimeoutError(SpotfillError):
    """The fleet's instances did not register with the run's ECS cluster in time."""


class StallError(SpotfillError):
    """The run made no progress for longer than the stall timeout."""


class RunTimeoutError(SpotfillError):
    """The run outlived its maximum runtime."""


class TransientAwsError(SpotfillError):
    """An AWS call failed in a way worth retrying (throttling, 5xx). The ASL retries it with backoff."""


class ModelLoadError(SpotfillError):
    """A worker could not load the run's model (its error record names the reason); no retry can fix it."""


class BudgetReached(SpotfillError):
    """The run drained before its projected cost crossed `limits.max_total_usd`; its unfinished shards wait
    for `spotfill redrive`. The execution fails with this error so nobody takes it for a finished backfill."""


class DeadlineInfeasibleError(SpotfillError):
    """`limits.finish_by` cannot be met: the first Monitor poll with a measured rate found that the dollar cap
    cannot pay for the capacity it needs, or that it needs more than `fleet.target_capacity` (a spec without
    `estimate`, which Validate could not check). The run ends before the fleet grows; never retried."""
