"""Resources for every stage, configured from CV_DATAOPS_* environment variables (see the README)."""

import dagster as dg

from cv_dataops.resources import build_resources


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
