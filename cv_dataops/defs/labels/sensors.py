"""The review sensor: each file dropped into the data root's reviews/ folder is answered by one run of
``review_decisions`` (which appends its decisions to labels) and ``audited_labels``."""

import json

import dagster as dg

from cv_dataops.defs.labels.assets import audited_labels, review_decisions
from cv_dataops.labels.review import dropped_files
from cv_dataops.resources import CatalogResource, LabelsResource

CURSOR_LIMIT = 10_000  # file keys remembered; the store refuses a re-appended file anyway


@dg.sensor(target=[review_decisions, audited_labels], default_status=dg.DefaultSensorStatus.RUNNING,
           minimum_interval_seconds=30)
def review_sensor(context: dg.SensorEvaluationContext, catalog: CatalogResource,
                  labelling: LabelsResource) -> dg.SensorResult | dg.SkipReason:
    """New review files (by name and content digest: an edited file is new, the same file again is not) become one
    run of review_decisions and audited_labels (run key review:<name>@<digest>,...). The files stay."""
    seen = json.loads(context.cursor) if context.cursor else []
    known = set(seen)
    folder = catalog.storage().child(labelling.reviews_folder)
    new = [dropped for dropped, _ in dropped_files(folder) if dropped.key not in known]
    if not new:
        return dg.SkipReason(f"no new review file in {folder.uri} ({len(known)} picked up before)")
    key = ",".join(dropped.key for dropped in new)
    context.log.info(f"{len(new)} new review file(s): {', '.join(d.name for d in new)}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"review:{key}",
                                    asset_selection=[review_decisions.key, audited_labels.key],
                                    tags={"cv_dataops/review_files": ", ".join(d.name for d in new)[:200]})],
        cursor=json.dumps((seen + [d.key for d in new])[-CURSOR_LIMIT:]))
