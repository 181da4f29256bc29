"""`cv-dataops demo`: generated data with known ground truth goes through the whole pipeline correctly."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cv_dataops_tests.end_to_end.test_cli import (
    SMALL_CORPUS,
    assert_listed_under_the_code_locations_jobs,
)
from cv_dataops_tests.end_to_end.test_cli import cli as cli_with_tiny_embedder

pytestmark = pytest.mark.slow  # the whole demo pipeline in subprocesses


def cli(*args, env=None, **options):
    """The demo as a user runs it, with the default embedder: its duplicate groups and scenarios are checked."""
    return cli_with_tiny_embedder(*args, env={"CV_DATAOPS_EMBEDDER": None, **(env or {})}, **options)


def test_demo_generates_runs_and_every_file_ends_where_the_ground_truth_says(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    # 24 scenes leave some shapes without a val or test image: the ERROR check curated_min_per_class_and_split
    # would rightly fail (exit 3); this test is about where every file ends, so it asks for no minimum
    result = cli("demo", "--count", "24", cwd=tmp_path, env=SMALL_CORPUS)
    assert result.returncode == 0, result.stderr
    assert "dagster dev" in result.stdout and "24 images" not in result.stderr
    data = tmp_path / "data"
    truth = pd.read_csv(data / "demo_ground_truth.csv")
    images = pq.read_table(data / "catalog" / "images").to_pandas()
    quarantine = pq.read_table(data / "catalog" / "quarantine").to_pandas()
    objects = pq.read_table(data / "catalog" / "objects").to_pandas()
    assert len(objects) == len(truth)  # every generated file accounted for
    outcome = dict(zip(objects.relative_path, objects.outcome))
    reason = dict(zip(quarantine.relative_path, quarantine.reason))
    for row in truth.itertuples():
        if row.expected_outcome == "image":
            assert outcome[row.relative_path] == "image", row
        elif row.expected_outcome.startswith("duplicate_of:"):
            assert outcome[row.relative_path] == "duplicate", row
        else:
            assert reason[row.relative_path] == row.expected_outcome.split(":", 1)[1], row
    scenes = truth[truth.kind == "scene"].set_index("relative_path")
    assert (images.set_index("relative_path").label == scenes.label.reindex(images.relative_path)).all()
    assert set(images.camera_make) == set(scenes.camera.map({"cam_a": "Helios", "cam_b": "Corvid"}))
    assert (data / "dagster_home" / "dagster.yaml").exists()
    import dagster as dg

    with dg.DagsterInstance.from_config(str(data / "dagster_home")) as instance:  # the UI's Overview and job pages
        assert_listed_under_the_code_locations_jobs(instance, instance.get_runs())
        assert_the_webserver_shows_them_under_the_job(instance)

    again = cli("demo", "--count", "24", cwd=tmp_path)
    assert again.returncode == 0 and "nothing new landed" in again.stdout
    other = cli("demo", "--count", "30", cwd=tmp_path)
    assert other.returncode == 2 and "already holds a different demo" in other.stderr


JOB_RUNS = """{ pipelineOrError(params: {pipelineName: "ingest_batch", repositoryName: "__repository__",
                                        repositoryLocationName: "cv_dataops"}) { ... on Pipeline { runs { runId } } }
  runsOrError { ... on Runs { results { runId repositoryOrigin { repositoryLocationName } } } } }"""


def assert_the_webserver_shows_them_under_the_job(instance):
    """The webserver's own GraphQL over workspace.yaml: the job page lists the CLI's batch run, and the Overview
    (which groups runs by their repository origin) places every run in the cv_dataops location."""
    from dagster_graphql.test.utils import (
        define_out_of_process_context,
        execute_dagster_graphql,
    )

    from cv_dataops_tests.conftest import REPOSITORY

    with define_out_of_process_context(str(REPOSITORY / "workspace.yaml"), None, instance) as context:
        result = execute_dagster_graphql(context, JOB_RUNS)
    assert not result.errors, result.errors
    batch_runs = {r.run_id for r in instance.get_runs() if r.job_name == "ingest_batch"}
    assert {run["runId"] for run in result.data["pipelineOrError"]["runs"]} == batch_runs and batch_runs
    origins = {run["repositoryOrigin"]["repositoryLocationName"] for run in result.data["runsOrError"]["results"]}
    assert origins == {"cv_dataops"}


def test_demo_on_real_handwritten_digits(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = cli("demo", "--dataset", "digits", "--count", "40", "--data-dir", "digits-data", cwd=tmp_path)
    # 4 digits a class are too few for a val and a test image each: the ERROR check says so and the exit is 3
    assert result.returncode == 3, result.stderr
    assert "curated_min_per_class_and_split (ERROR)" in result.stdout, result.stdout
    images = pq.read_table(tmp_path / "digits-data" / "catalog" / "images").to_pandas()
    assert len(images) == 40 and set(images.label) <= {str(d) for d in range(10)}
    assert set(images["format"]) == {"PNG"} and set(images["mode"]) == {"L"}


def test_default_demos_keep_night_and_fog_and_group_only_real_duplicates(tmp_path, monkeypatch):
    """Issue 10's acceptance, at the demos' default size: the scenes snapshot holds its night and fog scenes in
    proportion (they are scenarios, not junk) and every check passes but the labels loop's two WARNs; the digits
    demo groups only near-identical digits of one class (absolute radii grouped 200 of these 240 distinct digits)
    and its curated set passes its checks, so the command exits 0."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = cli("demo", "--data-dir", "scenes", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    # every check passes but the labels loop's two WARNs: the demo's shapes are not learnable from the built-in
    # embedder (README, Known limits), so no label model is promoted and the label-error flags are called weak
    failed = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ") and "(WARN" in line
              or "(ERROR" in line]
    assert all(line.startswith(("label_model: label_model_promotion (WARN", "label_issues: label_issues_features"))
               for line in failed), result.stdout
    data = tmp_path / "scenes"
    truth = pd.read_csv(data / "demo_ground_truth.csv")
    scenes = truth[truth.kind == "scene"]
    curated = pq.read_table(data / "catalog" / "curated").to_pandas()
    images = pq.read_table(data / "catalog" / "images").to_pandas().set_index("image_id")
    chosen = scenes.set_index("relative_path").loc[images.loc[curated.image_id].relative_path]
    for column, value in (("lighting", "night"), ("weather", "fog")):
        in_catalog, in_snapshot = (scenes[column] == value).mean(), (chosen[column] == value).mean()
        assert (scenes[column] == value).sum() > 10 and in_snapshot >= 0.5 * in_catalog, (value, in_catalog,
                                                                                            in_snapshot)

    result = cli("demo", "--dataset", "digits", "--data-dir", "digits", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    data = tmp_path / "digits"
    groups = pq.read_table(data / "catalog" / "duplicates").to_pandas()
    digits = pq.read_table(data / "catalog" / "images").to_pandas().set_index("image_id")
    assert groups.image_id.nunique() <= 12, groups  # a few pairs of near-identical digits, not 200 images
    assert all(digits.loc[members.image_id].label.nunique() == 1 for _, members in groups.groupby("group_id"))
