"""Regenerate the Python gRPC modules from ``protos/``: ``python -m seismag.serving.codegen``.

The generated files are committed so that a runtime install needs no protoc; this script is the
only way they should change. It runs ``grpc_tools.protoc`` with ``-I protos`` (the .proto files
live under ``protos/seismag/serving/...``), so the generated imports read
``from seismag.serving.v1 import seismag_pb2`` and work from the installed package.

One post-processing step: the Open Inference Protocol modules (grpc_service, and model_config
which it imports) register their ``inference.*`` messages in one private descriptor pool, defined
in ``seismag.serving.oip``, instead of protobuf's default one. tritonclient (and any
other KServe client) registers the same symbols under another file name in the default pool, and
protobuf refuses duplicate symbols, so without this a process that imports both - our tests, a
benchmark, a proxy - would crash at import. The wire format is unaffected.

The generator is pinned (:data:`GENERATOR`): protobuf's Python gencode runs on its own protobuf
version and every newer runtime, never an older one, and grpcio's stubs require a grpcio at least
as new as the grpcio-tools that wrote them. Code from grpcio-tools 1.72.2 (protobuf gencode 6.30.0)
therefore runs on protobuf 6.30 through 7.x and grpcio >= 1.72.2, so seismag installs beside
tritonclient (protobuf < 7) as well as beside the newest protobuf. Another grpcio-tools would
write other files, so this script refuses to run with one (the dev extra installs the pinned one).

``--check`` regenerates into a temporary folder and fails if the committed files differ (for CI).
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository root, which is the ``seismag`` package."""
PROTOS = ROOT / "protos"
GENERATOR = "1.72.2"
"""The grpcio-tools version that writes the committed modules (pinned in the dev extra)."""
GENCODE = "6.30.0"
"""The protobuf gencode version GENERATOR writes: the oldest protobuf runtime they run on."""
PACKAGES = ("v1", "oip")
"""Sub-packages of ``seismag.serving`` that hold generated code, one per proto folder."""

_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# seismag codegen: a private pool, so tritonclient's copy of these symbols can coexist.\n"
    "from seismag.serving.oip import POOL as _POOL\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)
_OIP_POOL = '''
from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
"""The descriptor pool of every OIP module (imports resolve within it; see codegen.py)."""
'''

_INIT = '''"""Generated gRPC code for {what}.

Do not edit: regenerate with ``python -m seismag.serving.codegen`` (grpcio-tools {generator},
protobuf gencode {gencode}: runs on protobuf >= {gencode} and grpcio >= {generator}).
"""
'''
_WHAT = {
    "v1": "the MagnitudeService and FieldService (protos/seismag/serving/v1)",
    "oip": "the Open Inference Protocol, KServe v2 (protos/seismag/serving/oip)",
}


def _proto_files() -> list[Path]:
    files = sorted(PROTOS.rglob("*.proto"))
    if not files:
        raise SystemExit(f"codegen: no .proto files under {PROTOS}")
    return files


def check_generator() -> None:
    """Exit with the install command unless the pinned grpcio-tools is the installed one."""
    try:
        found = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        found = None
    if found != GENERATOR:
        raise SystemExit(
            f"codegen: the committed gRPC code is written by grpcio-tools {GENERATOR} "
            f"(protobuf gencode {GENCODE}, which runs on every protobuf from {GENCODE} on), "
            f"but {'grpcio-tools ' + found if found else 'no grpcio-tools'} is installed: "
            f"pip install 'grpcio-tools=={GENERATOR}' (the dev extra pins it)"
        )


def generate(out: Path) -> None:
    """Run protoc for every proto file and write the finished modules to ``out/<package>/``."""
    check_generator()
    from grpc_tools import protoc  # dev-only dependency, hence imported here

    include = str(resources.files("grpc_tools") / "_proto")  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(p.relative_to(PROTOS)) for p in _proto_files()),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("codegen: protoc failed (see the messages above)")
        for pkg in PACKAGES:
            src = Path(tmp) / "seismag" / "serving" / pkg
            dst = out / pkg
            dst.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.iterdir()):
                if f.suffix in (".py", ".pyi"):
                    shutil.copyfile(f, dst / f.name)
            init = _INIT.format(what=_WHAT[pkg], generator=GENERATOR, gencode=GENCODE)
            init += _OIP_POOL if pkg == "oip" else ""
            (dst / "__init__.py").write_text(init, encoding="utf-8")
    for module in sorted(out.glob("*/*_pb2.py")):
        if f"# Protobuf Python Version: {GENCODE}\n" not in module.read_text(encoding="utf-8"):
            raise SystemExit(f"codegen: {module} is not protobuf {GENCODE} gencode")
    for oip in sorted((out / "oip").glob("*_pb2.py")):
        text = oip.read_text(encoding="utf-8")
        if _DEFAULT_POOL not in text:
            raise SystemExit(f"codegen: {oip} no longer has the expected descriptor-pool line")
        oip.write_text(text.replace(_DEFAULT_POOL, _PRIVATE_POOL, 1), encoding="utf-8")


def _differences(generated: Path, committed: Path) -> list[str]:
    diffs = []
    for pkg in PACKAGES:
        for f in sorted((generated / pkg).iterdir()):
            target = committed / pkg / f.name
            if not target.exists() or not filecmp.cmp(f, target, shallow=False):
                diffs.append(str(target.relative_to(ROOT)))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seismag.serving.codegen", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed modules are out of date"
    )
    args = parser.parse_args(argv)
    serving = ROOT / "serving"
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = _differences(Path(tmp), serving)
        if stale:
            print("codegen: out of date: " + ", ".join(stale), file=sys.stderr)
            return 1
        print("codegen: generated modules are up to date")
        return 0
    generate(serving)
    for pkg in PACKAGES:
        print(f"codegen: wrote {serving / pkg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
