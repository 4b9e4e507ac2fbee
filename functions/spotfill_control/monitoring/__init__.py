"""Watching a run: the WaitForWork → Monitor → IsWorkDone loop and its ContinueAsNew handover.

`progress` is one poll; it counts outputs (`reconcile`), moves dead letters into S3 (`dead_letters`), accrues
and caps the cost (`cost`, `budget`), keeps a deadline run on time (`finish_by`), and each poll becomes a
sample of the run's `series`, from which `projection` gives the throughput, ETA and projected cost.
"""
