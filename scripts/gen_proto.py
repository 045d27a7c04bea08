"""Generate Python code for the .proto files under proto/: into src/ (run by make), or into a
build directory (setup.py, so every wheel carries it)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def generate(out: Path) -> None:
    """Write the generated modules under `out` (a directory holding the inferstack package),
    with an __init__.py in every package between them and inferstack/."""
    sources = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    for directory in {(out / s).parent for s in sources}:
        for parent in [directory, *directory.parents]:
            if parent == out / "inferstack":
                break
            (parent / "__init__.py").touch()


def main() -> int:
    try:
        generate(ROOT / "src")
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
