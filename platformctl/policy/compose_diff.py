"""The planner's rules: interpolate a compose service as compose would, compare two, name the action.

Pure functions over parsed YAML and `.env` text (no git, no Temporal). Nothing here
returns a value from a compose file in a message: summaries name keys only, since
plans are signed and kept in Temporal history forever.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from platformctl.models import Action

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keys whose mapping entries a summary names one by one (list forms are normalized first).
MAPPING_KEYS = frozenset({"environment", "labels", "annotations", "sysctls"})
SUMMARY_MAX = 300
KEY_MAX = 64
NODES_MAX = 100_000  # an alias-bomb service (YAML anchors) expands no further than this


class ComposeError(ValueError):
    """The compose content cannot be read as compose would; the message holds no value from it."""


@dataclass
class Interpolation:
    """What interpolating one service needed: the variables that were unset with no default."""

    env: Mapping[str, str]
    unset: list[str] = field(default_factory=list)
    nodes: int = 0


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` closing the `${` whose body starts at `start` (nested `${` allowed)."""
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ComposeError("an unterminated ${ in a value")


def _braced(body: str, raw: str, ctx: Interpolation) -> str:
    """One `${...}` body, by compose's rules; `raw` (the whole `${...}`) stands in when unset."""
    name = NAME.match(body)
    if name is None:
        raise ComposeError("an invalid ${...} interpolation (no variable name)")
    var, rest = name.group(), body[name.end():]
    value = ctx.env.get(var)
    if rest == "":
        if value is None:
            ctx.unset.append(var)
            return raw
        return value
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(op):
            word = rest[len(op):]
            break
    else:
        raise ComposeError(f"an invalid ${{{var}...}} interpolation")
    empty_counts = op.startswith(":")  # `:-` etc. treat an empty value as unset
    present = value is not None and (value != "" or not empty_counts)
    if op in (":-", "-"):
        return value if present and value is not None else interpolate_text(word, ctx)
    if op in (":+", "+"):
        return interpolate_text(word, ctx) if present else ""
    # `?` and `:?`: compose refuses to run; CI cannot know the host's environment, so warn.
    if not present or value is None:
        ctx.unset.append(var)
        return raw
    return value


def interpolate_text(text: str, ctx: Interpolation) -> str:
    """`text` with `$VAR`, `${VAR...}` and `$$` resolved from `ctx.env`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_braced(text[i + 2:end], text[i:end + 1], ctx))
            i = end + 1
        elif (name := NAME.match(text, i + 1)) is not None:
            value = ctx.env.get(name.group())
            if value is None:
                ctx.unset.append(name.group())
                out.append(text[i:name.end()])
            else:
                out.append(value)
            i = name.end()
        else:  # a lone `$`: compose keeps it
            out.append(ch)
            i += 1
    return "".join(out)


def interpolate(node: Any, ctx: Interpolation) -> Any:
    """A copy of `node` with every string value interpolated (keys are not, as in compose)."""
    ctx.nodes += 1
    if ctx.nodes > NODES_MAX:
        raise ComposeError(f"the service expands to more than {NODES_MAX} YAML nodes")
    if isinstance(node, str):
        return interpolate_text(node, ctx)
    if isinstance(node, dict):
        return {k: interpolate(v, ctx) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, ctx) for v in node]
    return node


_DOTENV_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)")


def parse_dotenv(text: str) -> dict[str, str]:
    """A `.env` file as compose reads it: KEY=VALUE lines, `#` comments, quoted values
    (single: literal; double: escapes and interpolation from earlier lines; unquoted:
    interpolated, cut at ` #`)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        match = _DOTENV_LINE.fullmatch(line)
        if match is None or line.lstrip().startswith("#"):
            continue
        key, raw = match.group(1), match.group(2).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == "'":
            env[key] = raw[1:-1]
            continue
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        else:
            raw = re.split(r"\s#", raw, maxsplit=1)[0].rstrip()
        env[key] = interpolate_text(raw, Interpolation(env=env))  # unset ones stay as written
    return env


def service_of(document: Any, service: str) -> dict[str, Any] | None:
    """The service's mapping in a parsed compose file, or None when it has none."""
    if document is None:
        return None
    if not isinstance(document, dict):
        raise ComposeError("the compose file is not a mapping")
    services = document.get("services")
    if services is None:
        return None
    if not isinstance(services, dict):
        raise ComposeError("`services` is not a mapping")
    if service not in services:
        return None
    body = services[service]
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ComposeError(f"service {service!r} is not a mapping")
    return body


def _as_mapping(value: Any) -> Any:
    """A compose list form (`["A=1", "B"]`) as the mapping it means; other values unchanged."""
    if not isinstance(value, list):
        return value
    mapping: dict[str, Any] = {}
    for item in value:
        if not isinstance(item, str):
            return value
        key, sep, rest = item.partition("=")
        mapping[key] = rest if sep else None
    return mapping


def _key_name(key: object) -> str:
    """A key as a summary shows it: printable, bounded (keys come from the file too)."""
    text = "".join(c if c.isprintable() and not c.isspace() else "?" for c in str(key))
    return text if len(text) <= KEY_MAX else text[: KEY_MAX - 3] + "..."


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The service keys whose resolved values differ, with mapping entries as `key.ENTRY`."""
    names: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        before, after = old.get(key), new.get(key)
        if key in old and key in new and before == after:
            continue
        if key in MAPPING_KEYS:
            before, after = _as_mapping(before), _as_mapping(after)
            if isinstance(before, dict | type(None)) and isinstance(after, dict | type(None)):
                b, a = before or {}, after or {}
                entries = [e for e in sorted(set(b) | set(a), key=str) if e not in b or e not in a or b[e] != a[e]]
                if entries or (key in old) != (key in new):
                    names.extend(f"{_key_name(key)}.{_key_name(e)}" for e in entries)
                    if not entries:
                        names.append(_key_name(key))
                continue
        names.append(_key_name(key))
    return names


def _in_repo(compose_dir: str, source: str) -> str | None:
    """`source` (relative to the compose file) as a repository path; None when it leaves the repository."""
    path = posixpath.normpath(posixpath.join(compose_dir, source))
    return None if path == ".." or path.startswith(("../", "/")) else path


def bind_sources(service: Mapping[str, Any], compose_dir: str) -> list[str]:
    """Repository paths (relative to the repo root) of the service's relative bind mounts;
    a source that leaves the repository, or an absolute one, is not the repository's."""
    volumes = service.get("volumes")
    if not isinstance(volumes, list):
        return []
    sources: list[str] = []
    for volume in volumes:
        if isinstance(volume, str):
            source = volume.split(":", 1)[0] if ":" in volume else ""
        elif isinstance(volume, dict) and volume.get("type", "bind") == "bind":
            source = str(volume.get("source") or "")
        else:
            continue
        if not source.startswith("."):  # compose: a relative bind source starts with `.`
            continue
        if (path := _in_repo(compose_dir, source)) is not None:
            sources.append(path)
    return sorted(set(sources))


def env_files(service: Mapping[str, Any], compose_dir: str) -> list[str]:
    """Repository paths of the service's `env_file` entries: their content is part of its
    configuration (compose recreates the container when it changes)."""
    entries = service.get("env_file")
    items = entries if isinstance(entries, list) else [entries]
    paths = []
    for item in items:
        source = item.get("path") if isinstance(item, dict) else item
        if isinstance(source, str) and source and not source.startswith(("/", "~")):
            if (path := _in_repo(compose_dir, source)) is not None:
                paths.append(path)
    return sorted(set(paths))


def capped(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 3] + "..."


def decide(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    bind_files_changed: int,
    recreate: bool,
    env_files_changed: int = 0,
) -> tuple[Action, str] | None:
    """The one change a plan carries for the service between two resolved versions, or None.
    `*_files_changed` count repository files that differ between the two commits."""
    if old is None and new is None:
        return None
    if old is None:
        return "create", "create: service added"
    if new is None:
        return "remove", "remove: service no longer in the compose file"
    keys = changed_keys(old, new)
    if env_files_changed and "env_file" not in keys:
        keys.append("env_file (content)")
    if keys:
        action: Action = "recreate" if recreate else "update"
        return action, capped(f"{action}: " + ", ".join(keys))
    if bind_files_changed:
        action = "recreate" if recreate else "restart"
        files = "file" if bind_files_changed == 1 else "files"
        return action, capped(f"{action}: {bind_files_changed} bind-mounted repository {files} changed (volumes)")
    if recreate:
        return "recreate", "recreate: requested (--recreate), configuration unchanged"
    return None
