#!/bin/sh
# Apply a merged PR's plan: start it approved with the PR number and merge SHA, wait for the outcome.
#
#   examples/ci/apply.sh PLAN.json MERGE_SHA PR_NUMBER
#
# Reads what platform-apply reads (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, PLATFORM_TASK_QUEUE,
# TEMPORAL_API_KEY or TEMPORAL_TLS_*, PLATFORM_APPROVAL_KEY_FILE to sign the approval), plus
# PLATFORM_APPLY (the command, default platform-apply on PATH) and APPROVED_BY (default ci).
# Exits 0 when the change was applied (9) or there was nothing to apply (0, also a dry run);
# otherwise with platform-apply's own code (2 tool error or server unreachable, 3 blocked,
# 4 remote failed or unhealthy, 5 approval refused, rejected or cancelled, 6 destructive).
set -u

if [ "$#" -ne 3 ]; then
  echo "usage: $0 PLAN.json MERGE_SHA PR_NUMBER" >&2
  exit 64
fi

"${PLATFORM_APPLY:-platform-apply}" apply "$1" \
  --approve-sha "$2" --approve-pr "$3" --approved-by "${APPROVED_BY:-ci}"
code=$?

case "$code" in
  0 | 9) exit 0 ;;
  *)
    echo "platform-apply exited $code: the change was not applied" >&2
    exit "$code"
    ;;
esac
