"""`platform-apply plan MODULE`: the contract's plan JSON, from git, for CI.

Compares the module's compose service at the base (the SHA it last applied, from its
module state in Temporal, or --base) with the target (--sha, default HEAD), each read
from its commit with git, never from the working tree. It never connects to a host.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from platformctl.cli.common import EXIT_OK, EXIT_UNREACHABLE, CliError, connect_client, module_id, usage_error
from platformctl.config import ModuleFile, Settings, load_module
from platformctl.models import Plan
from platformctl.module_state import read_state
from platformctl.outcomes import PolicyViolation, ToolError
from platformctl.policy import compose_diff
from platformctl.policy.compose_diff import ComposeError, Interpolation
from platformctl.policy.plan import COMPOSE_SERVICE_TARGET, SHA, validate_plan

COMPOSE_MAX_BYTES = 4 * 1024 * 1024
DOTENV_MAX_BYTES = 1024 * 1024
GIT_TIMEOUT_S = 30
QUERY_TIMEOUT = timedelta(seconds=5)
REV = re.compile(r"[0-9a-f]{7,40}")  # hex only: nothing git could read as an option or a revision expression
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "plan",
        help="write the plan JSON of MODULE from git (run in CI, in a checkout of the platform repository)",
        description="Compare MODULE's compose service between the SHA it last applied (its module state "
        "in Temporal, or --base) and HEAD (or --sha), and print the plan JSON. Exits 0 whenever it wrote "
        "a plan (the plan's exitCode says whether anything changes).",
    )
    p.add_argument("module", type=module_id, metavar="MODULE")
    p.add_argument("--base", type=_rev, metavar="SHA", help="compare against this commit, not the module state")
    p.add_argument("--sha", type=_rev, metavar="SHA", help="plan this commit (default HEAD)")
    p.add_argument("--recreate", action="store_true", help="force a recreate of the service")
    p.add_argument("--output", metavar="FILE", type=Path, help="write the plan there instead of stdout")
    p.set_defaults(run=run)


def _rev(value: str) -> str:
    if not REV.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a commit SHA (7 to 40 lowercase hex digits): {value[:60]!r}")
    return value


@dataclass(frozen=True)
class Repo:
    root: Path

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return _git(self.root, *args, check=check)

    def commit(self, rev: str, what: str) -> str:
        done = self.git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        if done.returncode != 0:
            raise usage_error(
                f"{what} {rev} is not a commit of this repository (a shallow clone lacks history: fetch it, "
                "e.g. fetch-depth: 0)"
            )
        return done.stdout.decode().strip()

    def blob(self, sha: str, path: str, limit: int) -> bytes | None:
        """The file at `path` in commit `sha`, or None when it has none."""
        spec = f"{sha}:{path}"
        if self.git("cat-file", "-e", spec, check=False).returncode != 0:
            return None
        size = int(self.git("cat-file", "-s", spec).stdout.decode().strip() or 0)
        if size > limit:
            raise usage_error(f"{path} at {sha[:12]} is {size} bytes, over the {limit}-byte bound")
        return self.git("cat-file", "blob", spec).stdout


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """git, bounded; git missing or failing is a tool error (exit 2), its output never shown raw."""
    try:
        done = subprocess.run(
            ["git", "-c", "core.quotepath=off", *args], cwd=cwd, capture_output=True, timeout=GIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL, check=False,
        )
    except FileNotFoundError:
        raise CliError(EXIT_UNREACHABLE, "git is not installed (or not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise CliError(EXIT_UNREACHABLE, f"git {args[0]} did not finish within {GIT_TIMEOUT_S} s") from None
    if check and done.returncode != 0:
        why = " ".join(done.stderr.decode(errors="replace").split())[:200]
        raise CliError(EXIT_UNREACHABLE, f"git {args[0]} failed (exit {done.returncode}): {why}")
    return done


def find_repo(platform_root: Path) -> Repo:
    if not platform_root.is_dir():
        raise usage_error(f"PLATFORM_ROOT {platform_root} is not a directory")
    done = _git(platform_root, "rev-parse", "--show-toplevel", check=False)
    if done.returncode != 0:
        raise usage_error(f"PLATFORM_ROOT {platform_root} is not in a git repository: plan runs in a checkout")
    return Repo(Path(done.stdout.decode().strip()))


def repo_path(compose_file: str) -> str:
    """The module's compose_file (relative to remote_root, a checkout of this repository) as a repo path."""
    path = posixpath.normpath(compose_file)
    if (
        compose_file.startswith(("/", "~")) or path == ".." or path.startswith("../")
        or not path.endswith((".yml", ".yaml")) or any(not c.isprintable() for c in path)
    ):
        raise usage_error("compose_file must be a relative .yml/.yaml path inside the repository")
    return path


@dataclass
class Side:
    """The service as one commit gives it, resolved; `present` says whether the compose file exists."""

    present: bool
    service: dict[str, Any] | None
    unset: list[str]


def read_side(repo: Repo, sha: str, compose: str, service: str) -> Side:
    data = repo.blob(sha, compose, COMPOSE_MAX_BYTES)
    if data is None:
        return Side(False, None, [])
    where = f"{compose} at {sha[:12]}"
    try:
        document = yaml.load(data.decode("utf-8"), Loader=_SAFE_LOADER)
    except UnicodeDecodeError:
        raise usage_error(f"{where} is not UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise usage_error(f"{where} is not valid YAML{line}") from None  # the parser's text may quote the file
    dotenv = repo.blob(sha, posixpath.join(posixpath.dirname(compose), ".env"), DOTENV_MAX_BYTES)
    ctx = Interpolation(env=compose_diff.parse_dotenv(dotenv.decode("utf-8", errors="replace")) if dotenv else {})
    try:
        body = compose_diff.service_of(document, service)
        resolved = compose_diff.interpolate(body, ctx) if body is not None else None
    except ComposeError as e:
        raise usage_error(f"{where}: {e}") from None
    except RecursionError:
        raise usage_error(f"{where}: service {service!r} is nested too deeply") from None
    return Side(True, resolved, sorted(set(ctx.unset)))


async def recorded_base(settings: Settings, module: str) -> str | None:
    """The SHA the module last applied, from its state workflow; None when it has none."""
    state = await read_state(await connect_client(settings), settings.task_queue, module, QUERY_TIMEOUT)
    if state is None or state.last_applied is None:
        return None
    sha = str(state.last_applied.sha)
    if not SHA.fullmatch(sha):  # workflow state is anyone's to write: never hand git more
        raise CliError(EXIT_UNREACHABLE, f"the module state of {module} holds a last applied SHA that is not one")
    return sha


def files_changed(repo: Repo, base: str, target: str, paths: list[str]) -> int:
    """How many repository files under `paths` differ between the two commits."""
    if not paths or base == target:
        return 0
    # :(literal): a path is a path, never a glob or other pathspec magic.
    diff = repo.git("diff", "--name-only", "-z", base, target, "--", *(f":(literal){p}" for p in paths))
    return len([name for name in diff.stdout.split(b"\0") if name])


def warn(message: str) -> None:
    print(f"platform-apply: warning: {message}", file=sys.stderr)


def module_file(settings: Settings, module: str) -> ModuleFile:
    """The module's file: an unknown or invalid module is a usage error (64), before any server is asked."""
    try:
        return load_module(settings.platform_root, module)
    except PolicyViolation as e:
        raise usage_error(str(e)) from None
    except ToolError as e:
        raise CliError(EXIT_UNREACHABLE, str(e)) from None


def make_plan(args: argparse.Namespace, module: ModuleFile, base: str | None, repo: Repo) -> dict[str, Any]:
    service = module.compose_service
    compose = repo_path(module.spec.runtime.compose_file)
    head = repo.commit("HEAD", "HEAD")
    target = repo.commit(args.sha, "--sha") if args.sha else head
    new = read_side(repo, target, compose, service)
    old = read_side(repo, base, compose, service) if base is not None else Side(False, None, [])
    if not new.present and not old.present:
        raise usage_error(f"{compose} (module {args.module}) is in neither the target nor the base commit")
    if base is None and new.service is None:
        raise usage_error(f"service {service!r} is not in {compose} at {target[:12]} and was never applied")
    binds = env_files = 0
    if base is not None and old.service is not None and new.service is not None:
        here = posixpath.dirname(compose)
        binds = files_changed(repo, base, target, compose_diff.bind_sources(new.service, here))
        env_files = files_changed(repo, base, target, compose_diff.env_files(new.service, here))
    decided = compose_diff.decide(old.service, new.service, binds, args.recreate, env_files)
    for name in new.unset:
        warn(
            f"variable {name} is unset at {target[:12]} ({posixpath.dirname(compose) or '.'}/.env) and has no "
            "default: planned with the text as written (the host's environment may set it)"
        )
    changes = []
    if decided is not None:
        action, summary = decided
        if new.unset:
            summary = compose_diff.capped(f"{summary}; unset on CI: {', '.join(new.unset)}")
        changes.append({"target": COMPOSE_SERVICE_TARGET + service, "action": action, "summary": summary})
    dirty = False
    if target == head:
        dirty = bool(repo.git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        if dirty:
            warn("the working tree has uncommitted changes to tracked files: the worker refuses a dirty plan")
    plan = {
        "module": args.module, "source_sha": target, "source_dirty": dirty,
        "exitCode": 1 if changes else 0, "changes": changes,
    }
    # Our own output must be what the worker accepts (dirtiness aside, which it refuses on purpose).
    validate_plan(Plan.model_validate({**plan, "source_dirty": False}), service)
    return plan


async def run(args: argparse.Namespace, settings: Settings) -> int:
    repo = find_repo(settings.platform_root)
    base = repo.commit(args.base, "--base") if args.base else None
    module = module_file(settings, args.module)
    if base is None:
        recorded = await recorded_base(settings, args.module)
        base = repo.commit(recorded, "the last applied SHA (module state)") if recorded else None
    plan = make_plan(args, module, base, repo)
    text = json.dumps(plan, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            tmp = args.output.with_name(args.output.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, args.output)
        except OSError as e:
            raise CliError(EXIT_UNREACHABLE, f"cannot write {args.output}: {e.strerror}") from None
    return EXIT_OK
