"""A manager that stores nothing: the floor under any manager on this stack.

    python bench/null_manager.py --port 0 --token-env VAR [--reuse-port]

fleet's own gRPC server (fleet.rpc.create_server: its options, its 64-thread
pool as the manager has, the cluster-token interceptor) with a ManagerService
that answers RegisterNode and SyncAgentStates at once: the request is
deserialized and its states counted, nothing is checked or written. It logs
`listening grpc=HOST:PORT` as the manager does and stops on SIGTERM.

bench_scale.py's `null-1` and `null-2` run one or two of these on one port
(SO_REUSEPORT, as `[manager] workers = 2` does) under the same simulated
daemons, so the table shows beside the real configurations what the gRPC
server, protobuf and the simulators cost on this machine by themselves.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import threading

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from fleet import rpc  # noqa: E402
from fleet.manager.app import GRPC_WORKERS  # noqa: E402
from fleet.v1 import fleet_pb2 as pb  # noqa: E402
from fleet.v1 import fleet_pb2_grpc as pb_grpc  # noqa: E402


class NullManager(pb_grpc.ManagerServiceServicer):
    """RegisterNode and SyncAgentStates, answered without any work."""

    def RegisterNode(self, request, context):  # noqa: N802 - the wire's name
        return pb.RegisterNodeResponse()

    def SyncAgentStates(self, request, context):  # noqa: N802
        return pb.SyncAgentStatesResponse(success=True, accepted=len(request.states))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-env", required=True, help="the variable holding the token")
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    server, port = rpc.create_server(
        f"127.0.0.1:{args.port}",
        [lambda s: pb_grpc.add_ManagerServiceServicer_to_server(NullManager(), s)],
        token=os.environ[args.token_env], max_workers=GRPC_WORKERS, reuse_port=args.reuse_port)
    server.start()
    print(f"listening grpc=127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
