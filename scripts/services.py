#!/usr/bin/env python3
"""Start and stop the real backing services that inferstack's integration tests use.

    services.py up [--keep] [--timeout S] [NAMES...]  start fresh: wiped data dir, new free ports
    services.py start NAMES...                        = up --keep: same data dir, same ports
    services.py down [--kill] [NAMES...]              stop what `up` started (data kept)
    services.py stop [--kill] NAMES...                = down NAMES; --kill: SIGKILL, a crash
    services.py status [NAMES...]                     up/down, pid, endpoint (exit 1 if any down)
    services.py env [NAMES...]                        export INFERSTACK_TEST_<NAME>=host:port

NAMES: cassandra, redis, zookeeper, kafka, mlserver (default: all). Everything listens on
127.0.0.1 only.

Stdlib only: it runs before (and without) the project's virtualenv. Redis comes from Debian's
`redis-server` package; Cassandra, Kafka (KRaft) and ZooKeeper are plain Maven Central jars
resolved once by the machine's `mvn` into a cache that outlives the checkout. MLServer (an Open
Inference Protocol model server) is installed from PyPI into its own virtualenv in that cache,
serving a small scikit-learn model that the MLServer venv trains at start-up.

Environment:
    INFERSTACK_SERVICES_DIR     state dir (default <repo>/.services): config, data, logs, pids
    INFERSTACK_SERVICES_CACHE   download cache (default ~/.cache/inferstack/services)
    INFERSTACK_SERVICES_JVM_OPTS  extra JVM flags for Cassandra, Kafka and ZooKeeper
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TextIO

# Pinned versions. Bumping one re-resolves only that service's classpath.
CASSANDRA_VERSION = "5.0.9"
KAFKA_VERSION = "4.4.0"
KAFKA_LOG4J_VERSION = "2.25.5"  # the log4j-core that kafka_2.13 4.4.0 pulls in
ZOOKEEPER_VERSION = "3.9.5"
ZOOKEEPER_SLF4J_VERSION = "2.0.13"  # the slf4j-api that zookeeper 3.9.5 pulls in
ZOOKEEPER_METRICS_VERSION = "4.1.12.1"  # these two: as in zookeeper 3.9.5's parent POM
ZOOKEEPER_SNAPPY_VERSION = "1.1.10.5"
MLSERVER_VERSION = "1.7.1"  # with mlserver-sklearn; every pin: services/mlserver-requirements.txt
MLSERVER_MODEL = "pcvr-test"  # the model tests call; trained by services/mlserver_train.py
MLSERVER_MODEL_VERSION = "1"
MLSERVER_MODEL_FEATURES = 12
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

HOST = "127.0.0.1"
ALL_SERVICES = ("cassandra", "redis", "zookeeper", "kafka", "mlserver")
SCRIPTS_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = SCRIPTS_DIR / "services"
REPO_DIR = SCRIPTS_DIR.parent


class ServiceError(Exception):
    """A service could not be installed, started, checked or stopped."""


class NotReadyError(Exception):
    """A readiness probe got an answer, but not the one that means ready."""


def state_root() -> Path:
    return Path(os.environ.get("INFERSTACK_SERVICES_DIR") or REPO_DIR / ".services").resolve()


def cache_root() -> Path:
    default = Path.home() / ".cache" / "inferstack" / "services"
    return Path(os.environ.get("INFERSTACK_SERVICES_CACHE") or default).resolve()


_print_lock = threading.Lock()


def say(name: str, message: str, stream: TextIO = sys.stdout) -> None:
    # Services start in parallel threads: keep each line whole.
    with _print_lock:
        print(f"{name:<10} {message}", file=stream, flush=True)


def tail(path: Path, lines: int = 25, width: int = 300) -> str:
    """The end of a log, each line cut short: JVMs log their whole config on one line."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(
        line if len(line) <= width else line[:width] + " ..." for line in text.splitlines()[-lines:]
    )


def render(template: str, target: Path, **values: object) -> None:
    text = string.Template((TEMPLATES_DIR / template).read_text()).substitute(values)
    target.write_text(text)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive flock: serialises threads (each opens its own descriptor) and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Installing
# --------------------------------------------------------------------------------------------

_apt_lock = threading.Lock()


def apt_install(binary: str, package: str) -> None:
    """Install a Debian package if `binary` is not on PATH (update the index only if needed)."""
    if shutil.which(binary):
        return
    with _apt_lock:
        if shutil.which(binary):
            return
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]  # wait for another apt, not fail
        if os.geteuid() != 0:
            apt = ["sudo", "DEBIAN_FRONTEND=noninteractive", *apt]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [*apt, "install", "-y", "--no-install-recommends", package]
        say(package, "installing with apt-get ...")
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:  # most likely a stale or missing package index
            subprocess.run([*apt, "update"], env=env, capture_output=True, text=True)
            result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0 or not shutil.which(binary):
            raise ServiceError(
                f"could not install {package} ({' '.join(install)}):\n"
                + "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            )


@dataclasses.dataclass(frozen=True)
class Artifact:
    group: str
    artifact: str
    version: str

    def pom_entry(self) -> str:
        return (
            f"    <dependency><groupId>{self.group}</groupId>"
            f"<artifactId>{self.artifact}</artifactId>"
            f"<version>{self.version}</version></dependency>"
        )


def resolve_classpath(key: str, artifacts: Sequence[Artifact]) -> Path:
    """Return a directory holding the runtime jars of `artifacts`, downloading them only once.

    A stamp file records what the directory was resolved from, so a later run with the same
    pins never starts Maven at all, and a half-finished download is never mistaken for a
    finished one (jars land in a temp dir that is renamed into place).
    """
    lib = cache_root() / "lib" / key
    stamp = lib / ".resolved"
    wanted = "\n".join(a.pom_entry() for a in artifacts)
    if stamp.is_file() and stamp.read_text() == wanted:
        return lib
    apt_install("java", "openjdk-17-jre-headless")
    apt_install("mvn", "maven")
    # Maven 3.8 does not lock its local repository: one resolution at a time.
    with file_lock(cache_root() / ".maven.lock"):
        if stamp.is_file() and stamp.read_text() == wanted:
            return lib
        say(key, f"resolving jars with Maven into {cache_root()} (first run only) ...")
        with tempfile.TemporaryDirectory(dir=cache_root(), prefix=f".{key}-") as tmp:
            work = Path(tmp)
            render("pom.xml", work / "pom.xml", artifact_id=key, dependencies=wanted)
            command = [
                "mvn", "-B", "-q", "-f", str(work / "pom.xml"),
                f"-Dmaven.repo.local={cache_root() / 'm2'}",
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={work / 'lib'}",
            ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0 or not (work / "lib").is_dir():
                raise ServiceError(
                    f"Maven could not resolve {key}:\n$ {' '.join(command)}\n"
                    + "\n".join((result.stdout + result.stderr).splitlines()[-30:])
                )
            (work / "lib" / ".resolved").write_text(wanted)
            if lib.exists():
                shutil.rmtree(lib)
            lib.parent.mkdir(parents=True, exist_ok=True)
            (work / "lib").rename(lib)
    return lib


def python_venv(key: str, requirements: Path) -> Path:
    """Return the bin/ directory of a virtualenv holding `requirements`, created only once.

    For Python servers whose pins would fight the project's own venv. The venv is built in
    place (venvs cannot be moved) and a stamp records what it was built from, written last:
    a half-finished install, or one from other pins, is wiped and redone.
    """
    venv = cache_root() / key
    stamp = venv / ".installed"
    # A venv links to the interpreter it was made from: that is part of what it was built from.
    base = sys.executable  # from inside a venv, `-m venv` uses the underlying interpreter
    wanted = f"# Python {sys.version.split()[0]} in {sys.base_prefix}\n{requirements.read_text()}"
    if stamp.is_file() and stamp.read_text() == wanted:
        return venv / "bin"
    with file_lock(cache_root() / f".{key}.lock"):
        if stamp.is_file() and stamp.read_text() == wanted:
            return venv / "bin"
        say(key, f"installing from PyPI into {venv} (first run only) ...")
        shutil.rmtree(venv, ignore_errors=True)
        steps = [
            [base, "-m", "venv", str(venv)],
            [
                str(venv / "bin" / "python"), "-m", "pip", "install",
                "--quiet", "--disable-pip-version-check", "--no-input",
                "-r", str(requirements),
            ],
        ]  # fmt: skip
        for command in steps:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise ServiceError(
                    f"{key}: installing failed:\n$ {' '.join(command)}\n"
                    + "\n".join((result.stdout + result.stderr).splitlines()[-30:])
                )
        stamp.write_text(wanted)
    return venv / "bin"


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def proc_start_ticks(pid: int) -> int | None:
    """Start time of a live (non-zombie) process in clock ticks since boot, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parens: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited; our parent may never reap it
        return None
    return int(fields[19])


def proc_exe(pid: int) -> str:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
    return exe.removesuffix(" (deleted)")  # the package was upgraded under it


@dataclasses.dataclass(frozen=True)
class ProcessRecord:
    """Enough to recognise the exact process we started, even after its pid is reused.

    A pid plus its start time is unique on a machine until reboot; the executable is checked
    too. (Redis rewrites its own command line, so that cannot be compared.)
    """

    pid: int
    start_ticks: int
    exe: str

    def alive(self) -> bool:
        return proc_start_ticks(self.pid) == self.start_ticks and proc_exe(self.pid) == self.exe


def free_ports(count: int, avoid: set[int]) -> list[int]:
    """Ports the kernel considers free now. Sockets stay open until all are picked so the
    same port is never handed out twice in one call."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
            if port not in avoid and port not in ports:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


_port_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def allocate_ports(names: Sequence[str]) -> dict[str, int]:
    """Fresh ports for one service, never one that another service holds or keeps for a
    later `start`, nor one handed to a service starting in parallel."""
    with _port_lock:
        kept = {port for name in ALL_SERVICES for port in SERVICES[name]().ports().values()}
        ports = free_ports(len(names), kept | _ports_handed_out)
        _ports_handed_out.update(ports)
    return dict(zip(names, ports, strict=True))


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves: a port in TIME_WAIT after a restart is fine.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise NotReadyError("connection closed by server")
        data += chunk
    return data


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------


class Service:
    """One server process: its files under <state>/<name>/, how to start it, when it is ready.

    Files: pid (the pid, as other tools expect), state.json (ports + process identity, kept
    after a stop so `start` can reuse the ports), out.log (stdout+stderr), conf/, data/.
    """

    name: ClassVar[str]
    port_names: ClassVar[tuple[str, ...]] = ("port",)  # the first one is the client endpoint
    ready_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 30.0

    def __init__(self) -> None:
        self.dir = state_root() / self.name
        self.pid_file = self.dir / "pid"
        self.state_file = self.dir / "state.json"
        self.log_file = self.dir / "out.log"
        self.conf_dir = self.dir / "conf"
        self.data_dir = self.dir / "data"
        # One lock per service: `stop redis` in a fault test never waits for `up cassandra`.
        self.lock_file = state_root() / f".{self.name}.lock"

    # -- to be provided by each service ------------------------------------------------------

    def install(self) -> None:
        """Make sure the binaries exist (may download; runs in a worker thread)."""

    def configure(self, ports: dict[str, int]) -> None:
        """Write config files; data/ exists and may hold data from a previous run."""

    def command(self, ports: dict[str, int]) -> list[str]:
        raise NotImplementedError

    def probe(self, port: int) -> str:
        """Talk the service's own protocol; return a short detail or raise OSError/NotReadyError."""
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state

    def ports(self) -> dict[str, int]:
        ports = self.read_state().get("ports", {})
        return {k: int(v) for k, v in ports.items()} if isinstance(ports, dict) else {}

    def endpoint(self) -> str | None:
        port = self.ports().get(self.port_names[0])
        return f"{HOST}:{port}" if port else None

    def running(self) -> ProcessRecord | None:
        """The process `up` started, if it is still alive; cleans a stale pid file."""
        record = self.read_state().get("process")
        if self.pid_file.exists():
            if isinstance(record, dict):
                proc = ProcessRecord(int(record["pid"]), int(record["start_ticks"]), record["exe"])
                if proc.alive():
                    return proc
            self.pid_file.unlink(missing_ok=True)
        return None

    def spawn(self, ports: dict[str, int]) -> subprocess.Popen[bytes]:
        command = self.command(ports)
        with self.log_file.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== services.py {stamp}: {' '.join(command)}\n".encode())
            log.flush()
            # Own session: the server outlives this script and ignores its terminal's ^C.
            proc = subprocess.Popen(
                command,
                cwd=self.dir,  # stray files (hs_err, heap dumps) land in the state dir
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ticks = proc_start_ticks(proc.pid)
        record = ProcessRecord(proc.pid, ticks if ticks is not None else -1, proc_exe(proc.pid))
        state = {"ports": ports, "process": dataclasses.asdict(record), "command": command}
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes] | None, timeout: float) -> str:
        port = self.ports()[self.port_names[0]]
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        pause = 0.05
        while True:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {proc.returncode} while starting; "
                    f"last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            try:
                return self.probe(port)
            except (OSError, NotReadyError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} did not answer on {HOST}:{port} within {timeout:.0f}s "
                    f"(last probe: {last!r}); last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.5)  # a restarted Redis answers within ~50 ms

    def up(self, keep: bool, timeout: float | None) -> tuple[str, str]:
        """Make the service run and answer; return (what was done, probe detail).

        Fresh by default: wiped state dir, new ports. With keep, a stopped service that left
        its data dir comes back on the same ports with the same data.
        """
        timeout = timeout or self.ready_timeout
        with file_lock(self.lock_file):
            if self.running():
                return "already up", self.wait_ready(None, timeout)
            kept = self.ports()
            fresh = not (keep and self.data_dir.is_dir() and set(kept) == set(self.port_names))
            self.install()
            if fresh:
                shutil.rmtree(self.dir, ignore_errors=True)
                ports = allocate_ports(self.port_names)
            else:
                ports = kept
                for port in ports.values():
                    if not port_is_free(port):
                        raise ServiceError(
                            f"{self.name}: kept port {HOST}:{port} is taken by another process"
                        )
            self.conf_dir.mkdir(parents=True, exist_ok=True)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.configure(ports)
            proc = self.spawn(ports)
            try:
                detail = self.wait_ready(proc, timeout)
            except BaseException:
                self._stop(kill=True)
                raise
        return ("started" if fresh else "restarted (kept data)"), detail

    def down(self, kill: bool = False) -> str:
        with file_lock(self.lock_file):
            return self._stop(kill)

    def _stop(self, kill: bool) -> str:
        """Stop the process `up` started: SIGTERM (SIGKILL with kill=True), wait, SIGKILL."""
        had_pid_file = self.pid_file.exists()
        proc = self.running()
        if proc is None:
            return "was not running" + (" (stale pid file removed)" if had_pid_file else "")
        os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        if not self._wait_gone(proc, self.stop_timeout):
            say(self.name, f"still alive {self.stop_timeout:.0f}s after SIGTERM: SIGKILL")
            # The session we created holds only the server and whatever it forked.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if not self._wait_gone(proc, 10):
                raise ServiceError(f"{self.name}: pid {proc.pid} survives SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return "stopped (killed)" if kill else "stopped"

    @staticmethod
    def _wait_gone(proc: ProcessRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while proc.alive():
            # Reap it if it is our own child (a failed start); otherwise init does.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, os.WNOHANG)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


class Redis(Service):
    name = "redis"
    ready_timeout = 30.0
    stop_timeout = 20.0

    def install(self) -> None:
        apt_install("redis-server", "redis-server")

    def configure(self, ports: dict[str, int]) -> None:
        render("redis.conf", self.conf_dir / "redis.conf", port=ports["port"], dir=self.dir)

    def command(self, ports: dict[str, int]) -> list[str]:
        return [shutil.which("redis-server") or "redis-server", str(self.conf_dir / "redis.conf")]

    def probe(self, port: int) -> str:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(256)
        if not reply.startswith(b"+PONG"):  # e.g. "-LOADING" while reading its dump
            raise NotReadyError(reply.decode(errors="replace").strip())
        return "PONG"


class JavaService(Service):
    """A JVM server whose classpath is resolved from Maven Central into the shared cache."""

    artifacts: ClassVar[tuple[Artifact, ...]]
    main_class: ClassVar[str]
    heap: ClassVar[tuple[str, ...]]
    lib: Path  # set by install()

    def lib_key(self) -> str:
        return f"{self.name}-{self.artifacts[0].version}"

    def install(self) -> None:
        self.lib = resolve_classpath(self.lib_key(), self.artifacts)

    def jvm_options(self, ports: dict[str, int]) -> list[str]:
        return []

    def arguments(self) -> list[str]:
        return []

    def java(self) -> str:
        home = os.environ.get("JAVA_HOME")
        return str(Path(home) / "bin" / "java") if home else shutil.which("java") or "java"

    def command(self, ports: dict[str, int]) -> list[str]:
        return [
            self.java(),
            *self.heap,
            "-XX:+PerfDisableSharedMem",  # no /tmp/hsperfdata mmap file
            # C1 only: on two shared cores C2 compiler threads cost seconds of start-up CPU;
            # test traffic never needs peak throughput. INFERSTACK_SERVICES_JVM_OPTS can undo it
            # (e.g. -XX:TieredStopAtLevel=4 for a benchmark): later flags win.
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",  # a dead server fails tests clearly; a limping one not
            f"-XX:ErrorFile={self.dir}/hs_err_%p.log",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
            *self.jvm_options(ports),
            *os.environ.get("INFERSTACK_SERVICES_JVM_OPTS", "").split(),
            "-cp",
            str(self.lib / "*"),
            self.main_class,
            *self.arguments(),
        ]


# JDK 17 module flags from Cassandra's conf/jvm17-server.options; without them start-up fails
# with "Cassandra is unable to access required classes".
_CASSANDRA_JDK17 = [
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.base/java.lang.ref",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.management/com.sun.jmx.remote.security",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "jdk.unsupported/sun.misc",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.nio",
            "java.base/java.lang",
            "java.base/java.lang.reflect",
            "java.base/java.util",
        )
    ),
    "-Djdk.attach.allowAttachSelf=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
]


class Cassandra(JavaService):
    name = "cassandra"
    port_names = ("port", "storage_port")
    ready_timeout = 180.0  # JIT-cold JVM on two busy cores
    stop_timeout = 60.0
    artifacts = (Artifact("org.apache.cassandra", "cassandra-all", CASSANDRA_VERSION),)
    main_class = "org.apache.cassandra.service.CassandraDaemon"
    # Small -Xms: Cassandra mlockall()s its memory at start, touching every committed page.
    heap = ("-Xms256M", "-Xmx1G")

    def configure(self, ports: dict[str, int]) -> None:
        render(
            "cassandra.yaml",
            self.conf_dir / "cassandra.yaml",
            dir=self.dir,
            native_port=ports["port"],
            storage_port=ports["storage_port"],
        )
        shutil.copyfile(TEMPLATES_DIR / "cassandra-logback.xml", self.conf_dir / "logback.xml")

    def jvm_options(self, ports: dict[str, int]) -> list[str]:
        jamm = sorted(self.lib.glob("jamm-*.jar"))
        return [
            *(f"-javaagent:{jar}" for jar in jamm[:1]),  # object sizing, as bin/cassandra does
            *_CASSANDRA_JDK17,
            "-Xss256k",
            "-XX:+UseG1GC",
            f"-Dcassandra.config=file://{self.conf_dir}/cassandra.yaml",
            f"-Dlogback.configurationFile=file://{self.conf_dir}/logback.xml",
            f"-Dcassandra.storagedir={self.data_dir}",
            f"-Dcassandra.logdir={self.dir}",
            "-Dcassandra-foreground=yes",  # else it closes stdout/stderr
            # Fast single-node start: nobody to gossip with, nothing worth an fsync.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.skip_sync=true",
            # Skip measuring per-row memtable overhead with 100k dummy rows (~2s of CPU); the
            # value is what 5.0 measures on a 64-bit JDK 17, and only sizes flush estimates.
            "-Dcassandra.memtable.row_overhead_size=180",
            "-Dchronicle.analytics.disable=true",
            # No JMX: nothing here uses nodetool, and it saves a port and some start-up.
        ]

    def probe(self, port: int) -> str:
        return cql_release_version(port)


class ZooKeeper(JavaService):
    name = "zookeeper"
    ready_timeout = 60.0
    artifacts = (
        Artifact("org.apache.zookeeper", "zookeeper", ZOOKEEPER_VERSION),
        # "provided" in zookeeper's POM but needed by the server (ServerMetrics, ZKDatabase).
        Artifact("io.dropwizard.metrics", "metrics-core", ZOOKEEPER_METRICS_VERSION),
        Artifact("org.xerial.snappy", "snappy-java", ZOOKEEPER_SNAPPY_VERSION),
        # zookeeper only depends on slf4j-api; without a binding it logs nothing at all.
        Artifact("org.slf4j", "slf4j-simple", ZOOKEEPER_SLF4J_VERSION),
    )
    main_class = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
    heap = ("-Xms64M", "-Xmx256M")

    def configure(self, ports: dict[str, int]) -> None:
        render("zoo.cfg", self.conf_dir / "zoo.cfg", port=ports["port"], dir=self.dir)

    def jvm_options(self, ports: dict[str, int]) -> list[str]:
        return [
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.logFile=System.out",
        ]

    def arguments(self) -> list[str]:
        return [str(self.conf_dir / "zoo.cfg")]

    def probe(self, port: int) -> str:
        if zk_four_letter(port, b"ruok") != "imok":
            raise NotReadyError("ruok did not answer imok")
        mode = next(
            (line for line in zk_four_letter(port, b"srvr").splitlines() if "Mode:" in line), ""
        )
        session = zk_open_and_close_session(port)
        return f"imok, {mode.strip()}, session 0x{session:x}"


class Kafka(JavaService):
    name = "kafka"
    port_names = ("port", "controller_port")
    ready_timeout = 90.0
    stop_timeout = 45.0  # controlled shutdown
    artifacts = (
        Artifact("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
        # kafka_2.13 brings log4j-core but no slf4j binding: add the one its distribution ships.
        Artifact("org.apache.logging.log4j", "log4j-slf4j-impl", KAFKA_LOG4J_VERSION),
    )
    main_class = "kafka.Kafka"
    heap = ("-Xms128M", "-Xmx512M")

    def configure(self, ports: dict[str, int]) -> None:
        properties = self.conf_dir / "server.properties"
        render(
            "kafka.properties",
            properties,
            dir=self.dir,
            port=ports["port"],
            controller_port=ports["controller_port"],
        )
        shutil.copyfile(
            TEMPLATES_DIR / "kafka-log4j2.properties", self.conf_dir / "log4j2.properties"
        )
        if (self.data_dir / "meta.properties").exists():
            return  # restarted with --keep: the log dir is formatted already
        # KRaft needs its log dir formatted with a cluster id before the first start.
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        fmt = [
            self.java(), "-Xmx256M", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile=file://{self.conf_dir}/log4j2.properties",
            "-cp", str(self.lib / "*"),
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties),
        ]  # fmt: skip
        result = subprocess.run(fmt, capture_output=True, text=True, cwd=self.dir)
        if result.returncode != 0:
            raise ServiceError(
                "kafka: formatting the KRaft log dir failed:\n" + result.stdout + result.stderr
            )

    def jvm_options(self, ports: dict[str, int]) -> list[str]:
        return [
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            f"-Dlog4j2.configurationFile=file://{self.conf_dir}/log4j2.properties",
        ]

    def arguments(self) -> list[str]:
        return [str(self.conf_dir / "server.properties")]

    def probe(self, port: int) -> str:
        brokers, controller = kafka_metadata(port)
        if not brokers or controller < 0:
            raise NotReadyError(f"metadata: brokers={brokers} controller={controller}")
        return f"metadata: brokers {brokers}"


class MLServer(Service):
    """Seldon's MLServer serving MLSERVER_MODEL (a scikit-learn classifier) over the Open
    Inference Protocol: gRPC on the endpoint port, HTTP/REST beside it; no metrics server.
    """

    name = "mlserver"
    port_names = ("port", "http_port")  # gRPC, then HTTP
    ready_timeout = 120.0  # cold imports of a ~500 MB venv on two busy cores
    stop_timeout = 30.0
    bin: Path  # set by install()

    def install(self) -> None:
        if not (3, 9) <= sys.version_info[:2] < (3, 13):  # mlserver 1.7's Requires-Python
            raise ServiceError(
                f"mlserver {MLSERVER_VERSION} needs Python 3.9-3.12 for its venv; "
                f"run services.py with such an interpreter (this is {sys.version.split()[0]})"
            )
        self.bin = python_venv(
            f"mlserver-{MLSERVER_VERSION}-venv", TEMPLATES_DIR / "mlserver-requirements.txt"
        )

    def configure(self, ports: dict[str, int]) -> None:
        # The model repository is the conf dir: MLServer finds every model-settings.json in it.
        settings = {
            "debug": False,  # True logs every request at DEBUG level
            "host": HOST,
            "grpc_port": ports["port"],
            "http_port": ports["http_port"],
            "metrics_endpoint": None,  # no metrics server, so no third port
            # 0: inference runs in the server process; 1+ would fork a pool of workers that
            # each import the whole stack (hundreds of MB) for nothing in tests.
            "parallel_workers": 0,
            "environments_dir": str(self.data_dir / "envs"),
            "metrics_dir": str(self.data_dir / "metrics"),
        }
        (self.conf_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        model_dir = self.conf_dir / MLSERVER_MODEL
        model_dir.mkdir(parents=True, exist_ok=True)
        model_settings = {
            "name": MLSERVER_MODEL,
            "implementation": "mlserver_sklearn.SKLearnModel",
            # No predict_fn: a request without outputs gets `predict` (class labels); one
            # that names `predict_proba` among its outputs gets the class probabilities.
            "parameters": {"uri": "./model.joblib", "version": MLSERVER_MODEL_VERSION},
            # Metadata only (MLServer enforces none of it): what ModelMetadata reports, so
            # clients can check the width and datatype they send.
            "inputs": [
                {"name": "input-0", "datatype": "FP64", "shape": [-1, MLSERVER_MODEL_FEATURES]}
            ],
            "outputs": [
                {"name": "predict", "datatype": "INT64", "shape": [-1, 1]},
                {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
            ],
        }
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
        train = [
            str(self.bin / "python"),
            str(TEMPLATES_DIR / "mlserver_train.py"),
            str(model_dir / "model.joblib"),
            str(MLSERVER_MODEL_FEATURES),
        ]
        result = subprocess.run(train, capture_output=True, text=True, cwd=self.dir)
        if result.returncode != 0:
            raise ServiceError(
                f"mlserver: training the test model failed:\n$ {' '.join(train)}\n"
                + "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            )

    def command(self, ports: dict[str, int]) -> list[str]:
        return [str(self.bin / "mlserver"), "start", str(self.conf_dir)]

    def probe(self, port: int) -> str:
        http = self.ports()["http_port"]
        for path in ("/v2/health/ready", f"/v2/models/{MLSERVER_MODEL}/ready"):
            http_get(http, path)
        if not grpc_model_ready(port, MLSERVER_MODEL):
            raise NotReadyError(f"gRPC ModelReady({MLSERVER_MODEL}) answered not ready")
        return f"model {MLSERVER_MODEL} ready over HTTP :{http} and gRPC"


SERVICES: dict[str, type[Service]] = {
    "cassandra": Cassandra,
    "redis": Redis,
    "zookeeper": ZooKeeper,
    "kafka": Kafka,
    "mlserver": MLServer,
}


# --------------------------------------------------------------------------------------------
# Wire-protocol probes (a real request each, not just an open port)
# --------------------------------------------------------------------------------------------


class Reader:
    """Big-endian cursor over a response body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(">" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(">" + fmt)
        return value

    def raw(self, size: int) -> bytes:
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def short_string(self) -> str | None:  # int16 length, -1 = null
        size = self.take("h")
        return None if size < 0 else self.raw(size).decode()

    def skip_short_strings(self, count: int) -> None:
        for _ in range(count):
            self.short_string()


def cql_release_version(port: int) -> str:
    """CQL native protocol v4: STARTUP, then SELECT release_version FROM system.local."""

    def request(sock: socket.socket, opcode: int, body: bytes) -> tuple[int, Reader]:
        sock.sendall(struct.pack(">BBhBi", 0x04, 0, 1, opcode, len(body)) + body)
        _version, _flags, _stream, reply, size = struct.unpack(">BBhBi", recv_exact(sock, 9))
        reader = Reader(recv_exact(sock, size))
        if reply == 0x00:  # ERROR: [int code][string message]
            code = reader.take("i")
            raise NotReadyError(f"CQL error 0x{code:04x}: {reader.short_string()}")
        return reply, reader

    def cql_string(text: str) -> bytes:
        return struct.pack(">H", len(text)) + text.encode()

    with socket.create_connection((HOST, port), timeout=5) as sock:
        startup = struct.pack(">H", 1) + cql_string("CQL_VERSION") + cql_string("3.0.0")
        opcode, _ = request(sock, 0x01, startup)
        if opcode != 0x02:  # READY
            raise NotReadyError(f"STARTUP answered opcode 0x{opcode:02x}")
        query = b"SELECT release_version FROM system.local"
        body = struct.pack(">i", len(query)) + query + struct.pack(">HB", 0x0001, 0)  # ONE
        opcode, result = request(sock, 0x07, body)
    if opcode != 0x08 or result.take("i") != 0x0002:  # RESULT of kind Rows
        raise NotReadyError("query did not return rows")
    flags, columns = result.take("i"), result.take("i")
    if flags & 0x0002:  # paging state
        result.raw(result.take("i"))
    if not flags & 0x0004:  # column metadata present
        if flags & 0x0001:  # global table spec: keyspace, table
            result.skip_short_strings(2)
        for _ in range(columns):
            if not flags & 0x0001:
                result.skip_short_strings(2)
            result.short_string()  # column name
            if result.take("H") == 0x0000:  # custom type: class name follows
                result.short_string()
    if result.take("i") < 1:
        raise NotReadyError("system.local is empty")
    size = result.take("i")
    return "release_version " + (result.raw(size).decode() if size >= 0 else "null")


def zk_four_letter(port: int, word: bytes) -> str:
    with socket.create_connection((HOST, port), timeout=2) as sock:
        sock.sendall(word)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def zk_open_and_close_session(port: int) -> int:
    """A real client session (jute ConnectRequest), closed again so no session lingers."""

    def frame(payload: bytes) -> bytes:
        return struct.pack(">i", len(payload)) + payload

    with socket.create_connection((HOST, port), timeout=5) as sock:
        # protocolVersion, lastZxidSeen, timeOut ms, sessionId, passwd (16 zero bytes), readOnly
        connect = struct.pack(">iqiqi", 0, 0, 10_000, 0, 16) + bytes(16) + b"\x00"
        sock.sendall(frame(connect))
        reply = Reader(recv_exact(sock, struct.unpack(">i", recv_exact(sock, 4))[0]))
        _protocol, negotiated_timeout, session = reply.take("i"), reply.take("i"), reply.take("q")
        if session == 0 or negotiated_timeout <= 0:
            raise NotReadyError("server refused the session")
        sock.sendall(frame(struct.pack(">ii", 1, -11)))  # xid 1, OpCode.closeSession
        header = Reader(recv_exact(sock, struct.unpack(">i", recv_exact(sock, 4))[0]))
        _xid, _zxid, err = header.take("i"), header.take("q"), header.take("i")
        if err != 0:
            raise NotReadyError(f"closeSession failed with error {err}")
    return int(session)


def kafka_metadata(port: int) -> tuple[list[int], int]:
    """Kafka Metadata request v4 (no topics): broker ids and the controller id.

    The broker only serves requests on its client listener once it has caught up with the
    controller and been unfenced, so an answer listing itself means it is ready for clients.
    """
    client = b"inferstack-services"
    header = struct.pack(">hhih", 3, 4, 1, len(client)) + client  # Metadata v4, correlation 1
    body = struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(struct.pack(">i", len(header + body)) + header + body)
        reply = Reader(recv_exact(sock, struct.unpack(">i", recv_exact(sock, 4))[0]))
    if reply.take("i") != 1:
        raise NotReadyError("wrong correlation id")
    reply.take("i")  # throttle_time_ms
    brokers = []
    for _ in range(reply.take("i")):
        brokers.append(reply.take("i"))
        reply.skip_short_strings(1)  # host
        reply.take("i")  # port
        reply.skip_short_strings(1)  # rack
    reply.short_string()  # cluster id
    return brokers, int(reply.take("i"))


def http_get(port: int, path: str) -> bytes:
    """GET on loopback with http.client (urllib would honour an http_proxy variable)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise NotReadyError(f"GET {path}: HTTP {response.status} {body[:200]!r}")
    return body


def grpc_model_ready(port: int, model: str) -> bool:
    """The Open Inference Protocol's ModelReady over a bare HTTP/2 connection (prior knowledge).

    Enough HTTP/2 for one unary call: our headers are HPACK literals (no table, no Huffman),
    and the answer needs no header decoding: a DATA frame on our stream carries the response
    message, while a HEADERS frame ending the stream first is a trailers-only error.
    """

    def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        header = len(payload).to_bytes(3, "big") + struct.pack(">BBI", kind, flags, stream)
        return header + payload

    def literal(name: str, value: str) -> bytes:  # "without indexing, new name", both < 127 B
        return bytes([0, len(name)]) + name.encode() + bytes([len(value)]) + value.encode()

    headers = b"".join(
        literal(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/inference.GRPCInferenceService/ModelReady"),
            (":authority", f"{HOST}:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    request = b"\x0a" + bytes([len(model)]) + model.encode()  # ModelReadyRequest.name (field 1)
    message = struct.pack(">BI", 0, len(request)) + request  # gRPC framing: uncompressed, length
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + frame(0x4, 0, 0)  # SETTINGS (defaults)
            + frame(0x1, 0x4, 1, headers)  # HEADERS, END_HEADERS, stream 1
            + frame(0x0, 0x1, 1, message)  # DATA, END_STREAM
        )
        while True:
            length = int.from_bytes(recv_exact(sock, 3), "big")
            kind, flags, stream = struct.unpack(">BBI", recv_exact(sock, 6))
            payload = recv_exact(sock, length)
            stream &= 0x7FFFFFFF
            if kind == 0x4 and not flags & 0x1:  # the server's SETTINGS: acknowledge them
                sock.sendall(frame(0x4, 0x1, 0))
            elif kind == 0x0 and stream == 1:  # DATA: [pad length] + gRPC message
                if flags & 0x8:
                    payload = payload[1 : len(payload) - payload[0]]
                # ModelReadyResponse: `ready: true` is field 1 varint 1; false encodes empty.
                return payload[5:] == b"\x08\x01"
            elif kind == 0x1 and stream == 1 and flags & 0x1:
                raise NotReadyError("ModelReady ended without a message (gRPC error status)")
            elif kind in (0x3, 0x7):  # RST_STREAM, GOAWAY
                raise NotReadyError(f"server closed the call (HTTP/2 frame type {kind})")


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def write_endpoints() -> dict[str, str]:
    """Record the endpoints of the services that are running now."""
    root = state_root()
    with file_lock(root / ".endpoints.lock"):
        endpoints = {}
        for name in ALL_SERVICES:
            service = SERVICES[name]()
            endpoint = service.endpoint()
            if endpoint and service.running():
                endpoints[name] = endpoint
        tmp = root / "endpoints.json.tmp"
        tmp.write_text(json.dumps(endpoints, indent=2) + "\n")
        tmp.replace(root / "endpoints.json")
    return endpoints


def in_parallel(names: Sequence[str], action: Callable[[Service], str]) -> list[str]:
    """Run `action` on each service in its own thread, report each, return the failed names."""

    def run(name: str) -> str | None:
        service = SERVICES[name]()
        began = time.monotonic()
        try:
            result = action(service)
        except (OSError, ServiceError) as exc:
            say(name, f"FAILED: {exc}", sys.stderr)
            return name
        say(name, f"{result} in {time.monotonic() - began:.1f}s")
        return None

    # In ALL_SERVICES order: Cassandra, the slowest, gets Maven (one resolution at a time) first.
    ordered = [name for name in ALL_SERVICES if name in names]
    with ThreadPoolExecutor(max_workers=len(ordered)) as pool:
        return [name for name in pool.map(run, ordered) if name is not None]


def cmd_up(names: Sequence[str], keep: bool, timeout: float | None) -> int:
    def bring_up(service: Service) -> str:
        verb, detail = service.up(keep, timeout)
        proc = service.running()
        return f"{verb:<22} pid {proc.pid if proc else '?':<8} {service.endpoint()}  [{detail}]"

    failed = in_parallel(names, bring_up)
    print(json.dumps(write_endpoints()))
    if failed:
        print(
            f"services.py: {', '.join(failed)} did not come up; logs: {state_root()}/NAME/out.log",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_down(names: Sequence[str], kill: bool) -> int:
    failed = in_parallel(names, lambda service: service.down(kill))
    write_endpoints()
    return 1 if failed else 0


def cmd_status(names: Sequence[str]) -> int:
    down = 0
    for name in names:
        service = SERVICES[name]()
        proc = service.running()
        endpoint = service.endpoint() or "-"
        if proc is None:
            down += 1
            kept = (
                f"  (data kept, `start {name}` reuses {endpoint})"
                if service.data_dir.is_dir()
                else ""
            )
            say(name, f"down{kept}")
            continue
        try:
            health = service.probe(int(endpoint.rsplit(":", 1)[1]))
            state = "up"
        except (OSError, NotReadyError) as exc:
            health, state = f"not answering: {exc!r}", "starting?"
            down += 1
        say(name, f"{state:<9} pid {proc.pid:<8} {endpoint}  [{health}]")
    return 1 if down else 0


def cmd_env(names: Sequence[str]) -> int:
    for name in names:
        service = SERVICES[name]()
        endpoint = service.endpoint()
        if endpoint and service.running():
            print(f"export INFERSTACK_TEST_{name.upper()}={endpoint}")
        else:
            print(f"# {name} is not running", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, *, need_names: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "names",
            # No `choices`: Python 3.11's argparse rejects an empty "*" list against them.
            nargs="+" if need_names else "*",
            metavar="NAME",
            help=f"one of {', '.join(ALL_SERVICES)}" + ("" if need_names else " (default: all)"),
        )
        return sub

    for name, help_text, need in (
        ("up", "start services fresh (wiped data, new ports)", False),
        ("start", "restart stopped services keeping data and ports (= up --keep)", True),
    ):
        sub = add(name, help_text, need_names=need)
        sub.add_argument("--timeout", type=float, help="seconds to wait for each service")
        if name == "up":
            sub.add_argument("--keep", action="store_true", help="reuse data dir and ports")
    for name, help_text, need in (
        ("down", "stop services (data and ports are kept for `start`)", False),
        ("stop", "same as down, for named services", True),
    ):
        sub = add(name, help_text, need_names=need)
        sub.add_argument("--kill", action="store_true", help="SIGKILL (simulate a crash)")
    add("status", "show up/down, pid and endpoint; exit 1 if any is down")
    add("env", "print export lines for the running services")

    args = parser.parse_args(argv)
    if unknown := [name for name in args.names if name not in SERVICES]:
        parser.error(f"unknown service {', '.join(unknown)}; choose from {', '.join(ALL_SERVICES)}")
    names: list[str] = list(dict.fromkeys(args.names)) or list(ALL_SERVICES)
    if args.command in ("up", "start"):
        return cmd_up(names, args.command == "start" or bool(args.keep), args.timeout)
    if args.command in ("down", "stop"):
        return cmd_down(names, args.kill)
    if args.command == "status":
        return cmd_status(names)
    return cmd_env(names)


if __name__ == "__main__":
    sys.exit(main())
