"""Checks on the duplicate groups: one image kept per group."""

import dagster as dg

from cv_dataops.defs.duplicates.assets import IMAGE_DUPLICATES
from cv_dataops.duplicates.tables import DUPLICATES
from cv_dataops.resources import CatalogResource


@dg.asset_check(asset=IMAGE_DUPLICATES, blocking=True)
def duplicates_one_kept_per_group(catalog: CatalogResource) -> dg.AssetCheckResult:
    """Every duplicate group has at least two members and exactly one image to keep."""
    frame = catalog.catalog().read(DUPLICATES).to_pandas()
    per_group = frame.groupby("group_id").agg(members=("image_id", "size"), kept=("keep", "sum"))
    bad = per_group[(per_group.members < 2) | (per_group.kept != 1)]
    return dg.AssetCheckResult(passed=bad.empty, metadata={
        "groups": len(per_group), "bad_groups": dg.MetadataValue.json(bad.index.tolist()[:20])})
