"""Generate the Python client code for the Flowstate API (``flowstate.v1``).

Runs ``grpc_tools.protoc`` in-process over every ``protos/flowstate/**/*.proto`` and writes, into
``clients/python/src/flowstate/v1/``:

* ``*_pb2.py`` (messages) and ``*_pb2_grpc.py`` (gRPC stubs and servicers), from grpcio-tools;
* ``*_pb2.pyi`` and ``*_pb2_grpc.pyi`` type stubs, from mypy-protobuf (``protoc-gen-mypy`` /
  ``protoc-gen-mypy_grpc``, installed next to this interpreter);
* ``*_connect.py`` (Connect / gRPC-Web ASGI application and clients over google.protobuf
  messages), from ``protoc-gen-connectrpc`` (connectrpc's own plugin, ``protobuf=google``); only
  for protos that declare a service. Importing them needs the ``connectrpc`` package (the
  server's dependency; the client's ``connect`` extra);
* ``__init__.py`` and ``py.typed`` (the stubs are the package's types, PEP 561).

``*_pb2_grpc.*`` files are kept only for protos that declare a service. ``google.rpc`` is not
generated: it comes from the googleapis-common-protos package. ``flowstate/__init__.py`` is never
created, because ``flowstate`` is a PEP 420 namespace package shared with the server distribution.

The output directory is replaced as a whole (stale files of deleted protos disappear), so running
the script twice gives byte-identical results.

Usage: ``python scripts/gen_python.py`` from anywhere (paths are relative to the repository root).
"""

from __future__ import annotations

import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]  # ships no type information

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("flowstate") / "v1"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
OUT_DIR = ROOT / "clients" / "python" / "src" / PACKAGE_DIR

INIT_PY = '''\
"""Generated protobuf messages, gRPC stubs and Connect applications for ``flowstate.v1``.

``*_connect.py`` modules need the ``connectrpc`` package (the ``connect`` extra).
Do not edit: regenerate with ``scripts/generate.sh`` (``make generate``).
"""
'''


def _plugin(name: str) -> str:
    """Return the path of a protoc plugin installed next to the running interpreter."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"gen_python: {name} not found (run make setup)")
    return found


def _protos() -> list[str]:
    """Every Flowstate proto, relative to the proto root, in a stable order."""
    files = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    if not files:
        raise SystemExit(f"gen_python: no .proto files under {PROTO_ROOT}")
    return files


def _run_protoc(protos: list[str], out: Path) -> descriptor_pb2.FileDescriptorSet:
    """Run protoc with all Python generators into ``out``; return the parsed descriptors."""
    # In-process protoc does not add grpc_tools' bundled google/protobuf include dir by itself.
    wkt_include = importlib.resources.files("grpc_tools") / "_proto"
    descriptor_set = out / "descriptors.binpb"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{THIRD_PARTY}",
        f"-I{wkt_include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--plugin=protoc-gen-connectrpc={_plugin('protoc-gen-connectrpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        f"--connectrpc_out=protobuf=google:{out}",
        f"--descriptor_set_out={descriptor_set}",
        *(str(PROTO_ROOT / proto) for proto in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"gen_python: protoc failed with exit code {code}")
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    descriptor_set.unlink()
    return fds


def main() -> None:
    """Regenerate ``clients/python/src/flowstate/v1`` from the protos."""
    protos = _protos()
    with tempfile.TemporaryDirectory(prefix="flowstate-gen-python-") as tmp:
        out = Path(tmp)
        fds = _run_protoc(protos, out)
        with_services = {f.name for f in fds.file if f.service}
        generated = out / PACKAGE_DIR
        for proto in protos:
            if proto in with_services:
                continue
            stem = proto.removesuffix(".proto")
            for suffix in ("_pb2_grpc.py", "_pb2_grpc.pyi"):
                (out / f"{stem}{suffix}").unlink(missing_ok=True)
        unexpected = sorted(
            p.relative_to(out).as_posix()
            for p in out.rglob("*")
            if p.is_file() and not p.is_relative_to(generated)
        )
        if unexpected:
            raise SystemExit(
                f"gen_python: protos outside flowstate/v1 are not supported: {unexpected}"
            )
        (generated / "__init__.py").write_text(INIT_PY)
        # PEP 561: the .pyi stubs are the package's types (without it, user code checked with
        # `mypy --strict` sees flowstate.v1 as untyped and every `.raw` as Any).
        (generated / "py.typed").write_text("")
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR)
        OUT_DIR.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(generated, OUT_DIR)
    print(f"gen_python: {len(protos)} protos -> {OUT_DIR.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
