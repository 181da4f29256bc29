"""The webhook against small HTTP servers on 127.0.0.1 (threads in this process; shut down after each test)."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cv_dataops.drift.alerts import alert_payload, post_alert, slack_body
from cv_dataops.drift.explain import Cause

PAYLOAD = {"event": "drift", "batch_id": "b7", "reference_id": "snap-1", "severity": "large", "drifted": True,
           "top_causes": ["sharpness dropped: median 0.61 → 0.22, KS D = 0.71"], "report_uri": "file:///r/b7.html"}


class _Server:
    def __init__(self, answers):
        received, answers = [], list(answers)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status = answers.pop(0) if answers else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.received = received
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fails_twice_then_delivers_with_doubling_backoff():
    pauses = []
    with _Server([503, 500]) as server:
        outcome = post_alert(server.url, PAYLOAD, "slack", attempts=4, backoff=0.5, timeout=5, sleep=pauses.append)
    assert outcome.delivered and outcome.attempts == 3 and outcome.status == 200
    assert pauses == [0.5, 1.0] and outcome.errors == ("HTTP 503 Service Unavailable", "HTTP 500 Internal Server Error")
    body = server.received[-1]
    assert "b7" in body["text"] and "sharpness dropped" in body["blocks"][0]["text"]["text"]
    assert "file:///r/b7.html" in body["blocks"][0]["text"]["text"]


def test_generic_body_is_the_payload_itself():
    with _Server([]) as server:
        outcome = post_alert(server.url, PAYLOAD, "generic", sleep=lambda s: None)
    assert outcome.delivered and server.received == [PAYLOAD]


def test_a_refusal_is_not_retried():
    with _Server([400, 200]) as server:
        outcome = post_alert(server.url, PAYLOAD, attempts=3, sleep=lambda s: None)
    assert not outcome.delivered and outcome.attempts == 1 and outcome.status == 400 and len(server.received) == 1


def test_an_endpoint_that_never_answers_is_given_up_on():
    """A socket that accepts connections and never answers: every attempt times out, the call returns."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        outcome = post_alert(url, PAYLOAD, attempts=2, backoff=0.0, timeout=0.3, sleep=lambda s: None)
    finally:
        listener.close()
    assert not outcome.delivered and outcome.attempts == 2 and outcome.status is None
    assert "timed out" in outcome.error


def test_nothing_listening_and_bad_input_never_raise():
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    refused = post_alert(f"http://127.0.0.1:{port}/", PAYLOAD, attempts=2, sleep=lambda s: None)
    assert not refused.delivered and refused.attempts == 2 and "no answer" in refused.error
    assert "http:// or https://" in post_alert("file:///etc/passwd", PAYLOAD).error
    assert "unknown webhook kind" in post_alert("http://127.0.0.1:1/", PAYLOAD, "teams").error
    assert not post_alert("http://[::1", PAYLOAD, attempts=1).delivered


@pytest.mark.parametrize("kind", ["slack", "generic"])
def test_payload_from_a_result(kind):
    class Result:
        batch_id, reference_id, severity, drifted = "b1", "snap", "large", True
        causes = [Cause("sharpness", "sharpness", "sharpness dropped", 2.0, True)] * 5
    payload = alert_payload(Result(), "s3://bucket/reports/drift/b1.html")
    assert payload["top_causes"] == ["sharpness dropped"] * 3
    assert "s3://bucket" in json.dumps(slack_body(payload) if kind == "slack" else payload)
