"""Benchmark 4 of issue 11: the whole labels loop through `cv-dataops run`, round after round of review answered
by a simulated reviewer, against the promoted model's accuracy and the share of wrong labels left.

    .venv/bin/python bench/labels_loop.py [--rounds 6] [--budget 40] [--no-write]

Data: scikit-learn's bundled digits (``cv_dataops.demo.data.write_digits``, 32x32 PNGs). 1,000 land in ImageFolder
layout, of which (seeded) 15 % sit in a wrong class folder (a label error, the truth known) and 20 % land at the
landing root without a label; the other 797 are the test set, never landed. Each round: ``run_pipeline`` (what
`cv-dataops run` does: ingest what landed, then labels, audited_labels, label_model with promotion on the frozen
holdout, label_issues, auto_labels, curation and review_queue), then the round's tasks (``review/latest.json``)
answered with the truth as a CSV dropped into ``reviews/``, applied by the next run. Reported per round: the
verified labels (human and reviewed: what the model trains on) and how many of them are wrong, the share of
audited labels that are wrong, how many wrong labels are left, the promoted model and
its accuracy on the 797 test digits (embedded with the catalog's own stored embedder), the accuracy of the model
trained last (promoted or not), and what the round asked.

Two arms, the product's defaults except for one setting: ``review_overrides_human`` false (the default: a review
that contradicts a human label makes it ``disputed``, and the audit's rule picks the label shown) and true (a
team that trusts its reviewers over the landing folders). Nothing is tuned here.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import update_section  # noqa: E402

from cv_dataops.config import Settings  # noqa: E402
from cv_dataops.core.storage import LocalStorage  # noqa: E402
from cv_dataops.demo.data import write_digits  # noqa: E402
from cv_dataops.embeddings.store import load_or_fit_embedder  # noqa: E402
from cv_dataops.labels.registry import REGISTRY_FOLDER, ModelRegistry  # noqa: E402
from cv_dataops.runner import open_instance, run_pipeline  # noqa: E402

LANDED, NOISE, UNLABELLED = 1000, 0.15, 0.20


def prepare(root: Path, seed: int = 0) -> tuple[Path, pd.DataFrame, list[Path], np.ndarray]:
    """The landing zone (truth by relative path) and the test files with their labels."""
    source = root / "digits"
    frame = write_digits(source, size=32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    landed, test = frame.iloc[order[:LANDED]], frame.iloc[order[LANDED:]]
    landing = root / "landing"
    rows = []
    for row in landed.itertuples(index=False):
        draw = rng.random()
        name = Path(row.relative_path).name
        if draw < UNLABELLED:
            target = name
        elif draw < UNLABELLED + NOISE * (1 - UNLABELLED):
            wrong = rng.choice([c for c in map(str, range(10)) if c != row.label])
            target = f"{wrong}/{name}"
        else:
            target = row.relative_path
        (landing / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / row.relative_path, landing / target)
        rows.append({"relative_path": target, "truth": row.label})
    return landing, pd.DataFrame(rows), [source / p for p in test["relative_path"]], test["label"].to_numpy()


def measure_round(data: Path, settings: Settings, truth: pd.Series, test_files: list[Path],
                  test_labels: np.ndarray) -> dict:
    audited = pq.read_table(data / "catalog" / "audited_labels").to_pandas()
    wrong = audited["label"] != audited["image_id"].map(truth)
    registry = ModelRegistry(LocalStorage(data / REGISTRY_FOLDER))
    promoted = registry.promoted()
    accuracy = latest_accuracy = None
    versions = registry.list()
    if versions:
        embedder = load_or_fit_embedder(dict(settings.embedder), LocalStorage(data), lambda: [])
        vectors = embedder.embed([Image.open(path).convert("RGB") for path in test_files])

        def score(version: str) -> float:
            return float(np.mean(registry.load(version).predict(vectors) == test_labels))

        latest_accuracy = score(versions[-1].version)
        accuracy = score(promoted.version) if promoted is not None else None
    verified = audited["status"].isin(("human", "reviewed"))
    return {"verified labels": int(verified.sum()), "wrong verified": int((wrong & verified).sum()),
            "audited labels": len(audited), "wrong labels left": int(wrong.sum()),
            "wrong share": float(wrong.mean()) if len(audited) else None,
            "disputed": int((audited["status"] == "disputed").sum()),
            "promoted model": promoted.version if promoted else "none", "test accuracy": accuracy,
            "models trained": len(versions), "latest model's test accuracy": latest_accuracy}


def answer_round(data: Path, truth: pd.Series, number: int) -> dict:
    latest = data / "review" / "latest.json"
    if not latest.exists():
        return {"asked": 0}
    queue = pd.read_csv(json.loads(latest.read_text())["csv"], dtype=str, keep_default_na=False)
    reviews = data / "reviews"
    reviews.mkdir(exist_ok=True)
    answers = pd.DataFrame({"image_id": queue["image_id"], "label": queue["image_id"].map(truth),
                            "annotator": "simulated-reviewer"})
    answers.to_csv(reviews / f"round-{number:02d}.csv", index=False)
    counts = queue["reason"].value_counts().to_dict()
    current = queue["current_label"]
    return {"asked": len(queue), "asked were wrong": int((current.ne("") & current.ne(queue["image_id"].map(truth)))
                                                         .sum()),
            **{f"asked {reason}": int(count) for reason, count in counts.items()}}


def run_arm(root: Path, overrides: bool, rounds: int, budget: int) -> list[dict]:
    landing, truth_by_path, test_files, test_labels = prepare(root)
    data = root / "data"
    os.environ["DAGSTER_HOME"] = str(root / "home")
    settings = Settings.build(landing=landing, data_root=data,
                              review={"budget": budget, "review_overrides_human": overrides})
    instance = open_instance(str(data))
    rows = []
    for number in range(rounds + 1):
        began = time.perf_counter()
        run_pipeline(instance, landing=str(landing), data_root=str(data), settings=settings)
        if number == 0:
            images = pq.read_table(data / "catalog" / "images").to_pandas()
            truth = images.merge(truth_by_path, on="relative_path").set_index("image_id")["truth"]
        row = {"review_overrides_human": overrides, "round": number, **measure_round(
            data, settings, truth, test_files, test_labels), "run seconds": time.perf_counter() - began}
        if number < rounds:
            row.update(answer_round(data, truth, number + 1))
        rows.append(row)
        print(row, file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for overrides in (False, True):
        with tempfile.TemporaryDirectory() as folder:
            rows += run_arm(Path(folder), overrides, args.rounds, args.budget)
    table = pd.DataFrame(rows)
    columns = ["review_overrides_human", "round", "verified labels", "wrong verified", "wrong labels left", "wrong share", "disputed",
               "promoted model", "models trained", "test accuracy", "latest model's test accuracy", "asked", "asked were wrong",
               *sorted(c for c in table.columns if c.startswith("asked ") and c != "asked were wrong")]
    table = table[[c for c in columns if c in table.columns]]
    body = "\n\n".join([
        f"1,000 of scikit-learn's digits land (15 % in a wrong class folder, 20 % unlabelled); {args.rounds} review "
        f"rounds of {args.budget} images, each answered with the truth by a simulated reviewer and applied by the "
        "next `run_pipeline` (the in-process `cv-dataops run`); the promoted model is scored on the 797 digits "
        "that never landed. Round 0 is the state after the first run, before any review; `asked were wrong` counts "
        "the round's images whose current label was wrong. See the script's docstring.",
        table.to_markdown(index=False, floatfmt=".3f"),
        f"Run time {time.perf_counter() - start:.0f} s.",
    ])
    if args.no_write:
        print(body)
    else:
        update_section("labels-loop", "Labels: the full loop, round after round of review (issue 11, benchmark 4)",
                       body)


if __name__ == "__main__":
    main()
