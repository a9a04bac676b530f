"""Before compose up, where hosts.yaml asks for it: the host's checkout must
be the approved commit, or the approved plan is not what would run."""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, step
from platformctl import commands
from platformctl.models import VerifyCheckoutInput
from platformctl.outcomes import PolicyViolation
from platformctl.policy.plan import SHA
from platformctl.policy.remote_output import failure
from platformctl.target import check_unchanged

GIT_TIMEOUT_S = 30


class VerifyCheckout(StepActivities):
    @activity.defn(name="verify_checkout")
    @step
    async def verify_checkout(self, inp: VerifyCheckoutInput) -> None:
        check_unchanged(self.deps.settings, inp.module, inp.target)
        host = inp.target.host
        out = await self.deps.transport.run(host, commands.git_head(host.remote_root), timeout_s=GIT_TIMEOUT_S)
        head = out.stdout.strip()
        if out.returncode != 0:
            raise PolicyViolation(
                f"cannot confirm the checkout on {host.name}: git rev-parse "
                f"{failure(out.returncode, out.timed_out, out.stdout, out.stderr)}"
            )
        if head != inp.approved_sha:
            # Only a SHA is repeated: anything else a host printed stays there.
            held = repr(head) if SHA.fullmatch(head) else "something that is not a commit SHA"
            raise PolicyViolation(
                f"{host.name}:{host.remote_root} holds commit {held}, not the approved {inp.approved_sha}"
            )
