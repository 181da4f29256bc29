"""The code location ``cv_dataops``: every stage's definitions, discovered from ``cv_dataops/defs``, with the resources
and the settings-dependent code versions of one :class:`~cv_dataops.config.Settings`.

``defs`` is lazy (``@dg.definitions``): importing this module reads nothing and imports no stage; the code server
builds the definitions from the environment when it loads the location. ``cv-dataops run`` calls
:func:`load_definitions` with settings of its own instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

from cv_dataops.config import Settings

# The name every entry point gives the location (workspace.yaml, deploy/workspace.yaml, [tool.dg.project]), so the
# runs `cv-dataops run` makes show under the same jobs as those the daemon launches.
CODE_LOCATION = "cv_dataops"
MODULE, ATTRIBUTE = __name__, "defs"


def settings_code_versions(settings: Settings) -> dict[str, str]:
    """The code version of each asset whose results depend on settings: its algorithm's version plus a digest of
    those settings, so changing them shows every batch stale and the automation sensor backfills it."""
    from cv_dataops.defs.embeddings.assets import embeddings_code_version
    from cv_dataops.quality.measure import quality_version

    return {"image_quality": quality_version(settings.quality_threshold_values()),
            "image_embeddings": embeddings_code_version(dict(settings.embedder))}


def stage_modules() -> list[str]:
    """Every module of the defs folder, by name (what the executor's fork server imports once per run)."""
    folder = Path(__file__).resolve().parent / "defs"
    return sorted(".".join(("cv_dataops", *path.relative_to(folder.parent).with_suffix("").parts))
                  for path in folder.rglob("*.py") if path.name != "__init__.py")


def step_executor() -> dg.ExecutorDefinition:
    """Dagster's multiprocess executor, its step processes forked from a server that imported every stage once.

    The default starts each step by ``spawn``: a fresh interpreter that imports Dagster, scikit-learn, SciPy and
    pandas and loads the definitions again, 5-7 CPU-s a step, before the step does anything (a per-batch run of
    one image took 50 s in the daemon, nearly all of it start-up). A fork server pays that once per run; a step
    still runs in a process of its own, so a step that crashes or is killed takes no other step with it.
    Importing the stages reads no setting (see :mod:`cv_dataops.config`), so the preload is safe whatever the
    environment."""
    return dg.multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": [MODULE, "cv_dataops.resources", *stage_modules()]}}},
        name="multiprocess_forked_steps")


def load_definitions(settings: Settings | None = None) -> dg.Definitions:
    """The code location's definitions for ``settings`` (default: from the environment). Never raises for a wrong
    setting: the stage it configures fails when it runs (see :mod:`cv_dataops.config`)."""
    from cv_dataops.core.threads import one_native_thread_per_process
    from cv_dataops.resources import build_resources

    one_native_thread_per_process()  # before the executor starts its fork server: every step inherits it
    settings = Settings.from_environment() if settings is None else settings
    stages = dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent)
    versions = settings_code_versions(settings)

    def with_settings_version(spec: dg.AssetSpec) -> dg.AssetSpec:
        version = versions.get(spec.key.to_user_string())
        return spec if version is None else spec.replace_attributes(code_version=version)

    # A checks module imports its asset, so the folder yields the same AssetsDefinition twice: once is enough, and
    # mapping the two copies would make two different definitions of one key.
    unique = list({id(asset): asset for asset in stages.assets or []}.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # map_asset_specs
        versioned = dg.Definitions(
            assets=unique, asset_checks=stages.asset_checks, jobs=stages.jobs, schedules=stages.schedules,
            sensors=stages.sensors, executor=stages.executor or step_executor(), loggers=stages.loggers,
            metadata=stages.metadata,
            resources={**(stages.resources or {}), **build_resources(settings)},
        ).map_asset_specs(func=with_settings_version)
    return versioned


@dg.definitions
def defs() -> dg.Definitions:
    return load_definitions()
