"""A multi-node Ray cluster on this machine, started as a user starts one: `ray start --head` and `ray start
--address` per node, each node with its own free ports and temp dir (as on separate machines: nodes sharing one
would share runtime_resources/, where one node's agent deletes a job's working_dir while another's driver runs in
it). Nodes join and leave while it runs; `kill_node` ends a node's processes with SIGKILL from outside, as a lost
machine. Everything is stopped by the pids started here, never `ray stop` (which would stop every Ray on the
machine, other users' too).

**Where it listens.** Every node's address is the loopback address :data:`NODE_IP` (127.0.0.2), not 127.0.0.1:
Ray 2.60's `ray start` replaces `--node-ip-address=127.0.0.1` by the machine's own address
(`services.resolve_ip_for_localhost`; only a cluster that can take no second node keeps it), and the
components that bind the node's address (the runtime-env agent, the Ray client server, the dashboard agent's
HTTP server) would then listen on the machine's network. The dashboard binds `--dashboard-host=127.0.0.1`.
What Ray 2.60 binds to every interface whatever the flags say is listed in :data:`ALL_INTERFACES` (the GCS and
the raylets, every worker's gRPC server, the dashboard agent's gRPC server, the metrics endpoints): those ports
are reachable from the machine's network while the cluster runs. :meth:`LocalCluster.listening` lists the LISTEN
sockets of every process the cluster started, and a test holds them to this.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray`, and `avsync` for job drivers
NODE_IP = "127.0.0.2"  # a loopback address `ray start` keeps (it rewrites 127.0.0.1 to the machine's own)
WORKER_PORTS = (10002, 19999)  # `ray start`'s --min/--max-worker-port defaults: every worker's gRPC server
# What Ray 2.60 binds to every interface, as `ray start` has no host flag for it (role -> where it comes from).
ALL_INTERFACES = {
    "gcs": "the GCS server (C++ gRPC, `--port`)",
    "node-manager": "the raylet (C++ gRPC, `--node-manager-port`)",
    "object-manager": "the raylet's object manager (`--object-manager-port`)",
    "worker": "every worker's gRPC server (drivers, task and actor workers, the job supervisor, the agents' core workers), `--min/max-worker-port`",
    "dashboard-agent-grpc": "the dashboard agent's gRPC server (loopback only when the node's address is 127.0.0.1)",
    "metrics-export": "the dashboard agent's Prometheus endpoint (`--metrics-export-port`)",
    "dashboard-metrics": "the dashboard's own Prometheus endpoint (env DASHBOARD_METRIC_PORT, 44227 unless set)",
    "autoscaler-metrics": "the autoscaler monitor's Prometheus endpoint (env AUTOSCALER_METRIC_PORT, 44217 unless set)",
}
# What binds loopback addresses only: the dashboard (--dashboard-host), and what binds the node's address.
LOOPBACK_ONLY = ("dashboard", "ray-client-server", "runtime-env-agent", "dashboard-agent-http")


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]


def _node_ports() -> dict[str, int]:
    names = ["node-manager", "object-manager", "dashboard-agent-http", "dashboard-agent-grpc", "metrics-export", "runtime-env-agent"]
    return dict(zip(names, free_ports(len(names))))


_PORT_FLAGS = {"node-manager": "node-manager-port", "object-manager": "object-manager-port", "dashboard-agent-http": "dashboard-agent-listen-port",
               "dashboard-agent-grpc": "dashboard-agent-grpc-port", "metrics-export": "metrics-export-port", "runtime-env-agent": "runtime-env-agent-port"}  # fmt: skip


def _process_tree(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal(tree: list[psutil.Process], signum: int) -> None:
    for proc in tree:
        try:
            proc.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def stop_process_tree(process: subprocess.Popen) -> None:
    """SIGTERM a `ray start --block` and every process under it (GCS, raylet, workers...), SIGKILL what is left."""
    tree = _process_tree(process.pid)
    _signal(tree, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=10)
    _signal(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    process.wait(timeout=10)


@dataclass
class Node:
    process: subprocess.Popen  # the `ray start --block` of this node
    node_id: str
    ports: dict[str, int] = field(default_factory=dict)  # role -> the port given to `ray start`


@dataclass(frozen=True)
class Listener:
    """A LISTEN socket of one of the cluster's processes."""

    node: int  # index in LocalCluster.nodes
    process: str  # its command line, shortened
    ip: str
    port: int
    role: str  # a key of ALL_INTERFACES or LOOPBACK_ONLY, or "unknown"

    @property
    def scope(self) -> str:
        """"loopback", "all interfaces" or "this address" (a specific non-loopback address: the machine's network)."""
        address = ipaddress.ip_address(self.ip.split("%", 1)[0])
        address = getattr(address, "ipv4_mapped", None) or address
        return "loopback" if address.is_loopback else "all interfaces" if address.is_unspecified else "this address"


class LocalCluster:
    """``with LocalCluster() as cluster``: a head of ``head_cpus`` CPUs; :meth:`add_node`, :meth:`kill_node`."""

    def __init__(self, head_cpus: int = 1):
        self.head_cpus = head_cpus
        self.nodes: list[Node] = []
        # Short paths: Ray's socket paths must stay under 108 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="avr-", dir="/tmp"))
        env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "RAY_ADDRESS"))}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="120",
            # A killed node is declared dead after about 3 s instead of Ray's default of about 30 s.
            RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3", RAY_health_check_timeout_ms="1000",
        )  # fmt: skip
        self.env = env  # for the nodes and for clients (drivers, `avsync submit`)
        self.gcs_port, dashboard_port, self._client_port, dashboard_metrics, autoscaler_metrics = free_ports(5)
        # Ray's fixed metrics ports, made this cluster's own (two clusters on one machine would contend for them).
        env.update(DASHBOARD_METRIC_PORT=str(dashboard_metrics), AUTOSCALER_METRIC_PORT=str(autoscaler_metrics))
        self.head_ports = {"gcs": self.gcs_port, "dashboard": dashboard_port, "ray-client-server": self._client_port,
                           "dashboard-metrics": dashboard_metrics, "autoscaler-metrics": autoscaler_metrics}  # fmt: skip
        self.gcs_address = f"{NODE_IP}:{self.gcs_port}"
        self.address = f"http://127.0.0.1:{dashboard_port}"  # the dashboard: Jobs and State APIs
        self._log = open(self.temp_dir / "ray-start.log", "w")

    def __enter__(self) -> LocalCluster:
        try:
            dashboard_port = self.address.rsplit(":", 1)[1]
            self._start(["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                         f"--ray-client-server-port={self._client_port}"], self.head_cpus)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def _start(self, role: list[str], num_cpus: int) -> Node:
        before = {node["node_id"] for node in self.alive_nodes()} if self.nodes else set()
        common = [
            "--block",
            f"--node-ip-address={NODE_IP}",
            f"--num-cpus={num_cpus}",
            f"--object-store-memory={300 * 2**20}",
            "--disable-usage-stats",
        ]
        ports = _node_ports()
        process = subprocess.Popen(
            [str(BIN / "ray"), "start", *role, f"--temp-dir={self.temp_dir}/node{len(self.nodes)}", *common,
             *(f"--{_PORT_FLAGS[name]}={port}" for name, port in ports.items())],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        node = Node(process, "", {**(self.head_ports if not self.nodes else {}), **ports})
        self.nodes.append(node)
        new = self._wait_for_nodes(len(before) + 1, process)
        node.node_id = (new - before).pop()
        return node

    def add_node(self, num_cpus: int = 1) -> Node:
        """A worker node joins (returns once the head counts it alive)."""
        return self._start([f"--address={self.gcs_address}"], num_cpus)

    def remove_node(self, node: Node) -> None:
        """A worker node leaves cleanly (its processes stopped by their pids)."""
        assert node is not self.head, "the head holds the GCS: stopping it ends the cluster"
        stop_process_tree(node.process)

    def kill_node(self, node: Node) -> None:
        """SIGKILL every process of a worker node at once (raylet, agents, its task and actor workers), as a lost
        machine; returns once the head has declared it dead."""
        assert node is not self.head, "the head holds the GCS: losing it ends the cluster"
        tree = _process_tree(node.process.pid)
        _signal(tree, signal.SIGKILL)
        psutil.wait_procs(tree, timeout=10)
        node.process.wait(timeout=10)
        deadline = time.monotonic() + 60
        while node.node_id in {n["node_id"] for n in self.alive_nodes()}:
            assert time.monotonic() < deadline, f"node {node.node_id} still alive 60 s after its processes were killed"
            time.sleep(0.5)

    def listening(self) -> list[Listener]:
        """The LISTEN sockets of every process this cluster started (each node's `ray start` and all under it),
        each with the role its port was given for (a worker's gRPC port: the worker range)."""
        found = []
        for index, node in enumerate(self.nodes):
            roles = {port: role for role, port in node.ports.items()}
            for proc in _process_tree(node.process.pid):
                try:
                    sockets = [s for s in proc.net_connections(kind="inet") if s.status == psutil.CONN_LISTEN]
                    command = " ".join(proc.cmdline())[:120]
                except psutil.Error:  # a worker that ended meanwhile
                    continue
                for sock in sockets:
                    port = sock.laddr.port
                    role = roles.get(port) or ("worker" if WORKER_PORTS[0] <= port <= WORKER_PORTS[1] else "unknown")
                    found.append(Listener(index, command, sock.laddr.ip, port, role))
        return found

    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        # Filtered here: with a dead node, the State API's own filter reports a "truncation" error.
        nodes = [vars(n) if not isinstance(n, dict) else n for n in list_nodes(address=self.address, limit=1000)]
        return [node for node in nodes if node["state"] == "ALIVE"]

    def _wait_for_nodes(self, count: int, process: subprocess.Popen, timeout: float = 120) -> set[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert process.poll() is None, f"`ray start` exited with {process.returncode} (log: {self.temp_dir}/ray-start.log)"
            try:
                alive = {node["node_id"] for node in self.alive_nodes()}
                if len(alive) == count:
                    return alive
            except Exception:  # the dashboard is not up yet
                pass
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes not alive at {self.address} after {timeout} s")

    def stop(self) -> None:
        """Stop every node this cluster started (workers first, the head last)."""
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                stop_process_tree(node.process)
        self.nodes.clear()
        self._log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
