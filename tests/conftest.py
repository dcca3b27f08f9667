"""Shared pytest setup."""
import os

# gRPC's fork support must be off before grpc is imported (DESIGN.md).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
