"""Typed shapes: the contract's JSON (input, signals, result) and activity I/O.

Free-text fields are `RedactedText`: pydantic runs the redactor whenever such a
model is built, so an activity cannot return one holding a secret.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

from platformctl.outcomes import Status
from platformctl.policy.remote_output import MAX_PROGRESS, PROGRESS_LINE, ErrorClass
from platformctl.redact import redact_and_cap

RedactedText = Annotated[str, AfterValidator(redact_and_cap)]

# The contract's input bounds: no string over 4 KiB, no more than 1,000 changes,
# no approval wait over 30 days (the whole input is capped at 256 KiB before parsing).
MAX_INPUT_BYTES = 256 * 1024
MAX_INPUT_DEPTH = 16
MAX_CHANGES = 1000
MAX_APPROVAL_WAIT_S = 30 * 86400
BoundedStr = Annotated[str, StringConstraints(max_length=4096)]

def brief_errors(e: ValidationError) -> str:
    """Where and what, per error: pydantic's own text echoes input values, which may be secrets."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'input'}: {err['msg']}" for err in e.errors())


Action = Literal["create", "update", "restart", "recreate", "remove"]
DESTRUCTIVE_ACTIONS = frozenset({"recreate", "remove"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- contract input and signals -------------------------------------------


class Change(_Model):
    target: BoundedStr
    action: Action
    summary: Annotated[BoundedStr, AfterValidator(redact_and_cap)] = ""


class Plan(_Model):
    module: BoundedStr
    source_sha: BoundedStr
    source_dirty: StrictBool = False
    exitCode: int | None = None  # the planner's own exit code; informational
    changes: list[Change] = Field(max_length=MAX_CHANGES)


class Approval(_Model):
    approved_sha: BoundedStr
    approved_pr: StrictInt | None = None  # strict: JSON true must not count as PR #1
    # Signed as given; redacted where it is recorded (audit, state, status).
    approved_by: BoundedStr | None = None
    allow_destructive: StrictBool = False
    expires_at: BoundedStr | None = None  # ISO-8601 UTC; part of what a signature covers
    plan_digest: BoundedStr | None = None  # policy.plan.plan_digest of the plan approved
    signature: BoundedStr | None = None  # hex HMAC-SHA256, when the worker has a key


class Rejection(_Model):
    reason: Annotated[BoundedStr, AfterValidator(redact_and_cap)] = ""
    rejected_by: Annotated[BoundedStr, AfterValidator(redact_and_cap)] = ""


class ApplyInput(_Model):
    plan: Plan
    approval: dict[str, Any] | None = None  # parsed by the workflow: a bad one is a mismatch
    approval_timeout_seconds: StrictInt = Field(default=86400, gt=0, le=MAX_APPROVAL_WAIT_S)


# ---- contract result ------------------------------------------------------


ProgressLine = Annotated[str, StringConstraints(pattern=rf"^{PROGRESS_LINE.pattern}$")]


class RemoteRecord(_Model):
    """What is kept of a command a host ran: typed facts and a fixed vocabulary, never
    its output, which may hold secrets in any shape (policy/remote_output.py)."""

    returncode: int | None
    duration_s: float
    error_class: ErrorClass | None = None  # why it failed; None when it succeeded
    progress: list[ProgressLine] = Field(default=[], max_length=MAX_PROGRESS)
    output_bytes: int = 0
    output_sha256: str | None = None


class HealthRecord(_Model):
    state: str
    health: str
    observed_s: float
    exit_code: int | None = None  # a stopped container's; None in records from before it was read


# ---- image snapshots (a host's `docker compose images --format json`) ------------

IMAGE_ID_PATTERN = r"^sha256:[0-9a-f]{64}$"
ImageId = Annotated[str, StringConstraints(pattern=IMAGE_ID_PATTERN)]
RollbackPolicy = Literal["image", "record"]


class ContainerImage(_Model):
    """One container of the service and the image it runs. The ID is validated,
    never redacted; the names are kept only when they look like docker's own."""

    container: str
    repository: str
    tag: str
    image_id: ImageId


class ImageSnapshot(_Model):
    """What the service's containers ran at one moment: empty when it ran none."""

    images: list[ContainerImage] = Field(default_factory=list, max_length=100)

    def image_ids(self) -> list[str]:
        return sorted({i.image_id for i in self.images})


class ImageRollback(_Model):
    """What the image rollback did: `restored` (back on `image_id` and healthy),
    `unhealthy` (back on it, not healthy), `failed` (the rollback command failed),
    or `skipped` (nothing to go back to; `error` says why)."""

    outcome: Literal["restored", "unhealthy", "failed", "skipped"]
    image_id: str | None = None
    healthy: bool | None = None
    health: HealthRecord | None = None
    remote: RemoteRecord | None = None
    error: RedactedText | None = None


class RollbackRecord(_Model):
    reason: RedactedText
    last_good_sha: str | None
    state_artifact: str | None
    # "image": the service was put back on the snapshot's image (see `image`);
    # "record": the failure was only recorded. Absent in applies before image rollback.
    action: RollbackPolicy = "record"
    image: ImageRollback | None = None


class RecordedResult(_Model):
    """An apply's result as the recording activities (persist_state, rollback) take it.

    Its status is any string: a worker still records the outcome of a newer
    workflow whose statuses it does not know yet.
    """

    status: str
    exitCode: int
    module: str | None = None
    host: str | None = None
    compose_service: str | None = None
    command: RedactedText | None = None
    remote: RemoteRecord | None = None
    health: HealthRecord | None = None
    state_artifact: str | None = None
    rollback: RollbackRecord | None = None
    error: RedactedText | None = None
    # False when the host opted out of verify_checkout: the SHA was not confirmed on the host.
    checkout_verified: bool | None = None
    # The images the service ran before compose up, and after a healthy apply.
    snapshot: ImageSnapshot | None = None
    images: ImageSnapshot | None = None


class ApplyResult(RecordedResult):
    """The contract result, as the workflow builds and returns it: one of the contract's statuses."""

    status: Status


# ---- configuration files --------------------------------------------------


class HealthConfig(_Model):
    stable_seconds: int = Field(default=30, ge=0, le=3600)
    timeout_seconds: int = Field(default=180, ge=1, le=3600)
    poll_seconds: int = Field(default=5, ge=1, le=300)

    @model_validator(mode="after")
    def _window_fits(self) -> HealthConfig:
        if self.stable_seconds >= self.timeout_seconds:
            raise ValueError("health.stable_seconds must be less than health.timeout_seconds")
        return self


class HostConfig(BaseModel):
    """One entry of hosts.yaml, the host allowlist."""

    model_config = ConfigDict(extra="forbid")

    name: str
    address: str
    port: int = Field(default=22, gt=0, lt=65536)
    user: str
    remote_root: str
    known_hosts: str = ""
    client_key: str = ""
    connect_timeout_seconds: float = Field(default=10, gt=0, le=120)
    # On by default: an apply records the approved SHA, so the host must hold it.
    verify_checkout: StrictBool = True
    # Opt-in: the host agent fetches and checks out the approved SHA before compose up.
    sync_checkout: StrictBool = False

    @model_validator(mode="after")
    def _sync_verifies(self) -> HostConfig:
        if self.sync_checkout and not self.verify_checkout:
            raise ValueError("sync_checkout needs verify_checkout: a synced checkout is checked at the approved SHA")
        return self


# ---- activity inputs and outputs ------------------------------------------


class ValidatePlanInput(_Model):
    plan: Plan
    plan_digest: str  # policy.plan.plan_digest of the plan as the apply received it


class ValidatedPlan(_Model):
    """Everything later steps need, read once from module.yaml."""

    module: str
    host: str
    compose_file: str
    compose_service: str
    up_timeout_seconds: int
    health: HealthConfig
    plan_digest: str
    has_changes: bool
    destructive: bool
    rollback: RollbackPolicy = "image"  # module.yaml, else policy.yaml's default


class CheckApprovalInput(_Model):
    plan: Plan
    approval: Approval
    plan_digest: str


class GuardComposePathInput(_Model):
    host: str
    compose_file: str


class GuardedPath(_Model):
    remote_root: str
    compose_path: str  # absolute; exactly the path compose will be given


class CheckHostInput(_Model):
    host: str
    guarded: GuardedPath
    compose_service: str


class Target(_Model):
    """Where and what to run, fixed before anything runs."""

    host: HostConfig
    compose_path: str
    compose_service: str
    command: str  # rendered compose up, for the operator and the result
    execute: bool  # the phase gate, read once so replays agree
    # Compose's project name (the compose file's folder): runs of one project never overlap.
    # Empty only in targets of applies started before it was added.
    project: str = ""
    # How long the server waits for a remote step's heartbeat before it retries the step
    # (the worker's PLATFORM_HEARTBEAT_TIMEOUT_SECONDS, read once so replays agree).
    heartbeat_timeout_seconds: int = 30


class VerifyCheckoutInput(_Model):
    target: Target
    approved_sha: str
    module: str  # the remote steps re-derive their target from the platform files by module
    reapply: bool = False  # a re-apply's child (it has a parent): it never syncs the checkout


class ComposeUpInput(_Model):
    target: Target
    timeout_seconds: int
    module: str
    source_sha: str
    approval: Approval  # compose up re-checks it: SHA, plan, expiry, and the signature when a key is set
    plan_digest: str | None = None  # None only from applies whose compose up was scheduled before it was sent
    poll_seconds: int | None = None  # the health poll, which renews the lease; None from before it was sent
    action: Action = "update"  # policy.plan.compose_action; "update" (plain `up -d`) from before it was sent
    reapply: bool = False  # a re-apply's child (it has a parent): it never syncs the checkout


class ComposeUpResult(_Model):
    executed: bool
    command: RedactedText
    timed_out: bool = False
    remote: RemoteRecord | None = None


class ComposePsInput(_Model):
    target: Target
    module: str


class ServiceObservation(_Model):
    state: str  # "" when compose reports no container
    health: str  # "" when the service has no healthcheck
    error: RedactedText | None = None  # why this poll saw nothing
    exit_code: int | None = None  # a stopped (exited or dead) container's
    restart_count: int | None = None  # the service's containers' restarts, summed (agent v3)
    retaken: bool = False  # the run's lease on the host had expired and was taken back
    lease_lost_to: str | None = Field(default=None, pattern=r"^[0-9a-f-]{36}$")  # the run that took it
    logs_kept: bool = False  # the host kept a failing container's last log lines for `platform-apply logs`


class SnapshotInput(_Model):
    target: Target
    module: str


class RollbackImagesInput(_Model):
    target: Target
    module: str
    image_id: ImageId
    timeout_seconds: int
    # An operator's request (RollbackRequest.approval_of), checked again right before the
    # pin (an apply's own rollback has none: it undoes what was approved).
    approval: Approval | None = None


class PersistStateInput(_Model):
    result: RecordedResult
    source_sha: str | None
    approved_pr: int | None
    plan_digest: str | None
    workflow_id: str
    run_id: str
    approved_by: RedactedText | None = None
    rejected_by: str | None = None
    # What a re-apply needs: the plan and the approval it was applied with.
    plan: Plan | None = None
    plan_raw: dict[str, Any] | None = None  # the plan as approved, whose plan_digest the approval names
    approval: Approval | None = None
    # From the workflow's start to this outcome (None from an apply started before it was sent).
    duration_s: float | None = None


class PersistedState(_Model):
    state_artifact: str | None


class RollbackInput(_Model):
    result: RecordedResult
    source_sha: str
    workflow_id: str
    run_id: str | None = None  # None only in inputs of applies started before it was added
    approved_pr: int | None = None
    approved_by: RedactedText | None = None
    plan_digest: str | None = None
    image: ImageRollback | None = None  # what the image rollback did, before this record
    policy: RollbackPolicy = "record"


class LockRequest(_Model):
    module: str  # the holder's module (for the operator); the lock itself is per project
    holder_workflow_id: str
    host: str = ""
    project: str = ""
    queue: list[str] = []  # waiters handed on by the previous holder, first in line first
    holder_hands_on: bool = False  # the lock returns its queue on release (LOCK_HAND_OVER_PATCH)


# The type a project's lock runs as (workflows/project_lock.py), for those that look it up.
PROJECT_LOCK_WORKFLOW = "ProjectLockWorkflow"


class LockHolderInput(_Model):
    lock_id: str


class LockHolder(_Model):
    """Who holds a lock id: this task queue's ProjectLockWorkflow, nobody any more, or a
    squatter (another workflow type, or a lock on a queue this platform does not poll)."""

    kind: Literal["ours", "none", "other_type", "other_queue"]


# ---- module state, kept in Temporal (workflows/module_state.py) ------------


class AppliedRecord(_Model):
    """The last successful apply of a module: what a re-apply applies again."""

    sha: str
    pr: int | None
    approved_by: RedactedText | None
    plan: Plan
    # The plan exactly as approved: a re-apply sends it again, so its digest still matches
    # the approval's plan_digest (None: recorded before approvals were bound to plans).
    plan_raw: dict[str, Any] | None = None
    approval: Approval  # as given: a re-apply sends it again, and its signature covers approved_by
    plan_digest: str | None
    workflow_id: str
    host: str | None
    compose_service: str | None
    at: str
    images: list[ContainerImage] = []  # what the service runs since: the module's last good images
    images_before: list[ContainerImage] = []
    seal: str | None = Field(default=None, max_length=64)  # policy/record_seal.py; None without a signing key


class FailedRecord(_Model):
    sha: str | None
    status: str
    error: str | None
    workflow_id: str
    at: str
    rollback: RollbackRecord | None = None


class PinRecord(_Model):
    """An operator's rollback put the module on older images: re-apply leaves it alone
    until the next approved apply."""

    sha: str | None  # the SHA whose images it runs now
    images: list[ContainerImage]
    by: RedactedText
    reason: str
    workflow_id: str
    at: str


class ModuleEvent(_Model):
    """One outcome that touched a host, as persist_state reports it."""

    module: str
    applied: AppliedRecord | None = None
    failed: FailedRecord | None = None
    pinned: PinRecord | None = None


class ModuleState(_Model):
    module: str
    last_applied: AppliedRecord | None = None
    previous_applied: AppliedRecord | None = None  # the successful apply before the last one
    pinned: PinRecord | None = None  # set by an operator's rollback, cleared by the next apply
    last_failure: FailedRecord | None = None  # only when newer than last_applied
    events: int = 0  # recorded since the entity started, across continue-as-new


# ---- ReapplyWorkflow ----------------------------------------------------------


class ReapplyInput(_Model):
    modules: list[BoundedStr] | None = Field(default=None, max_length=MAX_CHANGES)  # None: every recorded module
    max_parallel: int = Field(default=4, ge=1, le=64)


class PlanReapplyInput(_Model):
    modules: list[str] | None


class ReapplyCandidate(_Model):
    """A module as the platform files and its recorded state give it, read once."""

    module: str
    state: ModuleState | None
    host: str | None = None
    lane: str | None = None  # host/project: applies in one lane run one after another
    verify_checkout: bool = False
    problem: RedactedText | None = None  # the platform files do not give a target


ReapplyOutcome = Literal["applied", "failed", "skipped"]


class ReapplyEntry(_Model):
    module: str
    outcome: ReapplyOutcome
    reason: RedactedText | None = None
    drift: bool = False
    apply: dict[str, Any] | None = None  # the child's ApplyResult


class ReapplyResult(_Model):
    results: list[ReapplyEntry]


# ---- RollbackWorkflow (an operator's rollback) --------------------------------------

NonEmptyStr = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
NonEmptyText = Annotated[NonEmptyStr, AfterValidator(redact_and_cap)]


class RollbackRequest(_Model):
    """Put a module back on the images of the successful apply before the last one
    (`to_sha`, or that apply's SHA when null). With a signing key, `signature` signs
    it like an approval of `to_sha` with no PR."""

    module: BoundedStr
    to_sha: BoundedStr | None = None
    approved_by: NonEmptyStr  # signed as given; redacted where it is recorded
    reason: NonEmptyText
    expires_at: BoundedStr | None = None
    signature: BoundedStr | None = None

    def approval_of(self, sha: str) -> Approval:
        """What the signature signs: an approval of `sha` (that apply's) with no PR."""
        return Approval(
            approved_sha=sha, approved_pr=None, approved_by=self.approved_by,
            expires_at=self.expires_at, signature=self.signature,
        )


class PlanRollbackInput(_Model):
    request: RollbackRequest


class RollbackPlan(_Model):
    """Where and what an operator's rollback runs, read once."""

    plan: ValidatedPlan
    target: Target
    to_sha: str
    image_id: str
    images: list[ContainerImage]


class RollbackOutcome(_Model):
    """RollbackWorkflow's result: `rolled_back` (exit 9) when the host changed."""

    status: str
    exitCode: int
    module: str | None = None
    host: str | None = None
    compose_service: str | None = None
    to_sha: str | None = None
    image_id: str | None = None
    snapshot: ImageSnapshot | None = None  # the images before the rollback
    remote: RemoteRecord | None = None
    health: HealthRecord | None = None
    error: RedactedText | None = None


class RecordRollbackInput(_Model):
    request: RollbackRequest | None
    outcome: RollbackOutcome
    images: list[ContainerImage]  # what the service runs now, when the rollback changed it
    workflow_id: str
    run_id: str
