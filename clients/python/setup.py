"""Build hook: generate ofp_client._gen from the proto into the wheel (gen_stubs.py).

Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_py import build_py  # type: ignore[import-untyped]
from setuptools.command.sdist import sdist  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # setuptools.build_meta does not put the source dir on it

import gen_stubs  # noqa: E402


class BuildPyWithStubs(build_py):  # type: ignore[misc]
    def run(self) -> None:
        super().run()
        # An editable install imports from the source tree: generate there.
        target = HERE if getattr(self, "editable_mode", False) else Path(self.build_lib)
        gen_stubs.generate(target / "ofp_client" / "_gen")


class SdistWithProtos(sdist):  # type: ignore[misc]
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        # An sdist is built outside the repository: carry the protos along.
        for root, proto in ((gen_stubs.feature_proto_root(), gen_stubs.FEATURE_PROTO),
                            (gen_stubs.PACKED_PROTOS, gen_stubs.RPC_PROTO)):
            dest = Path(base_dir) / "proto" / proto
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / proto, dest)
        shutil.copyfile(HERE / "gen_stubs.py", Path(base_dir) / "gen_stubs.py")


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProtos})
