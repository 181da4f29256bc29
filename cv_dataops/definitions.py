"""The code location: every stage's definitions, discovered from ``cv_dataops/defs``."""

from pathlib import Path

import dagster as dg


def load_definitions() -> dg.Definitions:
    """Load the definitions afresh; resources read CV_DATAOPS_* from the environment at this moment."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent)


defs = load_definitions()
