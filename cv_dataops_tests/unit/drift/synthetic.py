"""Synthetic batches for the drift tests: image properties with the correlations real ones have, and embeddings
with a few scenarios, from which shifts are planted."""

from __future__ import annotations

import numpy as np
import pandas as pd

CENTRES = np.random.default_rng(12345).normal(size=(5, 24)) * 1.5


def properties(n: int, rng: np.random.Generator, *, blur: float = 1.0, light: float = 0.0,
               cameras: tuple[str, ...] = ("Canon EOS 80D", "unknown"), start: int = 0) -> pd.DataFrame:
    """``blur`` < 1 divides sharpness (and lowers entropy a little); ``light`` adds to brightness."""
    detail = rng.normal(size=n)
    brightness = np.clip(rng.beta(5, 5, n) + light, 0, 1)
    sharpness = np.exp(np.log(600) + 0.5 * detail + 0.2 * rng.normal(size=n)) * blur
    return pd.DataFrame({
        "image_id": [f"img{start + i:05d}" for i in range(n)],
        "brightness": brightness,
        "dark_clipped_fraction": np.clip(rng.exponential(0.01, n) * (1 - brightness) * 2, 0, 1),
        "light_clipped_fraction": np.clip(rng.exponential(0.01, n) * brightness * 2, 0, 1),
        "rms_contrast": np.clip(rng.normal(0.22, 0.05, n), 0.01, 1),
        "sharpness": sharpness,
        "noise_sigma": rng.gamma(4, 0.6, n),
        "colourfulness": rng.gamma(6, 6, n),
        "entropy": np.clip(7.2 + 0.2 * detail + 0.05 * np.log(blur) + 0.1 * rng.normal(size=n), 0, 8),
        "width": np.full(n, 640), "height": rng.choice([480, 640], n, p=[0.8, 0.2]),
        "jpeg_quality": rng.choice([85, 90, 95], n),
        "camera": rng.choice(list(cameras), n),
    }).assign(aspect=lambda f: f["width"] / f["height"])


def vectors(n: int, rng: np.random.Generator, *, weights=(0.3, 0.25, 0.2, 0.15, 0.1), new_centre: float = 0.0,
            shift: float = 0.0) -> np.ndarray:
    """Rows around scenario centres picked with ``weights``; ``new_centre`` is the share drawn around a centre no
    reference scenario has; ``shift`` moves every row along one direction."""
    scenario = rng.choice(len(CENTRES), n, p=np.asarray(weights) / np.sum(weights))
    x = CENTRES[scenario] + rng.normal(size=(n, CENTRES.shape[1]))
    novel = rng.random(n) < new_centre
    x[novel] = -CENTRES.sum(axis=0) + rng.normal(size=(int(novel.sum()), CENTRES.shape[1]))
    x[:, 0] += shift
    return x
