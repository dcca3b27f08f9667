"""fleet entry point: python fleet.py --role daemon|manager|all (same CLI as fleet.pyz)."""
import os
import sys

# Processes are spawned from a process that runs gRPC threads: gRPC's fork
# handlers must be off before grpc is imported (DESIGN.md).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from fleet.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
