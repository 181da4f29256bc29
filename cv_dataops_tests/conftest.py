"""Shared fixtures: crafted landing zones, a real S3 API on loopback (moto's server), the CIFAR-10 sample."""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

REPOSITORY = Path(__file__).resolve().parent.parent
CIFAR_SAMPLE = REPOSITORY.parent / "shared" / "datasets" / "cifar10-sample"


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def photo(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small textured RGB image, different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([(x * (3 + seed % 5)) % 256, (y * (2 + seed % 7)) % 256, ((x + y) * 5 + seed * 40) % 256], -1)
    noise = rng.integers(0, 40, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# A built-in embedder small enough to fit in well under a second: for tests that need vectors, not good ones.
# (The default fits 400 centroids and 512 dimensions on up to 3,000 images: seconds to minutes per test.)
TINY_EMBEDDER_SPEC = {"kind": "patch-kmeans", "n_centroids": 16, "dimension": 16, "n_patches": 4000,
                      "kmeans_iterations": 3}


@contextmanager
def fresh_fork_server() -> Iterator[None]:
    """Stop multiprocessing's fork server before and after: a step forked from it gets the environment the server
    started with, and in a test process that is an earlier test's (the quality pool starts one too). A deployment
    starts a fresh process per run, so there the server always has the run's environment."""
    import multiprocessing.forkserver

    multiprocessing.forkserver._forkserver._stop()
    try:
        yield
    finally:
        multiprocessing.forkserver._forkserver._stop()


@pytest.fixture
def tiny_embedder_spec() -> dict:
    return dict(TINY_EMBEDDER_SPEC)


@pytest.fixture
def cifar_sample() -> Path:
    if not (CIFAR_SAMPLE / "train").is_dir():
        pytest.skip(f"the CIFAR-10 sample is not beside the repository ({CIFAR_SAMPLE} is absent)")
    return CIFAR_SAMPLE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API over HTTP on 127.0.0.1 (moto in server mode), with credentials in the environment."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for one test."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """The same storage tests run on a local folder and on a bucket prefix of the real S3 API."""
    from cv_dataops.core.storage import LocalStorage, open_storage

    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/some/prefix")


def bad_input_corpus(root: Path, outside: Path) -> dict[str, str]:
    """Write the landing zone of awkward inputs; return key -> expected outcome ("image", "duplicate" or the
    quarantine reason). ``outside`` is a folder beside the landing zone for a symlink to escape to."""
    base = photo(1)
    jpeg, png = encode(base, "JPEG", quality=90), encode(base, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Acme"
    exif[0x0110] = "Cam 3000"
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    frames = [photo(2, (32, 32)), photo(3, (32, 32))]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files = {
        "good/photo.jpg": jpeg,
        "good/ünïcode name with spaces.jpg": encode(photo(4), "JPEG"),
        "good/copy of photo.jpg": jpeg,
        "bad/zero.jpg": b"",
        "bad/truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad/truncated.png": png[: len(png) // 2],
        "bad/text.jpg": b"just some text, not an image\n",
        "bad/page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "bad/bomb.png": encode(Image.new("1", (20000, 20000)), "PNG"),
        "bad/tiny.png": encode(photo(5, (4, 4)), "PNG"),
        "bad/vector.svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "bad/icon.ico": encode(photo(6, (32, 32)), "ICO"),
        "modes/cmyk.jpg": encode(photo(7).convert("CMYK"), "JPEG"),
        "modes/gray16.png": encode(Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 13).astype(np.uint16)), "PNG"),
        "modes/palette_alpha.png": encode(photo(8).convert("P"), "PNG", transparency=0),
        "modes/animated.gif": animated.getvalue(),
        "modes/rotated.jpg": encode(photo(9), "JPEG", exif=exif),
    }
    write_files(root, files)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.jpg").write_bytes(jpeg)
    os.symlink(outside / "secret.jpg", root / "bad" / "escape.jpg")
    return {
        "good/photo.jpg": "duplicate", "good/copy of photo.jpg": "image",  # sorted order decides which is first
        "good/ünïcode name with spaces.jpg": "image",
        "bad/zero.jpg": "empty_file", "bad/truncated.jpg": "truncated", "bad/truncated.png": "truncated",
        "bad/text.jpg": "not_an_image", "bad/page.jpg": "not_an_image", "bad/bomb.png": "too_many_pixels",
        "bad/tiny.png": "too_small", "bad/vector.svg": "unsupported_format", "bad/icon.ico": "unsupported_format",
        "bad/escape.jpg": "unsafe_path",
        "modes/cmyk.jpg": "image", "modes/gray16.png": "image", "modes/palette_alpha.png": "image",
        "modes/animated.gif": "image", "modes/rotated.jpg": "image",
    }


_exit_status: list[int] = []


def pytest_collection_modifyitems(session, config, items):
    """The Label Studio round trip runs last: `make test` installs Label Studio in the background meanwhile."""
    items.sort(key=lambda item: "test_label_studio_round_trip" in item.nodeid)  # stable: the rest keep their order


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without interpreter teardown once pytest has reported, keeping its exit status: Arrow's native thread
    pool can abort the process at teardown (apache/arrow#34314), turning a green run into exit 134."""
    if _exit_status:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
