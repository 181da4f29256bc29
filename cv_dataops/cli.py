"""The `cv-dataops` command line: demo, run, status, table, search, ui.

Every command drives the same Dagster definitions the daemon does. Bad arguments, a wrong setting, a missing
folder or an unreachable bucket end in one clear line on stderr and a non-zero exit, never a traceback. Arguments
and settings are checked before anything heavy is imported (Dagster, pandas, the pipeline), so a typo costs a
fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cv_dataops.config import (
    DEFAULT_LABELS,
    LABEL_MODES,
    VARIABLES,
    ConfigError,
    Settings,
)

DEMO_DATASETS = ("scenes", "digits")
# Exit codes: 1 a step failed (or another error), 2 bad arguments or settings, 3 the runs worked but an
# ERROR-severity asset check failed (a failed WARN check exits 0; both are listed).
EXIT_FAILED, EXIT_USAGE, EXIT_CHECK_FAILED = 1, 2, 3


class CliError(Exception):
    """An error for the user: printed as one line, without a traceback."""


def _error(message: str, code: int = EXIT_FAILED) -> int:
    print(f"cv-dataops: error: {message}", file=sys.stderr)
    return code


# Messages of a database or file system that ran out of room (SQLite says "disk I/O error" when its journal
# cannot grow).
_DISK_FULL_SIGNS = ("disk i/o error", "database or disk is full", "no space left on device")
_ALMOST_FULL_BYTES = 1 << 20  # less free than this after a failed write: the disk is what is full


def cause_line(error: BaseException, folder: str | None = None) -> str:
    """An exception as the one line the user reads: its message's first line (SQLAlchemy appends the SQL and a
    link), and, where the message points at a full disk, how much room ``folder``'s file system has left."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else type(error).__name__
    if any(sign in message.lower() for sign in _DISK_FULL_SIGNS) and folder and not folder.startswith("s3://"):
        place = os.path.abspath(folder)
        while place and not os.path.exists(place):
            place = os.path.dirname(place)
        try:
            free = shutil.disk_usage(place).free
        except OSError:
            return message
        if free < _ALMOST_FULL_BYTES:  # measured, so say it: the error's own words hide it (sqlite's "disk I/O")
            message += f" (no space left on the disk holding {os.path.abspath(folder)}: {free // 1024} KB free)"
        else:
            message += f" ({free // 1024} KB free on the disk holding {os.path.abspath(folder)}: is it full?)"
    return message


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="batch", disable=None, file=sys.stderr)


def _settings(**locations: str | None) -> Settings:
    """The environment's settings with the locations given on the command line (None: the setting's), or
    :class:`ConfigError` naming the first wrong one."""
    settings = Settings.from_environment().replace(**{k: v for k, v in locations.items() if v is not None}).check()
    for name in settings.unknown_variables:
        print(f"cv-dataops: warning: {name} is not a setting (ignored); settings: "
              f"{', '.join(sorted(VARIABLES))}", file=sys.stderr)
    return settings


def _check_reachable(*uris: str) -> None:
    """Fail fast on a missing folder or an unreachable bucket, before the pipeline is loaded (the command line's
    S3 client has the default S3Resource's configuration: boto3's environment)."""
    from cv_dataops.core.storage import S3ClientSettings, open_storage

    for uri in uris:
        open_storage(uri, S3ClientSettings().client).ensure_exists()


def run_command(landing: str, data_root: str | None, labels: str | None, select: list[str] | None,
                wait_seconds: float = 0.0) -> int:
    settings = _settings(landing=landing, data_root=data_root, labels=labels)
    landing, data_root, labels = settings.landing, settings.data_root, settings.labels
    _check_reachable(landing)
    from cv_dataops.core.lease import LeaseHeld
    from cv_dataops.runner import (
        PipelineFailed,
        dagster_ui_hint,
        open_instance,
        run_pipeline,
    )

    bar = None

    def on_batch(batch_id: str, position: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = _progress(total, "ingesting batches")
        bar.set_postfix_str(batch_id)
        if position > 1:
            bar.update(1)

    instance = open_instance(data_root)
    try:
        summary = run_pipeline(instance, landing=landing, data_root=data_root, labels=labels, select=select,
                               settings=settings, on_batch=on_batch, wait_seconds=wait_seconds)
    except LeaseHeld as error:
        raise CliError(str(error)) from None
    except PipelineFailed as error:  # where every batch stands, then the one-line cause (on stderr)
        if error.summary is not None:
            if error.summary.status is not None:
                _print_status(error.summary.status)
            _print_checks(error.summary)
        if error.checks_only:  # nothing broke: blocking checks judged the data and stopped what follows it
            return _error(str(error), EXIT_CHECK_FAILED)
        raise
    finally:
        if bar is not None:
            bar.update(bar.total - bar.n if not sys.exc_info()[0] else 0)
            bar.close()
    if summary.orphaned_runs:
        print(f"{len(summary.orphaned_runs)} run(s) left unfinished by a killed process marked failed; "
              "their batches were finished now")
    if not summary.ingested_batches and not summary.downstream_assets:
        print("nothing new landed; nothing to do")
    else:
        print(f"new batches: {len(summary.new_batches)}; batches run: {len(summary.ingested_batches)}; "
              f"downstream assets refreshed: {', '.join(summary.downstream_assets) or 'none'}")
    from cv_dataops.defs.ingest.assets import label_problem_counts

    label_problems = sum(label_problem_counts(instance, summary.ingested_batches).values())
    if label_problems:  # the rows of labels.csv not applied (issue 9); the good rows were
        print(f"labels.csv: {label_problems} row(s) not applied (malformed, unknown path or conflicting labels): "
              f"see raw_images' label_problems metadata")
    if summary.status is not None:
        _print_status(summary.status, brief=True)
    _print_checks(summary)
    _print_catalog_summary(settings)
    print(f"Dagster UI on these runs: {dagster_ui_hint(landing, data_root)}")
    errors = summary.failed_error_checks()
    if errors:
        return _error(f"{len(errors)} ERROR check(s) failed: {', '.join(sorted({c.check for c in errors}))} "
                      "(listed above)", EXIT_CHECK_FAILED)
    return 0


def _print_checks(summary) -> None:
    """Every failed asset check of the runs just made, one line each with its severity and what it saw."""
    failed = summary.failed_checks
    if not failed:
        if summary.checks_evaluated:
            print(f"checks: all {summary.checks_evaluated} passed")
        return
    severities = ", ".join(f"{sum(c.severity == s for c in failed)} {s}" for s in ("ERROR", "WARN")
                           if any(c.severity == s for c in failed))
    print(f"checks: {len(failed)} of {summary.checks_evaluated} failed ({severities}):")
    for check in failed:
        print(f"  {check.line()}")


def _print_status(status, brief: bool = False) -> None:
    """Every batch's stages (only the unfinished ones when ``brief``), then the spanning assets' freshness."""
    print(f"batches: {status.counts()}")
    for line in status.lines():
        if not brief or "UNFINISHED" in line or not line.startswith("batch ") and not line.endswith(": fresh"):
            print(f"  {line}")
    if status.deferred_line():
        print(status.deferred_line())


def status_command(landing: str | None, data_root: str | None) -> int:
    """Where every batch stands per stage, and whether the spanning assets include every batch (reads only)."""
    settings = _settings(landing=landing, data_root=data_root)
    from cv_dataops.runner import open_instance, status_of

    status = status_of(open_instance(settings.data_root), landing=settings.landing, data_root=settings.data_root,
                       settings=settings)
    _print_status(status)
    return 0


def _catalog(settings: Settings):
    """The catalog, opened as the pipeline's catalog resource opens it, without importing Dagster (a `table`
    command took 5 s, 4 of them imports)."""
    from cv_dataops.core.catalog import Catalog
    from cv_dataops.core.storage import open_data_root

    return Catalog(open_data_root(settings.data_root))


def _print_catalog_summary(settings: Settings) -> None:
    data_root = settings.data_root
    catalog = _catalog(settings)
    images = catalog.read("images", columns=["image_id"]).num_rows
    quarantine = catalog.read("quarantine", columns=["reason"]).column("reason").to_pylist()
    reasons = {reason: quarantine.count(reason) for reason in sorted(set(quarantine))}
    print(f"catalog at {catalog.storage.uri_of('catalog')}: {images} images, {len(quarantine)} quarantined"
          + (f" ({', '.join(f'{k}: {v}' for k, v in reasons.items())})" if reasons else ""))
    quality = catalog.read("quality").to_pandas()
    if len(quality):
        from cv_dataops.quality.measure import ISSUE_TYPES

        counts = ", ".join(f"{issue}: {int(quality[f'is_{issue}'].sum())}" for issue in ISSUE_TYPES)
        print(f"quality: {int(quality.is_unusable.sum())} of {len(quality)} images unusable; issues: {counts}")
    duplicates = catalog.read("duplicates", columns=["group_id", "kind"]).to_pandas()
    if len(duplicates):
        print(f"duplicates: {duplicates.group_id.nunique()} groups "
              f"({', '.join(f'{k}: {v}' for k, v in duplicates.kind.value_counts().items())})")
    from cv_dataops.tables import TABLES

    print(f"read a table with: cv-dataops table {'|'.join(TABLES)}"
          + ("" if data_root == "data" else f" --data-root {data_root}"))


def demo_command(data_dir: str, dataset: str, count: int, seed: int) -> int:
    """Generate the demo landing zone once (nothing downloaded), then run the whole pipeline on it."""
    _settings(landing=str(Path(data_dir) / "landing"), data_root=data_dir)
    from cv_dataops.demo import data as demo_data

    landing = Path(data_dir) / "landing"
    marker = Path(data_dir) / "demo.json"
    wanted = {"dataset": dataset, "count": count, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) != wanted:
        raise CliError(f"{data_dir} already holds a different demo ({marker.read_text().strip()}); "
                       f"remove {data_dir} or pass another --data-dir")
    if not marker.exists():
        landing.mkdir(parents=True, exist_ok=True)
        if dataset == "scenes":
            truth = demo_data.generate_demo(landing, count=count, seed=seed)
        else:
            truth = demo_data.write_digits(landing, limit=count)
        truth.to_csv(Path(data_dir) / "demo_ground_truth.csv", index=False)
        marker.write_text(json.dumps(wanted) + "\n")
        print(f"generated {len(truth)} demo files ({dataset}) in {landing}")
    return run_command(str(landing), data_dir, DEFAULT_LABELS, None)


def table_command(name: str, data_root: str | None, output: str | None) -> int:
    settings = _settings(data_root=data_root)
    data_root = settings.data_root
    from cv_dataops.tables import table_definition

    definition = table_definition(name)
    catalog = _catalog(settings)
    catalog.storage.ensure_exists()
    return _show(catalog.read(definition), output, f"table {name}")


def export_command(snapshot_id: str, data_root: str | None, output: str) -> int:
    """A snapshot's ImageFolder tree written from its manifest into the local folder ``output`` (which must not
    hold files yet): for snapshots whose copy was pruned (keep_imagefolders), or to put one where training reads."""
    settings = _settings(data_root=data_root)
    from cv_dataops.core.storage import UriReader
    from cv_dataops.curation.dataset import export_snapshot_imagefolder

    target = Path(output)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CliError(f"{output} exists and is not an empty folder: choose a new one")
    catalog = _catalog(settings)
    catalog.storage.ensure_exists()

    def write(relative: str, data: bytes) -> None:
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    try:
        written, skipped = export_snapshot_imagefolder(catalog.storage, snapshot_id, UriReader(), write)
    except KeyError as error:
        raise CliError(error.args[0]) from None
    print(f"wrote {written} images of {snapshot_id} to {target} (<split>/<label>/<image>)")
    for entry in skipped:
        print(f"cv-dataops: warning: left out {entry['image_id'][:16]}: {entry['problem']}", file=sys.stderr)
    return 0


def search_command(data_root: str | None, sql: str, output: str | None) -> int:
    settings = _settings(data_root=data_root)
    data_root = settings.data_root
    from cv_dataops.discovery.search import run_sql

    catalog = _catalog(settings)
    catalog.storage.ensure_exists()
    return _show(run_sql(catalog, sql), output, "query result")


def search_like_command(data_root: str | None, like: str, k: int, output: str | None) -> int:
    """The ``k`` images nearest to an image file (local or s3://), or to a catalog image given by its id or a
    unique prefix of it (which is then left out of the answer)."""
    import warnings

    settings = _settings(data_root=data_root)
    data_root = settings.data_root
    from cv_dataops.discovery.search import (
        MixedEmbedderVersionsWarning,
        UnknownImageError,
        embed_image_bytes,
        similar_images,
    )
    from cv_dataops.resources import build_resources

    catalog_resource = build_resources(settings)["catalog"]
    catalog = catalog_resource.catalog()
    catalog.storage.ensure_exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MixedEmbedderVersionsWarning)
        if like.startswith("s3://") or Path(like).is_file():
            uri = like if like.startswith("s3://") else os.path.abspath(like)
            try:
                vector, version = embed_image_bytes(catalog, catalog_resource.uri_reader()(uri),
                                                    dict(settings.embedder))
            except ValueError as error:
                raise CliError(f"{like}: {error}") if str(error).startswith("cannot decode") else error
            result = similar_images(catalog, vector, k, embedder_version=version)
        elif Path(like).exists():
            raise CliError(f"{like} is a folder: give an image file or an image id")
        else:
            try:
                result = similar_images(catalog, like, k)
            except UnknownImageError as error:
                raise CliError(f"{error}, and there is no file {like!r}" if "no image" in str(error) else str(error))
            query_id = result.schema.metadata[b"query_image_id"].decode()
            if query_id != like:  # a prefix: say which image it named
                print(f"images like {query_id}", file=sys.stderr)
    for warning in caught:
        if issubclass(warning.category, MixedEmbedderVersionsWarning):
            print(f"cv-dataops: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return _show(result, output, f"images like {like}")


def _show(table, output: str | None, what: str) -> int:
    """Print ``table`` in full, or write it to ``output`` (.csv, .parquet, .json)."""
    import pandas as pd

    from cv_dataops.exports.files import write_table_file

    if output:
        write_table_file(table, output)
        print(f"wrote {table.num_rows} rows of {what} to {output}", file=sys.stderr)
        return 0
    frame = table.to_pandas()
    options = {"display.max_rows": None, "display.max_columns": None,
               "display.width": shutil.get_terminal_size().columns}
    with pd.option_context(*[item for pair in options.items() for item in pair]):
        print(frame.to_string(index=False) if len(frame) else f"({what} is empty)")
    return 0


def ui_command(landing: str | None, data_root: str | None) -> int:
    """Start the Dagster UI and daemon on the same instance and data as the CLI (Ctrl-C stops both)."""
    settings = _settings(landing=landing, data_root=data_root)
    from cv_dataops.runner import dagster_home

    home = dagster_home(settings.data_root)
    environment = {**os.environ, **settings.as_environment(), "DAGSTER_HOME": str(home)}
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(home / "workspace.yaml")]
    return subprocess.call(command, env=environment)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cv-dataops", description="DataOps for computer-vision data, on Dagster.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate demo images and run the whole pipeline on them")
    demo.add_argument("--data-dir", default="data", help="where the demo's landing zone and catalog go (default: data)")
    demo.add_argument("--dataset", choices=DEMO_DATASETS, default="scenes",
                      help="procedural scenes with known ground truth, or scikit-learn's real handwritten digits")
    demo.add_argument("--count", type=int, default=240, help="how many images to generate (default: 240)")
    demo.add_argument("--seed", type=int, default=0)

    run = commands.add_parser("run", help="ingest everything landed since the last run, then refresh downstream")
    run.add_argument("--landing", required=True, help="folder or s3://bucket/prefix where images land")
    run.add_argument("--data-root", default=None,
                     help="folder or s3://bucket/prefix for the catalog (default: $CV_DATAOPS_DATA_ROOT or data)")
    run.add_argument("--labels", choices=LABEL_MODES, default=None,
                     help="labels at landing: ImageFolder folder names, a labels.csv at the landing root, or none "
                          "(default: $CV_DATAOPS_LABELS or imagefolder)")
    run.add_argument("--select", help="comma-separated asset names: only these and what they need")
    run.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                     help="if another batcher holds the data root, wait up to this long for it (default: refuse)")

    status = commands.add_parser("status", help="the state of every batch per stage (done, failed, missing, "
                                                "stale, running) and of the assets spanning all batches")
    status.add_argument("--landing", default=None, help="default: $CV_DATAOPS_LANDING or data/landing")
    status.add_argument("--data-root", default=None,
                        help="the catalog's folder or s3://bucket/prefix (default: $CV_DATAOPS_DATA_ROOT or data)")

    table = commands.add_parser("table", help="print or write the current version of a catalog table")
    table.add_argument("name", help="images, quarantine, objects, ...")
    table.add_argument("--data-root", default=None,
                       help="the catalog's folder or s3://bucket/prefix (default: $CV_DATAOPS_DATA_ROOT or data)")
    table.add_argument("-o", "--output", help="write to FILE.csv, FILE.parquet or FILE.json instead of printing")

    search = commands.add_parser("search", help="query the catalog with SQL (DuckDB; one view per catalog table), "
                                                "or list the images most similar to an image")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--sql",
                       help="e.g. \"SELECT i.uri FROM images i JOIN quality q USING (image_id) WHERE q.is_dark "
                            "AND i.camera_model = 'HX-320'\"")
    query.add_argument("--like", metavar="IMAGE_ID_OR_FILE",
                       help="an image file (path or s3:// URI), or the id of a catalog image (or a unique prefix of "
                            "it): list the catalog images nearest to it in embedding space (cosine distance)")
    search.add_argument("-k", type=int, help="with --like: how many images to list (default: 10)")
    search.add_argument("--data-root", default=None,
                       help="the catalog's folder or s3://bucket/prefix (default: $CV_DATAOPS_DATA_ROOT or data)")
    search.add_argument("-o", "--output", help="write to FILE.csv, FILE.parquet or FILE.json instead of printing")

    export = commands.add_parser("export", help="write a snapshot's ImageFolder tree (train/val/test, one folder "
                                                "per label) from its manifest into a new local folder")
    export.add_argument("snapshot_id", help="snap-... (see snapshots/ under the data root, or the curated table)")
    export.add_argument("-o", "--output", required=True, help="a new or empty local folder")
    export.add_argument("--data-root", default=None,
                        help="the catalog's folder or s3://bucket/prefix (default: $CV_DATAOPS_DATA_ROOT or data)")

    ui = commands.add_parser("ui", help="start the Dagster UI and daemon on the catalog")
    ui.add_argument("--landing", default=None, help="default: $CV_DATAOPS_LANDING or data/landing")
    ui.add_argument("--data-root", default=None,
                       help="the catalog's folder or s3://bucket/prefix (default: $CV_DATAOPS_DATA_ROOT or data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from cv_dataops.core.storage import StorageError, UnsafeKeyError

    try:
        if args.command == "demo":
            if args.count < 1:
                raise CliError("--count must be at least 1")
            return demo_command(args.data_dir, args.dataset, args.count, args.seed)
        if args.command == "run":
            select = [name.strip() for name in args.select.split(",") if name.strip()] if args.select else None
            if args.wait < 0:
                raise CliError("--wait must not be negative")
            return run_command(args.landing, args.data_root, args.labels, select, args.wait)
        if args.command == "status":
            return status_command(args.landing, args.data_root)
        if args.command == "table":
            return table_command(args.name, args.data_root, args.output)
        if args.command == "export":
            return export_command(args.snapshot_id, args.data_root, args.output)
        if args.command == "search":
            if args.like is None:
                if args.k is not None:
                    raise CliError("-k goes with --like")
                return search_command(args.data_root, args.sql, args.output)
            if args.k is not None and args.k < 1:
                raise CliError("-k must be at least 1")
            return search_like_command(args.data_root, args.like, 10 if args.k is None else args.k, args.output)
        return ui_command(args.landing, args.data_root)
    except ConfigError as error:  # one line per wrong setting
        for line in str(error).splitlines():
            _error(line, EXIT_USAGE)
        return EXIT_USAGE
    except CliError as error:
        return _error(str(error), EXIT_USAGE)
    except (StorageError, UnsafeKeyError, FileNotFoundError, ValueError) as error:
        return _error(str(error))
    except KeyError as error:
        return _error(str(error.args[0]) if error.args else "not found")
    except BrokenPipeError:  # the reader (e.g. `| head`) has gone: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as error:  # PipelineFailed and anything a step raised: one line, the run log has the rest
        return _error(cause_line(error, getattr(args, "data_root", None) or getattr(args, "data_dir", None)))
    except KeyboardInterrupt:
        return _error("interrupted", 130)


def entry_point() -> None:
    """The console script. Exits without interpreter teardown once all output is flushed: Arrow's native thread
    pool can abort the process at teardown (apache/arrow#34314), which would turn a finished run into exit 134."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            pass
    os._exit(code)


if __name__ == "__main__":
    entry_point()
