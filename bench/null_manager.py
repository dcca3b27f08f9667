"""A manager that stores nothing: the floor under any manager on this stack.

    python bench/null_manager.py --port 0 --token-env VAR [--reuse-port] [--wait-ms MS [--aio]]

fleet's own gRPC server (fleet.rpc.create_server: its options, its 64-thread
pool as the manager has, the cluster-token interceptor) with a ManagerService
that answers RegisterNode and SyncAgentStates at once: the request is
deserialized and its states counted, nothing is checked or written. It logs
`listening grpc=HOST:PORT` as the manager does and stops on SIGTERM.

bench_scale.py's `null-1` and `null-2` run one or two of these on one port
(SO_REUSEPORT, as `[manager] workers = 2` does) under the same simulated
daemons, so the table shows beside the real configurations what the gRPC
server, protobuf and the simulators cost on this machine by themselves.

`--wait-ms MS` (`null-wait-1`): each report waits, as fleet's do, for a group
commit: a thread takes every report waiting, sleeps MS (the database's time,
spent elsewhere) and wakes them all; the handler blocks on a lock meanwhile.
`--aio` (`null-aio-1`, with `--wait-ms`): the same on grpc.aio, where a waiting
report holds a coroutine instead of a thread and the commit thread wakes them
with one call_soon_threadsafe per batch. It is a measurement of the stack fleet
does not use (DESIGN.md: no asyncio in fleet's own code), not a design.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import queue
import signal
import sys
import threading
import time

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


class GroupCommit:
    """Thread `null-commit`: every `wait` s, wake all the reports that queued meanwhile
    (a threading.Lock to release, or (loop, future) of a coroutine)."""

    def __init__(self, wait: float):
        self.queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._wait = wait
        threading.Thread(target=self._run, name="null-commit", daemon=True).start()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get())
            time.sleep(self._wait)
            futures: dict = {}
            for item in batch:
                if isinstance(item, tuple):
                    futures.setdefault(item[0], []).append(item[1])
                else:
                    item.release()
            for loop, waiting in futures.items():
                loop.call_soon_threadsafe(_wake, waiting)


def _wake(futures: list) -> None:
    for future in futures:
        future.set_result(None)


class WaitingManager(NullManager):
    """SyncAgentStates answered after the next group commit, on a blocked thread."""

    def __init__(self, commit: GroupCommit):
        self._commit = commit

    def SyncAgentStates(self, request, context):  # noqa: N802
        committed = threading.Lock()
        committed.acquire()
        self._commit.queue.put(committed)
        committed.acquire()
        return pb.SyncAgentStatesResponse(success=True, accepted=len(request.states))


def serve_aio(port: int, token: str, commit: GroupCommit) -> None:
    """The waiting manager on grpc.aio: one event loop, a coroutine per call."""
    import asyncio

    import grpc

    class TokenCheck(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            if ("authorization", f"Bearer {token}") not in details.invocation_metadata:
                raise RuntimeError("bad token")
            return await continuation(details)

    class AioManager(pb_grpc.ManagerServiceServicer):
        async def RegisterNode(self, request, context):  # noqa: N802
            return pb.RegisterNodeResponse()

        async def SyncAgentStates(self, request, context):  # noqa: N802
            loop = asyncio.get_running_loop()
            committed = loop.create_future()
            commit.queue.put((loop, committed))
            await committed
            return pb.SyncAgentStatesResponse(success=True, accepted=len(request.states))

    async def serve() -> None:
        server = grpc.aio.server(interceptors=[TokenCheck()],
                                 options=[("grpc.so_reuseport", 1)])
        pb_grpc.add_ManagerServiceServicer_to_server(AioManager(), server)
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"listening grpc=127.0.0.1:{bound}", flush=True)
        await server.wait_for_termination()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(serve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-env", required=True, help="the variable holding the token")
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument("--wait-ms", type=float, default=0.0,
                        help="answer each report after a simulated group commit")
    parser.add_argument("--aio", action="store_true", help="grpc.aio instead (with --wait-ms)")
    args = parser.parse_args()
    commit = GroupCommit(args.wait_ms / 1000) if args.wait_ms else None
    if args.aio:
        serve_aio(args.port, os.environ[args.token_env], commit or GroupCommit(0.0))
        return
    servicer = WaitingManager(commit) if commit else NullManager()
    server, port = rpc.create_server(
        f"127.0.0.1:{args.port}",
        [lambda s: pb_grpc.add_ManagerServiceServicer_to_server(servicer, s)],
        token=os.environ[args.token_env], max_workers=GRPC_WORKERS, reuse_port=args.reuse_port)
    server.start()
    print(f"listening grpc=127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
