"""Watching a run: the WaitForWork → Monitor → IsWorkDone loop and its ContinueAsNew handover.

`poll` is one Monitor poll: how far the run is (`progress`), counted part by part (`reconcile`), its dead
letters moved into S3 (`dead_letters`), its cost accrued and capped (`cost`, `budget`), its fleet and service
watched and sized (`fleet_watch`), a deadline run kept on time (`finish_by`), and a sample added to the run's
`series`, from which `projection` gives the throughput, ETA and projected cost. `handover` starts the next
execution when this one's history runs long.
"""
