"""The service's files agree with the code (the compose stack itself needs a Docker engine, absent here)."""

from __future__ import annotations

import tomllib

import pytest
import yaml

from cv_dataops_tests.conftest import REPOSITORY


def test_compose_has_the_service_and_points_it_at_the_code():
    compose = yaml.safe_load((REPOSITORY / "docker-compose.yml").read_text())
    assert {"postgres", "minio", "code", "webserver", "daemon"} <= set(compose["services"])
    environment = compose["services"]["daemon"]["environment"]
    assert environment["CV_DATAOPS_LANDING"].startswith("s3://") and environment["AWS_ENDPOINT_URL"]
    assert "cv_dataops.definitions" in compose["services"]["code"]["command"]


def test_instance_and_workspace_files_are_valid_dagster_config():
    from dagster._core.instance.config import dagster_instance_config

    home = REPOSITORY / "deploy"
    config, _ = dagster_instance_config(str(home), config_filename="dagster.yaml")
    assert "postgres" in config["storage"]
    workspace = yaml.safe_load((home / "workspace.yaml").read_text())
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    location = pyproject["tool"]["dg"]["project"]["code_location_name"]
    assert workspace["load_from"][0]["grpc_server"]["location_name"] == location
    local = yaml.safe_load((REPOSITORY / "workspace.yaml").read_text())
    assert local["load_from"][0]["python_module"]["location_name"] == location


def test_dagster_family_is_pinned_in_lockstep():
    dependencies = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["dependencies"]
    for pin in ("dagster==1.13.27", "dagster-webserver==1.13.27", "dagster-aws==0.29.27", "dagster-postgres==0.29.27"):
        assert pin in dependencies


def test_every_entry_point_names_the_same_code_location(tmp_path):
    """CLI runs are attached to the location by name: the workspace files, [tool.dg.project], the definitions
    module and the workspace `cv-dataops ui` writes must agree on it."""
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    from cv_dataops.definitions import CODE_LOCATION
    from cv_dataops.runner import dagster_home

    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    assert pyproject["tool"]["dg"]["project"]["code_location_name"] == CODE_LOCATION
    generated = dagster_home(str(tmp_path / "data")) / "workspace.yaml"
    for workspace in (REPOSITORY / "workspace.yaml", generated):
        (origin,) = location_origins_from_yaml_paths([str(workspace)])
        assert origin.location_name == CODE_LOCATION
        assert origin.loadable_target_origin.module_name == "cv_dataops.definitions"


def test_compose_sets_only_known_settings():
    from cv_dataops.config import VARIABLES, Settings

    compose = yaml.safe_load((REPOSITORY / "docker-compose.yml").read_text())
    environment = compose["services"]["code"]["environment"]
    names = [name for name in environment if name.startswith("CV_DATAOPS_")]
    assert names and set(names) <= set(VARIABLES)
    assert not Settings.from_environment({name: str(environment[name]) for name in names}).errors


@pytest.mark.slow  # Dagster's CLI in a subprocess
def test_the_code_location_loads_with_a_wrong_setting():
    """Dagster's own loader, through workspace.yaml: a mistyped threshold no longer stops the location (and its
    landing sensor) from loading; only the quality stage's runs fail, with the one-line error."""
    import os
    import subprocess
    import sys

    environment = {**os.environ, "CV_DATAOPS_QUALITY_THRESHOLDS": '{"drak": 0.5}'}
    result = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                            cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Validation successful for code location cv_dataops" in output, output[-2000:]
