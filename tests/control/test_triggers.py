"""Validate: every trigger normalises to one spec; every bad input names its field before money is spent."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from spotfill_control import state_store
from spotfill_control.errors import InvalidSpecError
from spotfill_control.handlers import validate as validate_handler
from spotfill_control.setup.triggers import (
    new_run_id,
    placeholder_values,
    resolve_placeholders,
    spec_from_document,
)

from .conftest import CONTROL_BUCKET, DATA_BUCKET, EXECUTION_ARN, sample_spec

EVENTS = Path(__file__).parent / "events"


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def without(path: str) -> dict[str, Any]:
    spec = sample_spec()
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node[part]
    del node[last]
    return spec


def with_value(path: str, value: Any) -> dict[str, Any]:
    spec = sample_spec()
    *parents, last = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return spec


# (case id, spec document, field path the message must name, reason it must give)
INVALID_SPECS = [
    ("missing-input", without("input"), "input", "required field is missing"),
    ("missing-fleet", without("fleet"), "fleet", "required field is missing"),
    ("missing-model-uri", without("model.uri"), "model.uri", "required field is missing"),
    ("unknown-input-format", with_value("input.format", "xls"), "input.format", "Input should be"),
    ("input-not-s3", with_value("input.uri", "https://example.com/in/"), "input.uri", "s3://"),
    ("input-whole-bucket", with_value("input.uri", f"s3://{DATA_BUCKET}/"), "input.uri", "whole bucket"),
    (
        "input-neither-prefix-nor-list",
        with_value("input.uri", f"s3://{DATA_BUCKET}/in/x.npy"),
        "input.uri",
        "'/'",
    ),
    ("output-not-prefix", with_value("output.uri", f"s3://{DATA_BUCKET}/out"), "output.uri", "ending in '/'"),
    ("unknown-output-format", with_value("output.format", "csv"), "output.format", "Input should be"),
    ("model-wrong-kind", with_value("model.uri", f"s3://{DATA_BUCKET}/m.h5"), "model.uri", ".keras"),
    (
        "malformed-instance-type",
        with_value("fleet.instance_types", ["C5 XLarge"]),
        "fleet.instance_types",
        "'C5 XLarge' is not an instance type name (<family>.<size>",
    ),
    ("no-instance-types", with_value("fleet.instance_types", []), "fleet.instance_types", "at least 1"),
    (
        "instance-type-mistyped",
        with_value("fleet.instance_types", [42]),
        "fleet.instance_types[0]",
        "valid string",
    ),
    (
        "instance-type-twice",
        with_value("fleet.instance_types", ["c5.xlarge", "c5.xlarge"]),
        "fleet.instance_types",
        "twice",
    ),
    (
        "capacity-zero",
        with_value("fleet.target_capacity", 0),
        "fleet.target_capacity",
        "greater than or equal",
    ),
    (
        "capacity-mistyped",
        with_value("fleet.target_capacity", "four"),
        "fleet.target_capacity",
        "valid integer",
    ),
    # numbers are strict: a boolean or a number in a string is refused, never read as 1 or 2
    ("capacity-boolean", with_value("fleet.target_capacity", True), "fleet.target_capacity", "valid integer"),
    (
        "capacity-in-a-string",
        with_value("fleet.target_capacity", "2"),
        "fleet.target_capacity",
        "valid integer",
    ),
    ("price-boolean", with_value("fleet.max_hourly_price", True), "fleet.max_hourly_price", "valid number"),
    (
        "tasks-in-a-string",
        with_value("service.tasks_per_instance", "2"),
        "service.tasks_per_instance",
        "valid integer",
    ),
    (
        "poll-boolean",
        with_value("limits.poll_interval_seconds", True),
        "limits.poll_interval_seconds",
        "valid integer",
    ),
    (
        "image-size-boolean",
        with_value("input.image", {"size": [True, 8]}),
        "input.image.size[0]",
        "valid integer",
    ),
    (
        "unknown-allocation-strategy",
        with_value("fleet.allocation_strategy", "cheapest"),
        "fleet.allocation_strategy",
        "priceCapacityOptimized",
    ),
    ("negative-budget", with_value("fleet.max_hourly_price", -1), "fleet.max_hourly_price", "greater than 0"),
    ("bad-subnet-id", with_value("fleet.subnets", ["sn-123"]), "fleet.subnets", "not subnet ids: sn-123"),
    ("zero-tasks", with_value("service.tasks_per_instance", 0), "service.tasks_per_instance", "greater than"),
    ("zero-batch", with_value("service.batch_size", 0), "service.batch_size", "greater than"),
    ("runtime-too-short", with_value("limits.max_runtime_seconds", 10), "limits.max_runtime_seconds", "60"),
    (
        "runtime-beyond-queue-retention",
        with_value("limits.max_runtime_seconds", 14 * 86_400),
        "limits.max_runtime_seconds",
        "at most 1123200 s (13 days), because SQS keeps",
    ),
    ("zero-poll", with_value("limits.poll_interval_seconds", 0), "limits.poll_interval_seconds", "greater"),
    (
        "registration-outlasts-run",
        with_value("limits.registration_timeout_seconds", 3600),
        "limits.registration_timeout_seconds",
        "shorter than limits.max_runtime_seconds",
    ),
    (
        "registration-polls-overflow-history",
        {**sample_spec(), "limits": {"registration_timeout_seconds": 7200, "poll_interval_seconds": 1}},
        "limits",
        "7200 polls",
    ),
    ("misspelt-field", with_value("fleeet", {}), "fleeet", "unknown field"),
    ("misspelt-nested-field", with_value("limits.poll_interval", 5), "limits.poll_interval", "unknown field"),
    ("name-with-spaces", with_value("name", "my backfill!"), "name", "pattern"),
    (
        "output-inside-input",
        with_value("output.uri", f"s3://{DATA_BUCKET}/inputs/digits/out/"),
        "output.uri",
        "lies inside input.uri",
    ),
]


@pytest.mark.parametrize(
    ("document", "field", "reason"),
    [case[1:] for case in INVALID_SPECS],
    ids=[case[0] for case in INVALID_SPECS],
)
def test_invalid_spec_is_rejected_with_the_field_and_the_reason(document, field, reason):
    # given a spec with one problem / when it is validated
    with pytest.raises(InvalidSpecError) as raised:
        spec_from_document(document)
    # then the message names the field path first, then why
    message = str(raised.value)
    assert re.search(rf"(^|\. ){re.escape(field)}:", message), message
    assert reason in message


def test_longest_run_ends_a_day_before_its_queued_shards_and_dead_letters_expire():
    # given the queues' retention (the SQS maximum; a dead letter keeps its first enqueue time)
    from spotfill_control.queues import RETENTION_SECONDS
    from spotfill_control.spec import MAX_RUNTIME_SECONDS

    # when a spec asks for the longest run allowed
    spec = spec_from_document(with_value("limits.max_runtime_seconds", MAX_RUNTIME_SECONDS))

    # then it is accepted, and ends with a day left for the last poll, teardown and the dead-letter read
    assert spec.limits.max_runtime_seconds == 13 * 86_400
    assert RETENTION_SECONDS == 14 * 86_400 == MAX_RUNTIME_SECONDS + 86_400


def test_every_problem_of_a_spec_is_reported_one_sentence_each():
    document = with_value("fleet.target_capacity", 0)
    document["limits"]["poll_interval_seconds"] = 0
    with pytest.raises(InvalidSpecError) as raised:
        spec_from_document(document)
    sentences = str(raised.value).rstrip(".").split(". ")
    assert [s.split(":")[0] for s in sentences] == ["fleet.target_capacity", "limits.poll_interval_seconds"]


def test_numbers_of_a_spec_decoded_from_json_text_validate():
    # given a spec as a manifest carries it: JSON text, its numbers JSON integers and a float price
    document = with_value("fleet.max_hourly_price", 2)
    document["input"]["image"] = {"size": [8, 8]}
    # when it is decoded and validated
    spec = spec_from_document(json.loads(json.dumps(document)))
    # then the strict numeric fields accept them
    assert spec.fleet.target_capacity == document["fleet"]["target_capacity"]
    assert spec.fleet.max_hourly_price == 2.0
    assert spec.input.image.size == (8, 8)
    assert spec.limits.poll_interval_seconds == document["limits"]["poll_interval_seconds"]


def test_spec_that_is_not_an_object_is_rejected():
    with pytest.raises(InvalidSpecError, match=r"spec: must be a JSON object, got list"):
        spec_from_document(["not", "a", "spec"])


def test_valid_spec_gets_its_defaults():
    spec = spec_from_document(sample_spec())
    assert spec.fleet.allocation_strategy == "priceCapacityOptimized"
    assert spec.output.format == "parquet"
    assert spec.fleet.subnets == []


# ---------------------------------------------------------------------------------------------- placeholders


def test_placeholders_resolve_from_the_event_time_in_utc():
    values = placeholder_values(datetime(2026, 3, 1, 0, 30, tzinfo=UTC))
    assert values == {
        "date": "2026-03-01",
        "yesterday": "2026-02-28",
        "year": "2026",
        "month": "03",
        "day": "01",
        "hour": "00",
    }


def test_placeholders_resolve_inside_every_string_of_the_manifest():
    manifest = {
        "input": {"uri": "s3://b/in/dt={yesterday}/", "format": "npy"},
        "tags": ["{year}/{month}/{day}T{hour}"],
        "count": 3,
    }
    resolved = resolve_placeholders(manifest, datetime(2026, 11, 27, 6, tzinfo=UTC))
    assert resolved == {
        "input": {"uri": "s3://b/in/dt=2026-11-26/", "format": "npy"},
        "tags": ["2026/11/27T06"],
        "count": 3,
    }


def test_unknown_placeholder_names_the_field_that_holds_it():
    with pytest.raises(InvalidSpecError, match=r"^input\.uri: unknown placeholder \{week\}"):
        resolve_placeholders({"input": {"uri": "s3://b/{week}/"}}, datetime(2026, 11, 27, tzinfo=UTC))


# ---------------------------------------------------------------------------------------------- run id


def test_run_id_is_short_sortable_and_safe_for_queue_and_cluster_names():
    first = new_run_id("My Very Long Backfill.Name_with_parts", datetime(2026, 11, 27, 6, 0, 0, tzinfo=UTC))
    later = new_run_id("My Very Long Backfill.Name_with_parts", datetime(2026, 11, 27, 6, 0, 1, tzinfo=UTC))
    assert re.fullmatch(r"my-very-long-backf-20261127060000-[0-9a-f]{6}", first), first
    assert len(first) <= 40
    assert first < later
    assert re.fullmatch(r"[a-z0-9-]+", f"spotfill-{first}-dlq")


def test_run_ids_of_one_second_are_unique():
    # given 200 runs of one name started in one second
    now = datetime(2026, 11, 27, tzinfo=UTC)
    ids = [new_run_id("demo", now) for _ in range(200)]
    # then each ends in 6 random hex digits (24 bits), and they differ: two of 200 share a suffix with
    # probability 0.12 %, so one such pair is allowed (two pairs: 7e-7), where asking for none failed a run
    # in about 800
    assert all(re.fullmatch(r"demo-20261127000000-[0-9a-f]{6}", i) for i in ids)
    assert len(set(ids)) >= len(ids) - 1


# ---------------------------------------------------------------------------------------------- handler, moto


def invoke(world, execution_input, lambda_context) -> dict[str, Any]:
    return validate_handler.handler(world.validate_event(execution_input), lambda_context)["run"]


def upload(world, key: str, body: bytes, key_in_event: str | None = None, bucket: str = CONTROL_BUCKET):
    """Put a manifest and return the event S3 sends for that upload: the test bucket is unversioned, so the
    event names the upload by its ETag and carries no version id."""
    put = world.s3.put_object(Bucket=bucket, Key=key, Body=body)
    event = load_event("s3_manifest_created.json")
    event["detail"]["bucket"]["name"] = bucket
    event["detail"]["object"]["key"] = key if key_in_event is None else key_in_event
    event["detail"]["object"]["etag"] = put["ETag"].strip('"')
    event["detail"]["object"]["size"] = len(body)
    del event["detail"]["object"]["version-id"]
    return event


def upload_spec(world, key: str, spec: dict[str, Any], key_in_event: str | None = None) -> dict[str, Any]:
    return upload(world, key, json.dumps(spec).encode(), key_in_event)


@pytest.mark.aws
def test_spec_as_execution_input_becomes_a_persisted_run(world, lambda_context):
    # given the spec itself as execution input / when Validate runs
    event = world.validate_event(sample_spec(), started_at="2026-11-27T06:00:00Z")
    run = validate_handler.handler(event, lambda_context)["run"]
    # then the run carries the spec, its shards count, the execution and a timeline
    assert run["source"] == "direct"
    assert run["phase"] == "validated"
    assert run["shards_total"] == 3
    assert run["execution_arn"] == EXECUTION_ARN
    assert run["timeline"]["started_at"] == "2026-11-27T06:00:00Z"
    assert run["timeline"]["validated_at"]
    assert run["run_id"].startswith("digits-demo-")
    # and it is persisted, findable from the execution
    stored = state_store.load_by_execution(EXECUTION_ARN, world.s3)
    assert stored is not None and stored.run_id == run["run_id"]


@pytest.mark.aws
def test_manifest_uploaded_under_backfills_starts_a_run_from_its_content(world, lambda_context):
    # given a manifest put under backfills/ and the EventBridge event S3 sends for it
    event = upload_spec(world, "backfills/digits-demo.json", sample_spec(name="from-upload"))
    # when Validate runs on the event
    run = invoke(world, event, lambda_context)
    # then the spec is the manifest's
    assert run["source"] == "s3"
    assert run["manifest_uri"] == f"s3://{CONTROL_BUCKET}/backfills/digits-demo.json"
    assert run["spec"]["name"] == "from-upload"


@pytest.mark.aws
def test_each_upload_of_an_unversioned_key_runs_its_own_spec_and_a_superseded_one_is_refused_naming_it(
    world, lambda_context
):
    # given two uploads to one key a moment apart, in a bucket that keeps no versions
    first = upload_spec(world, "backfills/tt.json", sample_spec(name="first-upload"))
    second = upload_spec(world, "backfills/tt.json", sample_spec(name="second-upload"))
    # when Validate runs on the second upload's event / then it runs the second spec
    assert invoke(world, second, lambda_context)["spec"]["name"] == "second-upload"
    # when Validate runs on the first upload's event / then it refuses, naming the upload it was asked to run,
    # rather than running the second spec a second time
    etag = first["detail"]["object"]["etag"]
    with pytest.raises(InvalidSpecError) as refused:
        invoke(world, first, lambda_context)
    assert str(refused.value).startswith(f"manifest s3://{CONTROL_BUCKET}/backfills/tt.json: the upload")
    assert f"(ETag {etag}) was replaced by a newer upload" in str(refused.value)
    # and only the second upload's run exists
    runs = world.s3.list_objects_v2(Bucket=CONTROL_BUCKET, Prefix="runs/")["Contents"]
    assert len({o["Key"].split("/")[1] for o in runs}) == 1


@pytest.mark.aws
def test_upload_of_a_versioned_key_runs_the_version_its_event_names(world, lambda_context):
    # given a versioned bucket and two uploads to one key a moment apart
    world.s3.put_bucket_versioning(Bucket=CONTROL_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    events = []
    for name in ("first-upload", "second-upload"):
        event = upload_spec(world, "backfills/tt.json", sample_spec(name=name))
        versions = world.s3.list_object_versions(Bucket=CONTROL_BUCKET, Prefix="backfills/tt.json")
        event["detail"]["object"]["version-id"] = next(v for v in versions["Versions"] if v["IsLatest"])[
            "VersionId"
        ]
        events.append(event)
    # when Validate runs on each event, the first one last / then each runs its own upload's spec
    assert invoke(world, events[1], lambda_context)["spec"]["name"] == "second-upload"
    assert invoke(world, events[0], lambda_context)["spec"]["name"] == "first-upload"


def _model_etag(world) -> str:
    return world.s3.head_object(Bucket=DATA_BUCKET, Key="models/digits.keras")["ETag"].strip('"')


def _put_output(world, key: str, model_etag: str | None) -> None:
    metadata = {"spotfill-rows": "3", **({"spotfill-model-etag": model_etag} if model_etag else {})}
    world.s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=b"PAR1", Metadata=metadata)


@pytest.mark.aws
def test_outputs_made_by_another_model_refuse_the_run_naming_both_models(world, lambda_context):
    # given outputs of an earlier run with another model in the output folder, for every shard
    for i in range(3):
        _put_output(world, f"outputs/digits/part-{i:05d}.parquet", "0123456789abcdef0123456789abcdef")
    # when Validate runs the spec with this model / then it refuses, naming an output, both models' ETags
    with pytest.raises(InvalidSpecError) as refused:
        invoke(world, sample_spec(), lambda_context)
    message = str(refused.value)
    assert message.startswith(f"output.uri: s3://{DATA_BUCKET}/outputs/digits/part-0000")
    assert "was made by another model (ETag 0123456789abcdef0123456789abcdef)" in message
    assert f"than model.uri s3://{DATA_BUCKET}/models/digits.keras (ETag {_model_etag(world)})" in message
    # and no run was created
    assert world.s3.list_objects_v2(Bucket=CONTROL_BUCKET, Prefix="runs/")["KeyCount"] == 0


@pytest.mark.aws
def test_outputs_made_by_the_same_model_or_naming_none_are_kept_for_prepare_to_skip(world, lambda_context):
    # given an output made by this model, and one written before outputs named their model
    _put_output(world, "outputs/digits/part-00000.parquet", _model_etag(world))
    _put_output(world, "outputs/digits/part-00001.parquet", None)
    # when Validate runs / then the run is created
    assert invoke(world, sample_spec(), lambda_context)["shards_total"] == 3


# (key of the manifest, the key as S3 puts it in the event: URL-encoded, `/` kept)
MANIFEST_KEYS = [
    ("backfills/nightly digits.json", "backfills/nightly+digits.json"),
    ("backfills/c++ models/run+1.json", "backfills/c%2B%2B+models/run%2B1.json"),
    ("backfills/run #7.json", "backfills/run+%237.json"),
    ("backfills/prévisions/日本.json", "backfills/pr%C3%A9visions/%E6%97%A5%E6%9C%AC.json"),
]


@pytest.mark.aws
@pytest.mark.parametrize(("key", "key_in_event"), MANIFEST_KEYS, ids=["space", "plus", "hash", "non-ascii"])
def test_manifest_key_from_the_event_is_url_decoded_to_the_manifest_it_names(
    world, lambda_context, key, key_in_event
):
    # given a manifest whose key needs encoding, and the event S3 sends for its upload
    event = upload_spec(world, key, sample_spec(name="special-key"), key_in_event)
    # when Validate runs on the event
    run = invoke(world, event, lambda_context)
    # then the run was started from that manifest
    assert run["manifest_uri"] == f"s3://{CONTROL_BUCKET}/{key}"
    assert run["spec"]["name"] == "special-key"


@pytest.mark.aws
def test_manifest_key_sent_unencoded_is_used_as_sent_when_no_decoded_key_exists(world, lambda_context):
    # given a manifest with a literal plus, named as is in the event (a sender that does not URL-encode)
    event = upload_spec(world, "backfills/c++ run.json", sample_spec(name="as-sent"))
    # when Validate runs on the event
    run = invoke(world, event, lambda_context)
    # then the key as sent names the manifest (decoded, "backfills/c   run.json" does not exist)
    assert run["manifest_uri"] == f"s3://{CONTROL_BUCKET}/backfills/c++ run.json"
    assert run["spec"]["name"] == "as-sent"


@pytest.mark.aws
def test_event_key_that_is_not_url_encoded_utf8_is_rejected_naming_the_key(world, lambda_context):
    # given an event whose key decodes to bytes that are not UTF-8
    event = load_event("s3_manifest_created.json")
    event["detail"]["object"]["key"] = "backfills/%FF%FE.json"
    # when Validate runs / then it fails in one sentence naming the field
    with pytest.raises(InvalidSpecError, match=r"^S3 event: detail\.object\.key '.*%FF%FE\.json' is not a"):
        invoke(world, event, lambda_context)


@pytest.mark.aws
def test_scheduled_manifest_reads_yesterdays_partition(world, lambda_context):
    # given a scheduled manifest whose input is yesterday's date partition, and that partition's data
    document = sample_spec()
    document["input"]["uri"] = f"s3://{DATA_BUCKET}/inputs/dt={{yesterday}}/"
    document["output"]["uri"] = f"s3://{DATA_BUCKET}/outputs/dt={{yesterday}}/"
    world.put_json(CONTROL_BUCKET, "schedules/nightly.json", document)
    world.s3.put_object(Bucket=DATA_BUCKET, Key="inputs/dt=2026-11-26/part-0.npy", Body=b"x")
    # when the schedule fires at 2026-11-27T06:00Z
    run = invoke(world, load_event("schedule_nightly.json"), lambda_context)
    # then the placeholders resolved from the event time
    assert run["source"] == "schedule"
    assert run["spec"]["input"]["uri"] == f"s3://{DATA_BUCKET}/inputs/dt=2026-11-26/"
    assert run["spec"]["output"]["uri"] == f"s3://{DATA_BUCKET}/outputs/dt=2026-11-26/"
    assert run["shards_total"] == 1


@pytest.mark.aws
def test_resumed_run_passes_through_pointed_at_the_new_execution(world, lambda_context):
    # given the state a previous execution handed over
    previous = invoke(world, sample_spec(), lambda_context)
    previous = {**previous, "phase": "monitoring", "executions": 2}
    new_execution = EXECUTION_ARN.replace("exec-0001", "exec-0002")
    # when the new execution validates it
    event = world.validate_event({"resume": previous})
    event["execution_arn"] = new_execution
    run = validate_handler.handler(event, lambda_context)["run"]
    # then nothing but the execution changed, and the new execution finds the run
    assert run["run_id"] == previous["run_id"]
    assert run["phase"] == "monitoring"
    assert run["executions"] == 2
    assert run["execution_arn"] == new_execution
    assert state_store.load_by_execution(new_execution, world.s3).run_id == previous["run_id"]


def _bad_manifest(world):
    return upload(world, "backfills/digits-demo.json", b'{"name": "x",')


def _manifest_elsewhere(world):
    world.put_json(CONTROL_BUCKET, "uploads/digits-demo.json", sample_spec())
    event = load_event("s3_manifest_created.json")
    event["detail"]["object"]["key"] = "uploads/digits-demo.json"
    return event


def _manifest_in_other_bucket(world):
    world.put_json(DATA_BUCKET, "backfills/digits-demo.json", sample_spec())
    event = load_event("s3_manifest_created.json")
    event["detail"]["bucket"]["name"] = DATA_BUCKET
    return event


def _manifest_gone(world):
    return load_event("s3_manifest_created.json")


def _manifest_with_bad_spec(world):
    return upload_spec(world, "backfills/digits-demo.json", with_value("fleet.instance_types", ["c5 huge"]))


def _event_without_key(world):
    event = load_event("s3_manifest_created.json")
    del event["detail"]["object"]["key"]
    return event


def _schedule_unknown_placeholder(world):
    world.put_json(CONTROL_BUCKET, "schedules/nightly.json", with_value("input.uri", "s3://b/in/{week}/"))
    return load_event("schedule_nightly.json")


def _schedule_without_time(world):
    return {"manifest": f"s3://{CONTROL_BUCKET}/schedules/nightly.json"}


def _schedule_with_naive_time(world):
    return {"manifest": f"s3://{CONTROL_BUCKET}/schedules/nightly.json", "time": "2026-11-27T06:00:00"}


def _model_missing(world):
    return with_value("model.uri", f"s3://{DATA_BUCKET}/models/missing.keras")


def _input_empty(world):
    return with_value("input.uri", f"s3://{DATA_BUCKET}/inputs/nothing-here/")


def _input_wrong_format(world):
    return with_value("input.format", "parquet")


def _input_bucket_missing(world):
    return with_value("input.uri", "s3://no-such-bucket-anywhere/inputs/")


def _shard_list_with_bad_line(world):
    world.s3.put_object(
        Bucket=DATA_BUCKET,
        Key="lists/shards.txt",
        Body=f"s3://{DATA_BUCKET}/inputs/digits/part-00000.npy\n/local/file.npy\n".encode(),
    )
    return with_value("input.uri", f"s3://{DATA_BUCKET}/lists/shards.txt")


def _shard_list_missing(world):
    return with_value("input.uri", f"s3://{DATA_BUCKET}/lists/missing.json")


def _not_an_object(world):
    return ["a", "list"]


def _gpu_tasks_exceed_gpus(world):
    document = with_value("fleet.instance_types", ["g4dn.xlarge"])
    document["service"]["tasks_per_instance"] = 2
    document["service"]["memory"] = 4096
    return document


def _resume_without_spec(world):
    return {"resume": {"run_id": "demo-20261127060000-abcdef", "phase": "monitoring"}}


INVALID_INPUTS = [
    ("manifest-malformed-json", _bad_manifest, r"manifest s3://\S+: not valid JSON"),
    ("manifest-not-under-backfills", _manifest_elsewhere, r"manifest s3://\S+: must be under backfills/"),
    (
        "manifest-outside-control-bucket",
        _manifest_in_other_bucket,
        r"manifest s3://\S+: must be in the control",
    ),
    ("manifest-unreadable", _manifest_gone, r"manifest s3://\S+: cannot be read"),
    (
        "manifest-invalid-spec",
        _manifest_with_bad_spec,
        r"manifest s3://\S+: fleet\.instance_types: 'c5 huge' is not an instance type name",
    ),
    ("s3-event-without-key", _event_without_key, r"S3 event: detail\.object\.key: required field"),
    (
        "schedule-unknown-placeholder",
        _schedule_unknown_placeholder,
        r"^manifest s3://\S+/schedules/nightly\.json: input\.uri: unknown placeholder \{week\}",
    ),
    ("schedule-without-time", _schedule_without_time, r"schedule event: time: required field"),
    ("schedule-time-without-zone", _schedule_with_naive_time, r"schedule event: time: .*timezone"),
    ("model-unreadable", _model_missing, r"model\.uri: s3://\S+ does not exist"),
    ("input-prefix-empty", _input_empty, r"input\.uri: no npy shards found"),
    ("input-has-no-shards-of-format", _input_wrong_format, r"input\.uri: no parquet shards found"),
    (
        "input-bucket-missing",
        _input_bucket_missing,
        r"input\.uri: .*bucket no-such-bucket-anywhere does not exist",
    ),
    (
        "shard-list-bad-line",
        _shard_list_with_bad_line,
        r"input\.uri: s3://\S+ entry 2: '/local/file.npy' is not",
    ),
    ("shard-list-unreadable", _shard_list_missing, r"input\.uri: shard manifest s3://\S+ cannot be read"),
    ("input-not-an-object", _not_an_object, r"^input: must be a JSON object"),
    ("resume-without-spec", _resume_without_spec, r"^input: resume\.spec: required field is missing"),
    (
        "gpu-tasks-exceed-gpus",
        _gpu_tasks_exceed_gpus,
        r"service\.tasks_per_instance: 2 tasks need a GPU each",
    ),
]


@pytest.mark.aws
@pytest.mark.parametrize(
    ("make_input", "expected"), [c[1:] for c in INVALID_INPUTS], ids=[c[0] for c in INVALID_INPUTS]
)
def test_invalid_trigger_fails_validate_naming_the_field(world, lambda_context, make_input, expected):
    # given an execution input that is wrong in one way
    execution_input = make_input(world)
    # when Validate runs / then it fails with the field and the reason
    with pytest.raises(InvalidSpecError) as raised:
        invoke(world, execution_input, lambda_context)
    assert re.search(expected, str(raised.value)), str(raised.value)
    # and no run was created
    listed = world.s3.list_objects_v2(Bucket=CONTROL_BUCKET, Prefix="runs/")
    assert listed["KeyCount"] == 0


@pytest.mark.aws
def test_no_subnets_anywhere_is_a_spec_error(world, lambda_context, monkeypatch):
    from spotfill_control.config import settings

    monkeypatch.setenv("DEFAULT_SUBNETS", "")
    settings.cache_clear()
    with pytest.raises(
        InvalidSpecError, match=r"^fleet\.subnets: empty, and the stack sets no default subnets"
    ):
        invoke(world, sample_spec(), lambda_context)


TWENTY_TYPES = [
    f"{family}.{size}"
    for family in ("c5", "m5", "r5", "c6i")
    for size in ("large", "xlarge", "2xlarge", "4xlarge", "12xlarge")
]


def _subnets(count: int) -> list[str]:
    return [f"subnet-{i:017x}" for i in range(count)]


@pytest.mark.aws
def test_more_type_and_subnet_pairs_than_a_fleet_takes_overrides_is_refused_naming_the_count_and_limit(
    world, lambda_context
):
    # given 20 instance types and 16 subnets: 320 pools, where a maintain fleet may have 300 ("Quotas for EC2
    # Fleet and Spot Fleet", EC2 user guide)
    spec = sample_spec()
    spec["fleet"]["instance_types"] = TWENTY_TYPES
    spec["fleet"]["subnets"] = _subnets(16)
    # when Validate runs, then it refuses before the fleet is requested, naming both figures
    with pytest.raises(InvalidSpecError) as raised:
        invoke(world, spec, lambda_context)
    assert str(raised.value) == (
        "fleet.instance_types x fleet.subnets: 20 instance types x 16 subnets make 320 capacity pools (one "
        "launch template override per type and subnet), more than the 300 a fleet of type maintain may have "
        "(an EC2 Fleet and Spot Fleet quota): name fewer types or subnets (at most 300 pairs)."
    )


def test_exactly_as_many_type_and_subnet_pairs_as_a_fleet_takes_overrides_pass_and_one_more_does_not():
    from spotfill_control.fleet.fleet import check_override_count
    from spotfill_control.spec import BackfillSpec

    spec = sample_spec()
    spec["fleet"]["instance_types"] = TWENTY_TYPES
    fleet_spec = BackfillSpec.model_validate(spec).fleet
    check_override_count(fleet_spec, _subnets(15))  # 20 x 15 = 300
    seven = fleet_spec.model_copy(update={"instance_types": TWENTY_TYPES[:7]})
    with pytest.raises(InvalidSpecError, match=r"make 301 capacity pools"):
        check_override_count(seven, _subnets(43))  # 7 x 43 = 301


@pytest.mark.aws
def test_shard_list_input_counts_listed_shards(world, lambda_context):
    keys = [f"s3://{DATA_BUCKET}/{k}" for k in world.shard_keys[:2]]
    world.put_json(DATA_BUCKET, "lists/shards.json", keys)
    run = invoke(world, with_value("input.uri", f"s3://{DATA_BUCKET}/lists/shards.json"), lambda_context)
    assert run["shards_total"] == 2


def test_sample_events_are_not_mutated_between_tests():
    # the helpers above copy; a shared dict mutated in place would leak between parametrised cases
    first = load_event("s3_manifest_created.json")
    second = copy.deepcopy(first)
    del first["detail"]["object"]["key"]
    assert load_event("s3_manifest_created.json") == second


REPOSITORY_EVENTS = Path(__file__).resolve().parents[2] / "events"


@pytest.mark.aws
@pytest.mark.parametrize(
    ("sample", "source"),
    [
        ("start_execution.json", "direct"),
        ("s3_manifest_uploaded.json", "s3"),
        ("schedule_tick.json", "schedule"),
    ],
)
def test_repository_sample_triggers_start_runs(world, lambda_context, monkeypatch, sample, source):
    # given the buckets and objects the samples in events/ name
    from spotfill_control.config import settings

    trigger = json.loads((REPOSITORY_EVENTS / sample).read_text())
    control = json.loads((REPOSITORY_EVENTS / "s3_manifest_uploaded.json").read_text())["detail"]["bucket"][
        "name"
    ]
    spec = json.loads((REPOSITORY_EVENTS / "start_execution.json").read_text())
    data = spec["model"]["uri"].split("/")[2]
    for bucket in (control, data):
        world.s3.create_bucket(Bucket=bucket)
    world.s3.put_object(Bucket=data, Key="models/digits.keras", Body=b"model")
    world.s3.put_object(Bucket=data, Key="models/ctr.keras", Body=b"model")
    world.s3.put_object(Bucket=data, Key="inputs/digits/part-00000.npy", Body=b"x")
    world.s3.put_object(Bucket=data, Key="inputs/clicks/date=2026-11-26/part-0.parquet", Body=b"x")
    world.s3.put_bucket_versioning(Bucket=control, VersioningConfiguration={"Status": "Enabled"})
    manifest = (REPOSITORY_EVENTS / "manifest_digits.json").read_bytes()
    put = world.s3.put_object(Bucket=control, Key="backfills/digits.json", Body=manifest)
    if source == "s3":  # the sample names an upload of its own: S3 chose this one's version id and ETag
        trigger["detail"]["object"].update({"version-id": put["VersionId"], "etag": put["ETag"].strip('"')})
    scheduled = json.loads((REPOSITORY_EVENTS / "manifest_scheduled.json").read_text())
    world.put_json(control, "schedules/nightly-clicks.json", scheduled)
    monkeypatch.setenv("CONTROL_BUCKET", control)
    settings.cache_clear()
    # when Validate runs on the sample / then it starts a run from the source the sample stands for
    run = validate_handler.handler(world.validate_event(trigger), lambda_context)["run"]
    assert run["source"] == source
    assert run["shards_total"] == 1
