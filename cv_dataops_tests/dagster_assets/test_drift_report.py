"""The drift report in the per-batch job, run as `cv-dataops run` runs it: a first batch has no reference and
flags nothing; a second batch from a "new camera" (twice the resolution, JPEG quality 30) drifts with a large
effect, its ERROR check fails with the cause, the offline report is written, the webhook (a small HTTP server
on loopback) receives one alert naming the batch, the review round puts the batch's most atypical images first,
the drift sensor asks for the curated set and the review round again, and data_health shows both batches, the
second marked large."""

from __future__ import annotations

import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cv_dataops.config import Settings
from cv_dataops.definitions import load_definitions
from cv_dataops.demo import data as demo_data
from cv_dataops.runner import open_instance, run_pipeline
from cv_dataops_tests.conftest import TINY_EMBEDDER_SPEC

pytestmark = pytest.mark.slow  # two pipeline runs on generated scenes


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def _new_camera(source, destination) -> None:
    """Every scene of ``source`` as another camera would give it: twice the size, heavily compressed, landing
    unlabelled (at the landing root, not in a class folder)."""
    destination.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(sorted(source.rglob("*.jpg"))):
        image = Image.open(path).convert("RGB")
        image = image.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=30)
        (destination / f"camera2_{number:03d}.jpg").write_bytes(buffer.getvalue())


def test_a_new_camera_drifts_with_a_large_effect_and_alerts_once(tmp_path, monkeypatch, webhook):
    url, received = webhook
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    landing, data = tmp_path / "landing", tmp_path / "data"
    demo_data.generate_demo(landing / "first", count=60, seed=1, include_bad=False)
    settings = Settings.build(landing=landing, data_root=data, embedder=TINY_EMBEDDER_SPEC,
                              curation={"min_per_class_and_split": 0},
                              drift={"webhook_url": url, "webhook_kind": "generic", "permutations": 400})
    instance = open_instance(str(data))
    first = run_pipeline(instance, landing=str(landing), data_root=str(data), settings=settings)
    (first_batch,) = first.ingested_batches
    (row,) = pq.read_table(data / "catalog" / "drift_summary").to_pylist()
    assert row["batch_id"] == first_batch and row["reference_id"] is None and not row["drifted"], row
    assert row["severity"] == "none" and pq.read_table(data / "catalog" / "drift").num_rows == 0  # no test ran
    assert "No reference: no curated snapshot yet" in (data / row["report_uri"].removeprefix(f"{data}/")).read_text()
    assert not [c for c in first.failed_checks if c.check == "drift_report_no_drift"]

    demo_data.generate_demo(tmp_path / "scenes", count=30, seed=2, include_bad=False)
    _new_camera(tmp_path / "scenes", landing)
    second = run_pipeline(instance, landing=str(landing), data_root=str(data), settings=settings)
    (second_batch,) = second.ingested_batches
    summary = pq.read_table(data / "catalog" / "drift_summary").to_pandas().set_index("batch_id")
    row = summary.loc[second_batch]
    assert row["drifted"] and row["severity"] == "large", row.to_dict()
    assert row["reference_id"]  # the snapshot the first run curated
    assert any(word in row["top_cause"] for word in ("width", "height", "JPEG quality")), row["top_cause"]

    tests = pq.read_table(data / "catalog" / "drift").to_pandas()
    mine = tests[tests["batch_id"] == second_batch]
    assert {"ks", "mmd", "domain_classifier"} <= set(mine["test"])
    assert mine[mine["feature"] == "width"]["drifted"].all()
    atypical = pq.read_table(data / "catalog" / "drift_atypicality").to_pandas()
    assert sorted(atypical[atypical["batch_id"] == second_batch]["rank"]) == list(range(1, 31))

    (failed,) = [c for c in second.failed_checks if c.check == "drift_report_no_drift"]
    assert failed.severity == "ERROR" and failed.batch_id == second_batch, failed

    report = (data / row["report_uri"].removeprefix(str(data) + "/")).read_text()
    assert second_batch in report and not re.search(r"(src|href)=[\"']?https?:", report)  # renders offline

    (alert,) = received  # the first batch had no reference: no alert for it
    assert alert["batch_id"] == second_batch and alert["severity"] == "large" and alert["top_causes"]

    # adaptation: the round written by this run starts with the drifted batch's most atypical images
    latest = json.loads((data / "review" / "latest.json").read_text())
    queue = pd.read_csv(latest["csv"])
    ranked = atypical[atypical["batch_id"] == second_batch].sort_values("rank")["image_id"].tolist()
    drifted_rows = queue[queue["reason"] == "drift_atypical"]
    assert len(drifted_rows) and queue["reason"].iloc[0] == "drift_atypical"
    assert drifted_rows["image_id"].tolist() == ranked[:len(drifted_rows)]
    defs = load_definitions(settings)
    sensor = defs.resolve_sensor_def("drift_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        (request,) = sensor.evaluate_tick(context).run_requests
    assert request.run_key.startswith(f"drift:{second_batch}:")
    assert set(request.asset_selection) == {dg.AssetKey("curated_dataset"), dg.AssetKey("review_queue")}

    # the trend a team watches: one row per batch, the drifted one marked, the plot in the metadata
    health = pq.read_table(data / "catalog" / "data_health").to_pandas()
    assert list(health["batch_id"]) == [first_batch, second_batch] and list(health["position"]) == [1, 2]
    assert list(health["drift_severity"]) == ["none", "large"]
    assert health["drift_classifier_auc"].iloc[0] != health["drift_classifier_auc"].iloc[0]  # no reference: null
    assert health["largest_property_shift"].iloc[1] > 0.311 and (health["quarantine_rate"] == 0).all()
    event = instance.get_latest_materialization_event(dg.AssetKey("data_health"))
    trend = event.asset_materialization.metadata["trend"].value
    assert trend.startswith("![data health per batch](data:image/png;base64,")

    # a named snapshot as reference: the one this batch was compared with, and one that was never written
    snapshot = row["reference_id"]
    for name, expected in ((snapshot, snapshot), ("snap-0000000000000000", None)):
        named = Settings.build(landing=landing, data_root=data, embedder=TINY_EMBEDDER_SPEC,
                               curation={"min_per_class_and_split": 0},
                               drift={"reference": "named_snapshot", "snapshot_id": name, "permutations": 400})
        job = load_definitions(named).resolve_implicit_global_asset_job_def()
        assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("drift_report")],
                                      partition_key=second_batch, raise_on_error=False).success
        (again,) = pq.read_table(data / "catalog" / "drift_summary" / f"{second_batch}.parquet").to_pylist()
        assert again["reference_id"] == expected, again
        assert again["drifted"] == (expected is not None)
    note = instance.get_latest_materialization_event(dg.AssetKey("drift_report")).asset_materialization.metadata
    assert "snapshot snap-0000000000000000 not found" in note["note"].value
