"""A real one-node SLURM cluster on this machine, brought up by hand (no systemd) for tests/test_slurm.py.

munged, MariaDB, slurmdbd, slurmctld and slurmd, with their state, logs and pidfiles in one scratch folder and
on free ports. Two things cannot move there: the config files must sit in /etc/slurm (the SLURM executor's job
step drops SLURM_CONF), so any that exist there are backed up and put back by ``down()``; and munged listens on
its default socket in /run/munge (SLURM's connections to slurmdbd ignore AuthInfo=socket=...), so a munged
already serving it is used and left alone. A file lock keeps two test runs on one machine from overlapping.
Every daemon started here is stopped by the PID in its pidfile (checked against the program name, so a reused
PID is never hit).

    cluster = Cluster(); cluster.up(); ...; cluster.down()
    python tests/slurm/cluster.py up|down STATE_DIR      # by hand, for debugging (state kept in STATE_DIR)
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONF_DIR = Path("/etc/slurm")
CONF_FILES = ("slurm.conf", "gres.conf", "slurmdbd.conf")
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
LOCK = Path("/tmp/braggflow-slurm-test.lock")
SOCKET_DIR = Path("/run/munge")
MARKER = "# braggflow test cluster, state in "

DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")  # started in this order, stopped in reverse
PROGRAMS = DAEMONS + ("mungekey", "mariadb-install-db", "sbatch", "squeue", "sacct", "sacctmgr", "scancel", "sinfo",
                      "runuser", "munge")


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p, path=SBIN) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(what: str, check, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"SLURM test cluster: {what} not ready after {timeout:.0f} s\n{tail}")


def run(*cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=client_env())
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stdout}{res.stderr}")
    return res


def client_env() -> dict[str, str]:
    """The environment for SLURM commands: default config path, /usr/sbin on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["PATH"] = env.get("PATH", "") + ":" + SBIN
    return env


def pid_of(pidfile: Path, program: str) -> int | None:
    """The PID in ``pidfile`` if that process is alive and is ``program``."""
    try:
        pid = int(pidfile.read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, ValueError, IndexError):
        return None
    if _zombie(pid):
        return None
    return pid if program in (comm, Path(cmdline).name) or comm.startswith(program[:15]) else None


def stop_pid(pid: int, timeout: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class Cluster:
    """One node named after this host: features cpu,gpu, 4 pretend GPUs, accounting through slurmdbd."""

    def __init__(self, state: Path | None = None, *, cluster: str = "braggtest", cpus: int = 128,
                 mem_mb: int = 256_000, gpus: int = 4, accounts: tuple[str, ...] = ("bragg", "bragg_g"),
                 qos: tuple[str, ...] = ("regular", "shared", "debug"), lock_timeout: float = 300):
        self.state = Path(state) if state else Path(tempfile.mkdtemp(prefix="braggflow-slurm-", dir="/tmp"))
        self.own_state = state is None
        self.host = socket.gethostname().split(".")[0]
        self.values = dict(cluster=cluster, host=self.host, state=str(self.state), cpus=cpus, mem_mb=mem_mb,
                           gpus=gpus, last_gpu=gpus - 1)
        self.accounts, self.qos, self.lock_timeout = accounts, qos, lock_timeout
        self._lock = None
        self._mariadb: subprocess.Popen | None = None

    # -- bring-up ---------------------------------------------------------------------------------------------
    def up(self, timeout: float = 120) -> "Cluster":
        """Start everything; on any failure stop what was started and restore /etc/slurm before raising."""
        self._take_lock()
        try:
            self._up(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _take_lock(self) -> None:
        self._lock = open(LOCK, "w")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another SLURM test cluster holds {LOCK} (a test run in parallel?)")
                time.sleep(1)

    def _up(self, timeout: float) -> None:
        t0 = time.monotonic()
        st = self.state
        st.mkdir(parents=True, exist_ok=True)
        st.chmod(0o755)  # munged (user munge) must reach its socket folder
        for sub in ("slurmctld", "slurmd", "gpus", "mysql"):
            (st / sub).mkdir(exist_ok=True)
        for i in range(self.values["gpus"]):
            (st / "gpus" / f"nvidia{i}").touch()
        self.values.update(ctld_port=free_port(), slurmd_port=free_port(), dbd_port=free_port(),
                           mysql_port=free_port())
        (st / "ports.json").write_text(json.dumps(self.values))
        self._install_configs()
        self._start_munged()
        self._start_mariadb(timeout)
        self._start_slurmdbd(timeout)
        self._register_accounts()
        run("slurmctld", "-c", "-i")
        wait_for("slurmctld", lambda: run("sinfo", "-h", check=False).returncode == 0, timeout,
                 st / "slurmctld.log")
        run("slurmd", "-N", self.host)
        wait_for("node idle", lambda: run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle",
                 timeout, st / "slurmd.log")
        self.seconds_to_start = time.monotonic() - t0

    def _install_configs(self) -> None:
        backup = self.state / "etc-slurm-backup"
        backup.mkdir(exist_ok=True)
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        for name in CONF_FILES:
            target = CONF_DIR / name
            if target.exists() and not (backup / name).exists():
                if MARKER in target.read_text(errors="replace"):
                    # left behind by a run that was killed: that run's backup (if any) is lost to us, so keep
                    # nothing of it rather than restore a test config later
                    target.unlink()
                else:
                    shutil.copy2(target, backup / name)
            text = string.Template((HERE / f"{name}.in").read_text()).substitute(self.values)
            target.write_text(f"{MARKER}{self.state}\n{text}")
            target.chmod(0o600 if name == "slurmdbd.conf" else 0o644)

    def _start_munged(self) -> None:
        """munged on the default socket (SLURM's connections to slurmdbd ignore AuthInfo=socket=...).

        A munged already serving that socket (started by someone else) is used as it is and left running.
        """
        if run("munge", "-n", check=False).returncode == 0:
            return
        munge = self.state / "munge"
        munge.mkdir(exist_ok=True)
        user = pwd.getpwnam("munge")
        os.chown(munge, user.pw_uid, user.pw_gid)
        SOCKET_DIR.mkdir(exist_ok=True)
        os.chown(SOCKET_DIR, user.pw_uid, user.pw_gid)
        key = munge / "munge.key"
        run("runuser", "-u", "munge", "--", "mungekey", "--create", f"--keyfile={key}")
        run("runuser", "-u", "munge", "--", "munged", f"--key-file={key}", f"--pid-file={munge}/munged.pid",
            f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed")
        wait_for("munged", lambda: run("munge", "-n", check=False).returncode == 0, 20, munge / "munged.log")

    def _start_mariadb(self, timeout: float) -> None:
        st = self.state
        run("mariadb-install-db", "--no-defaults", f"--datadir={st}/mysql", "--user=root", "--skip-test-db",
            "--auth-root-authentication-method=normal", timeout=120)
        with open(st / "mariadb.out", "w") as out:
            self._mariadb = subprocess.Popen(
                ["mariadbd", "--no-defaults", f"--datadir={st}/mysql", "--user=root",
                 f"--socket={st}/mysql.sock", f"--port={self.values['mysql_port']}", "--bind-address=127.0.0.1",
                 f"--pid-file={st}/mariadb.pid", f"--log-error={st}/mariadb.err", "--skip-grant-tables",
                 "--innodb-buffer-pool-size=32M", "--skip-log-bin"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=client_env())
        wait_for("MariaDB", lambda: port_open(self.values["mysql_port"]), timeout, st / "mariadb.err")

    def _start_slurmdbd(self, timeout: float) -> None:
        run("slurmdbd")
        wait_for("slurmdbd", lambda: port_open(self.values["dbd_port"]), timeout, self.state / "slurmdbd.log")

    def _register_accounts(self) -> None:
        c = self.values["cluster"]
        run("sacctmgr", "-i", "add", "cluster", c)
        run("sacctmgr", "-i", "add", "qos", ",".join(self.qos))
        run("sacctmgr", "-i", "add", "account", ",".join(self.accounts), f"cluster={c}")
        run("sacctmgr", "-i", "add", "user", "root", f"account={','.join(self.accounts)}", f"cluster={c}",
            f"qos=normal,{','.join(self.qos)}")

    # -- tear-down --------------------------------------------------------------------------------------------
    def down(self, keep_logs: Path | None = None) -> None:
        """Cancel jobs, stop every daemon by its pidfile, put /etc/slurm back, remove the scratch folder."""
        st = self.state
        try:
            if pid_of(st / "slurmctld.pid", "slurmctld"):
                run("scancel", "--full", "--user=root", check=False)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    q = run("squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING,CONFIGURING", "-o", "%i", check=False)
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(0.5)
            pidfiles = {"slurmd": st / "slurmd.pid", "slurmctld": st / "slurmctld.pid",
                        "slurmdbd": st / "slurmdbd.pid", "mariadbd": st / "mariadb.pid",
                        "munged": st / "munge" / "munged.pid"}
            for name, pidfile in pidfiles.items():
                pid = pid_of(pidfile, name)
                if pid is not None:
                    stop_pid(pid)
            if self._mariadb is not None:
                try:
                    self._mariadb.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._mariadb.kill()
                    self._mariadb.wait()
        finally:
            self._restore_configs()
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                for log in list(st.glob("*.log")) + list(st.glob("mariadb.*")) + list(st.glob("munge/*.log")):
                    shutil.copy2(log, keep_logs / log.name)
            if self.own_state:
                shutil.rmtree(st, ignore_errors=True)
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _restore_configs(self) -> None:
        backup = self.state / "etc-slurm-backup"
        for name in CONF_FILES:
            target = CONF_DIR / name
            if target.exists() and MARKER + str(self.state) in target.read_text(errors="replace"):
                target.unlink()
            if (backup / name).exists() and not target.exists():
                shutil.copy2(backup / name, target)

    def running(self) -> list[str]:
        """Names of this cluster's daemons that are still alive (for the test's final check)."""
        st = self.state
        files = {"slurmd": st / "slurmd.pid", "slurmctld": st / "slurmctld.pid", "slurmdbd": st / "slurmdbd.pid",
                 "mariadbd": st / "mariadb.pid", "munged": st / "munge" / "munged.pid"}
        return [name for name, f in files.items() if pid_of(f, name) is not None]


if __name__ == "__main__":
    action, state = sys.argv[1], Path(sys.argv[2])
    c = Cluster(state)
    if action == "up":
        c.lock_timeout = 0
        c._take_lock = lambda: None  # by hand: no lock held across processes
        c.up()
        print(f"up in {c.seconds_to_start:.1f} s; state in {state}")
    else:
        c._mariadb = None
        c.down()
        print("down")
