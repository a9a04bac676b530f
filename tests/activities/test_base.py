"""The activity boundary: every failure leaves as a typed, redacted ApplicationError."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.base import StepActivities, step
from platformctl.outcomes import PolicyViolation
from platformctl.transport import AuthenticationFailed, ConnectFailed

SECRET = "hunter2-boundary-secret"


class Raises(StepActivities):
    def __init__(self, error: Exception) -> None:
        super().__init__(deps=None)  # type: ignore[arg-type]
        self.error = error

    @step
    async def run(self, inp: None) -> None:
        raise self.error


async def failure_of(error: Exception) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(Raises(error).run, None)
    return caught.value


@pytest.mark.parametrize(
    "error, error_type, non_retryable",
    [
        (PolicyViolation(f"bad path password={SECRET}"), "PolicyViolation", True),
        (AuthenticationFailed(f"refused, password={SECRET}"), "RemoteFailed", True),
        (ConnectFailed(f"refused, password={SECRET}"), "RemoteFailed", False),
        (KeyError(f"password={SECRET}"), "ToolError", False),
    ],
)
async def test_failures_are_typed_and_redacted(error, error_type, non_retryable):
    failure = await failure_of(error)
    assert (failure.type, failure.non_retryable) == (error_type, non_retryable)
    assert SECRET not in failure.message and "password=[REDACTED]" in failure.message
    # The unredacted original must not ride along as the stored cause.
    assert failure.__cause__ is None and failure.__suppress_context__
