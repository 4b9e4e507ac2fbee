"""Setting a run up: StartBackfill, Validate and PrepareRun, before any instance is paid for.

`starter` names one execution per uploaded manifest; `triggers` turns every way a backfill starts into one
spec and a new run, once `checks` found nothing wrong with it, with `preflight` (quotas, offerings, the worker
image) and `prices` (on-demand prices from the Price List); `prepare` lists and queues the shards and creates
the run's resources.
"""
