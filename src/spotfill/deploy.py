"""Deploy `template.yaml` into the AWS emulator (moto), so the wiring under test is the wiring that deploys.

The same code serves both emulators: in-process `mock_aws()` and a moto server reached through
`AWS_ENDPOINT_URL` (boto3 honours it; nothing here knows which one it talks to).

What happens, in order:

1. `template.yaml` is read (CloudFormation short-form tags included) and translated by the SAM translator,
   offline: the region is given explicitly and the managed-policy map is empty, because the template names
   managed policies by ARN only.
2. `functions/` is zipped and uploaded, with the ASL, to an artifacts bucket in the emulator; `CodeUri` and
   `DefinitionUri` are pointed at those objects before translation, as `sam package` would do.
3. What moto lacks is filled in from the same files:
   - moto does not load a state machine definition from `DefinitionS3Location`, nor apply
     `DefinitionSubstitutions`, so the translated state machine gets a `DefinitionString` built from
     `statemachine/*.asl.json` with every `${Key}` replaced by its substitution (an `Fn::Join` of the file's
     text and the substitutions' own intrinsics, resolved by moto at create time);
   - moto's CloudFormation applies a bucket's encryption only: public access block, ownership, versioning,
     lifecycle and EventBridge notifications are applied through the S3 API afterwards (server access logging
     is not: moto delivers no access logs), to the buckets the stack created (a bucket's `Condition` may
     leave it out);
   - moto stores a CloudFormation role's inline policies as Python reprs: they are rewritten as JSON;
   - with Step Functions execution on, moto's API cannot see state machines its CloudFormation created:
     the stack's state machine is created again through the API (same name, so the same ARN);
   - bucket policies are left out of the emulator (moto ignores their conditions, so the TLS-only Deny would
     deny everything); they stay in the translated template, where the tests check them.
4. What the template expects from the account is made sure of: the default VPC and its subnets (moto creates
   them, or `CreateDefaultVpc` does; their ids become the `VpcId` / `Subnets` parameters). The AMIs are no
   deploy-time parameter: each run reads the public SSM parameter of its kind (moto ships them).
5. `create_stack`, then the outputs are read back into a typed `StackOutputs`.

One module of a little over 600 lines because it is these five steps in this order, each section below one
of them, called once by `deploy_stack` (and again by `update_stack`): split, a reader would follow one
deployment across files in the same order.

`update_stack` builds the template the same way and applies it with `UpdateStack`, as `sam deploy` does to an
existing stack. moto's CloudFormation updates only what a changed parameter or template text names directly;
the local cloud and the Step Functions harness install
`spotfill.localcloud.patches.cloudformation.update_stacks_as_cloudformation_does`, which updates what
references an updated resource too (a replaced security group reaches the launch template, a new launch
template version reaches the functions' `LAUNCH_TEMPLATE_VERSION`), as CloudFormation does.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPOSITORY_ROOT / "template.yaml"
DEFAULT_STACK_NAME = "spotfill"
DEFAULT_WORKER_IMAGE = "spotfill-worker:local"

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_:.]+)\}")
_ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)
_NOT_IN_EMULATOR = frozenset({"AWS::S3::BucketPolicy"})


class DeployError(RuntimeError):
    """The template could not be translated or the emulator's stack did not come up."""


@dataclass(frozen=True)
class DeployedFunction:
    logical_id: str
    name: str
    arn: str
    handler: str


@dataclass(frozen=True)
class StackOutputs:
    """What a deployed stack offers its users: every output, plus the functions by logical id."""

    stack_name: str
    region: str
    control_bucket: str
    data_bucket: str
    state_machine_arn: str
    worker_log_group: str
    notification_topic_arn: str
    event_bus_name: str
    launch_template_id: str
    functions: dict[str, DeployedFunction]
    outputs: dict[str, str]
    parameters: dict[str, str] = field(default_factory=dict)

    def function(self, logical_id: str) -> DeployedFunction:
        try:
            return self.functions[logical_id]
        except KeyError:
            raise KeyError(
                f"no function {logical_id!r} in stack {self.stack_name}: {sorted(self.functions)}"
            ) from None

    @property
    def handlers_by_function_name(self) -> dict[str, str]:
        """Physical function name -> handler (`module.function`): what an in-process dispatcher needs."""
        return {f.name: f.handler for f in self.functions.values()}


# ---------------------------------------------------------------- template reading and translation


class _CloudFormationLoader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation short forms (`!Ref`, `!Sub`, ...) into their long forms."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag_suffix}": value}


_CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The SAM template as a dict, short-form intrinsics expanded."""
    return yaml.load(path.read_text(), Loader=_CloudFormationLoader)  # a SafeLoader subclass


def translate_template(
    sam_template: Mapping[str, Any],
    region: str,
    parameter_values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Translate a SAM template into plain CloudFormation, offline.

    `CodeUri` / `DefinitionUri` should be S3 locations (as `sam package` leaves them) for a template that
    is to be created; local paths are replaced by stand-in `s3://unpackaged/...` locations, which is enough
    for reading the policies and the wiring.
    """
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.arn_generator import ArnGenerator
    from samtranslator.translator.translator import Translator

    sam_template = json.loads(json.dumps(sam_template))  # the translator mutates its input
    for resource in sam_template.get("Resources", {}).values():
        properties = resource.get("Properties", {})
        for uri in ("CodeUri", "DefinitionUri"):
            if isinstance(properties.get(uri), str) and not properties[uri].startswith("s3://"):
                # Not packaged: a stand-in location, so the rest (policies, wiring) can still be read.
                properties[uri] = f"s3://unpackaged/{properties[uri]}"
    code_uri = sam_template.get("Globals", {}).get("Function", {}).get("CodeUri")
    if isinstance(code_uri, str) and not code_uri.startswith("s3://"):
        sam_template["Globals"]["Function"]["CodeUri"] = f"s3://unpackaged/{code_uri}"

    previous_region = ArnGenerator.BOTO_SESSION_REGION_NAME
    ArnGenerator.BOTO_SESSION_REGION_NAME = region
    try:
        translator = Translator(
            managed_policy_map={}, sam_parser=Parser(), boto_session=boto3.session.Session(region_name=region)
        )
        return translator.translate(
            sam_template,
            parameter_values=dict(parameter_values or {}),
            get_managed_policy_map=dict,
        )
    except InvalidDocumentException as exc:
        causes = "; ".join(str(cause) for cause in exc.causes)
        raise DeployError(f"SAM translation failed: {causes}") from exc
    finally:
        ArnGenerator.BOTO_SESSION_REGION_NAME = previous_region


# ---------------------------------------------------------------- artifacts


def zip_directory(directory: Path) -> bytes:
    """A deterministic zip of a source tree (no caches), so unchanged code keeps its artifact key."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if not path.is_file() or "__pycache__" in relative.parts or path.suffix == ".pyc":
                continue
            info = zipfile.ZipInfo(relative.as_posix(), date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket in existing:
        return
    if region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


def _upload(s3: Any, bucket: str, prefix: str, name: str, body: bytes) -> str:
    key = f"{prefix}/{hashlib.sha256(body).hexdigest()[:16]}-{name}"
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return key


# ---------------------------------------------------------------- what moto lacks


def definition_with_substitutions(asl_text: str, substitutions: Mapping[str, Any]) -> dict[str, Any] | str:
    """The ASL as a CloudFormation value with every `${Key}` replaced by `substitutions[Key]`.

    Substitution values may be intrinsics (`Fn::GetAtt` of a function's ARN); the result is an `Fn::Join`
    that CloudFormation (moto) resolves. A placeholder with no substitution is an error here rather than
    a broken state machine later.
    """
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(asl_text)} - set(substitutions))
    if missing:
        raise DeployError(f"state machine placeholders without a DefinitionSubstitutions entry: {missing}")
    parts: list[Any] = []
    position = 0
    for match in _PLACEHOLDER.finditer(asl_text):
        parts.append(asl_text[position : match.start()])
        parts.append(substitutions[match.group(1)])
        position = match.end()
    parts.append(asl_text[position:])
    parts = [p for p in parts if p != ""]
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)
    return {"Fn::Join": ["", parts]}


def _inline_state_machine_definitions(cfn_template: dict[str, Any], definitions: Mapping[str, str]) -> None:
    # moto ignores DefinitionS3Location and DefinitionSubstitutions; give it the definition itself.
    for logical_id, resource in cfn_template["Resources"].items():
        if resource["Type"] != "AWS::StepFunctions::StateMachine" or logical_id not in definitions:
            continue
        properties = resource["Properties"]
        properties.pop("DefinitionS3Location", None)
        substitutions = properties.pop("DefinitionSubstitutions", {})
        properties["DefinitionString"] = definition_with_substitutions(definitions[logical_id], substitutions)


def _default_network(ec2: Any) -> tuple[str, list[str]]:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    vpc_id = vpcs[0]["VpcId"] if vpcs else ec2.create_default_vpc()["Vpc"]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    if not subnets:
        raise DeployError(f"the emulator's default VPC {vpc_id} has no subnets")
    return vpc_id, sorted(s["SubnetId"] for s in subnets)


def _lifecycle_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    api_rule: dict[str, Any] = {
        "ID": rule.get("Id", ""),
        "Status": rule["Status"],
        "Filter": {"Prefix": rule.get("Prefix", "")},
    }
    if "ExpirationInDays" in rule:
        api_rule["Expiration"] = {"Days": rule["ExpirationInDays"]}
    if "NoncurrentVersionExpiration" in rule:
        api_rule["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": rule["NoncurrentVersionExpiration"]["NoncurrentDays"]
        }
    return api_rule


def _apply_bucket_settings(s3: Any, cfn_template: Mapping[str, Any], references: Mapping[str, str]) -> None:
    # moto's CloudFormation applies a bucket's encryption only; the rest of the bucket settings are applied
    # here through the S3 API, from the same template.
    for logical_id, resource in cfn_template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::S3::Bucket" and logical_id in references:  # else its Condition is false
            bucket = references[logical_id]
            if "PublicAccessBlockConfiguration" in properties:
                s3.put_public_access_block(
                    Bucket=bucket, PublicAccessBlockConfiguration=properties["PublicAccessBlockConfiguration"]
                )
            if "OwnershipControls" in properties:
                s3.put_bucket_ownership_controls(
                    Bucket=bucket, OwnershipControls=properties["OwnershipControls"]
                )
            if "VersioningConfiguration" in properties:
                s3.put_bucket_versioning(
                    Bucket=bucket,
                    VersioningConfiguration={"Status": properties["VersioningConfiguration"]["Status"]},
                )
            if "LifecycleConfiguration" in properties:
                s3.put_bucket_lifecycle_configuration(
                    Bucket=bucket,
                    LifecycleConfiguration={
                        "Rules": [_lifecycle_rule(r) for r in properties["LifecycleConfiguration"]["Rules"]]
                    },
                )
            notification = properties.get("NotificationConfiguration", {})
            if notification.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
                s3.put_bucket_notification_configuration(
                    Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
                )


def _rewrite_inline_policies_as_json(
    iam: Any, cfn_template: Mapping[str, Any], references: Mapping[str, str]
) -> None:
    # moto stores the inline policies of a CloudFormation role as Python reprs (single quotes), which no IAM
    # client can parse; they are put back as the JSON documents AWS would hold, with moto's resolved values.
    for logical_id, resource in cfn_template["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        role_name = references[logical_id]
        for policy_name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
            if isinstance(document, str):
                try:
                    parsed = json.loads(document)
                except json.JSONDecodeError:
                    parsed = ast.literal_eval(document)
                # moto's put_role_policy insists on a Version; SAM's policy templates leave it out.
                parsed.setdefault("Version", "2012-10-17")
                iam.put_role_policy(
                    RoleName=role_name, PolicyName=policy_name, PolicyDocument=json.dumps(parsed)
                )


def _arn_of(value: Any, references: Mapping[str, str], session: boto3.session.Session) -> Any:
    """Resolve `Fn::GetAtt <resource>.Arn` of a stack function or role (all a state machine refers to)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"} and value["Fn::GetAtt"][1] == "Arn":
        logical_id = value["Fn::GetAtt"][0]
        physical = references[logical_id]
        resource_type = references.get(f"{logical_id}::Type")
        if physical.startswith("arn:"):
            return physical
        if resource_type == "AWS::Lambda::Function":
            return session.client("lambda").get_function_configuration(FunctionName=physical)["FunctionArn"]
        if resource_type == "AWS::IAM::Role":
            return session.client("iam").get_role(RoleName=physical)["Role"]["Arn"]
    raise DeployError(f"cannot resolve {value!r} outside CloudFormation")


def _make_state_machines_executable(
    session: boto3.session.Session, cfn_template: Mapping[str, Any], references: Mapping[str, str]
) -> None:
    # With Step Functions execution on (`execute_state_machine`), moto's API serves another backend than the
    # one its CloudFormation creates state machines in, so the API cannot see (nor run) the stack's machine.
    # Create it through the API with the same name, definition and role: it gets the same ARN.
    sfn = session.client("stepfunctions")
    for logical_id, resource in cfn_template["Resources"].items():
        if resource["Type"] != "AWS::StepFunctions::StateMachine":
            continue
        arn = references[logical_id]
        try:
            sfn.describe_state_machine(stateMachineArn=arn)
            continue
        except sfn.exceptions.StateMachineDoesNotExist:
            pass
        properties = resource["Properties"]
        definition = properties["DefinitionString"]
        if isinstance(definition, dict):
            definition = "".join(_arn_of(part, references, session) for part in definition["Fn::Join"][1])
        created = sfn.create_state_machine(
            name=arn.rsplit(":", 1)[1],
            definition=definition,
            roleArn=_arn_of(properties["RoleArn"], references, session),
            type=properties.get("StateMachineType", "STANDARD"),
            tags=[{"key": t["Key"], "value": t["Value"]} for t in properties.get("Tags", [])],
        )
        if created["stateMachineArn"] != arn:
            raise DeployError(
                f"state machine {logical_id} came up as {created['stateMachineArn']}, not {arn}"
            )


# ---------------------------------------------------------------- deploy


def deploy_stack(
    stack_name: str = DEFAULT_STACK_NAME,
    parameters: Mapping[str, str] | None = None,
    *,
    template_path: Path = TEMPLATE_PATH,
    region: str | None = None,
    session: boto3.session.Session | None = None,
) -> StackOutputs:
    """Create `template.yaml` as stack `stack_name` in the emulator and return its outputs.

    Contract:
    - Talks to whatever AWS boto3 reaches: moto in process under `mock_aws()`, or a moto server through
      `AWS_ENDPOINT_URL`. Never point it at a real account (it would work, but `sam deploy` is the way there).
    - `parameters` override the template's parameters; `VpcId` and `Subnets` default to the emulator's default
      VPC and its subnets, `WorkerImage` and `WorkerImageArm64` to `spotfill-worker:local`.
    - Code and ASL are read from the template's folder (`CodeUri`, `DefinitionUri`), so edits to `functions/`
      or `statemachine/` need no build step; they are uploaded to `spotfill-artifacts-<account>-<region>`.
    - Functions are created with their real `Handler` and `Environment`; moto runs no code, so whoever invokes
      them dispatches to `StackOutputs.functions[...].handler` in process.
    - Raises `DeployError` when translation fails, a state machine placeholder has no substitution, a stack
      of that name exists already, or the stack does not reach CREATE_COMPLETE.
    """
    session = session or boto3.session.Session(region_name=region)
    region = session.region_name or region
    if not region:
        raise DeployError("no region: set AWS_DEFAULT_REGION or pass region=")
    ec2 = session.client("ec2")
    cloudformation = session.client("cloudformation")

    existing = [
        s
        for s in cloudformation.list_stacks()["StackSummaries"]
        if s["StackName"] == stack_name and s["StackStatus"] != "DELETE_COMPLETE"
    ]
    if existing:
        raise DeployError(
            f"stack {stack_name} exists already ({existing[0]['StackStatus']}): "
            "read it with read_stack_outputs, or deploy under another name"
        )
    vpc_id, subnets = _default_network(ec2)
    parameter_values = {
        "VpcId": vpc_id,
        "Subnets": ",".join(subnets),
        # The local cloud runs the worker as a process on any architecture: one image stands for both.
        "WorkerImage": DEFAULT_WORKER_IMAGE,
        "WorkerImageArm64": DEFAULT_WORKER_IMAGE,
    }
    parameter_values.update(parameters or {})

    cfn_template, emulator_template = _packaged_templates(session, template_path, region)
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(emulator_template),
        Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameter_values.items()],
        Capabilities=_CAPABILITIES,
    )
    _settle(session, stack_name, cfn_template, "CREATE_COMPLETE", region)
    return read_stack_outputs(stack_name, session=session)


def update_stack(
    stack_name: str = DEFAULT_STACK_NAME,
    parameters: Mapping[str, str] | None = None,
    *,
    template_path: Path = TEMPLATE_PATH,
    session: boto3.session.Session | None = None,
) -> StackOutputs:
    """Update stack `stack_name` in the emulator with `template.yaml` and `parameters`, as `sam deploy`
    updates a deployed stack: parameters not given keep their values. The state machine created through the
    API at deploy time is kept as it is. Raises `DeployError` when the stack does not exist or does not reach
    UPDATE_COMPLETE."""
    session = session or boto3.session.Session()
    region = session.region_name
    if not region:
        raise DeployError("no region: set AWS_DEFAULT_REGION or pass a session with one")
    cloudformation = session.client("cloudformation")
    try:
        (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except cloudformation.exceptions.ClientError as exc:
        raise DeployError(f"stack {stack_name} cannot be updated: {exc}") from exc
    cfn_template, emulator_template = _packaged_templates(session, template_path, region)
    declared = emulator_template.get("Parameters", {})
    values = {}
    for previous in stack.get("Parameters", []):
        key, declaration = previous["ParameterKey"], declared.get(previous["ParameterKey"])
        value = _previous_value(previous.get("ParameterValue", ""), declaration or {})
        # A value equal to the default is left to the default: moto counts a parameter first given now as
        # changed, and updates what names it (a log group it then loses).
        if declaration is not None and value != str(declaration.get("Default")):
            values[key] = value
    values.update(parameters or {})
    cloudformation.update_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(emulator_template),
        Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in values.items()],
        Capabilities=_CAPABILITIES,
    )
    _settle(session, stack_name, cfn_template, "UPDATE_COMPLETE", region)
    return read_stack_outputs(stack_name, session=session)


def _previous_value(value: str, declaration: Mapping[str, Any]) -> str:
    # moto describes a list parameter's value as a Python list's repr; UpdateStack wants it comma-separated.
    kind = str(declaration.get("Type", "String"))
    if (kind.startswith("List<") or kind == "CommaDelimitedList") and value.startswith("["):
        return ",".join(ast.literal_eval(value))
    return value


_CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


def _packaged_templates(
    session: boto3.session.Session, template_path: Path, region: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The translated template (code and ASL uploaded as `sam package` would) and the part moto gets."""
    s3 = session.client("s3")
    account = session.client("sts").get_caller_identity()["Account"]
    sam_template = load_template(template_path)
    base = template_path.parent
    artifacts = f"spotfill-artifacts-{account}-{region}"
    _ensure_bucket(s3, artifacts, region)

    code_keys: dict[str, str] = {}
    definitions: dict[str, str] = {}
    globals_function = sam_template.get("Globals", {}).get("Function", {})
    for logical_id, resource in sam_template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            code_uri = properties.get("CodeUri", globals_function.get("CodeUri"))
            if not isinstance(code_uri, str):
                continue
            if code_uri not in code_keys:
                code_keys[code_uri] = _upload(
                    s3, artifacts, "code", "code.zip", zip_directory(base / code_uri)
                )
            properties["CodeUri"] = f"s3://{artifacts}/{code_keys[code_uri]}"
        elif resource["Type"] == "AWS::Serverless::StateMachine" and isinstance(
            properties.get("DefinitionUri"), str
        ):
            asl_text = (base / properties["DefinitionUri"]).read_text()
            definitions[logical_id] = asl_text
            key = _upload(
                s3, artifacts, "statemachine", Path(properties["DefinitionUri"]).name, asl_text.encode()
            )
            properties["DefinitionUri"] = {"Bucket": artifacts, "Key": key}

    cfn_template = translate_template(sam_template, region)
    _inline_state_machine_definitions(cfn_template, definitions)

    # moto's CloudFormation has no AWS::S3::BucketPolicy, and the S3 API is no way round: moto ignores policy
    # conditions, so the TLS-only Deny (aws:SecureTransport = false) would deny every object request. Bucket
    # policies stay in the translated template (tests read them there) and out of the emulator.
    emulator_template = json.loads(json.dumps(cfn_template))
    for logical_id, resource in cfn_template["Resources"].items():
        if resource["Type"] in _NOT_IN_EMULATOR:
            del emulator_template["Resources"][logical_id]
    return cfn_template, emulator_template


def _settle(
    session: boto3.session.Session,
    stack_name: str,
    cfn_template: Mapping[str, Any],
    wanted: str,
    region: str,
) -> None:
    """Check the stack reached `wanted`, then fill in what moto's CloudFormation left out."""
    cloudformation = session.client("cloudformation")
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    account = session.client("sts").get_caller_identity()["Account"]
    if stack["StackStatus"] != wanted:
        events = cloudformation.describe_stack_events(StackName=stack_name)["StackEvents"]
        reasons = [e.get("ResourceStatusReason") for e in events if e.get("ResourceStatusReason")]
        raise DeployError(f"stack {stack_name} is {stack['StackStatus']}: {reasons[:5]}")

    references = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
    references.update(
        {
            "AWS::Region": region,
            "AWS::AccountId": account,
            "AWS::Partition": "aws",
            "AWS::StackName": stack_name,
        }
    )
    for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_name):
        for resource in page["StackResourceSummaries"]:
            references[resource["LogicalResourceId"]] = resource["PhysicalResourceId"]
            references[f"{resource['LogicalResourceId']}::Type"] = resource["ResourceType"]
    _apply_bucket_settings(session.client("s3"), cfn_template, references)
    _rewrite_inline_policies_as_json(session.client("iam"), cfn_template, references)
    _make_state_machines_executable(session, cfn_template, references)


def read_stack_outputs(
    stack_name: str = DEFAULT_STACK_NAME, *, session: boto3.session.Session | None = None
) -> StackOutputs:
    """The outputs of a stack that already exists (deployed by `deploy_stack`, or by `sam deploy`)."""
    session = session or boto3.session.Session()
    cloudformation = session.client("cloudformation")
    lambda_ = session.client("lambda")
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}

    functions: dict[str, DeployedFunction] = {}
    paginator = cloudformation.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack_name):
        for resource in page["StackResourceSummaries"]:
            if resource["ResourceType"] != "AWS::Lambda::Function":
                continue
            configuration = lambda_.get_function_configuration(FunctionName=resource["PhysicalResourceId"])
            functions[resource["LogicalResourceId"]] = DeployedFunction(
                logical_id=resource["LogicalResourceId"],
                name=configuration["FunctionName"],
                arn=configuration["FunctionArn"],
                handler=configuration["Handler"],
            )

    def output(key: str) -> str:
        try:
            return outputs[key]
        except KeyError:
            raise DeployError(f"stack {stack_name} has no output {key!r}") from None

    return StackOutputs(
        stack_name=stack_name,
        region=session.region_name or "",
        control_bucket=output("ControlBucketName"),
        data_bucket=output("DataBucketName"),
        state_machine_arn=output("StateMachineArn"),
        worker_log_group=output("WorkerLogGroup"),
        notification_topic_arn=output("NotificationTopicArn"),
        event_bus_name=output("EventBusName"),
        launch_template_id=output("LaunchTemplateId"),
        functions=functions,
        outputs=outputs,
        parameters=parameters,
    )
