"""Running a bench script against another checkout (``--compare-worktree``): the same file, in a
fresh process whose ``stream`` and ``operators`` come from that tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_in_tree(script: str, prog: str, tree: Path, argv: list[str]) -> dict:
    """``script`` run as ``prog`` with ``argv`` in ``tree``; its last stdout line, as JSON.

    Raises:
        RuntimeError: the run failed or printed nothing (its stderr's tail says why).
    """
    code = ("import runpy, sys; sys.argv = [sys.argv[1]] + sys.argv[2:]; "
            f"runpy.run_path({str(Path(script).resolve())!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", code, prog, *argv], cwd=tree, env=env, capture_output=True,
                          text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{prog} in {tree} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def git(tree: Path, *cmd: str) -> str:
    """``git -C tree cmd...``'s output (empty when git fails)."""
    return subprocess.run(["git", "-C", str(tree), *cmd], capture_output=True, text=True, check=False).stdout.strip()
