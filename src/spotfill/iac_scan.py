"""`template.yaml` as an IaC security scanner (checkov) sees it, and the rule that every suppression says why.

checkov reads the SAM resources of `template.yaml` itself, but not what the SAM translator makes of them: a
function's IAM role (where its `Policies` end up), its event rules and permissions. So `make lint` scans the
translated template too. A generated resource carries the checkov suppressions of the SAM resource it was
generated from (SAM names it after that resource: `RequestFleetFunction` -> `RequestFleetFunctionRole`), so a
suppression is written once, on the function, next to its reason.

A suppression is `Metadata: checkov: skip:` on a resource, a list of `{id, comment}`; checkov accepts one
without a comment, this module does not: the comment is the reason a security reviewer reads.

    python -m spotfill.iac_scan OUT.json [--template template.yaml]

checks every suppression of the template for its reason (exit 1 naming the bare ones) and writes the
translated template, suppressions carried over, to OUT.json for checkov.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spotfill.deploy import TEMPLATE_PATH, load_template, translate_template

CHECK_ID = re.compile(r"^CKV2?_[A-Z0-9]+_[0-9]+$")
MIN_REASON_WORDS = 5


class ScanTemplateError(ValueError):
    """The template cannot be prepared for the scan."""


def suppressions(resource: Mapping[str, Any]) -> list[Any]:
    """The checkov skip entries of one resource (its `Metadata.checkov.skip`), as written."""
    metadata = resource.get("Metadata")
    if not isinstance(metadata, Mapping) or "checkov" not in metadata:
        return []
    checkov = metadata["checkov"]
    skip = checkov.get("skip", []) if isinstance(checkov, Mapping) else None
    return skip if isinstance(skip, list) else [skip]


def unexplained_suppressions(template: Mapping[str, Any]) -> list[str]:
    """One sentence per suppression without a check id or without a written reason, naming its resource."""
    problems = []
    for logical_id, resource in template.get("Resources", {}).items():
        for entry in suppressions(resource):
            if not isinstance(entry, Mapping):
                problems.append(
                    f"{logical_id}: checkov skip entry {entry!r} is not a mapping with id and comment"
                )
                continue
            check_id = entry.get("id")
            if not isinstance(check_id, str) or not CHECK_ID.match(check_id):
                problems.append(
                    f"{logical_id}: checkov skip entry has no check id like CKV_AWS_18: {check_id!r}"
                )
                continue
            comment = entry.get("comment")
            words = comment.split() if isinstance(comment, str) else []
            if len(words) < MIN_REASON_WORDS:
                problems.append(
                    f"{logical_id}: checkov skip of {check_id} gives no reason (a comment of at least "
                    f"{MIN_REASON_WORDS} words): {comment!r}"
                )
    return problems


def _source_of(logical_id: str, sam_ids: list[str]) -> str | None:
    prefixes = [s for s in sam_ids if logical_id.startswith(s)]
    return max(prefixes, key=len) if prefixes else None


def scan_template(sam_template: Mapping[str, Any], region: str = "us-east-1") -> dict[str, Any]:
    """The SAM-translated template, each generated resource carrying its SAM resource's suppressions.

    Raises `ScanTemplateError` when a generated resource is not named after any resource of the template
    (then the suppressions it should carry are unknown).
    """
    sam_resources = sam_template["Resources"]
    translated = translate_template(sam_template, region)
    sam_ids = list(sam_resources)
    for logical_id, resource in translated["Resources"].items():
        source = logical_id if logical_id in sam_resources else _source_of(logical_id, sam_ids)
        if source is None:
            raise ScanTemplateError(
                f"the SAM translator generated {logical_id}, "
                "whose name starts with the name of no resource of the template"
            )
        inherited = suppressions(sam_resources[source])
        if not inherited:
            continue
        own = suppressions(resource)
        own_ids = {e.get("id") for e in own if isinstance(e, Mapping)}
        merged = own + [e for e in inherited if not isinstance(e, Mapping) or e.get("id") not in own_ids]
        metadata = dict(resource.get("Metadata") or {})
        metadata["checkov"] = {**(metadata.get("checkov") or {}), "skip": merged}
        resource["Metadata"] = metadata
    return translated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotfill.iac_scan", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="where to write the translated template (JSON)")
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH, help="the SAM template")
    parser.add_argument("--region", default="us-east-1", help="region the translation assumes")
    args = parser.parse_args(argv)

    sam_template = load_template(args.template)
    problems = unexplained_suppressions(sam_template)
    if problems:
        for problem in problems:
            print(f"{args.template}: {problem}", file=sys.stderr)
        return 1
    translated = scan_template(sam_template, args.region)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(translated, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
