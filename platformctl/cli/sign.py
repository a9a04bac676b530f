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
    iso_time,
    pr_number,
    signing_key,
    usage_error,
    with_signature,
)
from platformctl.cli.plan_binding import add_plan_arguments, approved_plan
from platformctl.config import Settings


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "sign",
        help="print a signed approval (key: PLATFORM_APPROVAL_KEY_FILE)",
        description="Print the approval JSON, with its `signature`, of the plan in PLAN.json (or of "
        "--module, --sha and --plan-digest) and PR N.",
    )
    # A signature the worker could never accept (bad module id, short SHA, PR <= 0) is a usage error.
    add_plan_arguments(p)
    p.add_argument("--pr", required=True, type=pr_number, metavar="N")
    p.add_argument("--by", metavar="NAME")
    p.add_argument("--allow-destructive", action="store_true")
    p.add_argument("--expires-at", metavar="T", type=iso_time)
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    key = signing_key(settings)
    if key is None:
        raise usage_error("PLATFORM_APPROVAL_KEY_FILE is not set: there is no key to sign with")
    module, sha, digest = approved_plan(args)
    approval = approval_object(sha, args.pr, args.by, args.allow_destructive, args.expires_at, digest)
    print(json.dumps(with_signature(key, module, approval), separators=(",", ":")))
    return EXIT_OK
