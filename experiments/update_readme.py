"""Copy the generated mini-scale tables into the README (between the tables markers), and the Status's
counts (`experiments/status_counts.py`) between the status markers.

    python experiments/update_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

from status_counts import status_markdown  # beside this script (run as `python experiments/update_readme.py`)

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- tables:start (experiments/update_readme.py) -->", "<!-- tables:end -->"
STATUS_START, STATUS_END = "<!-- status:start (experiments/update_readme.py) -->", "<!-- status:end -->"


def replace_between(body: str, start: str, end: str, text: str) -> str:
    """``body`` with what lies between the markers ``start`` and ``end`` replaced by ``text``."""
    if start not in body or end not in body:
        raise SystemExit(f"README.md lacks the markers {start} ... {end}")
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + text + end + tail


def main() -> None:
    parts = []
    for table in ("latency", "energy", "size"):
        md = ROOT / "experiments" / "results" / f"{table}-mini.md"
        if not md.is_file():
            parts.append(f"`{table}`: not run yet (`haq table {table}`).\n")
            continue
        text = md.read_text().split("\n", 1)[1]  # drop the generated-by comment
        # links and images are relative to experiments/results/
        text = re.sub(r"\]\((?!http)([^)]+)\)", r"](experiments/results/\1)", text)
        text = text.replace("(beside this file)", "(in experiments/results/)")
        parts.append(text)
    readme = ROOT / "README.md"
    body = replace_between(readme.read_text(), START, END, "\n".join(parts))
    readme.write_text(replace_between(body, STATUS_START, STATUS_END, status_markdown()))
    print("updated README.md")


if __name__ == "__main__":
    main()
