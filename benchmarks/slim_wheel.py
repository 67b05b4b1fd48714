"""Rewrite a wheel without some of its folders, to carry a large package (Ray) to a machine
that cannot download it, under a size limit.

    python benchmarks/slim_wheel.py ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl .whl \\
        ray/jars ray/rllib ray/data ray/serve ray/tune ray/train ray/llm

Every member under a dropped folder goes, and so does its line in the wheel's RECORD, so pip
installs the rest as usual; permissions (Ray's executables) are kept. Writes a file of the
same name into the output folder.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path


def slim(wheel: Path, out_dir: Path, drop: list[str]) -> Path:
    """Write `out_dir / wheel.name` without the members under the `drop` folders."""
    prefixes = tuple(d.rstrip("/") + "/" for d in drop)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / wheel.name
    if out.resolve() == wheel.resolve():
        raise SystemExit(f"{out}: the output would overwrite the input wheel; choose another folder")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(prefixes):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith(prefixes)).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("drop", nargs="+", help="folders inside the wheel to leave out, e.g. ray/jars")
    args = parser.parse_args()
    out = slim(args.wheel, args.out_dir, args.drop)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB (was {args.wheel.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
