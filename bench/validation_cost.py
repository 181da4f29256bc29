"""What the quality stage's GX check costs per batch of 2,000 rows: before (GX Data Docs) and after (one GX
context per process, our own page), in the same run, on a local folder and on an S3 API.

* **before**: the check as it was until this change (kept below as ``data_docs_per_batch``, from
  ``git show 222539e:cv_dataops/quality/expectations.py``): a new ephemeral GX context per batch, a checkpoint whose
  ``UpdateDataDocsAction`` builds a Data Docs site in a temporary folder, and every file of that site uploaded
  through the storage. Same expectations as after (the suite derived from the schema).
* **after**: ``validation_report.validate_and_report``: the process's one context, ``batch.validate(suite)``, one
  page, its sidecar, and the index.

The frame is 2,000 schema-valid rows of the ``quality`` table with random values. Per variant and storage: the
first batch of a process (context creation and GX's first-call costs included), then the median of ``--repeat``
further batches, the S3 requests a batch makes (counted on the boto3 client) and the bytes it writes. A fresh
process pays ``import great_expectations`` first, either way (Dagster's default executor runs each check in its
own process): measured apart, as the median of three fresh interpreters. S3 is moto's server on loopback, so its
seconds hold no network latency: on real S3 each request adds its round trip, hence the request counts.

    .venv/bin/python bench/validation_cost.py --repeat 5 --write
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cv_dataops.core.storage import LocalStorage, Storage, open_storage  # noqa: E402
from cv_dataops.quality.expectations import suite_expectations  # noqa: E402
from cv_dataops.quality.tables import QUALITY  # noqa: E402
from cv_dataops.quality.validation_report import validate_and_report  # noqa: E402

ROWS = 2000


def quality_frame(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """``rows`` schema-valid rows of the quality table with random values inside the suite's ranges."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {}
    for column in QUALITY.column_names:
        if column.endswith("_score"):
            data[column] = rng.random(rows)
        elif column.startswith("is_"):
            data[column] = rng.random(rows) < 0.1
    for column in ("brightness", "dark_clipped_fraction", "light_clipped_fraction", "rms_contrast"):
        data[column] = rng.random(rows)
    data.update(image_id=[f"{i:064x}" for i in range(rows)], batch_id=["00000001-bench"] * rows,
                width=np.full(rows, 1024), height=np.full(rows, 768), colourfulness=rng.random(rows) * 50,
                noise_sigma=rng.random(rows) * 3, sharpness=rng.random(rows) * 100, entropy=rng.random(rows) * 8,
                jpeg_quality=np.full(rows, 90), analysis_width=np.full(rows, 256), analysis_height=np.full(rows, 192),
                phash=rng.integers(0, 2**63, rows).astype(np.uint64),
                dhash=rng.integers(0, 2**63, rows).astype(np.uint64),
                pixel_hash=[f"{i + 1:064x}" for i in range(rows)], quality_version=["bench"] * rows)
    return QUALITY.from_rows(pd.DataFrame(data).to_dict("records")).to_pandas()


def data_docs_per_batch(frame: pd.DataFrame, suite_name: str, batch_label: str, docs: Storage) -> bool:
    """The former check (GX Data Docs), as it was: a context, a site and a full upload per batch."""
    import logging
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cv-dataops-gx-") as site:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = {"globally": False}
        context.add_data_docs_site(site_name="catalog", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": site},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        batch_definition = (context.data_sources.add_pandas("catalog").add_dataframe_asset(suite_name)
                            .add_batch_definition_whole_dataframe(batch_label))
        suite = gx.ExpectationSuite(name=suite_name)
        for expectation in suite_expectations(suite_name):
            suite.add_expectation_configuration(ExpectationConfiguration(type=expectation["type"],
                                                                         kwargs=expectation["kwargs"]))
        suite = context.suites.add(suite)
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_name}-{batch_label}", data=batch_definition, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"{suite_name}-checkpoint", validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")], result_format="SUMMARY"))
        result = next(iter(checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()))
        for path in Path(site).rglob("*"):
            if path.is_file():
                docs.write_bytes(f"reports/data_docs/{path.relative_to(site).as_posix()}", path.read_bytes())
        return bool(result.success)


def after(frame: pd.DataFrame, suite_name: str, batch_label: str, docs: Storage) -> bool:
    return validate_and_report(frame, suite_name, batch_label, docs).success


VARIANTS = {"before: GX Data Docs per batch": data_docs_per_batch, "after: one context, own page": after}


class Counted:
    """Counts a storage's S3 requests (boto3 events) or, locally, nothing; and the bytes written."""

    def __init__(self, storage: Storage):
        self.storage, self.requests, self.written = storage, 0, 0
        client = getattr(storage, "client", None)
        if client is not None:
            client.meta.events.register("before-call.s3.*", self._count)
        original = storage.write_bytes

        def write_bytes(key: str, data: bytes) -> None:
            self.written += len(data)
            original(key, data)

        storage.write_bytes = write_bytes  # type: ignore[method-assign]

    def _count(self, **_: object) -> None:
        self.requests += 1


def measure(storage_factory, repeat: int, frame: pd.DataFrame) -> dict[str, dict]:
    """Each variant ``repeat + 1`` times into its own storage, alternating, so both see the same machine load."""
    storages = {name: Counted(storage_factory(name)) for name in VARIANTS}
    runs: dict[str, list[tuple[float, float, int, int]]] = {name: [] for name in VARIANTS}
    for number in range(repeat + 1):
        for name, function in VARIANTS.items():
            storage = storages[name]
            storage.requests = storage.written = 0
            wall, cpu = time.perf_counter(), time.process_time()
            assert function(frame, "quality", f"{number:08d}-bench", storage.storage)
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu, storage.requests,
                               storage.written))
    results = {}
    for name, measured in runs.items():
        later = measured[1:]
        results[name] = {"first_wall": measured[0][0], "first_cpu": measured[0][1],
                         "wall": statistics.median(m[0] for m in later), "cpu": statistics.median(m[1] for m in later),
                         "requests": statistics.median(m[2] for m in later),
                         "written": statistics.median(m[3] for m in later)}
    return results


def import_seconds() -> tuple[float, float]:
    """Wall and CPU seconds of ``import great_expectations`` in a fresh interpreter, median of three."""
    code = ("import os, time; os.environ['GX_ANALYTICS_ENABLED'] = 'False'; t, c = time.perf_counter(), "
            "time.process_time(); import great_expectations; "
            "print(time.perf_counter() - t, time.process_time() - c)")
    runs = [tuple(map(float, subprocess.check_output([sys.executable, "-c", code], text=True).split()))
            for _ in range(3)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    frame = quality_frame()
    import great_expectations  # noqa: F401  (the import is measured apart, in fresh interpreters)
    with tempfile.TemporaryDirectory() as folder:
        local = measure(lambda name: LocalStorage(Path(folder) / name.split(":")[0]), args.repeat, frame)
    import logging
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        credentials = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, **credentials).create_bucket(Bucket="bench")
        s3 = measure(lambda name: open_storage(f"s3://bench/{name.split(':')[0]}",
                                               boto3.client("s3", endpoint_url=endpoint, **credentials)),
                     args.repeat, frame)
    finally:
        server.stop()
    imported_wall, imported_cpu = import_seconds()
    print(json.dumps({"local": local, "s3": s3, "import_wall": imported_wall, "import_cpu": imported_cpu}, indent=1))
    if args.write:
        from report import update_section

        lines = ["| variant | local: first batch, wall / CPU s | local: next batches, wall / CPU s | "
                 "S3 (moto): first, wall s | S3: next, wall s | S3 requests per batch | bytes written per batch |",
                 "|---|---|---|---|---|---|---|"]
        for name in VARIANTS:
            lo, remote = local[name], s3[name]
            lines.append(f"| {name} | {lo['first_wall']:.2f} / {lo['first_cpu']:.2f} | {lo['wall']:.2f} / "
                         f"{lo['cpu']:.2f} | {remote['first_wall']:.2f} | {remote['wall']:.2f} | "
                         f"{remote['requests']:.0f} | {lo['written'] / 1000:.0f} kB |")
        first_name, last_name = VARIANTS
        before, now = local[first_name]["cpu"], local[last_name]["cpu"]
        body = (f"One batch of {ROWS:,} schema-valid `quality` rows (random values), the suite's "
                f"{len(suite_expectations('quality'))} expectations, in one process (GX imported beforehand), the "
                "two variants alternating. *first* is the process's first batch (locally, after: the context "
                "created and the suite built; on S3, run second: the first batch into the bucket), *next* the "
                f"median of {args.repeat} further batches. CPU s is this process's processor time (what a batch "
                "costs, whatever else the shared machine runs); on S3 it would include moto's server threads, so "
                "only wall time is shown there.\n\n"
                + "\n".join(lines) + "\n\n"
                f"A fresh process first pays `import great_expectations`: {imported_wall:.2f} s wall, "
                f"{imported_cpu:.2f} s CPU (median of 3), before and after alike; Dagster's default executor runs "
                "each check step in its own process, so a step costs that import plus the *first* column: locally "
                f"about {imported_cpu + local[first_name]['first_cpu']:.1f} CPU s before and "
                f"{imported_cpu + local[last_name]['first_cpu']:.1f} after, the import dominating. Per further "
                f"batch of a process: {before:.2f} CPU s before, {now:.2f} after ({before / now:.1f}x less). moto "
                "answers on loopback, so the S3 seconds hold no network latency: on real S3 every request adds a "
                "round trip, which is what the request count shows (before: the whole Data Docs site, three "
                "requests a file for an atomic write, every batch; after: a page, its sidecar, the index and its "
                "cache, one listing and one read).")
        update_section("validation-cost", "GX check per batch: Data Docs before, one context and own page after",
                       body)


if __name__ == "__main__":
    main()
