"""ReportNodeMetrics from the daemon: the machine's samples not yet sent, in batches.

The syncer's thread calls `NodeMetricsSender.send` after each acknowledged full
report (fleet/daemon/syncer.py), with the samples the node sampler kept
(fleet/daemon/node.py). Its failures never fail the report: a manager of an
older release (UNIMPLEMENTED) is logged once and asked again only every
UNIMPLEMENTED_RETRY seconds; meanwhile the bounded buffer drops its oldest
samples.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from fleet.daemon.manager_client import ManagerClient, Unimplemented
from fleet.daemon.node import NodeSample, NodeSampler
from fleet.daemon.syncer import WARN_EVERY_SECONDS
from fleet.errors import FleetError, InvalidArgument
from fleet.v1 import fleet_pb2 as pb

log = logging.getLogger(__name__)

MAX_NODE_SAMPLES = 360          # node samples per ReportNodeMetrics (the manager takes 1000)
UNIMPLEMENTED_RETRY = 600.0     # seconds before asking a manager without the method again


class NodeMetricsSender:
    """Sends the node's unsent samples, a batch per call, from the syncer's thread.

    Every failure is its own: logged (at most once a minute, UNIMPLEMENTED once
    for good), never raised, so the state reports go on whatever the manager says.
    A batch the manager refuses as invalid is dropped; any other failure keeps it.
    """

    def __init__(self, client: ManagerClient, sampler: NodeSampler, interval: float,
                 clock: Callable[[], float] = time.monotonic):
        self._client = client
        self._sampler = sampler
        self._interval = interval             # the daemon's metrics_interval, told to the manager
        self._clock = clock
        self._paused_until = 0.0              # after UNIMPLEMENTED, nothing is sent before this
        self._told_unimplemented = False
        self._last_warning = -WARN_EVERY_SECONDS
        self.samples_sent = 0                 # acknowledged samples (for tests)

    def send(self, node: pb.RegisterNodeRequest) -> int:
        """Send the oldest unsent samples (at most MAX_NODE_SAMPLES); how many were stored."""
        if self._clock() < self._paused_until:
            return 0
        batch = self._sampler.unsent(MAX_NODE_SAMPLES)
        if not batch:
            return 0
        request = pb.ReportNodeMetricsRequest(
            node_id=node.node_id, boot_id=node.boot_id, interval_seconds=self._interval,
            samples=[node_sample(sample) for _, sample in batch])
        try:
            answer = self._client.report_node_metrics(request)
        except Unimplemented as exc:
            self._paused_until = self._clock() + UNIMPLEMENTED_RETRY
            if not self._told_unimplemented:
                self._told_unimplemented = True
                log.info("%s: not sending node metrics (asking again every %.0f s)",
                         exc, UNIMPLEMENTED_RETRY)
            return 0
        except InvalidArgument as exc:
            # Sending the same batch again would fail again, and block every later one.
            log.warning("manager refused %d node samples, dropped: %s", len(batch), exc)
            self._sampler.acknowledge(batch[-1][0])
            return 0
        except FleetError as exc:
            now = self._clock()
            if now - self._last_warning >= WARN_EVERY_SECONDS:
                self._last_warning = now
                log.warning("node metrics not sent (%s); %d waiting", exc,
                            self._sampler.unsent_count())
            return 0
        self._sampler.acknowledge(batch[-1][0])
        self.samples_sent += len(batch)
        return answer.accepted


def node_sample(sample: NodeSample) -> pb.NodeMetricsSample:
    """The wire form of a node sample."""
    fields = sample._asdict()
    disks = [pb.NodeDisk(mount=d.mount, used=d.used, total=d.total) for d in fields.pop("disks")]
    return pb.NodeMetricsSample(disks=disks, **fields)
