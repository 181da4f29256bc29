"""The review sensor: each file dropped into the data root's reviews/ folder is answered by one run of
``review_decisions`` (which appends its decisions to labels) and ``audited_labels``.

The cursor keeps, per file name, the listing's version (size and mtime, or the S3 ETag) and the SHA-256 of the
content last picked up: an unchanged listing is not read again; a changed one is read and hashed, and only new
content (an edited file, a new name) makes a run. The same bytes written again make none.
"""

import json

import dagster as dg

from cv_dataops.defs.labels.assets import audited_labels, review_decisions
from cv_dataops.labels.review import file_key, listed_files
from cv_dataops.labels.sources import content_digest
from cv_dataops.resources import CatalogResource, LabelsResource


@dg.sensor(target=[review_decisions, audited_labels], default_status=dg.DefaultSensorStatus.RUNNING,
           minimum_interval_seconds=30)
def review_sensor(context: dg.SensorEvaluationContext, catalog: CatalogResource,
                  labelling: LabelsResource) -> dg.SensorResult | dg.SkipReason:
    """New review files (by name and content digest: an edited file is new, the same file again is not) become one
    run of review_decisions and audited_labels (run key review:<name>@<digest>,...). The files stay."""
    seen: dict[str, list[str]] = json.loads(context.cursor) if context.cursor else {}
    folder = catalog.storage().child(labelling.reviews_folder)
    new, cursor = [], dict(seen)
    for info in listed_files(folder):
        version, digest = seen.get(info.key, [None, None])
        if version == info.version:
            continue
        current = content_digest(folder.read_bytes(info.key))
        cursor[info.key] = [info.version, current]
        if current != digest:
            new.append(file_key(info.key, current))
    if not new:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"no new review file in {folder.uri} ({len(seen)} picked "
                                                         f"up before)"),
                               cursor=json.dumps(cursor, sort_keys=True) if cursor != seen else context.cursor)
    names = ", ".join(key.rsplit("@", 1)[0] for key in new)
    context.log.info(f"{len(new)} new review file(s): {names}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key="review:" + ",".join(new),
                                    asset_selection=[review_decisions.key, audited_labels.key],
                                    tags={"cv_dataops/review_files": names[:200]})],
        cursor=json.dumps(cursor, sort_keys=True))
