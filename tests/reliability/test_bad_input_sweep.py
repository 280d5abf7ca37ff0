"""Bad-input sweep (issue 6): every case runs in a child process, so a crash of the
interpreter is caught and reported as a failure of that case."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ACCEPTED = {"TypeError", "ValueError", "RuntimeError", "NotImplementedError", "IndexError"}


def run_sweep():
    """Runs all cases, restarting the child after a crash; returns (records, crashes)."""
    records, crashes, start = {}, [], 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    while True:
        proc = subprocess.run([sys.executable, str(HERE / "bad_input_child.py"), str(start)],
                              capture_output=True, text=True, env=env, timeout=600)
        last_started = None
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec["state"] == "start":
                last_started = rec
            else:
                records[rec["index"]] = rec
                last_started = None
        if proc.returncode == 0:
            return records, crashes
        if last_started is None:
            raise RuntimeError(f"bad-input child failed outside a case (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
        crashes.append({**last_started, "rc": proc.returncode, "stderr": proc.stderr[-1500:]})
        start = last_started["index"] + 1


@pytest.fixture(scope="module")
def sweep():
    return run_sweep()


def test_no_case_crashes_the_interpreter(sweep):
    _, crashes = sweep
    assert not crashes, "\n".join(f"{c['id']}: exit code {c['rc']}\n{c['stderr']}" for c in crashes)


def test_each_case_raises_clearly_or_returns_the_documented_result(sweep):
    records, _ = sweep
    spec_cases = _load_cases()
    problems, per_op = [], {}
    for i, case in enumerate(spec_cases):
        per_op[case.op] = per_op.get(case.op, 0) + 1
        rec = records.get(i)
        if rec is None:
            continue  # crashed: reported by the other test
        if case.check_result is None:
            if rec["outcome"] != "raised":
                problems.append(f"{case.id}: returned instead of raising")
            elif rec["type"] not in ACCEPTED:
                problems.append(f"{case.id}: raised {rec['type']}: {rec['message']}")
            elif case.names and not any(n.lower() in rec["message"].lower() for n in case.names):
                problems.append(f"{case.id}: message does not name {case.names}: {rec['message']}")
        else:
            if rec["outcome"] != "returned":
                problems.append(f"{case.id}: raised {rec.get('type')}: {rec.get('message')}")
            elif rec["check"] != "ok":
                problems.append(f"{case.id}: {rec['check']}")
    print("bad inputs tried per op:", json.dumps(per_op, indent=1))
    assert not problems, "\n".join(problems)


def _load_cases():
    sys.path.insert(0, str(HERE))
    import bad_input_cases
    return bad_input_cases.all_cases()
