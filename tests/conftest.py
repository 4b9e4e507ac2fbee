"""AWS scaffolding shared by every test tier: fake credentials, a Lambda context, moto.

Tiers keep their own fixtures in their own folders (tests/control, tests/sfn, tests/worker, tests/e2e);
this file holds only what all of them need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch):
    """Fake credentials so no test can ever reach a real account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    if "AWS_ENDPOINT_URL" in os.environ and not os.environ.get("SPOTFILL_KEEP_ENDPOINT"):
        monkeypatch.delenv("AWS_ENDPOINT_URL")


@dataclass
class FakeLambdaContext:
    function_name: str = "spotfill-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:spotfill-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    log_group_name: str = "/aws/lambda/spotfill-test"
    log_stream_name: str = "2026/11/27/[$LATEST]test"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture
def month_long_run() -> tuple[dict, dict]:
    """(report, series) of a synthetic month-long run at the series' bound of 720 samples (an hour apart):
    two instance types, spot and on demand, interruptions, a cap. The report page's size and browser tests
    (tests/control_monitor, tests/e2e) draw it."""
    import random

    rng = random.Random(11)
    samples, done, spent, interruptions = [], 0, 0.0, 0
    for i in range(720):
        done = min(100_000, done + rng.randint(100, 180))
        spent += rng.uniform(0.4, 0.6)
        interruptions += i % 53 == 7
        samples.append(
            {
                "t": 1_790_000_000.0 + 3600 * i,
                "shards_done": done,
                "shards_total": 100_000,
                "predictions": done * 10_000,
                "predictions_per_second": rng.uniform(350_000, 420_000),
                "capacity": {
                    "c5.xlarge/spot": float(rng.randint(6, 8)),
                    "c6i.xlarge/spot": float(rng.randint(0, 4)),
                    "c5.xlarge/on-demand": 1.0,
                },
                "running_tasks": rng.randint(20, 26),
                "cost_usd": round(spent, 6),
                "interruptions": interruptions,
            }
        )
    report = {
        "run_id": "month-20261101000000-abcdef",
        "status": "succeeded",
        "reason": "every shard has its output",
        "shards": {"total": 100_000, "succeeded": 100_000, "failed": 0, "failed_keys": []},
        "predictions": {"total": 1_000_000_000, "exact": False, "by_purchase_option": {}},
        "instances": {
            "count": 40,
            "hours_by_type": {"c5.xlarge": 5_800.0, "c6i.xlarge": 1_400.0},
            "interruptions": interruptions,
        },
        "budget": {"max_total_usd": 450.0, "spent_usd": round(spent, 6)},
        "cost_usd": {
            "total": round(spent, 6),
            "on_demand_equivalent": 1_230.0,
            "per_million_predictions": spent / 1_000,
            "on_demand_prices": {
                "c5.xlarge": {"usd_per_hour": 0.17, "source": "price-list"},
                "c6i.xlarge": {"usd_per_hour": 0.17, "source": "price-list"},
            },
        },
        "report_uri": "s3://control/reports/month-20261101000000-abcdef.json",
    }
    return report, {"interval_seconds": 3600.0, "samples": samples}
