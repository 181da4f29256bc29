"""Write a benchmark's results into its own section of docs/benchmarks.md, with the command that produced them."""

from __future__ import annotations

import platform
import re
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script named in it; rerun the command to refresh it.\n"


def update_section(name: str, title: str, body: str) -> None:
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0].split("/work/main/")[-1], *sys.argv[1:]])
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {platform.python_version()}"
    section = (f"<!-- BEGIN {name} -->\n## {title}\n\nCommand: `{command}` ({stamp})\n\n{body.strip()}\n"
               f"<!-- END {name} -->")
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)
    print(section)
