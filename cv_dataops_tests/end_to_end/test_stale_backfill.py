"""Changing the quality thresholds changes image_quality's code version, and changing the embedder changes
image_embeddings': Declarative Automation then requests every stored batch of that asset again, with nobody
clicking through partitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from cv_dataops.config import Settings
from cv_dataops.definitions import load_definitions
from cv_dataops.runner import open_instance, run_pipeline
from cv_dataops_tests.conftest import REPOSITORY, encode, photo, write_files

EVALUATE = """
import json, sys
import dagster as dg
from dagster._serdes import deserialize_value
from cv_dataops.definitions import load_definitions
instance = dg.DagsterInstance.get()
cursor = deserialize_value(sys.stdin.read())
result = dg.evaluate_automation_conditions(defs=load_definitions(), instance=instance, cursor=cursor)
print(json.dumps({name: sorted(result.get_requested_partitions(dg.AssetKey(name)))
                  for name in ("image_quality", "image_embeddings")}))
"""

pytestmark = pytest.mark.slow  # two pipeline runs and code servers restarted in subprocesses


def test_new_thresholds_request_a_backfill_of_every_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    landing, root = str(tmp_path / "landing"), str(tmp_path / "data")
    instance = open_instance(root)
    for batch in range(2):
        write_files(tmp_path / "landing", {f"b{batch}/{i}.jpg": encode(photo(10 * batch + i), "JPEG") for i in range(3)})
        run_pipeline(instance, landing=landing, data_root=root)
    batches = instance.get_dynamic_partitions("batches")
    first = dg.evaluate_automation_conditions(defs=load_definitions(Settings.build(landing=landing, data_root=root)),
                                              instance=instance)
    assert first.get_requested_partitions(dg.AssetKey("image_quality")) == set()  # everything is up to date
    assert first.get_requested_partitions(dg.AssetKey("image_embeddings")) == set()

    def requested_after_restart(**changed: str) -> dict[str, list[str]]:
        # a code server restarted with new settings: a new process, as in a deployment
        environment = {**os.environ, "CV_DATAOPS_LANDING": landing, "CV_DATAOPS_DATA_ROOT": root, **changed}
        result = subprocess.run([sys.executable, "-c", EVALUATE], input=serialize_value(first.cursor), text=True,
                                capture_output=True, cwd=REPOSITORY, env=environment, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    new_thresholds = requested_after_restart(CV_DATAOPS_QUALITY_THRESHOLDS=json.dumps({"dark": 0.5}))
    new_embedder = requested_after_restart(CV_DATAOPS_EMBEDDER=json.dumps({"kind": "patch-kmeans",
                                                                           "dimension": 64}))
    assert new_thresholds == {"image_quality": sorted(batches), "image_embeddings": []}
    assert new_embedder == {"image_quality": [], "image_embeddings": sorted(batches)}
