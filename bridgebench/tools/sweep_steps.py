"""One step of a sweep (``bridgebench.tools.sweep``): the child process that runs a bridgebench
command with its log and live status line, the identity a run folder records so it is never reused
for other settings, and whether a step has already ended well (so a rerun resumes).

Assumes each step owns one run folder, and that ``bridgebench.engine.run_folder`` keeps its history.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

from bridgebench.engine.progress import PREFIX as PROGRESS
from bridgebench.errors import ConfigError


class Console:
    """The sweep's own lines, and one live status line for the running command's progress."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stdout.isatty()
        self.open = False

    def say(self, text: str) -> None:
        if self.open:
            print(file=sys.stdout)
            self.open = False
        print(f"[sweep] {text}", flush=True)

    def status(self, label: str, line: str) -> None:
        if self.quiet:
            return
        text = f"[sweep] {label}: {line[len(PROGRESS):].strip()}"
        if self.tty:
            # Narrower than the terminal: a line that wraps cannot be redrawn by a carriage return.
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            print("\r" + text[:width].ljust(width), end="", flush=True)
            self.open = True
        else:
            print(text, flush=True)


def run_commands(run_dir: Path, args: list[str], commands: list[list[str]], console: Console, label: str,
                 env: Optional[dict] = None) -> tuple[Optional[str], dict]:
    """Run ``python -m bridgebench <command> args`` for each command, output appended to
    ``run_dir/sweep.log``; (error or None, seconds per command)."""
    seconds = {}
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "sweep.log"
    for command in commands:
        cmd = [sys.executable, "-m", "bridgebench", command[0], *args, *command[1:]]
        start = time.perf_counter()
        with open(log_path, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
            for line in proc.stdout:
                log.write(line)
                if line.startswith(PROGRESS):
                    console.status(f"{label} {command[0]}", line.strip())
            code = proc.wait()
        seconds[command[0]] = round(time.perf_counter() - start, 1)
        if code != 0:
            tail = [ln for ln in log_path.read_text().strip().splitlines() if not ln.startswith(PROGRESS)][-3:]
            return f"{command[0]} exited {code}: " + " | ".join(tail), seconds
    return None, seconds


def config_args(configs: list[str], overlay_path: Optional[Path]) -> list[str]:
    return [a for c in configs + ([str(overlay_path)] if overlay_path else []) for a in ("--config", c)]


def write_overlay(run_dir: Path, overlay: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "sweep_overlay.yaml"
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def last_ckpt(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


class NotRunYet(Exception):
    """``--table-only``: this run (or a run it needs) has work left; nothing is run."""


def claim(run_dir: Path, identity: dict, what: str, create: bool = True) -> None:
    """Record what a run folder is for; a folder made for other settings is an error, never reused.
    ``create`` false (``--table-only``): a folder not made yet raises NotRunYet instead."""
    path = run_dir / "sweep_run.json"
    if not path.is_file() and not create:
        raise NotRunYet("not run yet (no run folder)")
    if path.is_file():
        before = json.loads(path.read_text())
        if before != identity:
            changed = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
            raise ConfigError(f"{what}: its run folder {run_dir} was made with other settings ({', '.join(changed)} "
                              "differ); delete that folder, or give the sweep another --name or --runs")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")


def step_done(run_dir: Path, command: str) -> bool:
    """A fit / validate that ended ok (run history), or a test whose results are in the run folder."""
    from bridgebench.engine.run_folder import latest

    if command == "test":
        return (run_dir / "metrics.json").is_file()
    return latest(run_dir, command) is not None
