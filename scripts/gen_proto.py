"""Generate Python code for the .proto files under proto/ into src/ (run by make)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sources = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{include}",
        f"--python_out={ROOT / 'src'}",
        f"--pyi_out={ROOT / 'src'}",
        f"--grpc_python_out={ROOT / 'src'}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return int(code)
    for directory in {(ROOT / "src" / s).parent for s in sources}:
        for parent in [directory, *directory.parents]:
            if parent == ROOT / "src" / "inferstack":
                break
            (parent / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
