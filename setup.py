"""What pyproject.toml cannot declare: every build also generates the protobuf code from
proto/ (with scripts/gen_proto.py, the generator `make` runs), so `pip install .` and a wheel
carry inferstack.proto without `make`. Everything else is in pyproject.toml."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts"))
from gen_proto import generate  # noqa: E402  (scripts/ is not a package)


class BuildWithProtos(build_py):
    def run(self) -> None:
        super().run()
        # An editable install imports from src/, so the code goes there; a wheel's from its
        # build directory.
        generate(ROOT / "src" if self.editable_mode else Path(self.build_lib))


setup(cmdclass={"build_py": BuildWithProtos})
