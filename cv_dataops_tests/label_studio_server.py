"""A real Label Studio server for tests: PyPI's `label-studio` (installed by scripts/install-label-studio.sh in a
venv of its own), started on 127.0.0.1 with a throwaway data dir, local-files serving under a document root, and
reviewers created non-interactively, each with a legacy API token (``Authorization: Token ...``). Spoken to with
the standard library only: ``label-studio-sdk`` is not ours to import.

Starting costs two CLI runs: ``label-studio init`` (the first reviewer and the organization, with legacy tokens
enabled; the next reviewers likewise) and ``label-studio start`` (the last reviewer, then Django's server). The
database starts as a copy of the migrated empty one the install script leaves beside the venv; without it, the
first ``init`` migrates, which takes minutes. Each CLI run has a process group of its own, so stopping ends the
server and anything it spawned.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPOSITORY / "scripts" / "install-label-studio.sh"
# Label Studio reads these (also unprefixed: USERNAME, PASSWORD, HOST, PORT...) from its environment, so it gets a
# clean one: only what a process needs to run, plus what we set.
_PASSED_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE")


class LabelStudioError(RuntimeError):
    """Label Studio did not start, or answered a request with an error; the message says what was seen."""


@dataclass(frozen=True)
class Reviewer:
    email: str
    password: str
    token: str

    @classmethod
    def new(cls, name: str) -> Reviewer:
        return cls(f"{name}@example.com", secrets.token_urlsafe(12), secrets.token_hex(20))


# `make test` installs Label Studio in the background while the other tests run (minutes on a fresh machine) and
# names here the file the install writes its exit status to when it ends (its output beside it, ``<file>.log``).
INSTALLING_VARIABLE = "LABEL_STUDIO_INSTALL_STATUS_FILE"
INSTALL_DEADLINE_SECONDS = 1800


def _wait_for_background_install(status_file: Path) -> None:
    """Wait until the background install has ended; :class:`LabelStudioError` with its log's end if it failed (the
    test then fails: CI must not pass by skipping it)."""
    deadline = time.monotonic() + INSTALL_DEADLINE_SECONDS
    while not status_file.exists():
        if time.monotonic() > deadline:
            raise LabelStudioError(f"the background Label Studio install ({status_file}) did not end within "
                                   f"{INSTALL_DEADLINE_SECONDS} s; its log ends: {_log_tail(status_file)}")
        time.sleep(2)
    code = status_file.read_text().strip()
    if code != "0":
        raise LabelStudioError(f"the background Label Studio install failed (exit {code}); its log ends: "
                               f"{_log_tail(status_file)}")


def _log_tail(status_file: Path, lines: int = 15) -> str:
    log = Path(f"{status_file}.log")
    return " | ".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def installed_label_studio() -> tuple[Path | None, str]:
    """The `label-studio` executable the install script put in place, or None and why not (after waiting for a
    background install that `make test` started, if any)."""
    if os.environ.get(INSTALLING_VARIABLE):
        _wait_for_background_install(Path(os.environ[INSTALLING_VARIABLE]))
    try:
        found = subprocess.run(["bash", str(INSTALL_SCRIPT), "--path"], capture_output=True, text=True, timeout=30,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"{INSTALL_SCRIPT.relative_to(REPOSITORY)} --path failed: {error}"
    executable = Path(found)
    if not (executable.parent.parent / ".cv-dataops-installed").is_file() or not os.access(executable, os.X_OK):
        return None, (f"Label Studio is not installed at {executable}: run "
                      f"{INSTALL_SCRIPT.relative_to(REPOSITORY)} (CI runs it)")
    return executable, ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LabelStudioServer:
    """A running server: :meth:`request` speaks its REST API as one of its reviewers."""

    def __init__(self, url: str, reviewers: list[Reviewer], process: subprocess.Popen, log: Path,
                 document_root: Path):
        self.url, self.reviewers, self.process, self.log = url, reviewers, process, log
        self.document_root = document_root  # the local files it serves live under this folder
        self.seconds: dict[str, float] = {}  # how long starting took: "init" (migrations, users), "start"

    def request(self, method: str, path: str, *, reviewer: Reviewer | None = None, body: object = None,
                timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body bytes)`` of one request; an HTTP error status is returned, not raised."""
        headers = {"Authorization": f"Token {(reviewer or self.reviewers[0]).token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, method: str, path: str, *, reviewer: Reviewer | None = None, body: object = None,
             expect: tuple[int, ...] = (200, 201)) -> object:
        """The JSON answer of one request; any other status raises, with the answer's start."""
        status, _, data = self.request(method, path, reviewer=reviewer, body=body)
        if status not in expect:
            raise LabelStudioError(f"{method} {path} answered {status}: {data[:500].decode(errors='replace')}")
        return json.loads(data) if data else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(no log: {error})"

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the server's whole process group, SIGKILL after ``grace`` seconds."""
        _stop_group(self.process, grace)


def _stop_group(process: subprocess.Popen, grace: float) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever the server left behind in its group
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _environment(data_dir: Path, document_root: Path, home: Path) -> dict[str, str]:
    environment = {name: os.environ[name] for name in _PASSED_ENVIRONMENT if name in os.environ}
    environment.update({
        "HOME": str(home),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        # No traffic beyond loopback: no version check against PyPI, no analytics, no converter downloads.
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_CONVERTER_DOWNLOAD_RESOURCES": "false",
        "PYTHONUNBUFFERED": "1",
    })
    return environment


def _user_arguments(reviewer: Reviewer) -> list[str]:
    return ["--username", reviewer.email, "--password", reviewer.password, "--user-token", reviewer.token]


def _run_init(executable: Path, reviewer: Reviewer, environment: dict[str, str], cwd: Path, log: Path,
              deadline: float) -> None:
    """``label-studio init`` for one reviewer, in its own process group, stopped at the deadline."""
    with log.open("ab") as output:
        process = subprocess.Popen([str(executable), "init", "--no-browser", "--enable-legacy-api-token",
                                    *_user_arguments(reviewer)], cwd=cwd, env=environment, stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        returncode = process.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _stop_group(process, 5)
        raise LabelStudioError(f"`label-studio init` for {reviewer.email} had not finished by the deadline; the "
                               f"end of {log}:\n{_tail(log)}") from None
    finally:
        _stop_group(process, 5)
    if returncode != 0:
        raise LabelStudioError(f"`label-studio init` for {reviewer.email} exited with {returncode}; the end of "
                               f"{log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def _wait_until_serving(server: LabelStudioServer, deadline: float) -> None:
    """Poll /health until it answers UP, then check that the server knows our first reviewer's token (a server
    that moved to another port, as `label-studio start` does silently when its port is taken, fails here)."""
    seen = "nothing yet"
    while True:
        if server.process.poll() is not None:
            raise LabelStudioError(f"Label Studio exited with {server.process.returncode} before serving (last "
                                   f"seen on {server.url}/health: {seen}); the end of {server.log}:\n"
                                   f"{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
                body = response.read()
            if json.loads(body).get("status") == "UP":
                break
            seen = f"HTTP {response.status} {body[:200]!r}"
        except (OSError, ValueError) as error:
            seen = f"{type(error).__name__}: {error}"
        if f"Port {server.url.rsplit(':', 1)[1]} is in use" in server.log_tail(200):
            raise LabelStudioError(f"port {server.url.rsplit(':', 1)[1]} was taken before Label Studio bound it "
                                   f"(it moves to another port silently); start it again")
        if time.monotonic() > deadline:
            raise LabelStudioError(f"Label Studio did not answer UP on {server.url}/health by the deadline (last "
                                   f"seen: {seen}); the end of {server.log}:\n{server.log_tail()}")
        time.sleep(0.5)
    whoami = server.json("GET", "/api/current-user/whoami")
    if not isinstance(whoami, dict) or whoami.get("email") != server.reviewers[0].email:
        raise LabelStudioError(f"{server.url} is serving, but not as the server we started (whoami: {whoami!r})")


@contextmanager
def running_label_studio(executable: Path, workdir: Path, document_root: Path, reviewers: list[Reviewer], *,
                         start_deadline: float = 900) -> Iterator[LabelStudioServer]:
    """A server on 127.0.0.1 whose data lives in ``workdir``; stopped (whole process group) on exit.

    ``start_deadline`` (seconds) covers the migrations, the reviewers' creation and the wait for /health: generous,
    because migrating on a loaded 2-core machine takes minutes. When it gives up, it says what it saw last and
    shows the end of the server's log."""
    if not reviewers:
        raise ValueError("Label Studio needs at least one reviewer (its first user owns the organization)")
    data_dir, home = workdir / "label-studio-data", workdir / "home"
    data_dir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    template = executable.parent.parent / "cv-dataops-template" / "label_studio.sqlite3"
    if template.is_file():  # migrated by the install script; without it, `init` migrates (minutes)
        shutil.copyfile(template, data_dir / "label_studio.sqlite3")
    environment = _environment(data_dir, document_root, home)
    log = workdir / "label-studio.log"
    began = time.monotonic()
    deadline = began + start_deadline
    for reviewer in reviewers[:-1]:
        _run_init(executable, reviewer, environment, workdir, log, deadline)
    initialised = time.monotonic()
    port = free_port()
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(executable), "start", "--no-browser", "--enable-legacy-api-token", "--internal-host", "127.0.0.1",
             "--port", str(port), *_user_arguments(reviewers[-1])],
            cwd=workdir, env=environment, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    server = LabelStudioServer(f"http://127.0.0.1:{port}", list(reviewers), process, log, document_root)
    try:
        _wait_until_serving(server, deadline)
        server.seconds = {"init": initialised - began, "start": time.monotonic() - initialised}
        yield server
    finally:
        server.stop()


def local_files_url(document_root: Path, path: str | Path) -> str:
    """The URL Label Studio serves a file under its local-files document root at (relative to the server)."""
    relative = Path(path).resolve().relative_to(document_root.resolve()).as_posix()
    return "/data/local-files/?d=" + urllib.parse.quote(relative)
