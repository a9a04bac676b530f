"""An instant host for the benchmarks: `docker` and `git` as two small POSIX sh
programs in place of the Python stand-ins (tests/stand_in/), whose own start
(~35 ms a call) is not what the benchmarks measure.

They keep the stand-ins' contract that the bench reads back: every call is one
JSON line in $STAND_IN_DIR/calls.jsonl; `up -d` sleeps 1 s when the service's
behaviour is `slow ...` and records {file, service, start, end} in
spans.jsonl; `ps` says running and healthy; `images` lists one fixed image
ID; `config` names the file's folder and services; `git rev-parse HEAD`
prints $STAND_IN_DIR/head_sha and `git status` nothing. Arguments are the
bench's own (paths, service names): no quoting beyond that is needed.
"""

from __future__ import annotations

from pathlib import Path

from tests.sshd import SshHost

IMAGE_ID = "sha256:" + "1" * 64

DOCKER = r"""#!/bin/sh
d=$STAND_IN_DIR
line='["docker"'
for a in "$@"; do line="$line, \"$a\""; svc=$a; done
echo "$line]" >> "$d/calls.jsonl"
case "$4" in
up)
    start=$(date +%s.%N)
    mode=$(cat "$d/behaviour/$svc" 2>/dev/null)
    case "$mode" in slow*) sleep 1 ;; esac
    echo "{\"file\": \"$3\", \"service\": \"$svc\", \"start\": $start, \"end\": $(date +%s.%N)}" >> "$d/spans.jsonl"
    ;;
ps)
    echo "{\"Name\": \"p-$svc-1\", \"Service\": \"$svc\", \"State\": \"running\", \"Health\": \"healthy\"}"
    ;;
images)
    echo "[{\"ID\":\"IMAGE_ID\",\"ContainerName\":\"p-$svc-1\",\"Repository\":\"example/$svc\",\"Tag\":\"latest\"}]"
    ;;
config)
    # What the agent reads before `up`: the project (the file's folder) and its services.
    svcs=$(sed -n 's/^  \([A-Za-z0-9_.-]*\):.*/"\1": {}/p' "$3" | paste -sd, -)
    echo "{\"name\": \"$(basename "$(dirname "$3")")\", \"services\": {$svcs}}"
    ;;
*)
    exit 125
    ;;
esac
""".replace("IMAGE_ID", IMAGE_ID)

GIT = r"""#!/bin/sh
echo "[\"git\", \"$1\", \"$2\", \"$3\", \"$4\"]" >> "$STAND_IN_DIR/calls.jsonl"
# rev-parse HEAD prints the head; status --porcelain, nothing: a checkout with no local edits.
[ "$3" != rev-parse ] || cat "$STAND_IN_DIR/head_sha"
"""


def make_instant(sshd: SshHost) -> None:
    for name, text in (("docker", DOCKER), ("git", GIT)):
        program = Path(sshd.bin_dir, name)
        program.unlink()
        program.write_text(text)
        program.chmod(0o755)
