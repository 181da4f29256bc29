"""The service's files agree with the code (the compose stack itself needs a Docker engine, absent here)."""

from __future__ import annotations

import tomllib

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
