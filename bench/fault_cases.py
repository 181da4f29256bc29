"""Issue 9's fault cases, re-run as a set, as a user would: the real command line, real CIFAR photos, then the
rerun(s) a user would do; each case judged for crashes, hangs, lost or unprocessed images, doubling and hidden
causes. The result is the table in docs/robustness.md.

    .venv/bin/python bench/fault_cases.py                      # every case, writes docs/robustness.md
    .venv/bin/python bench/fault_cases.py --list               # the cases and their groups
    .venv/bin/python bench/fault_cases.py --cases kill,labels_bom --update   # re-run some, merge into the table

Every case gets a fresh landing zone and data root under ``--work`` (default /tmp/fault_cases) and runs
``.venv/bin/cv-dataops run --landing L --data-root R`` in its own process group (kill cases SIGKILL the group at a
stage boundary or mid-stage, found in the Dagster instance's event log), then what a user does next (fix the
cause, run again), then ``cv-dataops status``. Only one pipeline runs at a time.

Verdicts, per case:

* **crash**: a run that was not killed on purpose exited non-zero without exactly one ``cv-dataops: error:``
  line, or printed a traceback on stderr, or died by a signal;
* **hang**: a run did not end within its time limit (then its group is killed);
* **lost/unprocessed**: after the reruns, a landed entry has no final outcome in ``objects`` (only ``deferred``, or
  none), a good file's current bytes are not an image in the catalog, an image lacks its row in a per-batch table
  (``quality``, ``embeddings``), a spanning output (``scenarios``, ``curated``) misses a batch or image,
  ``cv-dataops status`` shows anything unfinished, or a label given in labels.csv is not the one stored;
* **doubled**: an ``image_id`` twice in a table, or an object version with two final outcomes;
* **hidden cause**: a failed run whose one line does not say the cause (Dagster's generic wording, or not the
  words the cause needs: "space" for a full disk, "UTF-8" for a latin-1 labels file, ...).

Catalog tables are read with pyarrow from the data root (local folder, or the moto server for S3 roots), file by
file, so a half-written Parquet file would show. S3 cases run moto's server in this process, with
``cv_dataops_tests.fault_proxy.FaultProxy`` between the CLI's boto3 and it. The full-disk case mounts a small tmpfs
(root only; skipped with the reason otherwise). The unreadable-file case runs the CLI as user ``nobody`` (root
reads every file whatever its mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

CIFAR = REPOSITORY.parent / "shared" / "datasets" / "cifar10-sample"
CLI = REPOSITORY / ".venv" / "bin" / "cv-dataops"
DEFAULT_WORK = Path("/tmp/fault_cases")
DEFAULT_OUTPUT = REPOSITORY / "docs" / "robustness.md"
KILL_IMAGES = 300  # kill cases: long enough stages to land a kill mid-stage
SMALL_IMAGES = 100  # hostile-content and labels cases
RUN_TIMEOUT = 240.0  # seconds before a run counts as hung
GENERIC_CAUSES = ("Error occurred while executing", "did not succeed", "DagsterExecutionStepExecutionError")
FINAL_OUTCOMES = ("image", "duplicate", "quarantined", "sidecar")
DROP_DAC = -1  # "user": root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so file modes apply to it
# The built-in embedder at a small size (a setting any user can give): the faults are about robustness, not
# vectors, and the default's fit (400 centroids, 512 dimensions) triples a case's time on a shared machine. The
# 3,000-image S3 case runs the default embedder, as the issue measured.
SMALL_EMBEDDER = {"kind": "patch-kmeans", "n_centroids": 32, "dimension": 32, "n_patches": 8000,
                  "kmeans_iterations": 5}
CHECKS_FAILED = re.compile(r"^\d+ ERROR check\(s\) failed")  # the data's verdict, not a failure to run
SOURCE: Path | None = None  # the cv_dataops source the CLI runs (None: the installed working tree)


# ----------------------------------------------------------------------------------------------------------------
# landing material
# ----------------------------------------------------------------------------------------------------------------
def cifar_files(split: str = "train") -> list[Path]:
    """CIFAR photos, interleaved across classes (class folder names are the labels)."""
    folders = sorted(p for p in (CIFAR / split).iterdir() if p.is_dir())
    per_class = [sorted(folder.glob("*.jpg")) for folder in folders]
    return [files[i] for i in range(max(map(len, per_class))) for files in per_class if i < len(files)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# data roots: a folder, or a prefix of a bucket on the moto server
# ----------------------------------------------------------------------------------------------------------------
class Root:
    def __init__(self, uri: str, s3_client=None):
        self.uri, self.client = uri, s3_client
        if uri.startswith("s3://"):
            self.bucket, _, self.prefix = uri[5:].partition("/")
            self.prefix = self.prefix.strip("/") + "/" if self.prefix.strip("/") else ""

    def list(self, folder: str) -> list[str]:
        """Names of the files directly in ``folder`` (relative to the root)."""
        if not self.uri.startswith("s3://"):
            path = Path(self.uri) / folder
            return sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []
        names, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}{folder}/", **extra)
            names += [o["Key"].rsplit("/", 1)[1] for o in page.get("Contents", [])
                      if "/" not in o["Key"][len(f"{self.prefix}{folder}/"):]]
            if not page.get("IsTruncated"):
                return sorted(names)
            token = page["NextContinuationToken"]

    def read(self, key: str) -> bytes:
        if not self.uri.startswith("s3://"):
            return (Path(self.uri) / key).read_bytes()
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}{key}")["Body"].read()


def read_table(root: Root, name: str, problems: list[str]):
    """The table's files concatenated (pandas), or None when it has none; unreadable Parquet goes to problems."""
    import pandas as pd
    import pyarrow.parquet as pq

    frames = []
    for file_name in root.list(f"catalog/{name}"):
        if not file_name.endswith(".parquet"):
            continue  # temporary files of atomic writes are never tables
        try:
            frames.append(pq.read_table(io.BytesIO(root.read(f"catalog/{name}/{file_name}"))).to_pandas())
        except Exception as error:  # a half-written table
            problems.append(f"half-written table catalog/{name}/{file_name}: {error}")
    return pd.concat(frames, ignore_index=True) if frames else None


# ----------------------------------------------------------------------------------------------------------------
# watching a run: the Dagster instance's event log
# ----------------------------------------------------------------------------------------------------------------
class Watcher:
    """Reads the instance the CLI writes to, to find stage boundaries and the start of a stage."""

    def __init__(self, home: Path):
        import dagster as dg

        self.dg = dg
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.instance = dg.DagsterInstance.from_config(str(home))
        self.known: set[str] = set()

    def forget_existing_runs(self) -> None:
        self.known = {run.run_id for run in self.instance.get_runs()}

    def _new_runs(self):
        try:
            return [run for run in self.instance.get_runs(limit=6) if run.run_id not in self.known]
        except Exception:  # the database is busy: look again later
            return []

    def _steps(self, event: str):
        from dagster._core.events import DagsterEventType

        kind = {"start": DagsterEventType.STEP_START, "success": DagsterEventType.STEP_SUCCESS}[event]
        steps = set()
        for run in self._new_runs():
            try:
                steps |= {entry.step_key for entry in self.instance.all_logs(run.run_id, of_type=kind)}
            except Exception:
                pass
        return steps

    def step_started(self, step: str) -> Callable[[], bool]:
        return lambda: step in self._steps("start")

    def step_succeeded(self, step: str) -> Callable[[], bool]:
        return lambda: step in self._steps("success")

    def run_succeeded(self, job: str) -> Callable[[], bool]:
        success = self.dg.DagsterRunStatus.SUCCESS
        return lambda: any(run.job_name == job and run.status == success for run in self._new_runs())

    def close(self) -> None:
        self.instance.dispose()


# ----------------------------------------------------------------------------------------------------------------
# one invocation of the command line
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Invocation:
    label: str
    command: str
    rc: int | None = None
    seconds: float = 0.0
    max_rss_mb: float = 0.0
    killed_at: str = ""  # why we killed it ("" = not killed on purpose)
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""
    expect_error: bool = False
    cause_words: tuple[str, ...] = ()
    left_behind: list[int] = dataclasses.field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("cv-dataops: error:")]

    @property
    def cause(self) -> str:
        lines = self.error_lines
        return lines[-1][len("cv-dataops: error:"):].strip() if lines else ""

    def judge(self) -> dict[str, str]:
        """{category: why} for this invocation (categories: crash, hang, hidden, unexpected_error, no_refusal)."""
        found: dict[str, str] = {}
        if self.left_behind:
            found["left_behind"] = f"{self.label}: {len(self.left_behind)} process(es) left running"
        if self.timed_out:
            return {**found, "hang": f"{self.label}: no end after {self.seconds:.0f} s"}
        if self.killed_at:
            return found
        noise = [line for line in self.stderr.splitlines()
                 if line.strip() and not line.startswith(("cv-dataops: error:", "cv-dataops: warning:"))]
        if "Traceback (most recent call last)" in self.stderr:
            found["crash"] = f"{self.label}: traceback on stderr"
        elif self.rc is not None and self.rc < 0:
            found["crash"] = f"{self.label}: died by signal {-self.rc}"
        elif self.rc != 0 and not self.error_lines:
            found["crash"] = f"{self.label}: exit {self.rc} without a cause line"
        if self.rc not in (0, None) and "crash" not in found:
            if len(self.error_lines) != 1:
                found["hidden"] = f"{self.label}: {len(self.error_lines)} error lines"
            elif noise and any(line.startswith(("[SQL", "(Background", "  File ")) for line in noise):
                found["hidden"] = f"{self.label}: the error goes on over {len(noise)} more line(s)"
            elif any(g in self.cause for g in GENERIC_CAUSES):
                found["hidden"] = f"{self.label}: generic cause"
            elif self.cause_words and not all(_says(self.cause, w) for w in self.cause_words):
                found["hidden"] = f"{self.label}: the line does not say " + " and ".join(
                    repr(" or ".join(w) if isinstance(w, tuple) else w) for w in self.cause_words)
            if not self.expect_error and not CHECKS_FAILED.search(self.cause):
                found["unexpected_error"] = f"{self.label}: {self.cause or 'failed'}"
        elif self.rc == 0 and self.expect_error:
            found["no_refusal"] = f"{self.label}: exit 0 where a refusal was expected"
        return found

    def short(self) -> str:
        rc = "killed" if self.killed_at else ("timeout" if self.timed_out else str(self.rc))
        return f"{self.label} {rc} ({self.seconds:.0f} s)"


def _processes_with_marker(marker: str) -> list[int]:
    found = []
    needle = f"CV_FAULT_RUN={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


class Running:
    """A CLI process started in its own process group, its output going to files."""

    def __init__(self, case: Case, label: str, argv: list[str], env: dict, user: int | None = None):
        self.case, self.label = case, label
        case.counter += 1
        self.marker = f"{case.name}-{case.counter}"
        self.out_path = case.dir / f"{case.counter:02d}-{label.replace(' ', '_')}.out"
        self.err_path = self.out_path.with_suffix(".err")
        env = {**env, "CV_FAULT_RUN": self.marker}
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if user == DROP_DAC else []
        self.invocation = Invocation(label, " ".join(shlex.quote(a) for a in argv))
        self.started = time.monotonic()
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(prefix + argv, env=env, stdout=out, stderr=err, cwd=case.dir,
                                         start_new_session=True)

    def wait(self, *, timeout: float = RUN_TIMEOUT, when: Callable[[], bool] | None = None,
             then: str | Callable[[], None] = "kill", delay: float = 0.0, why: str = "") -> Invocation:
        """Wait for the end; when ``when()`` turns true, ``then`` (kill the group after ``delay`` s, or call)."""
        inv, fired = self.invocation, False
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                inv.rc = os.waitstatus_to_exitcode(status)
                inv.max_rss_mb = usage.ru_maxrss / 1024
                self.proc.returncode = inv.rc
                break
            elapsed = time.monotonic() - self.started
            if elapsed > timeout:
                inv.timed_out = True
                self._kill_group()
                continue
            if when is not None and not fired and when():
                fired = True
                if delay:
                    time.sleep(delay)
                if then == "kill":
                    inv.killed_at = why
                    self._kill_group()
                else:
                    then()
            time.sleep(0.02)
        inv.seconds = time.monotonic() - self.started
        inv.stdout, inv.stderr = self.out_path.read_text(errors="replace"), self.err_path.read_text(errors="replace")
        deadline = time.monotonic() + 15
        while (left := _processes_with_marker(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if left:  # the run's own processes, found by the marker we gave them
            inv.left_behind = left
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.case.invocations.append(inv)
        return inv

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------------------------------------------
# one case
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    name: str
    group: str
    what: str
    exits: str = ""
    causes: str = ""
    accounting: str = ""
    verdict: str = ""
    categories: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)
    reproduction: str = ""
    outputs: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0


class Case:
    def __init__(self, name: str, group: str, what: str, work: Path, s3=None):
        self.name, self.group, self.what = name, group, what
        self.dir = work / name
        if self.dir.exists():
            _remove(self.dir)
        self.dir.mkdir(parents=True)
        self.landing = self.dir / "landing"
        self.landing.mkdir()
        self.landing_uri = str(self.landing)
        self.root_uri = str(self.dir / "data")
        self.home: Path | None = None  # DAGSTER_HOME when not beside the data root
        self.s3 = s3
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("CV_DATAOPS_", "DAGSTER_", "AWS_")) and k != "CV_FAULT_RUN"}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["CV_DATAOPS_EMBEDDER"] = json.dumps(SMALL_EMBEDDER)
        self.invocations: list[Invocation] = []
        self.counter = 0
        self.good: dict[str, str] = {}  # relative path -> sha256 of its current bytes (must be in the catalog)
        self.refused: dict[str, str] = {}  # relative path -> quarantine reason expected
        self.refused_like: list[tuple[Callable[[str], bool], str, str]] = []  # (matches path, reason, what)
        self.sidecars: set[str] = set()
        self.labels: dict[str, str | None] = {}  # relative path -> label expected in images
        self.omitted_by_design: set[str] = set()  # image ids a stage may leave out, with the reason recorded
        self.notes: list[str] = []
        self.watcher: Watcher | None = None
        self.skipped = ""
        self.steps: list[str] = []  # the user's actions, for the reproduction
        self.cleanups: list[Callable[[], object]] = []  # after judging (e.g. unmount)

    # --- landing -----------------------------------------------------------------------------------------------
    def land_cifar(self, count: int, offset: int = 0, prefix: str = "", split: str = "train") -> list[str]:
        keys = []
        for source in cifar_files(split)[offset:offset + count]:
            key = f"{prefix}{source.parent.name}/{source.name}"
            self.put(key, source.read_bytes())
            self.good[key] = sha256(source.read_bytes())
            self.labels.setdefault(key, source.parent.name)
            keys.append(key)
        self.steps.append(f"land {count} CIFAR photos ({split}[{offset}:{offset + count}]) as <class>/<file>.jpg")
        return keys

    def put(self, key: str, data: bytes) -> None:
        if self.s3 is not None and self.landing_uri.startswith("s3://"):
            bucket, _, prefix = self.landing_uri[5:].partition("/")
            self.s3.client.put_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{key}", Body=data)
            return
        path = self.landing / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    # --- running the command line ------------------------------------------------------------------------------
    def start(self, label: str, *args: str, env: dict | None = None, user: int | None = None) -> Running:
        env = {**self.env, **(env or {})}
        if self.home is not None:
            env["DAGSTER_HOME"] = str(self.home)
        if SOURCE is not None:
            env["PYTHONPATH"] = str(SOURCE)
        command = str(CLI) if CLI.exists() else None
        argv = [command] if command else [sys.executable, "-m", "cv_dataops.cli"]
        return Running(self, label, argv + list(args), env, user=user)

    def run(self, label: str = "run", *extra: str, expect_error: bool = False, cause_words: tuple = (),
            timeout: float = RUN_TIMEOUT, user: int | None = None, env: dict | None = None, **wait) -> Invocation:
        if self.watcher is not None:
            self.watcher.forget_existing_runs()
        running = self.start(label, "run", "--landing", self.landing_uri, "--data-root", self.root_uri, *extra,
                             env=env, user=user)
        running.invocation.expect_error, running.invocation.cause_words = expect_error, cause_words
        return running.wait(timeout=timeout, **wait)

    def status(self, user: int | None = None) -> Invocation:
        running = self.start("status", "status", "--landing", self.landing_uri, "--data-root", self.root_uri,
                             user=user)
        return running.wait(timeout=120)

    def watch(self) -> Watcher:
        """Open the instance before the first run (as `cv-dataops run` would create it), to watch its events."""
        home = self.home or Path(self.root_uri) / "dagster_home"
        self.watcher = Watcher(home)
        return self.watcher

    # --- judging -----------------------------------------------------------------------------------------------
    def account(self) -> tuple[dict[str, list[str]], str]:
        """({category: problems}, a one-line summary) from the catalog tables and the last status."""
        problems: dict[str, list[str]] = {"lost": [], "doubled": [], "half_written": []}
        root = Root(self.root_uri, self.s3.client if self.s3 else None)
        half: list[str] = []
        tables = {name: read_table(root, name, half)
                  for name in ("images", "objects", "quarantine", "quality", "embeddings", "scenarios", "curated",
                               "duplicates")}
        problems["half_written"] += half
        images, objects = tables["images"], tables["objects"]
        if images is None or objects is None:
            problems["lost"].append("no images or objects table at all")
            return problems, "no catalog"
        for name in ("images", "quality", "embeddings", "scenarios", "curated", "duplicates"):
            frame = tables[name]
            if frame is not None and frame.image_id.duplicated().any():
                problems["doubled"].append(f"{name}: {int(frame.image_id.duplicated().sum())} image_id(s) twice")
        final = objects[objects.outcome.isin(FINAL_OUTCOMES)]
        twice = final.duplicated(["uri", "version"], keep=False)
        if twice.any():
            problems["doubled"].append(f"objects: {int(twice.sum())} rows for object versions with two final "
                                       f"outcomes ({final[twice].relative_path.nunique()} objects)")
        ids = set(images.image_id)
        by_path = {path: group for path, group in objects.groupby("relative_path")}
        reasons = {} if tables["quarantine"] is None else dict(zip(tables["quarantine"].relative_path,
                                                                    tables["quarantine"].reason))
        unfinished = [p for p, g in by_path.items() if not g.outcome.isin(FINAL_OUTCOMES).any()]
        if unfinished:
            problems["lost"].append(f"{len(unfinished)} object(s) only deferred, never finished "
                                    f"(e.g. {unfinished[0]})")
        missing = [p for p in self.good if p not in by_path]
        if missing:
            problems["lost"].append(f"{len(missing)} landed file(s) not in objects (e.g. {missing[0]})")
        not_in = [p for p, digest in self.good.items() if p in by_path and (
            digest not in ids or not ((by_path[p].image_id == digest) & by_path[p].outcome.isin(
                ("image", "duplicate"))).any())]
        if not_in:
            sample = not_in[0]
            seen = sorted(set(by_path[sample].outcome))
            problems["lost"].append(f"{len(not_in)} good file(s) whose current bytes are not an image in the catalog "
                                    f"(e.g. {sample}: outcome {', '.join(seen)}"
                                    + (f", reason {reasons[sample]}" if sample in reasons else "") + ")")
        for path, reason in self.refused.items():
            if path not in by_path:
                problems["lost"].append(f"{path!r} is not in objects (silently skipped)")
            elif reasons.get(path) != reason:
                self.notes.append(f"{path!r}: reason {reasons.get(path)!r}, expected {reason!r}")
        for matches, reason, what in self.refused_like:
            hits = [p for p in by_path if matches(p)]
            if not hits:
                problems["lost"].append(f"{what}: no entry in objects (silently skipped)")
            elif not any(reasons.get(p) == reason for p in hits):
                self.notes.append(f"{what}: reasons {sorted({reasons.get(p) for p in hits}, key=str)}, "
                                  f"expected {reason!r}")
        for path in self.sidecars:
            if path not in by_path or not (by_path[path].outcome == "sidecar").any():
                self.notes.append(f"{path}: not recorded as a sidecar")
        per_batch = {}
        for name in ("quality", "embeddings", "scenarios"):
            frame = tables[name]
            have = set() if frame is None else set(frame.image_id)
            gap = ids - have - self.omitted_by_design
            per_batch[name] = len(have & ids)
            if gap:
                problems["lost"].append(f"{len(gap)} image(s) without a {name} row")
            stray = have - ids
            if stray:
                problems["doubled"].append(f"{name}: {len(stray)} row(s) for images not in images")
        curated = tables["curated"]
        if tables["quality"] is not None:
            usable = tables["quality"][~tables["quality"].is_unusable].image_id
            wanted_batches = set(images[images.image_id.isin(set(usable))].batch_id)
            got = set() if curated is None else set(images[images.image_id.isin(set(curated.image_id))].batch_id)
            if wanted_batches - got:
                problems["lost"].append(f"curated misses batch(es) {sorted(wanted_batches - got)}")
        if curated is not None and set(curated.image_id) - ids:
            problems["doubled"].append(f"curated: {len(set(curated.image_id) - ids)} image(s) not in images")
        label_of = dict(zip(images.relative_path, images.label))
        wrong = []
        for path, label in self.labels.items():
            if path in label_of and path in self.good and self.good[path] in ids:
                stored = label_of[path]
                stored = None if stored is None or stored != stored else stored
                if stored != label:
                    wrong.append(f"{path}: {stored!r} instead of {label!r}")
        if wrong:
            problems["lost"].append(f"{len(wrong)} label(s) not as given (e.g. {wrong[0]})")
        status = next((inv for inv in reversed(self.invocations) if inv.label == "status"), None)
        state = ""
        if status is not None:
            state = next((line for line in status.stdout.splitlines() if line.startswith("batches:")), "")
            bad = [line.strip() for line in status.stdout.splitlines()
                   if re.search(r"UNFINISHED|: (failed|outdated|never|running|missing|stale)\b", line)]
            if bad:
                problems["lost"].append(f"status: {bad[0][:160]}")
        deferred = int((objects.outcome == "deferred").sum())
        summary = (f"{len(objects)} objects ({objects.relative_path.nunique()} paths"
                   + (f", {deferred} deferred rows" if deferred else "") + f"), {len(ids)} images in "
                   f"{images.batch_id.nunique()} batch(es); quality {per_batch['quality']}, embeddings "
                   f"{per_batch['embeddings']}, scenarios {per_batch['scenarios']}, curated "
                   f"{0 if curated is None else len(curated)}; {state.replace('batches: ', 'status: ') or 'no status'}")
        return problems, summary

    def outcome(self, seconds: float) -> Outcome:
        result = Outcome(self.name, self.group, self.what, seconds=seconds)
        if self.skipped:
            result.verdict, result.accounting = f"skipped: {self.skipped}", "-"
            return result
        categories: dict[str, list[str]] = {}
        for inv in self.invocations:
            for category, why in inv.judge().items():
                categories.setdefault(category, []).append(why)
        try:
            accounting, summary = self.account()
        except Exception as error:  # the judge itself must not hide a case
            accounting, summary = {"lost": [f"accounting failed: {type(error).__name__}: {error}"]}, "?"
        for category, found in accounting.items():
            if found:
                categories.setdefault(category, []).extend(found)
        result.categories = categories
        for inv in self.invocations:
            noise = [line for line in inv.stderr.splitlines()
                     if line.strip() and not line.startswith(("cv-dataops: error:", "cv-dataops: warning:"))]
            if noise and not inv.killed_at:
                self.notes.append(f"{inv.label}: stderr also had {len(noise)} other line(s), e.g. {noise[0][:120]!r}")
        result.notes = self.notes
        result.exits = ", ".join(inv.short() for inv in self.invocations if inv.label != "status")
        causes = [f"{inv.label}: {inv.cause}" for inv in self.invocations if inv.cause]
        notices = [f"{inv.label}: {line.strip()}" for inv in self.invocations for line in inv.stdout.splitlines()
                   if line.startswith(("labels.csv:", "1 run(s)", "2 run(s)")) or "marked failed" in line]
        result.causes = "; ".join(causes + notices) or "-"
        problems_text = "; ".join(f"{k}: {'; '.join(v)}" for k, v in categories.items()
                                  if k in ("lost", "doubled", "half_written"))
        result.accounting = summary + (f". **{problems_text}**" if problems_text else ". intact")
        verdict = [k for k in ("crash", "hang", "lost", "doubled", "hidden", "half_written", "unexpected_error",
                               "no_refusal", "left_behind") if categories.get(k)]
        result.verdict = "**FAIL: " + ", ".join(verdict) + "**" if verdict else "ok"
        result.reproduction = "; ".join(self.steps)
        result.outputs = [{"label": inv.label, "command": inv.command, "rc": inv.rc, "killed_at": inv.killed_at,
                           "seconds": round(inv.seconds, 1), "max_rss_mb": round(inv.max_rss_mb),
                           "stdout_tail": inv.stdout.splitlines()[-12:], "stderr_tail": inv.stderr.splitlines()[-30:]}
                          for inv in self.invocations]
        return result

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()


def _remove(path: Path) -> None:
    subprocess.run(["chmod", "-R", "u+rwx", str(path)], stderr=subprocess.DEVNULL)
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# S3: moto's server in this process, a fault proxy in front of it
# ----------------------------------------------------------------------------------------------------------------
class S3:
    def __init__(self):
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        from cv_dataops_tests.fault_proxy import FaultProxy

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        self.client = boto3.client("s3", endpoint_url=self.endpoint, **credentials)
        self.proxy = FaultProxy(self.endpoint)

    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.proxy.url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def bucket(self, name: str) -> str:
        name = re.sub(r"[^a-z0-9-]", "-", name.lower())[:60]
        self.client.create_bucket(Bucket=name)
        return name

    def close(self) -> None:
        self.proxy.close()
        self.server.stop()


# ----------------------------------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------------------------------
CASES: list[tuple[str, str, str, Callable[[Case], None]]] = []


def case(name: str, group: str, what: str):
    def register(body: Callable[[Case], None]):
        CASES.append((name, group, what, body))
        return body
    return register


def _kill_then_rerun(c: Case, trigger: Callable[[Watcher, Case], Callable[[], bool]], why: str,
                     delay: float = 0.0, mid_step: str | None = None) -> None:
    c.land_cifar(KILL_IMAGES)
    watcher = c.watch()
    killed = c.run("run", when=trigger(watcher, c), delay=delay, why=why)
    c.steps.append(f"`cv-dataops run` in its own process group; SIGKILL to the group {why}")
    if mid_step and killed.killed_at:
        if watcher.step_succeeded(mid_step)():
            c.notes.append(f"{mid_step} had already finished when the kill landed (a boundary, not mid-stage)")
        else:
            c.notes.append(f"killed while {mid_step} was running")
    if not killed.killed_at:
        c.notes.append("the run ended before the kill could land")
    c.run("rerun")
    c.steps.append("run again")
    c.status()


def _kill_case(name: str, what: str, make: Callable[[Watcher, Case], Callable[[], bool]], delay: float = 0.0,
               mid_step: str | None = None):
    case(name, "kill", what)(lambda c: _kill_then_rerun(c, make, what, delay, mid_step))


def _manifest_written(c: Case) -> Callable[[], bool]:
    return lambda: any((Path(c.root_uri) / "batches").glob("*.json"))


_kill_case("kill_after_planning", "as soon as planning wrote the batch manifest (before raw_images ran)",
           lambda w, c: _manifest_written(c))
for _step, _delay in (("raw_images", 0.1), ("image_embeddings", 2.0), ("image_quality", 0.15),
                      ("image_duplicates", 0.05), ("scenarios", 0.8), ("curated_dataset", 0.1)):
    _kill_case(f"kill_mid_{_step}", f"mid-{_step} ({_delay} s after its step started)",
               lambda w, c, s=_step: w.step_started(s), delay=_delay, mid_step=_step)
    _kill_case(f"kill_after_{_step}", f"right after {_step} succeeded (before the next step)",
               lambda w, c, s=_step: w.step_succeeded(s))
    if _step == "image_quality":
        _kill_case("kill_after_batch_run", "after the per-batch run succeeded, before the downstream run",
                   lambda w, c: w.run_succeeded("ingest_batch"))


@case("kill_mid_downstream_second_batch", "kill",
      "two batches: after a complete first run, land more; kill mid-image_duplicates of the second run's downstream")
def _(c: Case) -> None:
    c.land_cifar(200)
    watcher = c.watch()
    c.run("run 1")
    c.land_cifar(100, offset=200, prefix="more/")
    c.run("run 2", when=watcher.step_started("image_duplicates"), delay=0.05,
          why="mid-image_duplicates of batch 2's downstream run")
    c.steps.append("SIGKILL the group of run 2 mid-image_duplicates")
    c.run("rerun")
    c.status()


@case("stage_fails_file_deleted", "stages",
      "ingest only (`--select raw_images`), delete one landed file, then a full run")
def _(c: Case) -> None:
    keys = c.land_cifar(KILL_IMAGES)
    c.run("ingest", "--select", "raw_images")
    (c.landing / keys[5]).unlink()
    c.good.pop(keys[5])
    c.steps.append(f"`--select raw_images`; delete {keys[5]}; run")
    c.run("run")
    c.run("rerun")
    c.status()


@case("stage_fails_file_and_cache_deleted", "stages",
      "ingest only, delete one landed file and the analysis cache (documented as always safe to delete), full run")
def _(c: Case) -> None:
    keys = c.land_cifar(KILL_IMAGES)
    c.run("ingest", "--select", "raw_images")
    gone = c.good.pop(keys[5])
    (c.landing / keys[5]).unlink()
    shutil.rmtree(Path(c.root_uri) / "cache", ignore_errors=True)
    c.omitted_by_design.add(gone)  # left out with the reason in the stages' metadata (README)
    c.steps.append(f"`--select raw_images`; delete {keys[5]} and <data root>/cache; run")
    c.run("run")
    c.run("rerun")
    c.status()


@case("concurrent_runs_refused", "concurrency", "two `cv-dataops run` on one data root: the second starts while "
      "the first holds the lease")
def _(c: Case) -> None:
    c.land_cifar(KILL_IMAGES)
    first = c.start("run A", "run", "--landing", c.landing_uri, "--data-root", c.root_uri)
    lease = Path(c.root_uri) / "_leases" / "batcher.json"
    deadline = time.monotonic() + 120
    while not lease.exists() and time.monotonic() < deadline and first.proc.poll() is None:
        time.sleep(0.05)
    c.run("run B", expect_error=True, cause_words=("cv-dataops run",))
    first.wait()
    c.steps.append("start run A; once <data root>/_leases/batcher.json exists start run B; wait for A")
    c.run("rerun")
    c.status()


@case("concurrent_runs_wait", "concurrency", "as above, the second with `--wait 300`: it waits for the first")
def _(c: Case) -> None:
    c.land_cifar(KILL_IMAGES)
    first = c.start("run A", "run", "--landing", c.landing_uri, "--data-root", c.root_uri)
    lease = Path(c.root_uri) / "_leases" / "batcher.json"
    deadline = time.monotonic() + 120
    while not lease.exists() and time.monotonic() < deadline and first.proc.poll() is None:
        time.sleep(0.05)
    second = c.start("run B --wait", "run", "--landing", c.landing_uri, "--data-root", c.root_uri, "--wait", "300")
    first.wait()
    second.wait()
    c.steps.append("start run A; once the lease exists start run B with --wait 300")
    c.status()


@case("file_overwritten_after_ingest", "stages",
      "ingest only, overwrite one landed file with another photo, full run, rerun")
def _(c: Case) -> None:
    keys = c.land_cifar(KILL_IMAGES)
    c.run("ingest", "--select", "raw_images")
    old = c.good[keys[3]]
    other = cifar_files("test")[0].read_bytes()
    (c.landing / keys[3]).write_bytes(other)
    c.good[keys[3]] = sha256(other)
    c.steps.append(f"`--select raw_images`; overwrite {keys[3]} with test/{cifar_files('test')[0].name}; run")
    c.run("run")
    c.run("rerun")
    c.status()
    c.overwritten = (old, sha256(other))  # checked below: the old id's quality is not the new bytes'


# --- hostile landing contents ----------------------------------------------------------------------------------
def _hostile(name: str, what: str, make: Callable[[Case], None]):
    @case(name, "hostile", what)
    def _(c: Case) -> None:
        c.land_cifar(SMALL_IMAGES)
        make(c)
        c.steps.append(what)
        first = c.run("run")
        c.run("rerun")
        c.status()
        c.notes.append(f"the first run's peak memory (max RSS): {first.max_rss_mb:.0f} MB")


def _fifo(c: Case) -> None:
    os.mkfifo(c.landing / "x.jpg")
    c.refused["x.jpg"] = "not_a_regular_file"


def _socket(c: Case) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(c.landing / "camera.sock.jpg"))
    sock.close()
    c.refused["camera.sock.jpg"] = "not_a_regular_file"


def _dangling(c: Case) -> None:
    os.symlink(c.landing / "gone.jpg", c.landing / "dangling.jpg")
    c.refused["dangling.jpg"] = "broken_symlink"


def _loop(c: Case) -> None:
    os.symlink(c.landing / "loop_b.jpg", c.landing / "loop_a.jpg")
    os.symlink(c.landing / "loop_a.jpg", c.landing / "loop_b.jpg")
    c.refused.update({"loop_a.jpg": "broken_symlink", "loop_b.jpg": "broken_symlink"})


def _non_utf8(c: Case) -> None:
    with open(os.fsencode(c.landing) + b"/caf\xe9.jpg", "wb") as handle:
        handle.write(cifar_files("test")[1].read_bytes())
    c.refused["caf%E9.jpg"] = "undecodable_name"


def _path_max(c: Case) -> None:
    folder = os.open(c.landing, os.O_RDONLY)
    part = "d" * 200
    try:
        for _ in range(24):  # 24 x 201 characters > PATH_MAX (4096)
            os.mkdir(part, dir_fd=folder)
            inner = os.open(part, os.O_RDONLY, dir_fd=folder)
            os.close(folder)
            folder = inner
        handle = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder)
        os.write(handle, cifar_files("test")[2].read_bytes())
        os.close(handle)
    finally:
        os.close(folder)
    c.refused_like.append((lambda p: p.startswith(part), "unlistable", "the folder deeper than PATH_MAX"))


def _huge(c: Case) -> None:
    with open(c.landing / "huge.jpg", "wb") as handle:  # sparse: 2 GB listed, nothing on disk
        handle.write(cifar_files("test")[3].read_bytes())
        handle.truncate(2 * 1024 ** 3)
    c.refused["huge.jpg"] = "too_large"


def _small_file(key: str, data: Callable[[], bytes], reason: str):
    def make(c: Case) -> None:
        c.put(key, data())
        c.refused[key] = reason
    return make


_hostile("hostile_fifo", "a FIFO named x.jpg in the landing zone", _fifo)
_hostile("hostile_socket", "a Unix socket named camera.sock.jpg", _socket)
_hostile("hostile_dangling_link", "a symlink to a file that does not exist", _dangling)
_hostile("hostile_symlink_loop", "two symlinks pointing at each other", _loop)
_hostile("hostile_non_utf8_name", "a photo whose file name is latin-1 bytes (caf\\xe9.jpg)", _non_utf8)
_hostile("hostile_path_max", "a photo under folders nested deeper than PATH_MAX (24 x 200 characters)", _path_max)
_hostile("hostile_huge_file", "a 2 GB (sparse) file huge.jpg, over the 512 MB default limit", _huge)
_hostile("hostile_empty_file", "an empty file empty.jpg", _small_file("empty.jpg", lambda: b"", "empty_file"))
_hostile("hostile_truncated_jpeg", "the first half of a JPEG (truncated.jpg)",
         _small_file("truncated.jpg", lambda: cifar_files("test")[4].read_bytes()[:400], "truncated"))
_hostile("hostile_not_an_image", "a text file notes.jpg", _small_file("notes.jpg", lambda: b"not a photo\n" * 20,
                                                                        "not_an_image"))


@case("hostile_unreadable_file", "hostile",
      "a photo with mode 000, the CLI run as root without the capabilities that bypass file modes")
def _(c: Case) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        c.skipped = "needs root and setpriv (root reads any file unless CAP_DAC_OVERRIDE is dropped)"
        return
    c.land_cifar(SMALL_IMAGES)
    c.put("private.jpg", cifar_files("test")[5].read_bytes())
    c.refused["private.jpg"] = "unreadable"
    os.chmod(c.landing / "private.jpg", 0)
    c.steps.append("chmod 000 private.jpg; run under `setpriv --bounding-set=-dac_override,-dac_read_search` "
                   "(as any non-root user would be)")
    c.run("run", user=DROP_DAC)
    c.run("rerun", user=DROP_DAC)
    c.status()


# --- labels files ------------------------------------------------------------------------------------------------
def _labels_case(name: str, what: str, write: Callable[[Case, list[str]], None],
                 fix: Callable[[Case, list[str]], None] | None = None, cause_words: tuple = ()):
    @case(name, "labels", what)
    def _(c: Case) -> None:
        keys = c.land_cifar(SMALL_IMAGES)
        c.sidecars.add("labels.csv")
        write(c, keys)
        c.steps.append(what)
        c.run("run", "--labels", "csv", expect_error=fix is not None, cause_words=cause_words)
        if fix is not None:
            fix(c, keys)
            c.steps.append("fix labels.csv as the cause line says; run again")
        c.run("rerun", "--labels", "csv")
        c.status()


def _csv(keys: list[str], labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    return "path,label\n" + "".join(f"{k},{labels.get(k, k.split('/')[0])}\n" for k in keys)


def _write(c: Case, text: str | bytes) -> None:
    c.put("labels.csv", text.encode("utf-8") if isinstance(text, str) else text)


def _unbalanced(c: Case, keys: list[str]) -> None:
    lines = _csv(keys).splitlines(keepends=True)
    lines[3] = '"' + lines[3]  # an opening quote that never closes
    _write(c, "".join(lines))
    c.labels[keys[2]] = None  # that row alone is not applied


def _bom(c: Case, keys: list[str]) -> None:
    _write(c, "\ufeff" + _csv(keys))


def _latin1(c: Case, keys: list[str]) -> None:
    _write(c, _csv(keys, {keys[0]: "café"}).encode("latin-1"))


def _latin1_fix(c: Case, keys: list[str]) -> None:
    _write(c, _csv(keys, {keys[0]: "café"}))
    c.labels[keys[0]] = "café"


def _no_label_column(c: Case, keys: list[str]) -> None:
    _write(c, _csv(keys).replace("path,label", "path,class", 1))


def _no_label_column_fix(c: Case, keys: list[str]) -> None:
    _write(c, _csv(keys))


def _no_file(c: Case, keys: list[str]) -> None:
    pass


def _listed_twice(c: Case, keys: list[str]) -> None:
    _write(c, _csv(keys) + f"{keys[0]},not-{keys[0].split('/')[0]}\n")
    c.labels[keys[0]] = None  # neither conflicting label is applied


_labels_case("labels_unbalanced_quote", "labels.csv with one unbalanced quote (row 3)", _unbalanced)
_labels_case("labels_utf8_bom", "labels.csv saved with a UTF-8 byte-order mark", _bom)
_labels_case("labels_latin1", "labels.csv in latin-1 (a label 'café'), then re-saved as UTF-8", _latin1,
             _latin1_fix, cause_words=("UTF-8",))
_labels_case("labels_missing_label_column", "labels.csv with columns path,class, then the header fixed",
             _no_label_column, _no_label_column_fix, cause_words=("label",))
_labels_case("labels_missing_file", "--labels csv with no labels.csv, then the file added", _no_file,
             lambda c, keys: _write(c, _csv(keys)), cause_words=("labels.csv",))
_labels_case("labels_path_listed_twice", "labels.csv listing one path twice with different labels", _listed_twice)


# --- S3 --------------------------------------------------------------------------------------------------------
def _s3_case(c: Case, images: int, mode: str, seconds: float, step: str, catalog_on_s3: bool = False,
             delay: float = 0.0) -> None:
    if c.s3 is None:
        c.skipped = "moto is not installed"
        return
    bucket = c.s3.bucket(c.name)
    c.s3.proxy.counts = {"pass": 0, "503": 0, "drop": 0}
    c.landing_uri = f"s3://{bucket}/landing"
    if catalog_on_s3:
        c.root_uri = f"s3://{bucket}/data"
        c.home = c.dir / "dagster_home"
    c.env.update(c.s3.env())
    if images > 1000:
        c.env.pop("CV_DATAOPS_EMBEDDER")
    c.land_cifar(images)
    watcher = c.watch()
    begun: list[float] = []

    def outage() -> None:
        begun.append(time.monotonic())
        c.s3.proxy.outage(mode, seconds)

    c.steps.append(f"landing on S3 (moto server behind FaultProxy); run; when {step} starts (+{delay} s), "
                   f"the endpoint {('refuses connections' if mode == 'refuse' else 'answers 503 SlowDown')} "
                   f"for {seconds:.0f} s")
    c.run("run", when=watcher.step_started(step), then=outage, delay=delay, timeout=RUN_TIMEOUT + 300)
    if begun:
        left = begun[0] + seconds - time.monotonic()
        if left > 0:
            c.notes.append(f"the run ended {left:.0f} s before the outage did; the rerun waited for it to end")
            time.sleep(left + 1)
    else:
        c.notes.append(f"{step} never started: no outage injected")
    c.s3.proxy.heal()
    c.notes.append(f"proxy counts: {dict(c.s3.proxy.counts)}")
    c.run("rerun", timeout=RUN_TIMEOUT + 300)
    c.steps.append("run again after the outage")
    c.status()


case("s3_outage_20s", "s3", "landing on S3, endpoint refusing connections for 20 s from mid-raw_images")(
    lambda c: _s3_case(c, KILL_IMAGES, "refuse", 20, "raw_images", delay=0.3))
case("s3_503_answers", "s3", "landing on S3, every request answered 503 SlowDown for 10 s from mid-raw_images")(
    lambda c: _s3_case(c, KILL_IMAGES, "503", 10, "raw_images", delay=0.3))
case("s3_outage_catalog_on_s3", "s3", "landing and data root on S3, endpoint refusing connections for 20 s from "
     "the start of image_embeddings (catalog writes fail)")(
    lambda c: _s3_case(c, KILL_IMAGES, "refuse", 20, "image_embeddings", catalog_on_s3=True, delay=1.0))
case("s3_outage_20s_3000_images", "big", "3,000 images landed on S3, endpoint refusing connections for 20 s "
     "from mid-raw_images (the issue's measurement)")(
    lambda c: _s3_case(c, 3000, "refuse", 20, "raw_images", delay=1.0))


# --- full disk ---------------------------------------------------------------------------------------------------
def mount_tmpfs(where: Path, size: str) -> str:
    """'' when mounted, else why not."""
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    return "" if done.returncode == 0 else f"mount -t tmpfs failed: {done.stderr.strip()}"


def _says(line: str, words: str | tuple[str, ...]) -> bool:
    """Whether ``line`` holds ``words`` (a tuple: any one of them), ignoring case."""
    return any(w.lower() in line.lower() for w in ((words,) if isinstance(words, str) else words))


# A full disk's line names where it happened (a batch, the downstream run, or Dagster's instance when no step was
# running) and that the disk is full.
FULL_DISK_WORDS = (("batch ", "downstream assets", "Dagster's instance"), "space left")


def _full_disk(c: Case, size: str, instance_elsewhere: bool = False) -> None:
    disk = c.dir / "disk"
    why = mount_tmpfs(disk, size)
    if why:
        c.skipped = why
        return
    c.cleanups.append(lambda: _unmount(disk))
    c.root_uri = str(disk / "data")
    if instance_elsewhere:
        c.home = c.dir / "dagster_home"
    c.land_cifar(KILL_IMAGES)
    c.steps.append(f"mount -t tmpfs -o size={size}; data root on it"
                   + ("; DAGSTER_HOME on another disk" if instance_elsewhere else "") + "; run")
    c.run("run", expect_error=True, cause_words=FULL_DISK_WORDS)
    subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
    c.steps.append("mount -o remount,size=256m; run again")
    c.run("rerun")
    c.status()


def _unmount(where: Path) -> None:
    for _ in range(20):  # a process that just ended may hold a file for a moment
        if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


case("full_disk_downstream", "disk", "data root (and the CLI's Dagster instance in it) on a 3 MB tmpfs: the disk "
     "fills during the downstream run; then remounted at 256 MB and run again")(lambda c: _full_disk(c, "3m"))
case("full_disk_ingest", "disk", "as above on a 1.2 MB tmpfs: the disk fills while the batch is ingested")(
    lambda c: _full_disk(c, "1200k"))
case("full_disk_instance_elsewhere", "disk", "data root on a 3 MB tmpfs, DAGSTER_HOME on another disk (as deployed, "
     "the instance is Postgres): the catalog's writes fill it")(lambda c: _full_disk(c, "3m", True))


# ----------------------------------------------------------------------------------------------------------------
# running and reporting
# ----------------------------------------------------------------------------------------------------------------
def _overwrite_check(c: Case) -> None:
    old, new = getattr(c, "overwritten", (None, None))
    if old is None:
        return
    problems: list[str] = []
    quality = read_table(Root(c.root_uri), "quality", problems)
    if quality is None:
        return
    hashes = dict(zip(quality.image_id, quality.pixel_hash))
    if old in hashes and new in hashes and hashes[old] == hashes[new]:
        c.notes.append("the old image_id's quality was measured on the new bytes")
        c.mismeasured = True
    elif old in hashes and new in hashes:
        c.notes.append("old and new bytes measured apart (pixel hashes differ)")


def run_cases(selected: list[tuple], work: Path) -> list[Outcome]:
    s3 = None
    if any(group in ("s3", "big") for _, group, _, _ in selected):
        try:
            s3 = S3()
        except ImportError as error:
            print(f"S3 cases skipped: {error}", file=sys.stderr)
    outcomes = []
    try:
        for name, group, what, body in selected:
            began = time.monotonic()
            c = Case(name, group, what, work, s3=s3)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {what}", flush=True)
            try:
                body(c)
                _overwrite_check(c)
            except Exception as error:  # the harness's own failure: say so in the table, go on
                import traceback

                c.notes.append(f"harness error: {type(error).__name__}: {error}")
                traceback.print_exc()
            finally:
                c.close()
            if s3 is not None:
                s3.proxy.heal()
            try:
                outcome = c.outcome(time.monotonic() - began)
            finally:
                for cleanup in c.cleanups:
                    cleanup()
            if getattr(c, "mismeasured", False):
                outcome.categories.setdefault("lost", []).append("old image measured on new bytes")
                outcome.verdict = "**FAIL: lost**"
            if outcome.categories.get("harness"):
                outcome.verdict = "harness error"
            if any(n.startswith("harness error") for n in c.notes):
                outcome.verdict = "**harness error** (see notes)"
            outcomes.append(outcome)
            print(f"    {outcome.verdict} ({outcome.seconds:.0f} s): {outcome.exits}; {outcome.accounting}", flush=True)
            for note in outcome.notes:
                print(f"    note: {note}", flush=True)
            if outcome.verdict == "ok" and not os.environ.get("FAULT_CASES_KEEP"):
                _remove(c.dir)
    finally:
        if s3 is not None:
            s3.close()
    return outcomes


TOTALS = (("crash", "crashes"), ("hang", "hangs"), ("lost", "lost or unprocessed"), ("doubled", "doubled"),
          ("hidden", "errors without a one-line cause"), ("half_written", "half-written tables"),
          ("unexpected_error", "unexpected errors (one-line cause, but the run should have worked)"),
          ("no_refusal", "expected refusals that did not happen"), ("left_behind", "processes left behind"))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(outcomes: list[Outcome], command: str, started: str, seconds: float, code_of: dict) -> str:
    counted = [o for o in outcomes if not o.verdict.startswith("skipped")]
    lines = [
        "# Robustness: issue 9's fault cases, re-run as a set",
        "",
        "Every case of issue 9, run as a user would: the real command line (`cv-dataops run --landing ... "
        "--data-root ...`) on real CIFAR-10 photos (`../shared/datasets/cifar10-sample`), each in its own process "
        "group with a fresh landing zone and data root, then the reruns a user would do and `cv-dataops status`. "
        "Verdicts are explained at the top of [`bench/fault_cases.py`](../bench/fault_cases.py); in short: "
        "**crash** = non-zero exit without exactly one `cv-dataops: error:` line, or a traceback; **hang** = no end "
        f"within {RUN_TIMEOUT:.0f} s; **lost** = after the reruns some landed entry, image row, per-batch row, "
        "spanning output, label or status is missing or unfinished; **doubled** = an `image_id` or object version "
        "twice; **hidden** = a failure whose one line does not say its cause.",
        "",
        f"Produced by `{command}` on {started} (UTC), {seconds / 60:.1f} min, on a shared 2-core machine, "
        f"running {'; '.join(sorted(set(code_of.values())))}.",
        "",
        "<!-- BEGIN fault_cases -->",
        "## Totals",
        "",
        f"{len(counted)} cases run ({len(outcomes) - len(counted)} skipped), "
        f"{sum(o.verdict == 'ok' for o in counted)} ok.",
        "",
        "| what | cases |",
        "|---|---|",
    ]
    for key, text in TOTALS:
        hit = [o.name for o in counted if o.categories.get(key)]
        lines.append(f"| {text} | {len(hit)}" + (f" ({', '.join(hit)})" if hit else "") + " |")
    lines += ["", "## Cases", "",
              "| case | what was done | exit codes | cause line seen | accounting after the reruns | verdict |",
              "|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| `{o.name}` | {_cell(o.what)} | {_cell(o.exits or '-')} | {_cell(o.causes or '-')} | "
                     f"{_cell(o.accounting)} | {_cell(o.verdict)} |")
    notes = [o for o in outcomes if o.notes]
    if notes:
        lines += ["", "## Notes", ""]
        for o in notes:
            lines.append(f"- `{o.name}`: " + "; ".join(_cell(n) for n in o.notes))
    failing = [o for o in counted if o.verdict != "ok"]
    if failing:
        lines += ["", "## Failing cases: reproduction and output", ""]
        for o in failing:
            lines += [f"### `{o.name}`", "", f"Reproduce: {o.reproduction}. "
                      f"(`.venv/bin/python bench/fault_cases.py --cases {o.name}`)", ""]
            for category, found in o.categories.items():
                lines.append(f"- {category}: " + "; ".join(_cell(f) for f in found))
            lines.append("")
            for out in o.outputs:
                if out["label"] == "status" and "status" not in str(o.categories.get("lost", "")):
                    continue
                lines += [f"`{out['command']}` ({out['label']}): exit "
                          f"{'killed: ' + out['killed_at'] if out['killed_at'] else out['rc']}, {out['seconds']} s",
                          "", "```"]
                lines += [f"stdout: {line}" for line in out["stdout_tail"]]
                lines += [f"stderr: {line}" for line in out["stderr_tail"]]
                lines += ["```", ""]
    lines += ["<!-- END fault_cases -->", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated case names, name prefixes or groups (default: all)")
    parser.add_argument("--skip", help="comma-separated case names, prefixes or groups to leave out")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"scratch folder (default {DEFAULT_WORK})")
    parser.add_argument("--output", type=Path, help="Markdown file to write (default: docs/robustness.md when every "
                                                    "case runs or with --update, else none)")
    parser.add_argument("--source", choices=("head", "tree"), default="head",
                        help="run the committed HEAD (exported to WORK/source; default: others may be editing the "
                             "working tree) or the working tree as installed")
    parser.add_argument("--update", action="store_true",
                        help="merge these cases' results into the last full run's (work/results.json) and rewrite "
                             "the table")
    args = parser.parse_args()

    def chosen(spec: str | None, name: str, group: str) -> bool:
        return any(name == s or name.startswith(s) or group == s for s in spec.split(",")) if spec else True

    selected = [c for c in CASES if chosen(args.cases, c[0], c[1]) and not (args.skip and chosen(args.skip, c[0],
                                                                                               c[1]))]
    if args.list:
        for name, group, what, _ in CASES:
            print(f"{group:12} {name:40} {what}")
        print(f"{len(CASES)} cases")
        return 0
    if not (CIFAR / "train").is_dir():
        print(f"the CIFAR-10 sample is absent ({CIFAR})", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    os.chmod(args.work, 0o755)
    global SOURCE
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY, capture_output=True,
                            text=True).stdout.strip()
    if args.source == "head":
        SOURCE = args.work / "source"
        _remove(SOURCE)
        SOURCE.mkdir()
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPOSITORY, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(SOURCE)], input=archive.stdout, check=True)
        code = f"commit {commit} (git archive HEAD, run through PYTHONPATH by .venv/bin/cv-dataops)"
    else:
        dirty = subprocess.run(["git", "status", "--short", "cv_dataops"], cwd=REPOSITORY, capture_output=True,
                               text=True).stdout.strip()
        code = f"the working tree at commit {commit}" + (" with uncommitted changes in cv_dataops/" if dirty else "")
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    began = time.monotonic()
    outcomes = run_cases(selected, args.work)
    seconds = time.monotonic() - began
    results = args.work / "results.json"
    command = "bench/fault_cases.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    command = ".venv/bin/python " + command.strip()
    code_of = {o.name: code for o in outcomes}
    if args.update and not results.exists():
        print(f"--update merges into the last full run's results, and {results} is absent: run every case once "
              "(no --cases) first", file=sys.stderr)
        return 2
    if args.update:
        saved = json.loads(results.read_text())
        fresh = {o.name: o for o in outcomes}
        merged = [fresh.pop(item["name"], None) or Outcome(**item) for item in saved["outcomes"]]
        outcomes = merged + list(fresh.values())
        code_of = {**saved.get("code_of", {}), **code_of}
        command = f"{saved['command']}`; then `{command}` on {started} (UTC) for the cases it names"
        started, seconds = saved["started"], saved["seconds"]
    if len(selected) == len(CASES) or args.update:
        results.write_text(json.dumps({"command": command, "started": started, "seconds": seconds, "code_of": code_of,
                                       "outcomes": [dataclasses.asdict(o) for o in outcomes]}, indent=1))
    output = args.output or (DEFAULT_OUTPUT if len(selected) == len(CASES) or args.update else None)
    text = render(outcomes, command, started, seconds, code_of)
    if output:
        output.write_text(text)
        print(f"wrote {output}")
    else:
        print(text.split("## Cases")[0])
    counted = [o for o in outcomes if not o.verdict.startswith("skipped")]
    print(", ".join(f"{text}: {sum(bool(o.categories.get(key)) for o in counted)}" for key, text in TOTALS[:5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
