"""The descriptor limit (fleet/fdlimit.py): a manager started with a shell's low soft
limit raises it, so every daemon's connection is accepted. Real processes started
under util-linux's prlimit, real sockets."""
import resource
import socket
import subprocess
import sys

from fleet.fdlimit import raise_soft_limit
from fleet.v1 import fleet_pb2 as pb
from tests.procs import FLEET_PY, REPO, FleetProcess
from tests.realfleet import AUTH, manager_stub

CONNECTIONS = 600                    # past what the manager's low soft limit would hold
SOFT = 200
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def limits_of(pid):
    """(soft, hard) 'Max open files' of a process, from /proc."""
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_raise_soft_limit_goes_up_to_the_hard_limit_and_never_down():
    """Run in a child whose limits are 100 soft, 1,000 hard."""
    script = ("from fleet.fdlimit import raise_soft_limit as r\n"
              "print(r(300), r(50), r(5000), r())")
    out = subprocess.run(["prlimit", "--nofile=100:1000", sys.executable, "-c", script],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["300", "300", "1000", "1000"]


def test_a_manager_started_with_a_low_soft_limit_accepts_every_daemons_connection(cluster):
    """Soft limit 200 (a shell's is often 1,024 for fleets of thousands): the manager
    raises it to its hard limit, holds 600 open HTTP/2 connections and still answers
    a call, with no 'descriptor limit reached' from gRPC core."""
    mine = raise_soft_limit(CONNECTIONS + 200)   # this test's own sockets
    assert mine == resource.RLIM_INFINITY or mine >= CONNECTIONS + 200, \
        f"this test needs {CONNECTIONS + 200} descriptors; the hard limit allows {mine}"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    config = cluster.manager_config(extra="http_max_connections = 8")
    manager = FleetProcess("--role", "manager", "--config", str(config), log_dir=cluster.tmp,
                           entry=["prlimit", f"--nofile={SOFT}:{hard_text}"] + FLEET_PY)
    cluster.procs.append(("manager", manager))
    port = manager.port("grpc")
    soft_now, hard_now = limits_of(manager.pid)
    assert soft_now == hard_now and soft_now > SOFT
    held = []
    try:
        for _ in range(CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(PREFACE)           # an HTTP/2 client: gRPC core keeps it open
            held.append(sock)
        channel, stub = manager_stub(port)
        with channel:                       # answered (an error would raise)
            stub.RegisterNode(pb.RegisterNodeRequest(node_id="n-limit", boot_id=1),
                              metadata=AUTH, timeout=10)
        assert "descriptor limit reached" not in manager.read().lower()
    finally:
        for sock in held:
            sock.close()

