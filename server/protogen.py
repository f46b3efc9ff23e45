"""Generate the Python stubs for protos/ (`make protos`); tests use it to spot stale stubs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    """Every .proto file of the contract, relative to protos/.

    protos/google/ holds vendored imports (google/rpc/status.proto) for buf and protoc;
    their Python modules come from googleapis-common-protos, so none is generated here.
    """
    return sorted(
        p.relative_to(PROTO_ROOT)
        for p in PROTO_ROOT.rglob("*.proto")
        if p.relative_to(PROTO_ROOT).parts[0] != "google"
    )


def generate(out_dir: Path) -> list[Path]:
    """Run grpcio-tools' protoc into out_dir; return the files it wrote."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {files}")
    return sorted(p for f in proto_files() for p in out_dir.glob(str(f.with_suffix("")) + "_pb2*"))


def main() -> None:
    """Write the stubs beside the package tree (scout/v1/...)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    written = generate(parser.parse_args().out)
    sys.stdout.write("".join(f"wrote {p.relative_to(ROOT)}\n" for p in written))


if __name__ == "__main__":
    main()
