"""The redactor against its previous version and PyPI's detect-secrets: catches and speed.

Counts, on tests/secret_corpus.py, the leaks each rule set hides (every secret
of the entry gone) and the must-survive lines it changes, then times 64 KiB of
ordinary compose output, of secret-dense output and of the slowest
adversarial input, all in one run.

    .venv/bin/python bench/redact_speed.py [--before REV]

"before" is platformctl/redact.py at REV; by default, the newest commit whose
version differs from the working tree's. detect-secrets is optional
(`.venv/bin/pip install detect-secrets`): it is a detector, so it is scored
two ways, replacing the values it reports, and replacing every line it flags.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.secret_corpus when run as a script

from platformctl import redact as after  # noqa: E402
from tests.secret_corpus import ADVERSARIAL, KEEP, LEAKS, compose_log  # noqa: E402

SIZE = 64 * 1024
MODULE = "platformctl/redact.py"
Redactor = Callable[[str], str]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def load_before(rev: str | None) -> tuple[str, Redactor]:
    current = (ROOT / MODULE).read_text()
    if rev is None:
        revs = _git("log", "--format=%H", "--", MODULE).split()
        rev = next(r for r in revs if _git("show", f"{r}:{MODULE}") != current)
    module = types.ModuleType("redact_before")
    exec(compile(_git("show", f"{rev}:{MODULE}"), f"{rev[:12]}:{MODULE}", "exec"), module.__dict__)
    return rev[:12], module.redact_and_cap


def detect_secrets_redactors() -> tuple[Redactor, Redactor] | None:
    try:
        from detect_secrets.core.scan import scan_file
        from detect_secrets.settings import default_settings
    except ImportError:
        return None

    def findings(text: str) -> list[tuple[int, str]]:
        # As `detect-secrets scan` sees a file: its default plugins and filters.
        with tempfile.TemporaryDirectory() as tmp, default_settings():
            path = Path(tmp, "compose.log")
            path.write_text(text)
            return [(s.line_number, s.secret_value or "") for s in scan_file(str(path))]

    def by_value(text: str) -> str:
        for _, value in findings(text):
            if value:
                text = text.replace(value, after.REDACTED)
        return text

    def by_line(text: str) -> str:
        flagged = {line for line, _ in findings(text)}
        lines = text.split("\n")
        return "\n".join(after.REDACTED if i in flagged else line for i, line in enumerate(lines, 1))

    return by_value, by_line


def score(redactor: Redactor) -> tuple[int, int, list[str]]:
    """(leaks hidden, must-survive entries changed, ids of the leaks missed)."""
    missed = [leak.id for leak in LEAKS if any(s in redactor(leak.text) for s in leak.secrets)]
    changed = sum(redactor(keep.text) != keep.text for keep in KEEP)
    return len(LEAKS) - len(missed), changed, missed


def best_ms(redactor: Redactor, text: str, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        redactor(text)
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def repeated(unit: str, head: str = "") -> str:
    return (head + unit * (SIZE // len(unit) + 1))[:SIZE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision of the previous redactor")
    rev, before = load_before(parser.parse_args().before)
    sets: dict[str, Redactor] = {f"ours before ({rev})": before, "ours after": after.redact_and_cap}
    detect = detect_secrets_redactors()
    if detect:
        by_value, by_line = detect
        sets["detect-secrets, values"] = by_value
        sets["detect-secrets, lines"] = by_line
        sets["ours after + detect-secrets, lines"] = lambda text: by_line(after.redact_and_cap(text))
    else:
        print("detect-secrets is not installed: its rows are left out\n")

    print(f"corpus: {len(LEAKS)} leaks, {len(KEEP)} must-survive entries\n")
    print(f"{'rule set':38} {'leaks hidden':>13} {'survivors changed':>18}")
    missed_by = {}
    for name, redactor in sets.items():
        caught, changed, missed = score(redactor)
        missed_by[name] = missed
        print(f"{name:38} {caught:>7}/{len(LEAKS):<5} {changed:>11}/{len(KEEP):<6}")
    for name, missed in missed_by.items():
        if missed and len(missed) < len(LEAKS) // 2:
            print(f"\nmissed by {name}: {', '.join(missed)}")

    typical = compose_log(SIZE)
    dense = repeated("\n".join(leak.text for leak in LEAKS) + "\n")
    worst_name, worst = max(
        ((name, repeated(unit, head)) for name, (head, unit) in ADVERSARIAL.items()),
        key=lambda item: best_ms(after.redact_and_cap, item[1], runs=2),
    )
    inputs = {"compose output": typical, "secret-dense corpus": dense, f"worst: {worst_name}": worst}
    timed = {"ours before": before, "ours after": after.redact_and_cap}
    if detect:
        timed["detect-secrets"] = detect[1]
    print("\nms for 64 KiB (best of 5), same run; ratio = ours after / ours before, budget 50 ms")
    print(f"{'input':36}" + "".join(f"{name:>16}" for name in timed) + f"{'ratio':>8}")
    for label, text in inputs.items():
        ms = {name: best_ms(redactor, text) for name, redactor in timed.items()}
        cells = "".join(f"{value:>16.2f}" for value in ms.values())
        print(f"{label:36}{cells}{ms['ours after'] / ms['ours before']:>8.2f}")


if __name__ == "__main__":
    main()
