"""AWS Step Functions: an execution started without a name is named with a UUID.

With execution on, moto names an execution started without a name `None` (every such execution gets the same
ARN); AWS names it with a UUID, and so does this.

AWS documentation followed:
- "StartExecution" (`name`: "If you don't provide a name for the execution, a universally unique identifier
  (UUID) is automatically generated"), AWS Step Functions API Reference:
  https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html
"""

from __future__ import annotations

from typing import Any


def patch_execution_names() -> None:
    import uuid

    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original_start = StepFunctionsParserBackend.start_execution

    def start_execution(
        self: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        return original_start(self, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)

    StepFunctionsParserBackend.start_execution = start_execution
