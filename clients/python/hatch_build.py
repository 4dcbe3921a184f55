"""Build hooks: the gRPC stubs of the package, generated from the protobuf files.

The wheel's ``raftq/_proto`` package is generated while the wheel is built, with
grpcio-tools (``*_pb2.py``, ``*_pb2_grpc.py``) and mypy-protobuf (``*.pyi`` stubs, so that
type checkers see every message and call). The protobuf files are found beside this file
in ``proto/`` (an sdist carries them there) or at the repository's top-level ``proto/``
(a checkout, two directories up).

Run as a script (``python hatch_build.py``) it generates the same modules into
``src/raftq/_proto`` of the source tree, for type checking or running from the tree.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface

ROOT = Path(__file__).resolve().parent
# The protobuf files the server's public port describes (the internal Raft protocol is
# left out), as the server's own build lists them.
PUBLIC_PROTOS = (
    "raftq/v1/queue.proto",
    "raftq/v1/message.proto",
    "raftq/v1/admin.proto",
    "raftq/v1/agent.proto",
)
# The generated modules import each other as the protobuf package names them
# (``raftq.v1``); inside the wheel they live in ``raftq._proto``.
_IMPORT = re.compile(r"^from raftq\.v1 import ", re.MULTILINE)
_INIT = '"""gRPC stubs generated from the raftq protobuf files at build time."""\n'


def proto_root(root: Path = ROOT) -> Path:
    """The directory that holds ``raftq/v1/*.proto``: the sdist's copy or the checkout's."""
    for candidate in (root / "proto", root.parent.parent / "proto"):
        if all((candidate / name).is_file() for name in PUBLIC_PROTOS):
            return candidate
    raise FileNotFoundError(
        f"the raftq protobuf files ({', '.join(PUBLIC_PROTOS)}) are neither in "
        f"{root / 'proto'} nor in {root.parent.parent / 'proto'}"
    )


def _plugin(name: str) -> str:
    """The path of a protoc plugin installed beside this interpreter."""
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / name, Path(sys.executable).parent / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} (from mypy-protobuf) is not installed")
    return found


def generate(out: Path, protos: Path | None = None) -> list[Path]:
    """Generates the stubs into ``out`` (the ``raftq/_proto`` package); returns its files."""
    from grpc_tools import protoc  # in the build environment only

    protos = protos or proto_root()
    with tempfile.TemporaryDirectory(prefix="raftq-proto-") as scratch:
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{protos}",
            f"-I{include}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={scratch}",
            f"--grpc_python_out={scratch}",
            f"--mypy_out={scratch}",
            f"--mypy_grpc_out={scratch}",
            *(str(protos / name) for name in PUBLIC_PROTOS),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {protos}")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for source in sorted((Path(scratch) / "raftq" / "v1").iterdir()):
            target = out / source.name
            target.write_text(_IMPORT.sub("from raftq._proto import ", source.read_text()))
            written.append(target)
        init = out / "__init__.py"
        init.write_text(_INIT)
        written.append(init)
    return written


class ProtoBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds the generated ``raftq/_proto`` package to the wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        if version == "editable":
            # An editable install imports from the source tree: generate there.
            generate(root / "src" / "raftq" / "_proto", proto_root(root))
            return
        self._scratch = Path(tempfile.mkdtemp(prefix="raftq-wheel-proto-"))
        for path in generate(self._scratch, proto_root(root)):
            build_data["force_include"][str(path)] = f"raftq/_proto/{path.name}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


class ProtoDependenciesHook(MetadataHookInterface):
    """Requires the grpcio and protobuf versions the generated stubs need.

    Code generated by grpcio-tools X refuses to run under grpcio older than X, and its
    protobuf modules need the protobuf runtime that grpcio-tools itself requires: both
    requirements are copied from the grpcio-tools doing the generating.
    """

    PLUGIN_NAME = "custom"

    def update(self, metadata: dict[str, Any]) -> None:
        needed = []
        for requirement in importlib.metadata.requires("grpcio-tools") or []:
            name = re.split(r"[<>=!~;\s\[]", requirement, maxsplit=1)[0].lower()
            if name in ("grpcio", "protobuf"):
                needed.append(requirement)
        if not needed:
            version = importlib.metadata.version("grpcio-tools")
            needed = [f"grpcio>={version}", "protobuf"]
        metadata["dependencies"] = sorted(needed)


if __name__ == "__main__":
    for written in generate(ROOT / "src" / "raftq" / "_proto"):
        print(written.relative_to(ROOT))
