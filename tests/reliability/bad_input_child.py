"""Child process of the bad-input sweep: runs every case of the named families, printing
one JSON line per case *before* and *after* it runs, so the parent can tell which case
crashed the interpreter. Usage: python bad_input_child.py [start_index]."""
from __future__ import annotations

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bad_input_cases  # noqa: E402


def main() -> None:
    start = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    cases = bad_input_cases.all_cases()
    for i in range(start, len(cases)):
        case = cases[i]
        print(json.dumps({"index": i, "id": case.id, "state": "start"}), flush=True)
        rec = {"index": i, "id": case.id, "state": "done"}
        try:
            result = case.call()
            rec["outcome"] = "returned"
            rec["check"] = case.check_result(result) if case.check_result else "no-check"
        except Exception as e:  # noqa: BLE001 - the sweep records every exception type
            rec["outcome"] = "raised"
            rec["type"] = type(e).__name__
            rec["message"] = str(e)[:500]
            rec["trace"] = traceback.format_exc(limit=3)[-800:]
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
