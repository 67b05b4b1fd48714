"""Copy the generated mini-scale tables into the README (between the tables markers).

    python experiments/update_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- tables:start (experiments/update_readme.py) -->", "<!-- tables:end -->"


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
    body = readme.read_text()
    if START not in body or END not in body:
        raise SystemExit(f"README.md lacks the markers {START} ... {END}")
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + START + "\n" + "\n".join(parts) + END + tail)
    print("updated README.md")


if __name__ == "__main__":
    main()
