"""The run's capacity: RequestFleet, CheckRegistration and ScaleService, and every later change to the fleet.

`fleet` requests the fleet and reads it back, on either EC2 API (`fleet_api`), from the run's launch template
version (`launch_template`); `registration` is CheckRegistration; `cluster` is the ECS side the instances
join; `on_demand` and `weights` decide the fleet's on-demand share and its types' weights, which the Monitor
applies; `permissions` confirms with a DryRun that the caller may request the fleet.
"""
