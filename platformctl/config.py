"""Settings from the environment and the platform's files (read fresh per apply).

A missing or broken file raises ToolError (our side is misconfigured); a file
that parses but asks for something unsafe raises PolicyViolation.
"""

from __future__ import annotations

import copy
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from temporalio.envconfig import ClientConfigProfile

from platformctl.commands import SERVICE_NAME
from platformctl.models import HealthConfig, HostConfig, RollbackPolicy, brief_errors
from platformctl.outcomes import PolicyViolation, ToolError
from platformctl.policy.hosts import is_inline_pin

MODULE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
OPEN_PHASE = "05"
# Above the worker's 2 s heartbeat throttle with room to spare; at most 10 minutes
# before a lost worker's remote step is retried elsewhere.
HEARTBEAT_TIMEOUT_S, HEARTBEAT_TIMEOUT_BOUNDS = 30, (5, 600)
# A module file that parses but asks for more than the contract's bounds is
# refused as policy (blocked); one that does not parse is our own tool_error.
_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "value_error"})
DEFAULT_SACRED_PATHS = (".env", ".git/", "secrets/", "/etc/", "/root/")
# libyaml's safe loader where PyYAML was built with it (same documents, C speed).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_TEMPORAL_ADDRESS, DEFAULT_NAMESPACE = "localhost:7233", "default"
# Our names from before temporalio.envconfig, still read (with a notice) as the standard
# name they stand for, which the temporal CLI reads too.
DEPRECATED_TEMPORAL_NAMES = {
    "TEMPORAL_TLS_CERT": "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_KEY": "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_CA": "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
}


@dataclass(frozen=True)
class TemporalConnection:
    """The connection beyond address and namespace (TLS, API key, gRPC headers) as
    temporalio.envconfig resolved it, and notices to show once (deprecated names used)."""

    profile: ClientConfigProfile = field(default_factory=ClientConfigProfile)
    notices: tuple[str, ...] = ()

    @property
    def tls(self) -> bool:
        """What the SDK turns TLS on for: a TLS setting not disabled, or an API key."""
        tls = self.profile.tls
        return tls.disabled is not True if tls is not None else self.profile.api_key is not None


@dataclass(frozen=True)
class Settings:
    temporal_address: str
    namespace: str
    task_queue: str
    platform_root: Path
    state_dir: Path
    phase: str
    approval_key_file: Path | None = None  # PLATFORM_APPROVAL_KEY_FILE: only signed approvals count
    heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_S  # PLATFORM_HEARTBEAT_TIMEOUT_SECONDS
    # Not in repr: it may hold an API key. The default (plain, no TLS) is for settings built by hand.
    temporal: TemporalConnection = field(default_factory=TemporalConnection, repr=False, compare=False)

    @property
    def execute_remote(self) -> bool:
        return self.phase == OPEN_PHASE

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        root = Path(env.get("PLATFORM_ROOT") or os.getcwd()).resolve()
        state = Path(env.get("PLATFORM_STATE_DIR") or root / ".platform" / "state")
        temporal = temporal_connection(env)
        return cls(
            temporal_address=temporal.profile.address or DEFAULT_TEMPORAL_ADDRESS,
            namespace=temporal.profile.namespace or DEFAULT_NAMESPACE,
            task_queue=env.get("PLATFORM_TASK_QUEUE") or "platform-apply",
            platform_root=root,
            state_dir=state.resolve(),
            phase=env.get("PLATFORMCTL_PHASE", ""),
            approval_key_file=(
                Path(env["PLATFORM_APPROVAL_KEY_FILE"]) if env.get("PLATFORM_APPROVAL_KEY_FILE") else None
            ),
            heartbeat_timeout_seconds=_bounded_seconds(
                env, "PLATFORM_HEARTBEAT_TIMEOUT_SECONDS", HEARTBEAT_TIMEOUT_S, HEARTBEAT_TIMEOUT_BOUNDS
            ),
            temporal=temporal,
        )

    def approval_key(self) -> bytes | None:
        """Read fresh for every check, so a rotated key needs no restart."""
        if self.approval_key_file is None:
            return None
        try:
            key = self.approval_key_file.read_bytes().strip()
        except OSError as e:
            raise ToolError(f"cannot read PLATFORM_APPROVAL_KEY_FILE: {e.strerror}") from None
        if len(key) < 16:
            raise ToolError("PLATFORM_APPROVAL_KEY_FILE holds fewer than 16 bytes: not a usable signing key")
        return key


def temporal_connection(env: Mapping[str, str]) -> TemporalConnection:
    """The Temporal client settings as the temporal CLI reads them (temporalio.envconfig:
    the profile TEMPORAL_PROFILE names in TEMPORAL_CONFIG_FILE or the default temporal.toml,
    each TEMPORAL_* variable over it), or a ValueError naming what is wrong."""
    variables, notices = _standard_temporal_names(env)
    try:
        profile = ClientConfigProfile.load(override_env_vars=variables)
    except RuntimeError as e:  # the SDK's ConfigError: no such profile, TOML syntax, _PATH and _DATA both set
        where = ", ".join(f"{n}={variables[n]}" for n in ("TEMPORAL_CONFIG_FILE", "TEMPORAL_PROFILE") if n in variables)
        why = " ".join(str(e).split())
        raise ValueError(f"Temporal client configuration{f' ({where})' if where else ''}: {why}") from None
    tls = profile.tls
    if tls is not None and (tls.client_cert is None) != (tls.client_private_key is None):
        raise ValueError("a Temporal client certificate needs its key and a key its certificate: set both "
                         "TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH (or the profile's tls)")
    if variables.get("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "").lower() in ("true", "1"):
        # The temporal CLI honours it; the Python SDK has no such option.
        notices.append("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is ignored: the Temporal Python SDK always verifies "
                       "the server's certificate (set TEMPORAL_TLS_SERVER_NAME to the name it holds)")
    return TemporalConnection(profile, tuple(notices))


def _standard_temporal_names(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The TEMPORAL_* variables envconfig reads, each deprecated name under its standard one.
    An empty variable counts as unset, as it always has here (the temporal CLI reads an
    empty namespace as the default too), but for a gRPC header, where empty removes it."""
    variables = {
        k: v for k, v in env.items() if k.startswith("TEMPORAL_") and (v or k.startswith("TEMPORAL_GRPC_META_"))
    }
    renamed: list[str] = []
    for old, new in DEPRECATED_TEMPORAL_NAMES.items():
        value = variables.pop(old, None)
        if value is None:
            continue
        data = new.removesuffix("_PATH") + "_DATA"
        if data in variables:
            raise ValueError(f"{old} and {data} are both set: set only {data} ({old} is deprecated)")
        if new in variables and os.path.abspath(variables[new]) != os.path.abspath(value):
            raise ValueError(f"{old} ({value}) and {new} ({variables[new]}) name different files: "
                             f"set only {new} ({old} is its deprecated name)")
        variables[new] = value
        renamed.append(f"{old} is now {new}")
    notices = [f"deprecated: {', '.join(renamed)} (the names the temporal CLI reads; the old ones still work "
               "for now)"] if renamed else []
    return variables, notices


def _bounded_seconds(env: dict[str, str], name: str, default: int, bounds: tuple[int, int]) -> int:
    """A whole number of seconds from `env`, or a ValueError that names the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    low, high = bounds
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"{name} must be a whole number of seconds from {low} to {high}, not {raw[:40]!r}")
    return int(raw)


class _Runtime(BaseModel):
    model_config = ConfigDict(extra="forbid")
    orchestrator: str
    compose_file: str
    compose_service: str | None = None
    up_timeout_seconds: int = Field(default=300, ge=1, le=3600)


# Each poll costs history events: a health check and its rollback's must stay far from
# Temporal's 51,200-event limit, which the field bounds alone allow passing.
MAX_HEALTH_POLLS = 360


class _ModuleSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    runtime: _Runtime
    health: HealthConfig = HealthConfig()
    rollback: RollbackPolicy | None = None  # None: policy.yaml's default

    @model_validator(mode="after")
    def _polls_fit(self) -> _ModuleSpec:
        if self.health.timeout_seconds > MAX_HEALTH_POLLS * self.health.poll_seconds:
            raise ValueError(
                f"health.timeout_seconds / health.poll_seconds must be at most {MAX_HEALTH_POLLS} "
                "(raise poll_seconds or lower timeout_seconds)"
            )
        return self


class ModuleFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    host: str
    spec: _ModuleSpec

    @property
    def compose_service(self) -> str:
        return self.spec.runtime.compose_service or self.id


# Platform files as last parsed, by path, with the bytes they were parsed from. Every
# remote step reads them again (they may change under a running apply), and parsing
# them was the worker's largest own cost in a fan-out. A file is parsed again whenever
# its bytes differ, so no change is missed, however quick or same-sized.
_PARSED: OrderedDict[Path, tuple[bytes, Any]] = OrderedDict()
_PARSED_MAX = 256
_PARSED_MAX_BYTES = 256 * 1024  # a larger file is parsed each time rather than kept
_parsed_lock = threading.Lock()  # activities read them from several threads


def _read_yaml(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ToolError(f"cannot read {path.name}: {e.strerror}") from None
    with _parsed_lock:
        cached = _PARSED.get(path)
        if cached is not None:
            _PARSED.move_to_end(path)
    if cached is None or cached[0] != data:
        try:
            cached = (data, yaml.load(data.decode("utf-8"), Loader=_SAFE_LOADER))
        except UnicodeDecodeError as e:
            raise ToolError(f"{path.name} is not UTF-8: {e.reason} at byte {e.start}") from None
        except yaml.YAMLError as e:
            raise ToolError(f"{path.name} is not valid YAML: {e}") from None
        if len(data) <= _PARSED_MAX_BYTES:
            with _parsed_lock:
                _PARSED[path] = cached
                _PARSED.move_to_end(path)
                if len(_PARSED) > _PARSED_MAX:
                    _PARSED.popitem(last=False)
    return copy.deepcopy(cached[1])  # the caller's to change


def load_module(root: Path, module_id: str) -> ModuleFile:
    if not MODULE_ID.fullmatch(module_id):
        raise PolicyViolation(f"invalid module id {module_id!r}: must match {MODULE_ID.pattern}")
    path = root / "modules" / module_id / "module.yaml"
    if not path.is_file():
        raise PolicyViolation(f"unknown module {module_id!r}: no modules/{module_id}/module.yaml")
    try:
        module = ModuleFile.model_validate(_read_yaml(path))
    except ValidationError as e:
        if any(err["type"] in _BOUND_ERRORS for err in e.errors()):
            raise PolicyViolation(f"modules/{module_id}/module.yaml is past a bound: {brief_errors(e)}") from None
        raise ToolError(f"modules/{module_id}/module.yaml is invalid: {brief_errors(e)}") from None
    if module.id != module_id:
        raise PolicyViolation(f"modules/{module_id}/module.yaml declares id {module.id!r}: id and folder must agree")
    if module.spec.runtime.orchestrator != "docker-compose":
        raise PolicyViolation(
            f"module {module_id!r} uses orchestrator {module.spec.runtime.orchestrator!r}, not docker-compose"
        )
    if not SERVICE_NAME.fullmatch(module.compose_service):
        raise PolicyViolation(
            f"invalid compose service name {module.compose_service!r}: must match {SERVICE_NAME.pattern}"
        )
    return module


def load_hosts(root: Path) -> dict[str, HostConfig]:
    data = _read_yaml(root / "hosts.yaml")
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), dict):
        raise ToolError("hosts.yaml must be a mapping with a 'hosts' mapping")
    hosts = {}
    for name, entry in data["hosts"].items():
        if not isinstance(entry, dict):
            raise ToolError(f"hosts.yaml: host {name!r} must be a mapping")
        try:
            host = HostConfig.model_validate({**entry, "name": str(name)})
        except ValidationError as e:
            raise ToolError(f"hosts.yaml: host {name!r} is invalid: {brief_errors(e)}") from None
        hosts[str(name)] = _files_under(root, host)
    return hosts


def _files_under(root: Path, host: HostConfig) -> HostConfig:
    """Relative key and known_hosts file paths name files beside hosts.yaml, not
    wherever the worker happens to run."""

    def resolved(path: str) -> str:
        return path if not path or path.startswith(("/", "~")) else str(root / path)

    known_hosts = host.known_hosts if is_inline_pin(host.known_hosts) else resolved(host.known_hosts.strip())
    return host.model_copy(update={"client_key": resolved(host.client_key), "known_hosts": known_hosts})


def _read_policy(root: Path) -> dict[str, Any]:
    path = root / "policy.yaml"
    if not path.exists():
        return {}
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ToolError("policy.yaml must be a mapping")
    return data


def load_sacred_paths(root: Path) -> tuple[str, ...]:
    """The defaults always hold; policy.yaml can only add to them."""
    paths = _read_policy(root).get("sacred_paths") or []
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise ToolError("policy.yaml: sacred_paths must be a list of non-empty strings")
    return DEFAULT_SACRED_PATHS + tuple(paths)


def load_rollback_policy(root: Path, module: ModuleFile) -> RollbackPolicy:
    """The module's `spec.rollback`, else policy.yaml's `rollback`, else image."""
    if module.spec.rollback is not None:
        return module.spec.rollback
    default = _read_policy(root).get("rollback", "image")
    if default not in ("image", "record"):
        raise ToolError("policy.yaml: rollback must be image or record")
    return "image" if default == "image" else "record"
