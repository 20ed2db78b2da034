"""The step machinery of pydp-bootstrap: every change the script makes is one Step, kept as data.

A step knows how to tell whether it is already done (``check``), what it would change (``detail``) and how to do
it (``action``). The runner asks every step first, so ``--dry-run`` prints exactly the steps a real run would take,
a second run reports every step as already done, and a failure names the step it happened in. Commands are argument
lists run without a shell: nothing the operator types is ever parsed by one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["BootstrapError", "UsageError", "Step", "Result", "run_steps", "print_results", "run_cmd",
           "read_sysctl", "write_sysctl", "sysctl_path", "write_file", "file_step"]

# exit codes (docs/bootstrap.md)
EXIT_FAILED = 1
EXIT_USAGE = 2


class BootstrapError(Exception):
    """A check or a step failed: a one-line message saying what to do; exit code 1."""


class UsageError(Exception):
    """Bad command-line input: exit code 2, nothing changed."""


@dataclass
class Step:
    """One change: ``check()`` is True when it is already in place; ``detail()`` says what ``action()`` changes."""
    name: str
    description: str
    check: Callable[[], bool]
    action: Callable[[], None]
    detail: Callable[[], str] = lambda: ""


@dataclass
class Result:
    name: str
    description: str
    status: str                  # "ok" (already done), "changed", "would-change", "failed", "not-run"
    detail: str = ""
    error: str = ""

    def as_dict(self) -> dict:
        d = {"step": self.name, "description": self.description, "status": self.status, "detail": self.detail}
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class Outcome:
    results: list[Result] = field(default_factory=list)
    error: str = ""

    @property
    def changed(self) -> int:
        return sum(r.status == "changed" for r in self.results)


def run_steps(steps: Sequence[Step], *, dry_run: bool) -> Outcome:
    """Runs (or, with dry_run, only checks) the steps in order; stops at the first one that fails.

    In a dry run a step that depends on an earlier one that would change is still checked against today's system,
    so it may show as "would-change" even when the earlier step would make it a no-op: it never under-reports.
    """
    out = Outcome()
    for i, step in enumerate(steps):
        try:
            if step.check():
                out.results.append(Result(step.name, step.description, "ok", "already done"))
                continue
            detail = step.detail()
            if dry_run:
                out.results.append(Result(step.name, step.description, "would-change", detail))
                continue
            step.action()
            if not step.check():
                raise BootstrapError(f"{step.description}: the change did not take effect ({detail})")
            out.results.append(Result(step.name, step.description, "changed", detail))
        except (BootstrapError, OSError, subprocess.SubprocessError) as exc:
            msg = str(exc) if isinstance(exc, BootstrapError) else f"{step.description}: {exc}"
            out.results.append(Result(step.name, step.description, "failed", error=msg))
            out.results += [Result(s.name, s.description, "not-run") for s in steps[i + 1:]]
            out.error = msg
            break
    return out


_MARK = {"ok": "ok     ", "changed": "changed", "would-change": "would  ", "failed": "FAILED ", "not-run": "skipped"}


def print_results(prog: str, outcome: Outcome, *, as_json: bool, dry_run: bool, extra: dict | None = None) -> None:
    """One line per step (``[would   ] description: detail``) and a summary, or one JSON document."""
    if as_json:
        doc = {"dry_run": dry_run, "changed": outcome.changed, "ok": not outcome.error,
               "steps": [r.as_dict() for r in outcome.results]}
        if outcome.error:
            doc["error"] = outcome.error
        doc.update(extra or {})
        print(json.dumps(doc, indent=2))
        return
    for r in outcome.results:
        tail = r.error or r.detail
        print(f"[{_MARK[r.status]}] {r.description}" + (f": {tail}" if tail else ""))
    if outcome.error:
        return
    if dry_run:
        n = sum(r.status == "would-change" for r in outcome.results)
        print(f"{prog}: dry run: {n} step(s) would change, {len(outcome.results) - n} already done")
    elif outcome.changed:
        print(f"{prog}: {outcome.changed} step(s) changed, {len(outcome.results) - outcome.changed} already done")
    else:
        print(f"{prog}: nothing to do: every step is already done")


def run_cmd(argv: Sequence[str], *, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs one command (an argument list, never a shell string); a failure raises with its stderr."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BootstrapError(f"{argv[0]}: command not found (install it, or run without --no-install)") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise BootstrapError(f"{' '.join(argv)} failed with exit code {proc.returncode}"
                             + (f": {why[-1]}" if why else ""))
    return proc


def sysctl_path(key: str) -> Path:
    """/proc/sys path of a dotted sysctl key; the key's parts are checked so it cannot leave /proc/sys."""
    parts = key.split(".")
    if not all(p and p not in (".", "..") and "/" not in p for p in parts):
        raise UsageError(f"{key!r} is not a sysctl key")
    return Path("/proc/sys", *parts)


def read_sysctl(key: str) -> str:
    return sysctl_path(key).read_text().strip()


def write_sysctl(key: str, value: str) -> None:
    sysctl_path(key).write_text(f"{value}\n")


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Writes a file atomically (temporary file + rename), creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def file_step(name: str, path: Path, text: str, description: str, mode: int = 0o644,
              after: Callable[[], None] | None = None) -> Step:
    """A step that makes ``path`` hold exactly ``text`` (then runs ``after``, e.g. a reload)."""
    def check() -> bool:
        try:
            return path.read_text() == text and (path.stat().st_mode & 0o777) == mode
        except FileNotFoundError:
            return False

    def action() -> None:
        write_file(path, text, mode)
        if after is not None:
            after()

    return Step(name, description, check, action,
                lambda: f"{'rewrite' if path.exists() else 'create'} {path} ({len(text.splitlines())} lines)")


def stderr(prog: str, msg: str) -> None:
    print(f"{prog}: error: {msg}", file=sys.stderr)
