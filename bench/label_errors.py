"""Benchmark 1 of issue 11: label-error detection, ``find_label_issues`` against cleanlab on the same vectors.

    .venv/bin/python bench/label_errors.py [--seeds 0 1 2] [--no-write]

Data: the REPORT half (``halves``: stratified, split seed 2026) of scikit-learn's digits (raw pixels, 64
dimensions) and of the CIFAR-10 sample (train and test images together, embedded with the built-in
``PatchKMeansEmbedder``, fitted without labels on the train images, one BLAS thread; vectors cached under
``$CV_DATAOPS_BENCH_CACHE`` or the temp dir). The other half, with other noise seeds, is where
bench/fit_label_issues.py chose the knobs: nothing here is tuned on what it reports.

Noise: 10 % and 20 % of the labels changed, symmetric (to a uniformly drawn other class) and asymmetric (three
class pairs drawn per seed, swapped), seeds 0-2. Per setting, in the same run on the same vectors:

* ours: ``find_label_issues`` with its default settings;
* cleanlab: ``cleanlab.filter.find_label_issues`` with its defaults on 5-fold cross-validated probabilities of a
  standardised logistic regression (``C`` fitted for cleanlab on the fit half), ranked by its self-confidence;
* cleanlab on our label model's probabilities (the classifier half of ours, no neighbours): what the neighbour
  vote adds.

Scores against the planted flips: precision, recall and F1 of the flags, average precision (AP) of the ranking.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one BLAS thread per process: the machine is shared

import hashlib  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-sample"
CACHE = Path(os.environ.get("CV_DATAOPS_BENCH_CACHE", Path(tempfile.gettempdir()) / "cv-dataops-bench"))
EMBEDDER = {"n_centroids": 400, "dimension": 512, "seed": 0}


def cifar_vectors() -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(vectors, labels, split)`` of the CIFAR-10 sample (train then test; split 0 = train, 1 = test) embedded
    with the built-in ``PatchKMeansEmbedder`` fitted, without labels, on the train images as
    bench/embedding_benchmark.py does. Cached under ``CACHE`` by file list and embedder settings; None when the
    sample is absent."""
    if not (CIFAR / "train").is_dir() or not (CIFAR / "test").is_dir():
        return None
    paths = {split: sorted((CIFAR / split).glob("*/*.jpg")) for split in ("train", "test")}
    key = hashlib.sha256(repr((EMBEDDER, [(p.relative_to(CIFAR).as_posix(), p.stat().st_size)
                                          for s in paths.values() for p in s])).encode()).hexdigest()[:16]
    cached = CACHE / f"cifar10-sample-{key}.npz"
    if cached.exists():
        data = np.load(cached)
        return data["vectors"], data["labels"], data["split"]
    from PIL import Image

    from cv_dataops.embeddings.embedders import PatchKMeansEmbedder

    images = {}
    for split, files in paths.items():
        images[split] = []
        for path in files:
            with Image.open(path) as image:
                images[split].append(image.convert("RGB"))
    start = time.perf_counter()
    embedder = PatchKMeansEmbedder.fit(images["train"], **EMBEDDER)
    vectors = np.concatenate([embedder.embed(images["train"]), embedder.embed(images["test"])]).astype(np.float32)
    print(f"embedded the CIFAR-10 sample with {embedder.version} in {time.perf_counter() - start:.0f} s",
          file=sys.stderr)
    labels = np.array([p.parent.name for s in paths.values() for p in s])
    split = np.repeat([0, 1], [len(paths["train"]), len(paths["test"])])
    CACHE.mkdir(parents=True, exist_ok=True)
    temporary = cached.with_suffix(".tmp.npz")
    np.savez(temporary, vectors=vectors, labels=labels, split=split)
    temporary.replace(cached)
    return vectors, labels, split



def digits_vectors() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as raw pixels (64 grey levels 0..16, no embedding): the classifier standardises
    them, the neighbour vote compares them by cosine."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y.astype(str)


SPLIT_SEED = 2026
REPORT_SEEDS = (0, 1, 2)


def halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of two disjoint, stratified halves: ``(fit, report)``. The knobs are fitted on the first only
    (bench/fit_label_issues.py), the benchmark reports on the second only."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    fit, report = train_test_split(rows, test_size=0.5, stratify=labels, random_state=SPLIT_SEED)
    return np.sort(fit), np.sort(report)


def datasets(part: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (vectors, labels)}`` of the ``part`` ("fit" or "report") half of each data set present."""
    found = {"digits": digits_vectors()}
    cifar = cifar_vectors()
    if cifar is None:
        print(f"the CIFAR-10 sample is not at {CIFAR}: skipped (digits only)", file=sys.stderr)
    else:
        found["cifar10-sample"] = cifar[:2]
    out = {}
    for name, (x, y) in found.items():
        rows = halves(y)[0 if part == "fit" else 1]
        out[name] = (x[rows], y[rows])
    return out


def add_noise(labels: np.ndarray, rate: float, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(noisy labels, flipped mask, description)``: exactly ``round(rate * n)`` labels changed.

    ``symmetric``: each chosen label becomes a uniformly drawn other class. ``asymmetric``: three disjoint class
    pairs drawn per seed, the chosen labels (drawn among those six classes only) swapped to their partner, so the
    six classes carry noise at about ``rate * 10 / 6``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    noisy = labels.copy()
    count = int(round(rate * len(labels)))
    if kind == "symmetric":
        chosen = rng.choice(len(labels), count, replace=False)
        index = np.searchsorted(classes, labels[chosen])
        noisy[chosen] = classes[(index + rng.integers(1, len(classes), count)) % len(classes)]
        description = "uniform over the other classes"
    elif kind == "asymmetric":
        paired = rng.permutation(classes)[:6]
        partner = {a: b for a, b in zip(paired[0::2], paired[1::2])} | {b: a for a, b in
                                                                          zip(paired[0::2], paired[1::2])}
        candidates = np.flatnonzero(np.isin(labels, paired))
        chosen = rng.choice(candidates, count, replace=False)
        noisy[chosen] = [partner[c] for c in labels[chosen]]
        description = ", ".join(f"{a}<->{b}" for a, b in zip(paired[0::2], paired[1::2]))
    else:
        raise ValueError(kind)
    return noisy, noisy != labels, description


def detection_scores(truth: np.ndarray, flagged: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 of the flags and average precision of the ranking (lower score = more likely wrong)
    against the planted flips. No flag at all: precision 0 (nothing found)."""
    from sklearn.metrics import average_precision_score

    hits = int((truth & flagged).sum())
    precision = hits / flagged.sum() if flagged.sum() else 0.0
    recall = hits / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "ap": float(average_precision_score(truth, -score)), "flagged": int(flagged.sum())}


PROBABILITY_CACHE_VERSION = 1  # bump when LabelModel changes


def classifier_probabilities(x: np.ndarray, noisy: np.ndarray, C: float, calibration: str, seed: int,
                             folds: int = 5) -> np.ndarray:
    """``LabelModel`` out-of-sample probabilities, cached under ``CACHE`` by vectors, labels and settings (the
    fitting script scores hundreds of knob combinations on each)."""
    from cv_dataops.labels.model import LabelModel, out_of_sample_probabilities

    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + "\0".join(map(str, noisy)).encode()
                            + repr((C, calibration, seed, folds, PROBABILITY_CACHE_VERSION)).encode()).hexdigest()
    cached = CACHE / "probabilities" / f"{digest[:24]}.npy"
    if cached.exists():
        return np.load(cached)
    probabilities = out_of_sample_probabilities(LabelModel(C=C, calibration=calibration, seed=seed), x, noisy,
                                                folds=folds, seed=seed)
    cached.parent.mkdir(parents=True, exist_ok=True)
    temporary = cached.with_suffix(".tmp.npy")
    np.save(temporary, probabilities)
    temporary.replace(cached)
    return probabilities


def cleanlab_baseline(noisy: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab as its documentation runs it: ``find_label_issues`` with its defaults on the out-of-sample
    probabilities, ranked by its default label quality score (self-confidence)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    index = np.unique(noisy, return_inverse=True)[1]
    return (np.asarray(find_label_issues(index, probabilities, n_jobs=1), dtype=bool),
            get_label_quality_scores(index, probabilities))


RATES = (0.1, 0.2)
KINDS = ("symmetric", "asymmetric")
BASELINE_C = 0.003  # fitted by bench/fit_label_issues.py (cleanlab's best mean F1 on the fit half)
METRICS = ("precision", "recall", "f1", "ap")


def run_setting(x: np.ndarray, noisy: np.ndarray, truth: np.ndarray, seed: int) -> dict[str, dict]:
    from cv_dataops.labels.label_issues import LabelIssueSettings, find_label_issues

    out = {}
    start = time.perf_counter()
    ours = find_label_issues(x, noisy, LabelIssueSettings(seed=seed))
    flagged = np.zeros(len(x), dtype=bool)
    score = np.empty(len(x))
    rows = ours.frame["image_id"].astype(int).to_numpy()
    flagged[rows], score[rows] = ours.frame["is_issue"].to_numpy(), ours.frame["score"].to_numpy()
    out["ours"] = detection_scores(truth, flagged, score) | {"seconds": time.perf_counter() - start,
                                                             "cv_accuracy": ours.cv_accuracy}
    start = time.perf_counter()
    plain = classifier_probabilities(x, noisy, BASELINE_C, "none", seed)
    out["cleanlab"] = detection_scores(truth, *cleanlab_baseline(noisy, plain)) | {
        "seconds": time.perf_counter() - start}
    out["cleanlab_on_ours"] = detection_scores(truth, *cleanlab_baseline(noisy, ours.classifier_probabilities))
    return out


def main() -> None:
    import argparse
    import itertools

    from report import update_section

    from cv_dataops.labels.label_issues import LabelIssueSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(REPORT_SEEDS))
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    args = parser.parse_args()
    started = time.perf_counter()
    results = {}
    sizes = {}
    for name, (x, y) in datasets("report").items():
        sizes[name] = (len(x), x.shape[1])
        for rate, kind, seed in itertools.product(RATES, KINDS, args.seeds):
            noisy, truth, pairs = add_noise(y, rate, kind, seed)
            results[name, rate, kind, seed] = run_setting(x, noisy, truth, seed) | {"pairs": pairs}
            r = results[name, rate, kind, seed]
            print(f"{name} {rate:.0%} {kind} seed {seed}: F1 ours {r['ours']['f1']:.3f} cleanlab "
                  f"{r['cleanlab']['f1']:.3f}; AP {r['ours']['ap']:.3f} / {r['cleanlab']['ap']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.3f}" if len(values) < 2 else f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    lines = ["| data | noise | ours P | ours R | **ours F1** | ours AP | cleanlab P | cleanlab R | **cleanlab F1** "
             "| cleanlab AP | F1 change | cleanlab on our model's probabilities: F1 / AP | CV accuracy |",
             "|---|---|" + "---|" * 11]
    changes, per_setting, ap_lower = [], [], []
    for name in sizes:
        for rate, kind in itertools.product(RATES, KINDS):
            rs = [results[name, rate, kind, s] for s in args.seeds]
            get = {m: {who: [r[who][m] for r in rs] for who in ("ours", "cleanlab", "cleanlab_on_ours")}
                   for m in METRICS}
            change = np.mean(get["f1"]["ours"]) - np.mean(get["f1"]["cleanlab"])
            changes += [r["ours"]["f1"] - r["cleanlab"]["f1"] for r in rs]
            per_setting.append((name, rate, kind, change))
            ap_change = np.mean(get["ap"]["ours"]) - np.mean(get["ap"]["cleanlab"])
            if ap_change < 0:
                ap_lower.append(f"{name} {rate:.0%} {kind} ({np.mean(get['ap']['ours']):.2f} vs "
                                f"{np.mean(get['ap']['cleanlab']):.2f})")
            lines.append(f"| {name} | {rate:.0%} {kind} | " + " | ".join(cell(get[m]["ours"]) for m in METRICS[:2])
                         + f" | **{cell(get['f1']['ours'])}** | {cell(get['ap']['ours'])} | "
                         + " | ".join(cell(get[m]["cleanlab"]) for m in METRICS[:2])
                         + f" | **{cell(get['f1']['cleanlab'])}** | {cell(get['ap']['cleanlab'])} | {change:+.3f} | "
                         f"{np.mean(get['f1']['cleanlab_on_ours']):.3f} / {np.mean(get['ap']['cleanlab_on_ours']):.3f}"
                         f" | {np.mean([r['ours']['cv_accuracy'] for r in rs]):.3f} |")
    mean_change = float(np.mean(changes))
    missed = [f"{n} {r:.0%} {k} ({c:+.3f})" for n, r, k, c in per_setting if c < 0]
    verdict = (f"Goal (F1 at least cleanlab's in every setting, +0.04 on the mean): mean F1 change "
               f"**{mean_change:+.3f}** over {len(results)} runs ({'met' if mean_change >= 0.04 else 'missed'} on the "
               f"mean); " + (f"ours is below cleanlab in {len(missed)} of {len(per_setting)} settings: "
                             + ", ".join(missed) + "." if missed else
                             f"ours is at least cleanlab's in all {len(per_setting)} settings (means over seeds)."))
    defaults = LabelIssueSettings()
    pairs = sorted({r["pairs"] for (n, _, k, _), r in results.items() if k == "asymmetric" and n == "digits"})
    body = f"""
Planted label errors, found by `cv_dataops.labels.label_issues.find_label_issues` (ours) and by cleanlab's
`find_label_issues` (defaults, on 5-fold cross-validated probabilities of a standardised logistic regression with
`C = {BASELINE_C}`) on the same vectors in the same run. Means ± standard deviation over noise seeds
{", ".join(map(str, args.seeds))}; P / R / F1 of the flags (`is_issue`), AP = average precision of the ranking
(`score`, lower = more likely wrong) against the flipped labels.

Data (the REPORT half of each set: a stratified half, split seed {SPLIT_SEED}): scikit-learn's digits, raw
pixels, {sizes.get('digits', (0, 0))[0]} images x {sizes.get('digits', (0, 0))[1]}; the CIFAR-10 sample (train
and test images together), built-in `PatchKMeansEmbedder` (400 centroids, 512 dimensions, seed 0, fitted
without labels on the 3,000 train images), {sizes.get('cifar10-sample', (0, 0))[0]:,} images. Noise: 10 % / 20 % of
the labels changed; symmetric = to a uniformly drawn other class; asymmetric = within three class pairs drawn per
seed (digits, e.g. {pairs[0] if pairs else ''}).

No tuning on these figures: the knobs of ours (`neighbors={defaults.neighbors}`,
`classifier_weight={defaults.classifier_weight}`, `filter_by={defaults.filter_by}`,
`score_method={defaults.score_method}`, `max_score={defaults.max_score}`, `C={defaults.C}`) and cleanlab's `C`
were chosen by `bench/fit_label_issues.py` (best mean F1) on the OTHER half of each data set with noise seeds 100
and 101. There, cleanlab's F1 was highest at `C = 0.003` (0.675; scikit-learn's default `C = 1` gave 0.535), ours
0.718.

{chr(10).join(lines)}

{verdict}

Ranking (AP, what a review budget sees): ours is below cleanlab's in {len(ap_lower)} of {len(per_setting)} settings{
": " + ", ".join(ap_lower) if ap_lower else ""}. The knobs were fitted for F1 (AP only broke ties); where the
embedding is weak (CIFAR), a 10-neighbour vote of noisy labels sharpens the flags (precision) but blurs the order
of the rest. Where ours loses on F1 (20 % asymmetric: within a swapped pair a third of the labels are wrong) its
recall drops: `max_score` asks for a margin the pair's labels no longer give.

"CV accuracy" is the label model's out-of-sample accuracy against the noisy labels (what `label_issues` reports
for its WARN check: below `min_accuracy = 0.6`, as on every CIFAR run here, the check says to rank and rely on
the review budget). The column "cleanlab on our model's probabilities" is cleanlab's defaults on the classifier
half of ours (temperature-scaled logistic regression, no neighbour vote): the difference to "ours" is what the
neighbour vote and the averaging add. Whole run: {time.perf_counter() - started:.0f} s, one BLAS thread, on a
shared 2-core machine.
"""
    if args.no_write:
        print(body)
    else:
        update_section("label-errors", "Labels: label-error detection against cleanlab", body)


if __name__ == "__main__":
    main()
