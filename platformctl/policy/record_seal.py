"""An operator's rollback: were the images it would pin recorded by a worker?

The images a rollback pins come from the module's state workflow, and anyone
who can reach the namespace can send it a `record` signal. A signed rollback
request covers the SHA, not the images, and old signatures can be read back
from history. So with a signing key, persist_state seals each successful
apply's record with that key (module, SHA, workflow, host, service and
images), and a rollback pins only images whose record carries a valid seal.

The sealed bytes start with a fixed label, never with `{` as an approval's
do, so a seal can never pass for an approval signature or the other way round.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from platformctl.models import AppliedRecord
from platformctl.outcomes import PolicyViolation

LABEL = b"platform-apply applied record v1\n"


def sealed_payload(module: str, record: AppliedRecord) -> bytes:
    fields = {
        "module": module,
        "sha": record.sha,
        "workflow_id": record.workflow_id,
        "host": record.host,
        "compose_service": record.compose_service,
        "images": [image.model_dump(mode="json") for image in record.images],
    }
    return LABEL + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def seal(key: bytes, module: str, record: AppliedRecord) -> str:
    return hmac.new(key, sealed_payload(module, record), hashlib.sha256).hexdigest()


def check_seal(key: bytes | None, module: str, record: AppliedRecord) -> None:
    """Without a key nothing is authenticated, so there is nothing to check."""
    if key is None:
        return
    what = f"module {module!r}: the recorded apply of {record.sha[:12]}"
    if record.seal is None:
        raise PolicyViolation(
            f"{what} carries no seal (recorded by an older worker, or while the signing key could not be read): "
            "with a signing key its images are not trusted; apply the SHA again to roll back to it"
        )
    if not hmac.compare_digest(record.seal.lower().encode(), seal(key, module, record).encode()):
        raise PolicyViolation(
            f"{what} is not sealed with this worker's signing key (the key was rotated since, or the record "
            "was not written by a worker): its images are not trusted"
        )
