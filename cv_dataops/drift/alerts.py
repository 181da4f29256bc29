"""The drift webhook: a Slack-compatible or a generic JSON body, posted with retries and backoff, bounded in time
and never raising into the caller (the run goes on whatever the endpoint does; the outcome says what happened).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

KINDS = ("slack", "generic")
# Answers worth another try; any other 4xx is the endpoint refusing this body for good.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class AlertOutcome:
    delivered: bool
    attempts: int
    status: int | None          # the last HTTP status, None when no answer came
    error: str | None           # the last failure in words
    errors: tuple[str, ...] = field(default=())


def alert_payload(result, report_uri: str | None = None, *, causes: int = 3) -> dict:
    """The generic body for a drift result (anything with batch_id, reference_id, severity, drifted, causes)."""
    return {"event": "drift", "batch_id": result.batch_id, "reference_id": result.reference_id,
            "severity": result.severity, "drifted": result.drifted,
            "top_causes": [c.text for c in result.causes[:causes]], "report_uri": report_uri}


def slack_body(payload: dict) -> dict:
    """Slack's incoming-webhook shape: ``text`` (the notification) and one mrkdwn section."""
    causes = "\n".join(f"• {c}" for c in payload.get("top_causes") or []) or "• (no cause named)"
    link = f"\n<{payload['report_uri']}|Drift report>" if payload.get("report_uri") else ""
    text = (f"Drift ({payload.get('severity')}) in batch {payload.get('batch_id')} against "
            f"{payload.get('reference_id')}")
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                                   "text": f"*{text}*\n{causes}{link}"}}]}


def post_alert(url: str, payload: dict, kind: str = "slack", *, attempts: int = 3, backoff: float = 1.0,
               timeout: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> AlertOutcome:
    """POST ``payload`` (as :func:`slack_body` for ``kind="slack"``, as is for ``"generic"``) to ``url``.

    Up to ``attempts`` tries, each waiting at most ``timeout`` seconds for an answer, with ``backoff * 2**i``
    seconds between them; so the call returns within ``attempts * timeout + backoff * (2**(attempts-1) - 1)``
    seconds plus connection set-up. Retries on no answer, connection errors, 408/425/429 and 5xx; any other answer
    is final. Never raises."""
    errors: list[str] = []
    try:
        if kind not in KINDS:
            return AlertOutcome(False, 0, None, f"unknown webhook kind {kind!r} (use one of: {', '.join(KINDS)})")
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            return AlertOutcome(False, 0, None, f"webhook URL must be http:// or https://, got {url!r}")
        body = json.dumps(slack_body(payload) if kind == "slack" else payload, default=str).encode()
    except Exception as error:  # a payload that cannot be serialised must not fail the run either
        return AlertOutcome(False, 0, None, f"could not build the alert: {error}")
    status = None
    attempts = max(1, int(attempts))
    for attempt in range(1, attempts + 1):
        retry = True
        try:
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "User-Agent": "cv-dataops-drift-alert"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = response.status
                response.read(65536)
            if 200 <= status < 300:
                return AlertOutcome(True, attempt, status, None, tuple(errors))
            errors.append(f"HTTP {status}")
        except urllib.error.HTTPError as error:
            status = error.code
            errors.append(f"HTTP {error.code} {error.reason}")
            retry = error.code in _RETRY_STATUSES
        except (TimeoutError, urllib.error.URLError, OSError) as error:
            status = None
            reason = getattr(error, "reason", error)
            errors.append(f"no answer: {reason}")
        except Exception as error:  # anything else (a malformed URL, an odd response): reported, not raised
            status = None
            errors.append(f"{type(error).__name__}: {error}")
            retry = False
        if not retry or attempt == attempts:
            break
        try:
            sleep(backoff * 2 ** (attempt - 1))
        except Exception:
            pass
    return AlertOutcome(False, attempt, status, errors[-1] if errors else None, tuple(errors))
