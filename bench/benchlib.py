"""What the benchmark scripts under bench/ share. Standard library only.

The scripts run as `python3 bench/<name>_bench.py` and put their own
directory (this one) on sys.path before `import benchlib`.

  knobs       env_str, env_int, parse_duration_s, wrk_duration_arg, find_bin
  logging     set_tag, log
  machine     machine_info, machine_summary, cpu_model, loadavg, cmd_version,
              git_rev
  CPU         CLK_TCK, proc_stat_ticks, proc_cpu_s, group_cpu_s, rusage_cpu_s
  processes   Proc (one server process, output to a log file, optionally in
              its own process group), stop_all, stop_all_on_exit
  cluster     free_port, url_port, start_control_plane, start_node,
              start_gateway, shoal_apply, Api (the control plane's JSON API)
  wrk         parse_wrk, run_wrk, has_socket_errors
  waiting     poll_until
  wasm        leb128
  reports     write_report, keep_logs, percentile, fmt_ms, fmt_rps, fmt_errors,
              md_row, md_head
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOST = "127.0.0.1"
# The C wasi:http demo component every benchmark serves.
C_COMPONENT = REPO / "examples/wasm-apps/http-component.wasm"

# How long wrk may overrun its own -d before we give up on it.
WRK_SLACK_S = 60
# Share of the machine other processes may take during a run before the run
# is reported as disturbed.
OTHER_CPU_LIMIT_PCT = 10.0

ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------- knobs


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int, positive: bool = False) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r}: not a whole number")
    if positive and n <= 0:
        raise SystemExit(f"{name}={value!r}: must be positive")
    return n


def parse_duration_s(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if not m:
        raise SystemExit(f"bad duration {text!r} (use e.g. 10s, 500ms, 1m)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2) or "s"]


def wrk_duration_arg(seconds: float) -> str:
    # wrk takes whole seconds (it also accepts ms, but keep it simple/robust).
    return f"{max(1, round(seconds))}s"


def find_bin(env: str, name: str) -> str:
    """The binary named by $env, else `name` on PATH, else /usr/sbin/name."""
    v = os.environ.get(env) or shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not v or not Path(v).exists():
        raise SystemExit(f"{name} not found (set {env})")
    return v


# ---------------------------------------------------------------- logging

_tag = "bench"


def set_tag(tag: str) -> None:
    """The `[tag]` in front of what log() prints (default `bench`)."""
    global _tag
    _tag = tag


def log(msg: str) -> None:
    print(f"[{_tag}] {msg}", flush=True)


# ---------------------------------------------------------------- machine


def cpu_model(default: str = "unknown") -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kb = int(line.split()[1])
                return f"{kb / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine_info() -> dict:
    return {"nproc": str(os.cpu_count()), "cpu": cpu_model(), "mem": mem_total(),
            "kernel": platform.release()}


def machine_summary() -> str:
    return f"{os.cpu_count()} CPUs (`nproc`), `{cpu_model()}`, Linux {platform.release()}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def cmd_version(argv: list[str]) -> str:
    """The first line a `--version`-like command prints (stdout, then stderr)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True,
                               timeout=30).stdout.strip()
        return rev + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# ---------------------------------------------------------------- CPU

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat_ticks() -> list[int] | None:
    """The machine's CPU time so far, in ticks (CLK_TCK a second), from the
    `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal
    (guest is inside user)."""
    try:
        vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return vals + [0] * (8 - len(vals))


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of one process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def group_pids(pgid: int) -> list[int]:
    """Every live process in process group `pgid` (nginx's master and workers)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(f[2]) == pgid:
                pids.append(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def group_cpu_s(pgid: int) -> float:
    return sum(proc_cpu_s(p) or 0.0 for p in group_pids(pgid))


def rusage_cpu_s(*who: int) -> float:
    """User + system seconds of this process (RUSAGE_SELF) and/or its reaped
    children (RUSAGE_CHILDREN)."""
    total = 0.0
    for w in who:
        ru = resource.getrusage(w)
        total += ru.ru_utime + ru.ru_stime
    return total


# ---------------------------------------------------------------- processes


class Proc:
    """A child process with its stdout and stderr going to a log file (opened
    for appending, so that a restarted server can keep its log; text() and
    wait_for_line() see only what this process wrote).

    group=True starts it in a process group of its own, which stop() signals
    as a whole (nginx's workers with their master) and which a signal to the
    benchmark does not reach: stop_all_on_exit() stops it instead.
    group=False leaves it in the benchmark's process group."""

    running: list["Proc"] = []

    def __init__(self, name: str, argv: list[str], log_path: Path, *,
                 env: dict | None = None, group: bool = True,
                 stop_signal: int = signal.SIGTERM):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.group, self.stop_signal = group, stop_signal
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self._start = os.fstat(self._log.fileno()).st_size
        self._log.write(("$ " + shlex.join(argv) + "\n").encode())
        self._log.flush()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=group,
                                     env=None if env is None else {**os.environ, **env})
        Proc.running.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        """What this process has logged so far (its command line first)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._start)
                return ANSI.sub("", f.read().decode(errors="replace"))
        except OSError:
            return ""

    def tail(self, n: int = 15) -> str:
        # Leave out Rust/anyhow backtraces: the error message is what matters.
        lines, skipping = [], False
        for line in self.text().splitlines():
            if re.match(r"\s*(Stack backtrace:|stack backtrace:)", line):
                skipping = True
                continue
            if skipping and re.match(r"\s+(\d+:|at )", line):
                continue
            skipping = False
            lines.append(line)
        return "\n".join(lines[-n:])

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        """Until the log has a match for `pattern`; raises if the process exits
        first or the time runs out."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"log tail:\n{self.tail()}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: no line matching {pattern!r} within {timeout}s; "
                           f"log tail:\n{self.tail()}")

    def _signal(self, sig: int) -> None:
        if self.group:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        else:
            self.proc.send_signal(sig)

    def stop(self, sig: int | None = None, timeout: float = 15.0) -> int | None:
        """Signal it (its stop_signal by default), wait, SIGKILL after
        `timeout`; closes the log and returns the exit status."""
        if self.proc.poll() is None:
            self._signal(self.stop_signal if sig is None else sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=timeout)
                if not self._log.closed:
                    self._log.write(b"\n[bench] killed after stop timeout\n")
        elif self.group:
            # The leader is gone; make sure nothing else of its group lingers.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def kill(self, timeout: float = 15.0) -> None:
        """SIGKILL (kill -9), and reap it."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=timeout)


def stop_all() -> None:
    """Stops every Proc started, the last one first."""
    for p in reversed(Proc.running):
        try:
            p.stop()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            print(f"[{_tag}] stopping {p.name}: {e}", file=sys.stderr)
    Proc.running.clear()


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def stop_all_on_exit() -> None:
    """stop_all() at exit, on error and on SIGTERM/SIGINT/SIGHUP."""
    atexit.register(stop_all)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)


# ---------------------------------------------------------------- cluster

URL = r"(https?://\S+?)/?\s"


def nginx_user_directive() -> str:
    """nginx's `user` line: as root, its workers drop to a user that
    exists (www-data, else nobody); otherwise none is needed."""
    if os.geteuid() != 0:
        return ""
    import pwd
    for name in ("www-data", "nobody"):
        try:
            pwd.getpwnam(name)
            return f"user {name};"
        except KeyError:
            continue
    return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def url_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# Tokens of the control planes started here, by URL: (admin, join). A
# control plane that writes none (a revision before tokens) has none, and
# everything below then sends none.
TOKENS: dict[str, tuple[str | None, str | None]] = {}

# A client config no benchmark reads (a developer's own must not decide
# where the CLI goes).
NO_CONFIG = "/nonexistent/shoal-bench/config.toml"


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


_HELP: dict[tuple[str, str], str] = {}


def has_flag(shoal: str, command: str, flag: str) -> bool:
    """Whether `shoal COMMAND` takes FLAG (older revisions lack some)."""
    key = (str(shoal), command)
    if key not in _HELP:
        p = subprocess.run([str(shoal), command, "--help"], capture_output=True, text=True,
                           cwd=REPO)
        _HELP[key] = p.stdout + p.stderr
    return flag in _HELP[key]


# The cluster CA file of each control plane started over TLS, by URL.
CAS: dict[str, Path] = {}


def ca_of(url: str) -> Path | None:
    """The CA file to trust for the control plane at url (None: plain HTTP)."""
    return CAS.get(url.rstrip("/"))


def admin_env(cp_url: str) -> dict:
    """The environment of a CLI run against the control plane at cp_url."""
    env = {"SHOAL_CONFIG": NO_CONFIG}
    admin = TOKENS.get(cp_url.rstrip("/"), (None, None))[0]
    if admin:
        env["SHOAL_TOKEN"] = admin
    if ca_of(cp_url):
        env["SHOAL_CA"] = str(ca_of(cp_url))
    return env


def start_control_plane(shoal: str, data_dir: Path, log_path: Path, timeout: float,
                        group: bool = True, extra: list[str] | None = None,
                        tls: bool = False) -> tuple[Proc, str]:
    """`shoal control-plane` on a free port; the process and its URL. Plain
    HTTP unless `tls` (then every process started for it trusts its CA)."""
    # Plain HTTP on the loopback where the binary serves TLS by default (a
    # revision before TLS has no such flag).
    plain = (["--plain-http"]
             if not tls and has_flag(shoal, "control-plane", "--plain-http") else [])
    p = Proc("control-plane", [str(shoal), "control-plane", "--listen", f"{HOST}:0",
                               "--data-dir", str(data_dir), *plain, *(extra or [])],
             log_path, group=group)
    url = p.wait_for_line(r"Control plane listening on " + URL, timeout).group(1)
    TOKENS[url.rstrip("/")] = (_read_token(data_dir / "admin.token"),
                               _read_token(data_dir / "join.token"))
    if tls:
        CAS[url.rstrip("/")] = data_dir / "ca.pem"
    return p, url


def start_node(shoal: str, cp_url: str, name: str, cache_dir: Path, log_path: Path,
               timeout: float, group: bool = True, tls: bool = False,
               labels: list[str] | None = None,
               extra: list[str] | None = None) -> tuple[Proc, str]:
    """`shoal node` joined to the control plane, on a free port: plain HTTP
    unless `tls` (mutual TLS, which gateways reach with a certificate of
    the cluster CA); the process and its URL."""
    argv = [str(shoal), "node", "--join", cp_url, "--name", name,
            "--listen", f"{HOST}:0", "--cache-dir", str(cache_dir)]
    if not tls and has_flag(shoal, "node", "--plain-http"):
        argv.append("--plain-http")
    for label in labels or []:
        argv += ["--label", label]
    if ca_of(cp_url):
        argv += ["--ca", str(ca_of(cp_url))]
    argv += extra or []
    join = TOKENS.get(cp_url.rstrip("/"), (None, None))[1]
    p = Proc(name, argv, log_path, group=group,
             env={"SHOAL_JOIN_TOKEN": join} if join else None)
    return p, p.wait_for_line(rf"Node {re.escape(name)} serving on " + URL, timeout).group(1)


def start_gateway(shoal: str, cp_url: str, log_path: Path, timeout: float,
                  env: dict | None = None, extra: list[str] | None = None
                  ) -> tuple[Proc, str]:
    """`shoal gateway` on a free port, with a token of its own if the
    control plane asks for one; the process and its URL."""
    env = dict(env or {})
    if ca_of(cp_url):
        env["SHOAL_CA"] = str(ca_of(cp_url))
    api = Api(cp_url)
    if api.token:
        name = f"gateway-{free_port()}"
        env["SHOAL_TOKEN"] = api.call("POST", "/v1/tokens",
                                      {"name": name, "role": "gateway"})["secret"]
    p = Proc("gateway", [str(shoal), "gateway", "--listen", f"{HOST}:0",
                         "--control-plane", cp_url, *(extra or [])], log_path,
             env=env or None)
    return p, p.wait_for_line(r"Gateway listening on " + URL, timeout).group(1)


def shoal_apply(shoal: str, cp_url: str, manifest: Path, timeout: float,
                log_path: Path | None = None) -> None:
    """`shoal apply -f MANIFEST --wait`, its output appended to log_path."""
    argv = [str(shoal), "--server", cp_url, "apply", "-f", str(manifest), "--wait"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env={**os.environ, **admin_env(cp_url)})
    if log_path is not None:
        with open(log_path, "a") as f:
            f.write("$ " + shlex.join(argv) + "\n" + p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"apply {manifest.name} failed ({p.returncode}): "
                           f"{p.stdout}{p.stderr}")


class Api:
    """The control plane's JSON API, as its admin (when it has tokens)."""

    def __init__(self, url: str, timeout: float = 5.0, token: str | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token or TOKENS.get(self.url, (None, None))[0]

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        ca = ca_of(self.url)
        context = ssl.create_default_context(cafile=str(ca)) if ca else None
        with urllib.request.urlopen(req, timeout=self.timeout, context=context) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path: str):
        return self.call("GET", path)

    def upload_module(self, wasm: bytes, namespace: str = "default") -> str:
        """Uploads a module (its bytes are the request's body, as `shoal
        apply` sends them) and returns its sha256, for an apply to name."""
        digest = hashlib.sha256(wasm).hexdigest()
        req = urllib.request.Request(f"{self.url}/v1/namespaces/{namespace}/blobs/{digest}",
                                     data=wasm, method="PUT")
        req.add_header("content-type", "application/wasm")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        ca = ca_of(self.url)
        context = ssl.create_default_context(cafile=str(ca)) if ca else None
        with urllib.request.urlopen(req, timeout=self.timeout, context=context) as resp:
            resp.read()
        return digest

    def instances(self, app: str, namespace: str | None = None) -> list[dict]:
        """The instances of one app (in any namespace unless one is given)."""
        return [i for i in self.get("/v1/instances?namespace=*")
                if i["app"]["name"] == app
                and (namespace is None or i["app"]["namespace"] == namespace)]

    def nodes(self) -> dict[str, dict]:
        return {n["name"]: n for n in self.get("/v1/nodes")}


# ---------------------------------------------------------------- wrk

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(out: str) -> dict:
    """wrk --latency's summary: req/s, p50/p99 in ms, requests, non-2xx
    responses and socket errors (None when wrk printed none)."""
    res: dict = {"rps": None, "p50_ms": None, "p99_ms": None, "requests": None,
                 "non2xx": 0, "socket_errors": None}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+([0-9.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            res[key] = float(m.group(1)) * _UNIT_MS[m.group(2)]
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                        (int(x) for x in m.groups())))
    return res


def has_socket_errors(r: dict) -> bool:
    return any((r.get("socket_errors") or {}).values())


def run_wrk(wrk: str, port: int, conns: int, seconds: float, threads: int, log_path: Path,
            headers: list[str] = (), watch: Callable[[], object] | None = None,
            path: str = "/", scheme: str = "http") -> dict:
    """One wrk run against http://127.0.0.1:PORT/, its output appended to
    log_path; parse_wrk's result plus "argv" and "cpu": `watch` makes a CPU
    watch (an object with finish() -> dict) as wrk starts, {} without one."""
    argv = [wrk, f"-t{threads}", f"-c{conns}", f"-d{wrk_duration_arg(seconds)}", "--latency"]
    for h in headers:
        argv += ["-H", h]
    argv.append(f"{scheme}://{HOST}:{port}{path}")
    w = watch() if watch else None
    try:
        p = subprocess.run(argv, capture_output=True, text=True,
                           timeout=seconds + WRK_SLACK_S)
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = f"wrk timed out\n{e.stdout or ''}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write("$ " + shlex.join(argv) + "\n" + out + "\n")
    res = parse_wrk(out)
    res["argv"] = argv
    res["cpu"] = w.finish() if w else {}
    return res


# ---------------------------------------------------------------- reports


def poll_until(what: str, cond: Callable, timeout: float, poll_s: float):
    """cond()'s first truthy value, polled every poll_s; RuntimeError after
    timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what} ({timeout:.0f}s)")
        time.sleep(poll_s)


def leb128(n: int) -> bytes:
    """n as unsigned LEB128, as wasm writes sizes and counts."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_report(out_path: Path, text: str) -> None:
    """The markdown report to out_path (its directory made if need be), and
    to stdout."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    print(text)


def keep_logs(tmp: Path, logs: Path, dest: Path) -> None:
    """Unless BENCH_KEEP_TMP is set: the logs directory copied to dest (in
    place of what was there), the temporary directory tmp removed."""
    if os.environ.get("BENCH_KEEP_TMP"):
        log(f"kept {tmp}")
        return
    shutil.rmtree(dest, ignore_errors=True)
    if logs.exists():
        shutil.copytree(logs, dest)
    shutil.rmtree(tmp, ignore_errors=True)


def percentile(xs: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(1, int(-(-p * len(s) // 100)))  # ceil(p/100 * n)
    return s[min(k, len(s)) - 1]


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) < 1:
        return f"{v * 1000:.0f} µs"
    if abs(v) < 100:
        return f"{v:.2f} ms"
    return f"{v:.0f} ms"


def fmt_rps(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def fmt_errors(r: dict) -> str:
    """wrk's non-zero socket error counts, "0" if none."""
    se = r.get("socket_errors") or {}
    return ", ".join(f"{k} {v}" for k, v in se.items() if v) or "0"


def md_row(*cells) -> str:
    """One row of a markdown table."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_head(columns: list[str], align: str, right: str = "--:") -> list[str]:
    """A markdown table's header row and the rule under it; `align` has a
    letter a column, l (`---`) or r (`right`)."""
    assert len(columns) == len(align), (columns, align)
    rule = "|" + "|".join("---" if a == "l" else right for a in align) + "|"
    return [md_row(*columns), rule]
