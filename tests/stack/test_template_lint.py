"""cfn-lint runs on template.yaml in the test suite, so CI checks the template even without `make lint`."""

from __future__ import annotations

from pathlib import Path

from cfnlint.api import ManualArgs, lint_file

from spotfill.deploy import TEMPLATE_PATH


def test_cfn_lint_finds_no_error_or_warning_in_template_yaml():
    matches = lint_file(Path(TEMPLATE_PATH))
    assert [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches] == []


def test_cfn_lint_informational_checks_find_nothing_either():
    matches = lint_file(
        Path(TEMPLATE_PATH), ManualArgs(include_checks=["I"], regions=["us-east-1", "eu-west-1"])
    )
    assert [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches] == []


def test_cfn_lint_reports_a_broken_reference_in_the_same_template(tmp_path: Path):
    # the check is live: the template with one reference broken does not pass
    broken = tmp_path / "template.yaml"
    text = TEMPLATE_PATH.read_text()
    assert "      Bucket: !Ref ControlBucket\n" in text
    broken.write_text(
        text.replace("      Bucket: !Ref ControlBucket\n", "      Bucket: !Ref ControlBuckett\n")
    )
    assert any("ControlBuckett" in m.message for m in lint_file(broken))
