from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATUS_UNSPECIFIED: _ClassVar[AgentStatus]
    AGENT_STATUS_STOPPED: _ClassVar[AgentStatus]
    AGENT_STATUS_STARTING: _ClassVar[AgentStatus]
    AGENT_STATUS_RUNNING: _ClassVar[AgentStatus]
    AGENT_STATUS_BACKOFF: _ClassVar[AgentStatus]
    AGENT_STATUS_STOPPING: _ClassVar[AgentStatus]
    AGENT_STATUS_EXITED: _ClassVar[AgentStatus]
    AGENT_STATUS_FATAL: _ClassVar[AgentStatus]
    AGENT_STATUS_UNKNOWN: _ClassVar[AgentStatus]
AGENT_STATUS_UNSPECIFIED: AgentStatus
AGENT_STATUS_STOPPED: AgentStatus
AGENT_STATUS_STARTING: AgentStatus
AGENT_STATUS_RUNNING: AgentStatus
AGENT_STATUS_BACKOFF: AgentStatus
AGENT_STATUS_STOPPING: AgentStatus
AGENT_STATUS_EXITED: AgentStatus
AGENT_STATUS_FATAL: AgentStatus
AGENT_STATUS_UNKNOWN: AgentStatus

class AgentState(_message.Message):
    __slots__ = ("agent_id", "type", "version", "status", "pid", "start_time", "restart_count", "last_exit_code", "last_exit_signal", "health", "last_heartbeat", "next_retry_time", "last_error", "changed_at", "config_changed", "health_message")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RETRY_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_CHANGED_FIELD_NUMBER: _ClassVar[int]
    HEALTH_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    type: str
    version: str
    status: AgentStatus
    pid: int
    start_time: int
    restart_count: int
    last_exit_code: int
    last_exit_signal: int
    health: str
    last_heartbeat: int
    next_retry_time: int
    last_error: str
    changed_at: int
    config_changed: bool
    health_message: str
    def __init__(self, agent_id: _Optional[str] = ..., type: _Optional[str] = ..., version: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., pid: _Optional[int] = ..., start_time: _Optional[int] = ..., restart_count: _Optional[int] = ..., last_exit_code: _Optional[int] = ..., last_exit_signal: _Optional[int] = ..., health: _Optional[str] = ..., last_heartbeat: _Optional[int] = ..., next_retry_time: _Optional[int] = ..., last_error: _Optional[str] = ..., changed_at: _Optional[int] = ..., config_changed: _Optional[bool] = ..., health_message: _Optional[str] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "type", "version", "status", "pid", "start_time", "restart_count", "last_exit_code", "last_exit_signal", "health", "last_heartbeat", "next_retry_time", "last_error", "changed_at", "config_changed", "health_message")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RETRY_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_CHANGED_FIELD_NUMBER: _ClassVar[int]
    HEALTH_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    type: str
    version: str
    status: AgentStatus
    pid: int
    start_time: int
    restart_count: int
    last_exit_code: int
    last_exit_signal: int
    health: str
    last_heartbeat: int
    next_retry_time: int
    last_error: str
    changed_at: int
    config_changed: bool
    health_message: str
    def __init__(self, agent_id: _Optional[str] = ..., type: _Optional[str] = ..., version: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, str]] = ..., pid: _Optional[int] = ..., start_time: _Optional[int] = ..., restart_count: _Optional[int] = ..., last_exit_code: _Optional[int] = ..., last_exit_signal: _Optional[int] = ..., health: _Optional[str] = ..., last_heartbeat: _Optional[int] = ..., next_retry_time: _Optional[int] = ..., last_error: _Optional[str] = ..., changed_at: _Optional[int] = ..., config_changed: _Optional[bool] = ..., health_message: _Optional[str] = ...) -> None: ...

class ResourceDataPoint(_message.Message):
    __slots__ = ("timestamp", "cpu", "memory_rss", "memory_vms", "disk_read_bytes", "disk_write_bytes", "open_files", "threads", "process_count", "disk_read_rate", "disk_write_rate", "cpu_max", "memory_rss_max", "resolution_seconds")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RSS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_VMS_FIELD_NUMBER: _ClassVar[int]
    DISK_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPEN_FILES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PROCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    DISK_READ_RATE_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_RATE_FIELD_NUMBER: _ClassVar[int]
    CPU_MAX_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RSS_MAX_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    cpu: float
    memory_rss: int
    memory_vms: int
    disk_read_bytes: int
    disk_write_bytes: int
    open_files: int
    threads: int
    process_count: int
    disk_read_rate: float
    disk_write_rate: float
    cpu_max: float
    memory_rss_max: int
    resolution_seconds: float
    def __init__(self, timestamp: _Optional[int] = ..., cpu: _Optional[float] = ..., memory_rss: _Optional[int] = ..., memory_vms: _Optional[int] = ..., disk_read_bytes: _Optional[int] = ..., disk_write_bytes: _Optional[int] = ..., open_files: _Optional[int] = ..., threads: _Optional[int] = ..., process_count: _Optional[int] = ..., disk_read_rate: _Optional[float] = ..., disk_write_rate: _Optional[float] = ..., cpu_max: _Optional[float] = ..., memory_rss_max: _Optional[int] = ..., resolution_seconds: _Optional[float] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "hostname", "ip", "advertise_address", "os", "arch", "labels", "daemon_version", "boot_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DAEMON_VERSION_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    ip: str
    advertise_address: str
    os: str
    arch: str
    labels: _containers.ScalarMap[str, str]
    daemon_version: str
    boot_id: int
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., advertise_address: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., daemon_version: _Optional[str] = ..., boot_id: _Optional[int] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("sync_interval_seconds", "heartbeat_interval_seconds")
    SYNC_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    sync_interval_seconds: float
    heartbeat_interval_seconds: float
    def __init__(self, sync_interval_seconds: _Optional[float] = ..., heartbeat_interval_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "boot_id", "timestamp", "policy_version", "accept_policies")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_POLICIES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    boot_id: int
    timestamp: int
    policy_version: str
    accept_policies: bool
    def __init__(self, node_id: _Optional[str] = ..., boot_id: _Optional[int] = ..., timestamp: _Optional[int] = ..., policy_version: _Optional[str] = ..., accept_policies: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("reregister", "sync_interval_seconds", "policy_version")
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    SYNC_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    reregister: bool
    sync_interval_seconds: float
    policy_version: str
    def __init__(self, reregister: _Optional[bool] = ..., sync_interval_seconds: _Optional[float] = ..., policy_version: _Optional[str] = ...) -> None: ...

class SyncAgentStatesRequest(_message.Message):
    __slots__ = ("node_id", "boot_id", "seq", "full", "states", "stopping", "events")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    boot_id: int
    seq: int
    full: bool
    states: _containers.RepeatedCompositeFieldContainer[AgentState]
    stopping: bool
    events: _containers.RepeatedCompositeFieldContainer[AgentEvent]
    def __init__(self, node_id: _Optional[str] = ..., boot_id: _Optional[int] = ..., seq: _Optional[int] = ..., full: _Optional[bool] = ..., states: _Optional[_Iterable[_Union[AgentState, _Mapping]]] = ..., stopping: _Optional[bool] = ..., events: _Optional[_Iterable[_Union[AgentEvent, _Mapping]]] = ...) -> None: ...

class AgentEvent(_message.Message):
    __slots__ = ("time", "agent_id", "kind", "message", "pid", "exit_code", "exit_signal", "seq")
    TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    time: int
    agent_id: str
    kind: str
    message: str
    pid: int
    exit_code: int
    exit_signal: int
    seq: int
    def __init__(self, time: _Optional[int] = ..., agent_id: _Optional[str] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., exit_signal: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class StateError(_message.Message):
    __slots__ = ("agent_id", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SyncAgentStatesResponse(_message.Message):
    __slots__ = ("success", "message", "accepted", "rejected", "errors", "report_full_state", "retry_after_ms")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FULL_STATE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    accepted: int
    rejected: int
    errors: _containers.RepeatedCompositeFieldContainer[StateError]
    report_full_state: bool
    retry_after_ms: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[StateError, _Mapping]]] = ..., report_full_state: _Optional[bool] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class NodeDisk(_message.Message):
    __slots__ = ("mount", "used", "total")
    MOUNT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    mount: str
    used: int
    total: int
    def __init__(self, mount: _Optional[str] = ..., used: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class NodeMetricsSample(_message.Message):
    __slots__ = ("time", "cpu", "load1", "load5", "load15", "memory_used", "memory_total", "swap_used", "swap_total", "disk_used", "disk_total", "disks", "disk_read_rate", "disk_write_rate", "net_rx_rate", "net_tx_rate")
    TIME_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    LOAD5_FIELD_NUMBER: _ClassVar[int]
    LOAD15_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SWAP_USED_FIELD_NUMBER: _ClassVar[int]
    SWAP_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    DISK_READ_RATE_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_RATE_FIELD_NUMBER: _ClassVar[int]
    NET_RX_RATE_FIELD_NUMBER: _ClassVar[int]
    NET_TX_RATE_FIELD_NUMBER: _ClassVar[int]
    time: int
    cpu: float
    load1: float
    load5: float
    load15: float
    memory_used: int
    memory_total: int
    swap_used: int
    swap_total: int
    disk_used: int
    disk_total: int
    disks: _containers.RepeatedCompositeFieldContainer[NodeDisk]
    disk_read_rate: float
    disk_write_rate: float
    net_rx_rate: float
    net_tx_rate: float
    def __init__(self, time: _Optional[int] = ..., cpu: _Optional[float] = ..., load1: _Optional[float] = ..., load5: _Optional[float] = ..., load15: _Optional[float] = ..., memory_used: _Optional[int] = ..., memory_total: _Optional[int] = ..., swap_used: _Optional[int] = ..., swap_total: _Optional[int] = ..., disk_used: _Optional[int] = ..., disk_total: _Optional[int] = ..., disks: _Optional[_Iterable[_Union[NodeDisk, _Mapping]]] = ..., disk_read_rate: _Optional[float] = ..., disk_write_rate: _Optional[float] = ..., net_rx_rate: _Optional[float] = ..., net_tx_rate: _Optional[float] = ...) -> None: ...

class ReportNodeMetricsRequest(_message.Message):
    __slots__ = ("node_id", "boot_id", "samples", "interval_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    boot_id: int
    samples: _containers.RepeatedCompositeFieldContainer[NodeMetricsSample]
    interval_seconds: float
    def __init__(self, node_id: _Optional[str] = ..., boot_id: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[NodeMetricsSample, _Mapping]]] = ..., interval_seconds: _Optional[float] = ...) -> None: ...

class ReportNodeMetricsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class GetDesiredAgentsRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class PolicyAgents(_message.Message):
    __slots__ = ("name", "version", "agents_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    agents_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., agents_json: _Optional[str] = ...) -> None: ...

class GetDesiredAgentsResponse(_message.Message):
    __slots__ = ("policy_version", "policies")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policy_version: str
    policies: _containers.RepeatedCompositeFieldContainer[PolicyAgents]
    def __init__(self, policy_version: _Optional[str] = ..., policies: _Optional[_Iterable[_Union[PolicyAgents, _Mapping]]] = ...) -> None: ...

class PolicyResult(_message.Message):
    __slots__ = ("name", "version", "applied", "reason", "conflicts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    applied: bool
    reason: str
    conflicts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., applied: _Optional[bool] = ..., reason: _Optional[str] = ..., conflicts: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportPolicyStatusRequest(_message.Message):
    __slots__ = ("node_id", "boot_id", "policy_version", "results")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    boot_id: int
    policy_version: str
    results: _containers.RepeatedCompositeFieldContainer[PolicyResult]
    def __init__(self, node_id: _Optional[str] = ..., boot_id: _Optional[int] = ..., policy_version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[PolicyResult, _Mapping]]] = ...) -> None: ...

class ReportPolicyStatusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

class OperateAgentRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "operation", "cause", "detail")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    operation: str
    cause: str
    detail: str
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., operation: _Optional[str] = ..., cause: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class OperateAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: AgentInfo
    def __init__(self, agent: _Optional[_Union[AgentInfo, _Mapping]] = ...) -> None: ...

class GetAgentMetricsRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "duration_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    duration_seconds: int
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., duration_seconds: _Optional[int] = ...) -> None: ...

class GetAgentMetricsResponse(_message.Message):
    __slots__ = ("data_points",)
    DATA_POINTS_FIELD_NUMBER: _ClassVar[int]
    data_points: _containers.RepeatedCompositeFieldContainer[ResourceDataPoint]
    def __init__(self, data_points: _Optional[_Iterable[_Union[ResourceDataPoint, _Mapping]]] = ...) -> None: ...

class GetAgentLogsRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "lines", "grep", "offset")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    GREP_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    lines: int
    grep: str
    offset: int
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., lines: _Optional[int] = ..., grep: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class GetAgentLogsResponse(_message.Message):
    __slots__ = ("lines", "truncated", "next_offset")
    LINES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedScalarFieldContainer[str]
    truncated: bool
    next_offset: int
    def __init__(self, lines: _Optional[_Iterable[str]] = ..., truncated: _Optional[bool] = ..., next_offset: _Optional[int] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class AgentChange(_message.Message):
    __slots__ = ("agent_id", "change")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    change: str
    def __init__(self, agent_id: _Optional[str] = ..., change: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("agents", "changes")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    changes: _containers.RepeatedCompositeFieldContainer[AgentChange]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ..., changes: _Optional[_Iterable[_Union[AgentChange, _Mapping]]] = ...) -> None: ...
