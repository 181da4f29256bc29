"""Run CleanVision on a list of files and dump its verdicts as JSON (executed with the reference tool's Python).

Usage: python cleanvision_runner.py FILE_LIST OUT_JSON N_JOBS
"""

import json
import sys
import time

from cleanvision import Imagelab

file_list, out, n_jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
paths = [line for line in open(file_list).read().splitlines() if line]
start = time.perf_counter()
lab = Imagelab(filepaths=paths)
lab.find_issues(n_jobs=n_jobs, verbose=False)
seconds = time.perf_counter() - start
issues = lab.issues
flags = {column[3:]: [str(path) for path in issues.index[issues[column]]]
         for column in issues.columns if column.startswith("is_") and column.endswith("_issue")}
flags = {name[: -len("_issue")]: paths_ for name, paths_ in flags.items()}
sets = {kind: [[str(p) for p in group] for group in lab.info.get(kind, {}).get("sets", [])]
        for kind in ("exact_duplicates", "near_duplicates")}
json.dump({"seconds": seconds, "flags": flags, "sets": sets, "n": len(paths)}, open(out, "w"))
