"""`platform-apply sign`: print a signed approval object, for CI scripts.

The signature is platformctl.policy.approval.sign with the key of
PLATFORM_APPROVAL_KEY_FILE: the hex HMAC-SHA256 the worker checks.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from platformctl.cli.common import (
    EXIT_OK,
    approval_object,
    full_sha,
    iso_time,
    module_id,
    pr_number,
    signing_key,
    usage_error,
    with_signature,
)
from platformctl.config import Settings


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "sign",
        help="print a signed approval (key: PLATFORM_APPROVAL_KEY_FILE)",
        description="Print the approval JSON, with its `signature`, for MODULE at SHA and PR N.",
    )
    # A signature the worker could never accept (bad module id, short SHA, PR <= 0) is a usage error.
    p.add_argument("--module", required=True, metavar="M", type=module_id)
    p.add_argument("--sha", required=True, type=full_sha)
    p.add_argument("--pr", required=True, type=pr_number, metavar="N")
    p.add_argument("--by", metavar="NAME")
    p.add_argument("--allow-destructive", action="store_true")
    p.add_argument("--expires-at", metavar="T", type=iso_time)
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    key = signing_key(settings)
    if key is None:
        raise usage_error("PLATFORM_APPROVAL_KEY_FILE is not set: there is no key to sign with")
    approval = approval_object(args.sha, args.pr, args.by, args.allow_destructive, args.expires_at)
    print(json.dumps(with_signature(key, args.module, approval), separators=(",", ":")))
    return EXIT_OK
