"""Run fastdup with its defaults on a folder (executed with fastdup's own Python, bench/.fastdup).

Usage: python fastdup_runner.py INPUT_DIR WORK_DIR OUT_JSON

``fastdup.create(work_dir, input_dir).run()``: its defaults compute ONNX CNN features, an HNSW index, duplicate
and outlier components and blur/dark/bright statistics; the JSON holds the library call's seconds.
"""

import json
import sys
import time

import fastdup

input_dir, work_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
fd = fastdup.create(work_dir=work_dir, input_dir=input_dir)
fd.run(overwrite=True)
json.dump({"seconds": time.perf_counter() - start}, open(out, "w"))
