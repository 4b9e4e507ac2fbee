import pytest
from spotfill_control.handlers import check_registration, prepare_run, request_fleet, scale_service, validate

from .conftest import sample_spec


@pytest.mark.aws
def test_smoke(world, lambda_context):
    out = validate.handler(world.validate_event(sample_spec()), lambda_context)
    run = out["run"]
    print(run["run_id"])
    run = prepare_run.handler({"run": run}, lambda_context)
    print(run["resources"])
    run = request_fleet.handler({"run": run}, lambda_context)
    run = check_registration.handler({"run": run}, lambda_context)
    assert run["phase"] == "fleet_requested"
    world.register_instance(run["resources"]["cluster_name"])
    run = check_registration.handler({"run": run}, lambda_context)
    assert run["phase"] == "registered"
    run = scale_service.handler({"run": run}, lambda_context)
    print(run)
