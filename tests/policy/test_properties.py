"""Property tests (hypothesis) for three safety rules.

1. `guard_compose_path`: nothing it accepts resolves outside remote_root or at
   or under a sacred path, and what it accepts is what `compose_up` will run.
2. `validate_plan`: a change target is accepted only when it is exactly
   `compose.service.<service>`; every other spelling is refused.
3. `redact`: a secret of every shape the module supports is gone wherever it
   is embedded, and image digests and git SHAs come through unchanged.

Each oracle below is written from the rule, not from the code under test
(posixpath arithmetic for paths, `!=` for targets, substring checks for
secrets), so a weakened guard or redactor fails here.

Failures print a `@reproduce_failure` blob to replay them with. The example
database is off, so what a run tries never depends on what earlier runs saved.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import string
import unicodedata
from collections.abc import Callable
from datetime import timedelta
from typing import NamedTuple

import pytest
from hypothesis import assume, event, example, given, note, settings
from hypothesis import strategies as st

from platformctl.commands import SERVICE_NAME, compose_up
from platformctl.config import DEFAULT_SACRED_PATHS
from platformctl.models import Plan
from platformctl.outcomes import PolicyViolation
from platformctl.policy.compose_path import guard_compose_path
from platformctl.policy.plan import validate_plan
from platformctl.redact import _PATTERNS, REDACTED, redact
from tests.platform_files import plan

# A deadline with room for a slow CI runner: one example is well under 10 ms.
PROPERTY = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=500),
    derandomize=False,
    print_blob=True,
    database=None,
)


_ALNUM = string.ascii_letters + string.digits
_URLSAFE = _ALNUM + "_-"
_B64 = _ALNUM + "+/"
_HEX = "0123456789abcdef"


def chars(alphabet: str, lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=lo, max_size=hi)


def word(first: str, rest: str, lo: int, hi: int) -> st.SearchStrategy[str]:
    """A letter of `first`, then lo..hi characters of `rest` (faster than from_regex)."""
    return st.builds(str.__add__, st.sampled_from(first), st.text(rest, min_size=lo, max_size=hi))


# ---- 1. the compose path guard ---------------------------------------------

_NAME_CHARS = string.ascii_letters + string.digits + "_.@+-"


def _ok_component(c: str) -> bool:
    return c not in (".", "..") and not c.startswith("-")


# A path component an operator would write: the guard's alphabet, no leading '-'.
component = st.text(_NAME_CHARS, min_size=1, max_size=10).filter(_ok_component)
valid_roots = st.one_of(
    st.lists(component, min_size=1, max_size=4).map(lambda cs: "/" + "/".join(cs)),
    st.sampled_from(["/opt/platform", "/srv", "/home/deploy/platform-1", "/etc", "/etc/platform", "/root/x"]),
)
# Roots an operator should not get away with, and anything at all.
bad_roots = st.one_of(
    st.sampled_from(
        ["/", "//", "//opt", "/opt/", "/opt//x", "/opt/./x", "/opt/../etc", "opt", "", "~/x", "/opt/-x", "/o\npt"]
    ),
    st.text(max_size=24),
)
# About three in four valid. The .map(str) wrappers keep one_of from merging
# the copies (it flattens and dedups branches).
roots = st.one_of(*(s.map(str) for s in (valid_roots, valid_roots, valid_roots, bad_roots)))

# Pieces of hostile paths: traversal, home, flags, control characters, shell
# syntax, unicode lookalikes of '.' and '/', and the names the defaults protect.
_HOSTILE_PIECES = [
    "/", "//", ".", "..", "./", "../", "~", "~root", "-", "--", "-f", " ", "\n", "\r", "\t", "\x00", "\x1b", "\x7f",
    "$(id)", "`id`", ";", "|", "&", "*", "?", "'", '"', "\\", "${HOME}", "é", "ö", "ß", "\u0301",
    "\u200b", "\u202e", "\ufeff", "\u00a0", "\uff0e", "\u2024", "\uff0f", "\u2215", "\u2044",
    "a", "Z", "9", "_", "@", "+", "compose", "core",
    ".yml", ".yaml", ".YML", ".yml\n", ".yaml ", "secrets", ".git", ".env", "etc", "root", "hooks", "x.yml",
]  # fmt: skip
_DEFAULT_SACRED_NAMES = [".env", ".git", "secrets", "etc", "root"]

hostile_paths = st.lists(st.sampled_from(_HOSTILE_PIECES), max_size=14).map("".join)
structured_paths = st.builds(
    lambda parts, end: "/".join(parts) + end,
    st.lists(
        st.one_of(
            component,
            st.sampled_from(["", ".", "..", "~", "-rf", "--help", *_DEFAULT_SACRED_NAMES]),
            st.text(max_size=6),
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["", ".yml", ".yaml", ".yml/", "/x.yml", "/../x.yml", "\n.yml"]),
)
long_paths = st.one_of(
    st.builds(lambda c, n: "/".join([c] * n) + ".yml", component, st.integers(50, 600)),
    st.builds(lambda n, tail: "../" * n + tail, st.integers(1, 400), st.sampled_from(["etc/x.yml", "x.yml"])),
    st.builds(lambda n: "a" * n + ".yml", st.integers(200, 5000)),
)
# Mostly well-formed, with a hostile piece now and then: paths near the edge.
near_valid_paths = st.builds(
    lambda parts, ext: "/".join(parts) + ext,
    st.lists(
        st.one_of(
            *(component.map(str) for _ in range(5)),
            st.sampled_from(["", ".", *_DEFAULT_SACRED_NAMES, *_HOSTILE_PIECES]),
        ),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([".yml", ".yaml"]),
)
compose_files = st.one_of(
    *(s.map(str) for s in (near_valid_paths, near_valid_paths, hostile_paths, structured_paths, long_paths)),
    st.text(max_size=40),
)

sacred_entries = st.one_of(
    st.sampled_from(
        ["", ".", "./", "..", "../", "/", "//", "/opt", "/opt/", "compose", "compose/", "./compose", "x.yml",
         "/opt/platform/compose/", "//opt/platform/", "/opt/platform//compose", "compose/../secrets"]
    ),  # fmt: skip
    structured_paths,
    # Absolute, with or without a doubled leading slash (the same directory on Linux).
    st.builds(lambda lead, rest: lead + rest, st.sampled_from(["/", "//", "///"]), structured_paths),
    st.text(max_size=12),
)


def _resolve(root: str, relative: str) -> str:
    return posixpath.normpath(posixpath.join(root, relative))


def _sacred_dir(root: str, sacred: str) -> str:
    """What a sacred entry protects, as Linux sees it: relative entries under
    remote_root, and any run of leading slashes is the root directory."""
    path = _resolve(root, sacred)
    return "/" + path.lstrip("/") if path.startswith("/") else path


def _at_or_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _derived_sacred(data: st.DataObject, root: str, compose_file: str) -> tuple[str, ...]:
    """A sacred entry naming a directory on the compose file's own path (often
    the file itself), spelt relative or absolute, so the sacred check is hit."""
    parts = [p for p in compose_file.split("/") if p]
    if not parts or not data.draw(st.booleans(), label="derive a sacred entry"):
        return ()
    prefix = "/".join(parts[: data.draw(st.integers(1, len(parts)), label="sacred depth")])
    # "/{root}" gives a doubled leading slash: //opt/platform/... is /opt/platform/... on Linux.
    spelling = data.draw(st.sampled_from(["{p}", "{p}/", "./{p}", "{root}/{p}", "{root}/{p}/", "/{root}/{p}"]))
    return (spelling.format(p=prefix, root=root),)


@PROPERTY
@given(compose_file=compose_files, root=roots, extra=st.lists(sacred_entries, max_size=3), data=st.data())
@example(compose_file="compose/x.yml", root="/opt/platform", extra=["//opt/platform/compose/"], data=None)
@example(compose_file="x.yml", root="/opt/platform", extra=["//opt/"], data=None)
def test_guard_accepts_nothing_outside_root_or_under_a_sacred_path(
    compose_file: str, root: str, extra: list[str], data: st.DataObject | None
) -> None:
    derived = _derived_sacred(data, root, compose_file) if data is not None else ()
    sacred = DEFAULT_SACRED_PATHS + tuple(extra) + derived
    try:
        result = guard_compose_path(compose_file, root, sacred)
    except PolicyViolation as e:
        event("refused: " + re.sub(r"'[^']*'|\"[^\"]*\"|:.*", "", str(e)))
        return
    event("accepted")
    note(f"accepted {compose_file!r} under {root!r} as {result!r}")
    # The root was a normalized absolute path other than '/', and the result
    # is the plain join of root and file: nothing else is ever run.
    assert root.startswith("/") and root != "/" and posixpath.normpath(root) == root
    resolved = _resolve(root, compose_file)
    assert result == resolved
    assert resolved.startswith(root + "/")
    for entry in sacred:
        assert not _at_or_under(resolved, _sacred_dir(root, entry)), f"{resolved!r} is under sacred {entry!r}"
    # What compose is handed: the builder takes it as is, it needs no shell
    # quoting, and no component of it can be read as a flag.
    command = compose_up(result, "svc")
    assert command.argv[3] == result
    assert shlex.quote(result) == result
    assert all(part and not part.startswith("-") for part in result[1:].split("/"))
    assert result.endswith((".yml", ".yaml"))


@PROPERTY
@given(
    root=valid_roots,
    dirs=st.lists(st.one_of(component, st.sampled_from([".", ""])), max_size=5),
    name=component,
    ext=st.sampled_from([".yml", ".yaml"]),
    # Entries such as "" or "/" protect everything: drawn, but rarely.
    extra=st.lists(st.one_of(structured_paths, structured_paths.map("/".__add__), sacred_entries), max_size=2),
    data=st.data(),
)
@example(root="/opt/platform", dirs=["compose"], name="core2", ext=".yml", extra=["compose/core"], data=None)
def test_guard_accepts_well_formed_paths_outside_sacred_ones(
    root: str, dirs: list[str], name: str, ext: str, extra: list[str], data: st.DataObject | None
) -> None:
    compose_file = "/".join([*dirs, name + ext])
    if compose_file.startswith("/"):  # a leading empty component: ./x, not /x
        compose_file = "." + compose_file
    resolved = _resolve(root, compose_file)
    if data is not None:
        # The file's own path, relative or absolute, cut inside a component:
        # a sibling (compose/core protects compose/core/, not compose/core2/).
        spelt = data.draw(st.sampled_from([compose_file, resolved]), label="sacred spelt as")
        inside = [i for i in range(1, len(spelt)) if "/" not in spelt[i - 1 : i + 1]]
        if inside:
            extra = [*extra, spelt[: data.draw(st.sampled_from(inside), label="sacred prefix length")]]
    sacred = DEFAULT_SACRED_PATHS + tuple(extra)
    assume(not any(_at_or_under(resolved, _sacred_dir(root, entry)) for entry in sacred))
    assert guard_compose_path(compose_file, root, sacred) == resolved


# ---- 2. the change target ---------------------------------------------------

services = word(_ALNUM, _ALNUM + "_.-", 0, 30)  # SERVICE_NAME

# Characters an eye or a normalizer takes for another, or does not see at all.
_LOOKALIKES: dict[str, list[str]] = {
    ".": ["\uff0e", "\u3002", "\u2024", "\uff61", "\u00b7", "\u0701", "\u2027"],
    "-": ["\u2010", "\u2011", "\u2013", "\u2212", "\ufe63", "\uff0d", "\u00ad"],
    "_": ["\uff3f", "\u02cd"],
    "c": ["\u0441", "\u217d", "\u03f2"],
    "o": ["\u043e", "\u03bf", "0", "\u2134"],
    "e": ["\u0435", "\u212e"],
    "s": ["\u0455", "\ua731"],
    "i": ["\u0456", "\u0131", "\u2170", "l", "1"],
    "p": ["\u0440", "\u03c1"],
    "r": ["\u0433"],
    "m": ["\u217f", "rn"],
    "v": ["\u03bd", "\u2174"],
    "a": ["\u0430", "\u0251"],
}
_INVISIBLE_OR_SPACE = [
    " ", "\t", "\n", "\r", "\x0b", "\x0c", "\x00", "\x1b", "\u00a0", "\u1680", "\u2000", "\u2028", "\u3000",
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u0301", "\u034f", "\u180e",
]  # fmt: skip


def _fullwidth(ch: str) -> str:
    return chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch


@st.composite
def other_targets(draw: st.DrawFn, exact: str) -> str:
    """`exact` changed in one or a few ways; may by chance give `exact` back."""
    target = exact
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(target)))
        edit = draw(
            st.sampled_from(
                ["case", "insert", "lookalike", "fullwidth", "delete", "double", "prefix", "suffix", "service", "any"]
            )
        )
        if edit == "case" and i < len(target):
            target = target[:i] + target[i].swapcase() + target[i + 1 :]
        elif edit == "insert":
            target = target[:i] + draw(st.sampled_from(_INVISIBLE_OR_SPACE)) + target[i:]
        elif edit == "lookalike" and i < len(target) and target[i].lower() in _LOOKALIKES:
            target = target[:i] + draw(st.sampled_from(_LOOKALIKES[target[i].lower()])) + target[i + 1 :]
        elif edit == "fullwidth":
            # Some or all characters full width: NFKC maps these back to `exact`.
            j = draw(st.integers(i, len(target)))
            target = target[:i] + "".join(map(_fullwidth, target[i:j])) + target[j:]
        elif edit == "delete" and i < len(target):
            target = target[:i] + target[i + 1 :]
        elif edit == "double" and i < len(target):
            target = target[:i] + target[i] + target[i:]
        elif edit == "prefix":
            target = draw(st.sampled_from(["", " ", "\n", "x", "compose.service.", "*", "/"])) + draw(
                st.text(max_size=4)
            ) + target
        elif edit == "suffix":
            target = target + draw(st.sampled_from(["", " ", "\n", "\r\n", "\x00", ".", "*", "/x", "-2"])) + draw(
                st.text(max_size=4)
            )
        elif edit == "service":
            target = "compose.service." + draw(services)
        elif edit == "any":
            target = draw(st.text(max_size=60))
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        if draw(st.booleans()):
            target = unicodedata.normalize(form, target)
            break
    return target


def _plan_with_targets(*targets: str) -> Plan:
    return Plan.model_validate(plan(changes=[{"target": t, "action": "update"} for t in targets]))


@PROPERTY
@given(service=services, data=st.data())
@example(service="redis", data=None)
def test_a_target_other_than_the_exact_one_is_refused(service: str, data: st.DataObject | None) -> None:
    assert SERVICE_NAME.fullmatch(service)
    exact = "compose.service." + service
    validate_plan(_plan_with_targets(exact), service)
    validate_plan(_plan_with_targets(exact, exact), service)
    if data is None:  # the explicit example: the NFKC twin of the exact target
        other = "".join(map(_fullwidth, exact))
    else:
        other = data.draw(other_targets(exact), label="target")
    assume(other != exact)
    note(f"target {other!r} ({[unicodedata.name(c, hex(ord(c))) for c in other if not c.isascii()]})")
    for targets in ((other,), (exact, other), (other, exact)):
        with pytest.raises(PolicyViolation, match="every target must be exactly"):
            validate_plan(_plan_with_targets(*targets), service)


# ---- 3. the redactor ----------------------------------------------------------

# Values of a key: a bare value ends at whitespace or one of " ' , ; &
# (the form's own stop characters); a quoted one holds no quote of either kind.
_BARE = _ALNUM + "!#$%()*+-./:<=>?@[]^_`{|}~\\"
bare_values = chars(_BARE, 8, 40).filter(lambda v: v[0] not in "[{\\")
cli_values = chars(_ALNUM + "!#$%()*+./:<=>?@[]^_`{}~", 8, 40).filter(lambda v: v[0] != "-")
quoted_values = chars(_ALNUM + " !#$%()*+,-./:;<=>?@[]^_`{|}~&", 8, 40).filter(lambda v: v.strip() == v)

_SECRET_WORDS = [
    "password", "passwd", "passphrase", "pwd", "secret", "token", "credential", "credentials", "api_key", "apikey",
    "api-key", "private_key", "privatekey", "access_key", "access-key",
]  # fmt: skip
_SHORT_PARTS = ["pass", "pw", "auth", "creds", "cookie"]
_NOT_SECRET_ENDINGS = ("file", "stdin", "path", "dir", "url")
_part = word(string.ascii_letters, _ALNUM, 0, 6)


def _randcase(draw: st.DrawFn, w: str) -> str:
    return draw(st.sampled_from([w, w.upper(), w.capitalize(), w.lower()]))


@st.composite
def secret_keys(draw: st.DrawFn) -> str:
    """A key that names a secret: the secret word anywhere in it, a short word
    as a whole part, `key` with a part before it, or a camelCase part."""
    kind = draw(st.sampled_from(["word", "short", "key", "camel"]))
    sep = draw(st.sampled_from(["_", ".", "-"]))
    before = draw(st.lists(_part, max_size=2))
    after = draw(st.lists(_part, max_size=2))
    if kind == "word":
        secret_word = _randcase(draw, draw(st.sampled_from(_SECRET_WORDS)))
        glue = draw(st.sampled_from(["", sep]))  # DB_PASSWORD, PGPASSWORD, passwordHash
        key = glue.join([*before, secret_word, *after])
    elif kind == "short":
        key = sep.join([*before, _randcase(draw, draw(st.sampled_from(_SHORT_PARTS))), *after])
    elif kind == "key":
        key = sep.join([*(before or ["db"]), _randcase(draw, "key"), *after])
    else:
        head = draw(word(string.ascii_lowercase, string.ascii_lowercase + string.digits, 0, 6))
        key = head + draw(st.sampled_from(["Pass", "Pw", "Auth", "Creds", "Cookie", "Key"]))
    assume(not key.lower().endswith(tuple(sep_ + end for sep_ in "_.-" for end in _NOT_SECRET_ENDINGS)))
    return key


env_keys = st.builds(
    lambda before, secret_word, after: "_".join([*before, secret_word, *after]),
    st.lists(word(string.ascii_uppercase, string.ascii_uppercase + string.digits, 0, 5), max_size=2),
    st.sampled_from(["PASSWORD", "PASS", "PWD", "SECRET", "TOKEN", "API_KEY", "AUTH", "CREDENTIALS", "PRIVATE_KEY"]),
    st.lists(st.sampled_from(["ROOT", "ADMIN", "BASE", "V2", "X"]), max_size=1),
)


class Shape:
    """A snippet holding secrets, the secrets, and whether it must start a line."""

    def __init__(self, snippet: str, *secrets: str, line_start: bool = False) -> None:
        assert secrets and all(s in snippet for s in secrets), (snippet, secrets)
        self.snippet, self.secrets, self.line_start = snippet, secrets, line_start

    def __repr__(self) -> str:
        return f"Shape({self.snippet!r}, secrets={self.secrets!r})"


@st.composite
def key_value(draw: st.DrawFn) -> Shape:
    key, v, q = draw(secret_keys()), draw(bare_values), draw(quoted_values)
    form = draw(st.integers(0, 8))
    if form == 0:
        return Shape(f"{key}{draw(st.sampled_from(['=', ' = ', '= ', ' =', chr(9) + '=' + chr(9)]))}{v}", v)
    if form == 1:  # bare_values never start with [ or {: `key: [` opens YAML structure
        return Shape(f"{key}: {v}", v)
    if form == 2:
        quote = draw(st.sampled_from(["'", '"']))
        return Shape(f"{key}{draw(st.sampled_from(['=', ': ', ' = ', ':']))}{quote}{q}{quote}", q)
    if form == 3:
        env = draw(env_keys)
        return Shape(f"{env}:{v}", v)
    if form == 4:
        return Shape(f"export {draw(env_keys)}={v}", v)
    if form == 5:
        return Shape(f"    environment:\n      - {draw(env_keys)}={v}\n      - OTHER=1", v)
    if form == 6:
        return Shape(f"GET /cb?state=1&{key}={v}&x=1 HTTP/1.1", v)
    if form == 7:
        return Shape(f"Server=db;Uid=app;{key}={v};Encrypt=true;", v)
    return Shape(f"--{key}={v}", v)


@st.composite
def json_pair(draw: st.DrawFn) -> Shape:
    key, q = draw(secret_keys()), draw(quoted_values)
    form = draw(st.integers(0, 4))
    if form == 4:
        return Shape(f'"{key}" = "{q}"', q)  # TOML, HCL
    if form == 0:
        return Shape(f'{{"user": "app", "{key}": "{q}", "n": 1}}', q)
    if form == 1:
        return Shape(f"{{'{key}': '{q}', 'grant_type': 'x'}}", q)
    if form == 2:
        return Shape(f'payload="{{\\"user\\":\\"app\\",\\"{key}\\":\\"{q}\\"}}"', q)
    n = draw(st.sampled_from(["", "-"])) + draw(word("123456789", string.digits, 7, 15))
    return Shape(f'{{"{key}": {n}, "user": "bob"}}', n)


@st.composite
def named_value(draw: st.DrawFn) -> Shape:
    key, q = draw(secret_keys()), draw(quoted_values)
    if draw(st.booleans()):
        return Shape(f'{{"name": "{key}", "value": "{q}"}}', q)
    return Shape(f'<add key="{key}" value="{q}" />', q)


@st.composite
def xml_element(draw: st.DrawFn) -> Shape:
    key = draw(secret_keys())
    v = draw(chars(_ALNUM + " !#$%()*+,-./:;=?@[]^_`{|}~&", 8, 40).filter(lambda v: v.strip()))
    attrs = draw(st.sampled_from(["", ' type="string"', " a='1'"]))
    return Shape(f"<{key}{attrs}>{v}</{key}>", v.strip())


@st.composite
def cli_flag(draw: st.DrawFn) -> Shape:
    key = draw(secret_keys().filter(lambda k: not k.startswith("-")))
    if draw(st.booleans()):
        v = draw(cli_values)
        return Shape(f"app migrate --{key} {v} --debug", v)
    q = draw(quoted_values)
    return Shape(f'app --{key} "{q}"', q)


@st.composite
def commands(draw: st.DrawFn) -> Shape:
    v = draw(cli_values)
    user = draw(word(string.ascii_lowercase, string.ascii_lowercase + string.digits, 0, 7))
    form = draw(st.integers(0, 9))
    if form == 0:
        return Shape(f"docker login -u {user} -p {v} registry.example.com", v)
    if form == 1:
        return Shape(f"{draw(st.sampled_from(['mysql', 'mysqldump', 'mariadb']))} -h db -u root -p{v} app", v)
    if form == 2:
        return Shape(f'"Test": ["CMD", "mysqladmin", "ping", "-h", "localhost", "-uroot", "-p{v}"]', v)
    if form == 3:
        return Shape(f"redis-cli -h cache -a {v} ping", v)
    if form == 4:
        return Shape(f"sshpass -p {v} ssh deploy@rs2000", v)
    if form == 5:
        flag = draw(st.sampled_from(["-u ", "--user ", "--user=", "-u"]))
        assume(":" not in user)
        return Shape(f"curl -fsS {flag}{user}:{v} http://es:9200/", v)
    if form == 6:
        return Shape(f"openssl pkcs12 -export {draw(st.sampled_from(['-passout', '-passin', '-pass']))} pass:{v}", v)
    if form == 7:
        sep = draw(st.sampled_from([" ", "\n  "]))
        return Shape(f"machine git.example.com{sep}login {user}{sep}password {v}", v)
    q = draw(quoted_values)
    if form == 8:
        return Shape(f"ALTER USER app WITH PASSWORD '{q}';", q)
    return Shape(f"CREATE USER 'app'@'%' IDENTIFIED BY '{q}';", q)


_ALNUM_PREFIXES = [
    "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "sk_live_", "rk_live_", "sk_test_", "rk_prod_", "whsec_", "sk-", "hf_",
    "npm_", "shpat_", "shpca_", "shppa_", "shpss_", "dop_v1_", "doo_v1_", "dor_v1_", "lin_api_", "sntryu_", "pnu_",
    "gsk_", "pplx-", "xai-", "sbp_",
]  # fmt: skip
_URLSAFE_PREFIXES = [
    "sk-proj-", "sk-svcacct-", "sk-admin-", "sk-None-", "sk-ant-api03-", "glpat-", "gldt-", "glrt-", "glptt-",
    "glcbt-", "glft-", "glsoat-", "gloas-", "xoxa-", "xoxb-", "xoxe-", "xoxo-", "xoxp-", "xoxr-", "xoxs-", "xapp-",
    "github_pat_", "dckr_pat_", "tskey-auth-", "tskey-client-", "hvs.", "hvb.", "hvr.", "AIza", "GOCSPX-", "ya29.",
    "glsa_", "glc_", "AGE-SECRET-KEY-1", "pypi-AgE", "sk.eyJ", "dp.pt.", "dp.st.", "dp.scim.", "PMAK-", "NRAK-",
    "HRKU-", "ATATT3", "xkeysib-", "sq0atp-", "sq0csp-", "lsv2_pt_", "lsv2_sk_", "fo1_",
]  # fmt: skip


@st.composite
def vendor_tokens(draw: st.DrawFn) -> Shape:
    form = draw(st.integers(0, 3))
    if form == 0:
        prefix, body = draw(st.sampled_from(_ALNUM_PREFIXES)), draw(chars(_ALNUM, 20, 80))
    elif form == 1:
        prefix, body = draw(st.sampled_from(_URLSAFE_PREFIXES)), draw(chars(_URLSAFE + ".", 20, 80))
    elif form == 2:
        prefix, body = "SG.", draw(chars(_URLSAFE, 16, 30)) + "." + draw(chars(_URLSAFE, 20, 50))
    else:
        prefix, body = draw(
            st.sampled_from([("pul-", chars(_HEX, 40, 40)), ("dapi", chars(_HEX, 32, 32)), ("SK", chars(_HEX, 32, 32))])
        )
        body = draw(body)
    return Shape(prefix + body, body)


_AWS_ID_BODY = chars(string.ascii_uppercase + string.digits, 16, 16)
_AWS_SECRET = chars(_B64, 40, 40).filter(lambda s: not re.fullmatch("[0-9a-f]{40}", s))


@st.composite
def aws(draw: st.DrawFn) -> Shape:
    id_body = draw(_AWS_ID_BODY)
    key_id = draw(st.sampled_from(["AKIA", "ASIA", "ABIA", "ACCA"])) + id_body
    form = draw(st.integers(0, 2))
    if form == 0:
        return Shape(f"key id {key_id} used", id_body)
    secret = draw(_AWS_SECRET)
    words = " ".join(draw(st.lists(chars(string.ascii_lowercase, 1, 8), max_size=7)))
    gap = f" {words} " if words else draw(st.sampled_from([",", " ", " | "]))
    if form == 1:
        return Shape(f"{key_id}{gap}{secret}", id_body, secret)
    return Shape(f"{secret}{gap}{key_id}", id_body, secret)


@st.composite
def jwt(draw: st.DrawFn) -> Shape:
    header, payload, sig = draw(chars(_URLSAFE, 10, 40)), draw(chars(_URLSAFE, 10, 80)), draw(chars(_URLSAFE, 10, 60))
    token = f"eyJ{header}.eyJ{payload}.{sig}"
    return Shape(token, header, payload, sig)


@st.composite
def webhooks(draw: st.DrawFn) -> Shape:
    form = draw(st.integers(0, 3))
    if form == 0:
        path = f"T0{draw(chars(string.ascii_uppercase, 8, 8))}/B0{draw(chars(string.ascii_uppercase, 8, 8))}"
        v = draw(chars(_ALNUM, 24, 24))
        return Shape(f"POST https://hooks.slack.com/services/{path}/{v} 404", path, v)
    if form == 1:
        v = draw(chars(_URLSAFE, 20, 70))
        return Shape(f"https://discord.com/api/webhooks/{draw(chars(string.digits, 17, 19))}/{v}", v)
    if form == 2:
        v = "AA" + draw(chars(_URLSAFE, 33, 33))
        return Shape(f"GET https://api.telegram.org/bot{draw(chars(string.digits, 8, 10))}:{v}/getMe 401", v)
    v = draw(chars(_ALNUM + "_~.", 3, 3)) + draw(chars(string.digits, 1, 1)) + "Q~"
    v += draw(chars(_URLSAFE + "~.", 31, 34))
    return Shape(f"AADSTS7000215 for secret {v}", v)


@st.composite
def urls(draw: st.DrawFn) -> Shape:
    scheme = draw(st.sampled_from(["https", "http", "postgres", "redis", "amqp", "mongodb+srv", "git+ssh"]))
    if draw(st.booleans()):
        user = draw(chars(string.ascii_lowercase + string.digits + "_.-", 0, 10))
        v = draw(chars(_ALNUM + "!$%&'()*+,;=:._~-", 8, 30))
        return Shape(f"{scheme}://{user}:{v}@db.example.com:5432/app", v)
    if draw(st.booleans()):
        v = draw(chars(_ALNUM + "!$%&'()*+,;=._~-", 8, 30))
        net = draw(st.sampled_from(["tcp(db:3306)", "unix(/run/mysqld/mysqld.sock)", "udp(10.0.0.5:3306)"]))
        return Shape(f"DATABASE_DSN=app:{v}@{net}/app?parseTime=true", v)  # Go's database/sql
    v = draw(chars(_ALNUM + "_.~%+-", 16, 60))
    return Shape(f"fatal: unable to access '{scheme}://{v}@github.com/org/repo.git/'", v)


@st.composite
def headers(draw: st.DrawFn) -> Shape:
    form = draw(st.integers(0, 3))
    v = draw(chars(_B64 + "=._~-", 16, 60))
    if form == 0:
        name = draw(st.sampled_from(["Authorization", "authorization", "Proxy-Authorization", "AUTHORIZATION"]))
        scheme = draw(st.sampled_from(["Bearer ", "Basic ", "token ", "Digest ", ""]))
        return Shape(f"{name}: {scheme}{v}", v)
    if form == 1:
        v = draw(chars(_ALNUM + "._~+/-", 16, 60)) + draw(st.sampled_from(["", "=", "=="]))
        return Shape(f"desc = invalid {draw(st.sampled_from(['Bearer', 'bearer', 'BEARER']))} {v}", v)
    c1, c2 = draw(chars(_ALNUM + "%-._~", 8, 40)), draw(chars(_ALNUM + "%-._~", 8, 40))
    if form == 2:
        return Shape(f"Cookie: sid={c1}; remember_user={c2}", c1, c2)
    return Shape(f"Set-Cookie: sessionid={c1}; Path=/; HttpOnly", c1)


@st.composite
def signatures(draw: st.DrawFn) -> Shape:
    v = draw(chars(_B64 + "%=-_.", 16, 60))
    key = draw(st.sampled_from(["sig", "signature", "X-Amz-Signature", "X-Goog-Signature"]))
    return Shape(f"https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-12-01&{key}={v}&sp=r", v)


_PEM_LABELS = ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY", "OPENSSH PRIVATE KEY",
               "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK"]  # fmt: skip
_LOG_PREFIXES = ["", "keys-1  | ", "api-1 | ", "2026-11-27T10:00:00.123456789Z ", "api-1  | 2026-11-27T10:00:00Z ",
                 "  "]  # fmt: skip
pem_lines = st.lists(chars(_B64, 16, 64), min_size=1, max_size=5)


@st.composite
def private_keys(draw: st.DrawFn) -> Shape:
    label, body = draw(st.sampled_from(_PEM_LABELS)), draw(pem_lines)
    form = draw(st.integers(0, 5))
    if form == 0:  # a block, as printed or logged
        prefix, newline = draw(st.sampled_from(_LOG_PREFIXES)), draw(st.sampled_from(["\n", "\r\n"]))
        headers = draw(st.sampled_from([[], ["Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-128-CBC,5B01E932988DC66B", ""]]))
        lines = [f"-----BEGIN {label}-----", *headers, *body, f"-----END {label}-----"]
        return Shape(newline.join(prefix + line for line in lines), *body, line_start=True)
    if form == 1:  # inside a JSON string
        lines = [f"-----BEGIN {label}-----", *body, f"-----END {label}-----"]
        escaped = "\\n".join(lines).replace("/", "\\/")
        return Shape('{"key": "' + escaped + '\\n"}', *(b.replace("/", "\\/") for b in body))
    if form == 2:  # flattened into one env value
        return Shape(f"SSH_KEY=-----BEGIN {label}----- {' '.join(body)} -----END {label}-----", *body)
    if form == 3:  # cut short: no END line
        return Shape("\n".join([f"-----BEGIN {label}-----", *body]) + "\n[... output cut ...]", *body, line_start=True)
    if form == 4:  # a log tail that starts inside the key: no BEGIN line
        prefix = draw(st.sampled_from(_LOG_PREFIXES))
        lines = ["docker logs --tail 3:", *body, f"-----END {label}-----"]
        return Shape("\n".join(prefix + line for line in lines), *body, line_start=True)
    if draw(st.booleans()):
        ssh2 = ["---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----", 'Comment: "deploy@ci"', *body]
        return Shape("\n".join([*ssh2, "---- END SSH2 ENCRYPTED PRIVATE KEY ----"]), *body, line_start=True)
    putty = ["PuTTY-User-Key-File-2: ssh-rsa", "Encryption: none", f"Private-Lines: {len(body)}", *body]
    return Shape("\n".join([*putty, "Private-MAC: 0123abcd"]), *body, line_start=True)


# Which of the module's patterns each shape is written for: every pattern has one.
SHAPES: dict[st.SearchStrategy[Shape], tuple[str, ...]] = {
    key_value(): ("key_value",),
    json_pair(): ("json_pair",),
    named_value(): ("named_value",),
    xml_element(): ("xml_element",),
    cli_flag(): ("cli_flag",),
    commands(): ("docker_login_p", "mysql_p", "redis_cli_a", "sshpass_p", "curl_user", "openssl_pass", "netrc",
                 "sql_password"),  # fmt: skip
    vendor_tokens(): ("alnum_token", "urlsafe_token"),
    aws(): ("aws_access_key_id", "aws_secret_after_key_id", "aws_secret_before_key_id"),
    jwt(): ("jwt",),
    webhooks(): ("slack_webhook", "discord_webhook", "telegram_bot_token", "azure_client_secret"),
    urls(): ("url_credentials", "url_token_user", "go_dsn"),
    headers(): ("authorization_header", "bearer_token", "cookie_header"),
    signatures(): ("query_signature",),
    private_keys(): ("pem_private_key", "pem_private_key_headless", "putty_private_key"),
}
secrets = st.one_of(*SHAPES)

# Text around a secret: ordinary log words (some holding a secret word in a
# name, as service names do), and arbitrary unicode.
_WORDS = [
    "ok", "done", "INFO", "level=info", 'msg="started"', "api-1  |", "token-api", "secret-store", "keycloak",
    "https://registry.example.com/v2/", "✔", "Container", "core-api-1", "Started", "0.4s", "127.0.0.1:8080", "{", "}",
    "[", "]", "(", ")", "exit", "0", "→", "データ", "Ünïcödé", "\\", "'", '"', ":", "=", "#", "—",
]  # fmt: skip
fillers = st.lists(st.one_of(st.sampled_from(_WORDS), st.text(max_size=10)), max_size=6).map(" ".join)
_SEPARATORS = [" ", "  ", "\t", "\n", " | ", ", ", "\r\n", "\n\n"]


class Embedded(NamedTuple):
    text: str
    skeleton: str  # text with the secrets replaced by REDACTED
    secrets: tuple[str, ...]


def _embedded(head: str, shape: Shape, tail: str) -> Embedded:
    hidden = shape.snippet
    for s in shape.secrets:
        hidden = hidden.replace(s, REDACTED)
    # A secret's text only where it is the secret, not also in a part kept on
    # purpose (a user name equal to the password, say): else the skeleton keeps it.
    if any(shape.snippet.count(s) != shape.secrets.count(s) for s in shape.secrets):
        hidden = shape.snippet
    return Embedded(head + shape.snippet + tail, head + hidden + tail, shape.secrets)


@st.composite
def embedded(draw: st.DrawFn, family: st.SearchStrategy[Shape]) -> Embedded:
    """A snippet of `family` among filler text."""
    shape = draw(family)
    head = draw(fillers) + draw(st.sampled_from(["\n", "\r\n"] if shape.line_start else _SEPARATORS))
    return _embedded(head, shape, draw(st.sampled_from(_SEPARATORS)) + draw(fillers))


def test_every_redaction_pattern_has_a_generated_shape() -> None:
    covered = {name for names in SHAPES.values() for name in names}
    assert covered == {pattern.name for pattern in _PATTERNS}


def _never_survives(name: str, family: st.SearchStrategy[Shape], *examples: Embedded) -> Callable[[], None]:
    def test(case: Embedded) -> None:
        # Nothing but the secret may hold its text (the text around it, a kept
        # label, the marker): then it would survive without being a leak.
        assume(not any(s in case.skeleton for s in case.secrets))
        out = redact(case.text)
        note(f"text={case.text!r}\nout={out!r}")
        assert [s for s in case.secrets if s in out] == []

    test.__name__ = test.__qualname__ = name
    for found in examples:
        test = example(case=found)(test)
    return settings(PROPERTY, max_examples=50)(given(case=embedded(family))(test))


# Inputs these properties found, kept as explicit examples.
FOUND = {
    # mysql's (and sshpass's) option scan ran on past the pipe and took
    # openssl's -pass for -p, which hid the label openssl_pass needs.
    "commands": (
        _embedded("Mariadb ", Shape("openssl pkcs12 -export -passout pass:00000000", "00000000"), " "),
        # The same as a backup one-liner prints it.
        _embedded("", Shape("mysqldump app | openssl enc -aes-256-cbc -pass pass:S3cretKey9", "S3cretKey9"), "\n"),
    ),
    # Any first word was taken for the scheme, so a bare token followed by a
    # word kept the token and hid the word.
    "headers": (_embedded(" ", Shape("Authorization: A000000000000000", "A000000000000000"), " ok"),),
}

# One test per shape family (test_secret_never_survives_<family>), each with
# its own examples budget, so every family is tried about as hard.
for _family, _names in SHAPES.items():
    _name = repr(_family).removesuffix("()")  # the composite's name: key_value(), urls() ...
    _test = f"test_secret_never_survives_{_name}"
    globals()[_test] = _never_survives(_test, _family, *FOUND.get(_name, ()))


# A digest or SHA where an operator meets it: alone, as a reference, in JSON,
# in compose and git output. No secret key or scheme is next to it.
_DIGEST_PLACES = [
    "{}", "Digest: {}", "registry.example.com/core/api@{}", "redis:7-alpine@{}", '"Image": "{}"', '"Id":"{}",',
    "#12 {} 10.49MB / 10.49MB 0.3s done", "worker-1  | pulled x@{} (abc123)", "{} done", "Layers: [{}]",
]  # fmt: skip
_SHA_PLACES = [
    "{}", "commit {}", "HEAD is now at {} bump redis", '{{"source_sha": "{}", "pr": 42}}', "checkout {} (detached)",
    "git rev-parse HEAD: {}", "{}..{}", "api-1  | 2026-11-27T10:00:00Z deployed {}",
]  # fmt: skip
# Only text that names no secret goes next to a digest: a needle-free filler.
_NEEDLES = tuple({needle for pattern in _PATTERNS for needle in pattern.needles})
# No control characters: redact writes those out (tests/test_redact.py), which
# changes the text around a digest, not the digest.
plain_fillers = (
    st.lists(
        st.one_of(st.sampled_from(_WORDS), st.text(st.characters(blacklist_categories=("Cc", "Cf")), max_size=6)),
        max_size=3,
    )
    .map(" ".join)
    .filter(lambda t: not any(n in t.lower() for n in _NEEDLES))
)


@st.composite
def digest_pieces(draw: st.DrawFn) -> tuple[str, str]:
    """A digest or SHA in its place, between needle-free words; and the value."""
    if draw(st.booleans()):
        value = "sha256:" + draw(chars(_HEX, 64, 64))
        place = draw(st.sampled_from(_DIGEST_PLACES))
    else:
        value = draw(chars(_HEX, 40, 40))
        place = draw(st.sampled_from(_SHA_PLACES))
    return draw(plain_fillers) + " " + place.format(value, value) + " " + draw(plain_fillers), value


# Secrets in the same text, on the same line or not, so the patterns run on
# it (an AWS key id beside a SHA, say). Not a private key cut short or one
# whose BEGIN line is missing: by design, key-like lines after such a BEGIN or
# right above an END line are key material. Not a Cookie header: by design its
# value runs to the end of the line. AWS shapes twice as often: their secret is
# any 40-character word near a key id, the one shape a git SHA fits.
_other_secrets = st.one_of(secrets, aws()).filter(
    lambda s: not any(x in s.snippet for x in ("docker logs --tail", "output cut", "Cookie:"))
).map(lambda s: (s.snippet, ""))


@settings(PROPERTY, max_examples=200)  # each example holds up to 6 pieces
@given(
    pieces=st.tuples(
        st.lists(digest_pieces(), min_size=1, max_size=3),
        st.lists(st.one_of(_other_secrets, plain_fillers.map(lambda t: (t, ""))), max_size=3),
    ).flatmap(lambda t: st.permutations(t[0] + t[1])),
    separators=st.lists(st.sampled_from([" ", "  ", "\t", " | ", "\n"]), min_size=5, max_size=5),
)
@example(
    pieces=[("Digest: sha256:" + "ab" * 32, "sha256:" + "ab" * 32), ("password=hunter2", "")],
    separators=["\n"],
)
@example(pieces=[("key id AKIAIOSFODNN7EXAMPLE used", ""), ("commit " + "0a" * 20, "0a" * 20)], separators=[" "])
def test_digests_and_git_shas_pass_through_unchanged(
    pieces: list[tuple[str, str]], separators: list[str]
) -> None:
    text = pieces[0][0] + "".join(sep + piece for sep, (piece, _) in zip(separators, pieces[1:], strict=False))
    out = redact(text)
    note(f"text={text!r}\nout={out!r}")
    for piece, value in pieces:
        if value:
            assert piece in out, f"{value!r} altered"
