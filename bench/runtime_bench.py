#!/usr/bin/env python3
"""Runtime benchmark: `shoal run` against `wasmtime serve`, side by side.

For every component (the C wasi:http demo app and the Python one) it serves
the component with, one server at a time:

  * `wasmtime serve -S cli=y --addr 127.0.0.1:PORT COMPONENT` (its defaults:
    a fresh instance per request),
  * the same with `--max-instance-reuse-count 10000` (wasmtime's own instance
    reuse, the baseline for shoal's reuse mode),
  * `shoal run COMPONENT` (per-request isolation, the default),
  * `shoal run --isolation reuse COMPONENT` (10,000 requests per instance by
    default),

waits for the first 200, warms up, then drives it with wrk at 1, 16 and 64
connections and reads requests/s, p50 and p99 latency and error counts. The
server is stopped after each and shoal's `Stats:` line is kept (mean
per-request instantiation time).

Then it measures cold start (process spawn to first 200 on GET /), repeated
and reported as a median, for wasmtime serve and shoal with an empty and a
warm compile cache.

All traffic goes to 127.0.0.1; every loop is bounded by count or deadline.
Standard library only. Knobs (environment):

  BENCH_DURATION       wrk duration per run            (default 10s)
  BENCH_WARMUP         warm-up before the runs          (default 2s)
  BENCH_CONNECTIONS    comma-separated connection counts (default 1,16,64)
  BENCH_COLD_REPEATS   cold-start repeats               (default 5)
  BENCH_START_TIMEOUT  seconds to wait for a server's first 200 (default 300)
  SHOAL_BIN, WASMTIME_BIN, WRK_BIN   the binaries (default: found on PATH)
  C_COMPONENT, PY_COMPONENT          the components
  BENCH_OUT            markdown output (default bench/results/runtime.md)
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOST = "127.0.0.1"

# How long wrk may overrun its own -d before we give up on it.
WRK_SLACK_S = 60
STOP_TIMEOUT_S = 30
POLL_INTERVAL_S = 0.002


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def parse_duration_s(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if not m:
        raise SystemExit(f"bad duration {text!r} (use e.g. 10s, 500ms, 1m)")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def wrk_duration_arg(seconds: float) -> str:
    # wrk takes whole seconds (it also accepts ms, but keep it simple/robust).
    return f"{max(1, round(seconds))}s"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_status(port: int, timeout: float = 2.0) -> int | None:
    """One GET / over a fresh connection; the status code, or None if refused."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            data = b""
            deadline = time.monotonic() + timeout
            while b"\r\n" not in data and time.monotonic() < deadline:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- servers


@dataclass
class ServerSpec:
    name: str  # as shown in the tables
    kind: str  # "wasmtime" | "shoal"
    extra: list[str] = field(default_factory=list)
    mode: str = "per-request"  # "per-request" | "reuse": what it is compared with


class Server:
    """One server process, its output going to a log file."""

    def __init__(self, argv: list[str], log_path: Path, stop_signal: int):
        self.argv = argv
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self._log.write(("$ " + shlex.join(self.argv) + "\n").encode())
        self._log.flush()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def wait_ready(self, port: int, timeout_s: float) -> float:
        """Poll GET / until 200; seconds since spawn. Raises on exit/timeout."""
        assert self.proc is not None
        deadline = self.started_at + timeout_s
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} before answering;"
                    f" log tail:\n{self.log_tail()}"
                )
            last = http_status(port)
            if last == 200:
                return time.monotonic() - self.started_at
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(
            f"no 200 within {timeout_s}s (last status {last}); log tail:\n{self.log_tail()}"
        )

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                self._log.write(b"\n[bench] killed after stop timeout\n")
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 15) -> str:
        # Leave out Rust/anyhow backtraces: the error message is what matters.
        lines, skipping = [], False
        for line in self.log_text().splitlines():
            if re.match(r"\s*(Stack backtrace:|stack backtrace:)", line):
                skipping = True
                continue
            if skipping and re.match(r"\s+(\d+:|at )", line):
                continue
            skipping = False
            lines.append(line)
        return "\n".join(lines[-n:])


def server_argv(
    spec: ServerSpec, tools: dict, component: Path, port: int, cache_args: list[str]
) -> list[str]:
    if spec.kind == "wasmtime":
        return [
            tools["wasmtime"], "serve", "-S", "cli=y", *cache_args,
            "--addr", f"{HOST}:{port}", *spec.extra, str(component),
        ]
    return [
        tools["shoal"], "run", str(component), "--listen", f"{HOST}:{port}",
        *spec.extra, *cache_args,
    ]


def stop_signal_for(spec: ServerSpec) -> int:
    # shoal: SIGTERM as documented. wasmtime serve shuts down gracefully on
    # ctrl-c only (SIGTERM would just kill it), so it gets SIGINT.
    return signal.SIGTERM if spec.kind == "shoal" else signal.SIGINT


STATS_RE = re.compile(
    r"Stats: requests=(\d+) failures=(\d+) instantiations=(\d+)"
    r" mean_instantiate_us=([0-9.]+) warm_hits=(\d+)"
)


def parse_stats(text: str) -> dict | None:
    matches = STATS_RE.findall(text)
    if not matches:
        return None
    r, f, i, m, w = matches[-1]
    return {
        "requests": int(r), "failures": int(f), "instantiations": int(i),
        "mean_instantiate_us": float(m), "warm_hits": int(w),
    }


# ---------------------------------------------------------------- CPU


CLK_TCK = os.sysconf("SC_CLK_TCK")


def system_cpu_s() -> tuple[float, float] | None:
    """CPU-seconds the whole machine has been busy, and stolen by the host."""
    try:
        vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    vals += [0] * (8 - len(vals))
    # user nice system idle iowait irq softirq steal (guest is inside user)
    busy = vals[0] + vals[1] + vals[2] + vals[5] + vals[6]
    return busy / CLK_TCK, vals[7] / CLK_TCK


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of one process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def own_cpu_s() -> float:
    """This script and its reaped children (wrk), in seconds."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


class CpuWatch:
    """How much of the machine went to processes other than the server under
    test, wrk and this script while a run lasted: on a shared machine (another
    build running, say) that is what disturbs the numbers."""

    def __init__(self, server_pid: int | None):
        self.pid = server_pid
        self.t0 = time.monotonic()
        self.sys0 = system_cpu_s()
        self.srv0 = proc_cpu_s(server_pid) if server_pid else None
        self.own0 = own_cpu_s()

    def finish(self) -> dict:
        wall = time.monotonic() - self.t0
        sys1 = system_cpu_s()
        srv1 = proc_cpu_s(self.pid) if self.pid else None
        own = own_cpu_s() - self.own0
        cap = wall * (os.cpu_count() or 1)
        if self.sys0 is None or sys1 is None or cap <= 0:
            return {}
        busy = sys1[0] - self.sys0[0]
        steal = sys1[1] - self.sys0[1]
        server = (srv1 - self.srv0) if (srv1 is not None and self.srv0 is not None) else 0.0
        other = max(0.0, busy - server - own)
        return {"server_pct": 100 * server / cap, "own_pct": 100 * own / cap,
                "other_pct": 100 * other / cap, "steal_pct": 100 * steal / cap,
                "other_s": other, "cap_s": cap}


# Share of the machine other processes may take during a run before the run
# is reported as disturbed.
OTHER_CPU_LIMIT_PCT = 10.0


# ---------------------------------------------------------------- wrk


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(out: str) -> dict:
    res: dict = {"rps": None, "p50_ms": None, "p99_ms": None, "requests": None,
                 "non2xx": 0, "socket_errors": None}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+([0-9.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            res[key] = _to_ms(m.group(1), m.group(2))
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if m:
        c, r, w, t = (int(x) for x in m.groups())
        res["socket_errors"] = {"connect": c, "read": r, "write": w, "timeout": t}
    return res


def run_wrk(tools: dict, port: int, conns: int, seconds: float, log: Path,
            server_pid: int | None = None) -> dict:
    threads = 1 if conns == 1 else 2
    argv = [tools["wrk"], f"-t{threads}", f"-c{conns}", f"-d{wrk_duration_arg(seconds)}",
            "--latency", f"http://{HOST}:{port}/"]
    watch = CpuWatch(server_pid)
    try:
        p = subprocess.run(argv, capture_output=True, text=True,
                           timeout=seconds + WRK_SLACK_S)
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = f"wrk timed out\n{e.stdout or ''}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write("$ " + shlex.join(argv) + "\n" + out + "\n")
    res = parse_wrk(out)
    res["argv"] = argv
    res["cpu"] = watch.finish()
    return res


# ---------------------------------------------------------------- formatting


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v < 1:
        return f"{v * 1000:.0f} µs"
    if v < 100:
        return f"{v:.2f} ms"
    return f"{v:.0f} ms"


def fmt_rps(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def fmt_errors(r: dict) -> str:
    se = r.get("socket_errors")
    if not se or not any(se.values()):
        return "0"
    return ", ".join(f"{k} {v}" for k, v in se.items() if v)


def fmt_cpu(r: dict) -> str:
    """server / wrk+bench / other processes, as % of all cores."""
    c = r.get("cpu") or {}
    if not c:
        return "n/a"
    text = f"{c['server_pct']:.0f} / {c['own_pct']:.0f} / {c['other_pct']:.0f}"
    if c["steal_pct"] >= 1:
        text += f" (steal {c['steal_pct']:.0f})"
    return text


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kb = int(line.split()[1])
                mem = f"{kb / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "mem": mem,
            "kernel": platform.release()}


def cmd_version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def git_rev() -> str:
    # run.sh says which commit it built when it did not build the work tree.
    if os.environ.get("SHOAL_GIT_DESC"):
        return os.environ["SHOAL_GIT_DESC"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True,
                               timeout=30).stdout.strip()
        return rev + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# ---------------------------------------------------------------- the runs


SERVERS = [
    ServerSpec("wasmtime serve", "wasmtime"),
    # wasmtime serve reuses a WASIp2 instance for this many requests when
    # asked; 10,000 is shoal's default --reuse-max-requests.
    ServerSpec("wasmtime serve reuse", "wasmtime",
               ["--max-instance-reuse-count", "10000"], mode="reuse"),
    ServerSpec("shoal per-request", "shoal", ["--isolation", "per-request"]),
    ServerSpec("shoal reuse", "shoal", ["--isolation", "reuse"], mode="reuse"),
]


def throughput(components, tools, cfg, logs: Path, shoal_cache: Path):
    rows, stats, problems, notes = [], [], [], []
    for cname, cpath in components:
        for spec in SERVERS:
            port = free_port()
            cache_args = ["--cache-dir", str(shoal_cache)] if spec.kind == "shoal" else []
            argv = server_argv(spec, tools, cpath, port, cache_args)
            tag = f"{cname}-{spec.name}".replace(" ", "_")
            srv = Server(argv, logs / f"throughput-{tag}.log", stop_signal_for(spec))
            print(f"[bench] {cname} / {spec.name}: starting on :{port}", flush=True)
            srv.start()
            srv_ok = False
            try:
                ready = srv.wait_ready(port, cfg["start_timeout"])
                srv_ok = True
                print(f"[bench]   ready after {ready:.2f}s; warm-up {cfg['warmup']}s",
                      flush=True)
                run_wrk(tools, port, 16, cfg["warmup"], logs / f"wrk-{tag}.log")
                for conns in cfg["connections"]:
                    if srv.proc.poll() is not None:
                        problems.append(f"{cname} / {spec.name}: server exited "
                                        f"({srv.proc.returncode}) before the c={conns} run")
                        break
                    r = run_wrk(tools, port, conns, cfg["duration"], logs / f"wrk-{tag}.log",
                                srv.proc.pid)
                    r.update(component=cname, server=spec.name, kind=spec.kind, conns=conns,
                             mode=spec.mode)
                    rows.append(r)
                    print(f"[bench]   c={conns}: {fmt_rps(r['rps'])} req/s, p50 "
                          f"{fmt_ms(r['p50_ms'])}, p99 {fmt_ms(r['p99_ms'])}, non-2xx "
                          f"{r['non2xx']}, socket errors {fmt_errors(r)}, CPU "
                          f"{fmt_cpu(r)}", flush=True)
                    if r["rps"] is None:
                        problems.append(f"{cname} / {spec.name} c={conns}: wrk gave no "
                                        f"result (see logs/wrk-{tag}.log)")
            except RuntimeError as e:
                problems.append(f"{cname} / {spec.name}: {e}")
                print(f"[bench]   FAILED: {e}", flush=True)
            finally:
                rc = srv.stop()
            st = parse_stats(srv.log_text())
            if spec.kind == "shoal":
                stats.append({"component": cname, "server": spec.name, "stats": st,
                              "rc": rc})
                if st is None and srv_ok:
                    problems.append(f"{cname} / {spec.name}: no Stats line after stop "
                                    f"(exit {rc}); log tail:\n{srv.log_tail()}")
            if srv_ok and rc not in (0, None):
                problems.append(f"{cname} / {spec.name}: exit status {rc} after stop")
            # shoal logs `ERROR`/`WARN` (tracing); wasmtime serve prints `error: ...`.
            errs = [ln for ln in srv.log_text().splitlines()
                    if re.search(r"\b(ERROR|WARN|panicked)\b", ln)
                    or re.match(r"\s*error:", ln)]
            # A connection that wrk closes mid-request when its time is up: hyper
            # reports it (wasmtime serve prints it; shoal logs it at debug level).
            benign = [ln for ln in errs if "IncompleteMessage" in ln]
            errs = [ln for ln in errs if "IncompleteMessage" not in ln]
            if errs:
                problems.append(f"{cname} / {spec.name}: {len(errs)} error/warning lines in "
                                f"the server log, first: {errs[0][:300]}")
            if benign:
                notes.append(f"{cname} / {spec.name}: {len(benign)} `{benign[0].strip()[:80]}` "
                             "lines in the server log: connections wrk closed with a request "
                             "in flight when a run ended (not counted as failures).")
    return rows, stats, problems, notes


def cold_start_once(spec, tools, cpath, cache_args, timeout, log) -> float:
    port = free_port()
    srv = Server(server_argv(spec, tools, cpath, port, cache_args), log,
                 stop_signal_for(spec))
    srv.start()
    try:
        return srv.wait_ready(port, timeout)
    finally:
        srv.stop()


def cold_starts(components, tools, cfg, logs: Path, tmp: Path):
    results, problems = [], []
    n = cfg["cold_repeats"]
    wt_default_cache = Path.home() / ".cache" / "wasmtime"
    wt_spec = next(s for s in SERVERS if s.name == "wasmtime serve")
    # per-request; cold start is the same for reuse
    shoal_spec = next(s for s in SERVERS if s.name == "shoal per-request")
    for cname, cpath in components:
        variants = []

        # wasmtime serve, its compile cache on (the default) but in an empty
        # directory each time: what a first `wasmtime serve` on a machine sees.
        def wt_empty(i):
            d = tmp / f"wt-cache-{cname}-{i}"
            d.mkdir(parents=True)
            conf = d / "config.toml"
            conf.write_text(f'[cache]\ndirectory = "{d / "dir"}"\n')
            return ["-C", f"cache-config={conf}"]
        variants.append(("wasmtime serve", "empty (own cache on, fresh dir)", wt_spec,
                         wt_empty, None))
        # wasmtime serve with exactly its default flags: its cache is on and
        # lives in ~/.cache/wasmtime, warmed by one untimed start first.
        variants.append(("wasmtime serve", "warm (default flags, ~/.cache/wasmtime)",
                         wt_spec, lambda i: [], "prewarm"))

        def shoal_empty(i):
            d = tmp / f"shoal-cache-{cname}-empty-{i}"
            d.mkdir(parents=True)
            return ["--cache-dir", str(d)]
        variants.append(("shoal run", "empty (--cache-dir fresh dir)", shoal_spec,
                         shoal_empty, None))
        warm_dir = tmp / f"shoal-cache-{cname}-warm"
        warm_dir.mkdir(parents=True)
        variants.append(("shoal run", "warm (--cache-dir reused)", shoal_spec,
                         lambda i: ["--cache-dir", str(warm_dir)], "prewarm"))

        for server, cache, spec, args_for, prewarm in variants:
            tag = f"{cname}-{server}-{cache.split()[0]}".replace(" ", "_")
            times, others = [], []
            try:
                if prewarm:
                    print(f"[bench] cold start {cname} / {server} / {cache}: pre-warming",
                          flush=True)
                    cold_start_once(spec, tools, cpath, args_for(-1), cfg["start_timeout"],
                                    logs / f"cold-{tag}-prewarm.log")
                for i in range(n):
                    # The server is reaped inside, so its CPU counts as ours.
                    watch = CpuWatch(None)
                    t = cold_start_once(spec, tools, cpath, args_for(i), cfg["start_timeout"],
                                        logs / f"cold-{tag}-{i}.log")
                    times.append(t * 1000)
                    c = watch.finish()
                    if c:
                        others.append((c["other_s"], c["cap_s"]))
                print(f"[bench] cold start {cname} / {server} / {cache}: "
                      + ", ".join(f"{t:.0f}" for t in times) + " ms", flush=True)
            except RuntimeError as e:
                problems.append(f"cold start {cname} / {server} / {cache}: {e}")
                print(f"[bench]   FAILED: {e}", flush=True)
            # Summed over the runs: /proc/stat counts in 10 ms ticks, too coarse
            # for one start of a few ms.
            cap = sum(c for _, c in others)
            entry = {"component": cname, "server": server, "cache": cache, "times": times,
                     "other_pct": 100 * sum(o for o, _ in others) / cap if cap else None}
            if spec.kind == "shoal" and times:
                hits = misses = 0
                for i in range(n):
                    text = (logs / f"cold-{tag}-{i}.log").read_text(errors="replace")
                    hits += "compile cache hit" in text
                    misses += "compile cache miss" in text
                entry["note"] = f"shoal log: {hits} cache hits, {misses} misses"
            if spec.kind == "wasmtime" and prewarm:
                files = [p for p in wt_default_cache.rglob("*") if p.is_file()] \
                    if wt_default_cache.is_dir() else []
                entry["note"] = (f"~/.cache/wasmtime holds {len(files)} files"
                                 if files else "~/.cache/wasmtime is empty: cache not used")
            results.append(entry)
    return results, problems


# ---------------------------------------------------------------- report


def render(cfg, tools, components, rows, stats, colds, problems, notes, command) -> str:
    mi = machine_info()
    L = []
    L.append("# Runtime benchmark: `shoal run` vs `wasmtime serve`\n")
    L.append(f"Generated {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by "
             "`bench/runtime_bench.py`.\n")
    L.append("## Machine and setup\n")
    L.append(f"- Machine: {mi['nproc']} CPUs (`nproc`), CPU model `{mi['cpu']}`, "
             f"{mi['mem']} RAM, Linux {mi['kernel']}")
    L.append(f"- Load average (1/5/15 min) at start: {cfg['load_start']}; at end: "
             f"{cfg['load_end']}. The benchmark's own servers and wrk add to it.")
    L.append(f"- shoal: `{tools['shoal']}` (release build), git {git_rev()}")
    L.append(f"- wasmtime: {cmd_version([tools['wasmtime'], '--version'])}")
    L.append(f"- wrk: {cmd_version([tools['wrk'], '-v'])}")
    for cname, cpath in components:
        size = cpath.stat().st_size / 1e6
        L.append(f"- component `{cname}`: `{cpath}` ({size:.1f} MB)")
    L.append(f"- Command: `{command}`")
    L.append(f"- wrk: `wrk -t2 -cN -d{wrk_duration_arg(cfg['duration'])} --latency "
             f"http://127.0.0.1:PORT/` (`-t1` for 1 connection), after a "
             f"{wrk_duration_arg(cfg['warmup'])} warm-up at 16 connections; load generator "
             "and server share the same cores.")
    L.append("- Servers: `wasmtime serve -S cli=y --addr 127.0.0.1:PORT C.wasm` (its "
             "defaults: a fresh instance per request for WASIp2 components, pooling "
             "allocator, compile cache on); `wasmtime serve reuse` is the same plus "
             "`--max-instance-reuse-count 10000`; `shoal run C.wasm --listen "
             "127.0.0.1:PORT --isolation per-request|reuse --cache-dir DIR` (other flags "
             "default, so reuse serves up to 10,000 requests per instance).")
    L.append("")

    L.append("## Throughput and latency\n")
    L.append("\"vs wasmtime serve\" is shoal req/s ÷ wasmtime serve req/s for the same "
             "component, connection count and isolation: shoal per-request against "
             "`wasmtime serve` (a fresh instance per request), shoal reuse against "
             "`wasmtime serve reuse`. \"non-2xx\" is wrk's "
             "\"Non-2xx or 3xx responses\"; socket errors are wrk's connect/read/write/timeout "
             "counts. The last column splits the machine's CPU during the run (100 = all "
             f"{os.cpu_count()} cores busy) between the server under test, wrk plus this "
             "script, and every other process; a large \"other\" share means something else "
             "ran on the machine and disturbed that row.\n")
    L.append("| component | server | conns | req/s | p50 | p99 | requests | non-2xx | "
             "socket errors | vs wasmtime serve | CPU % server / wrk / other |")
    L.append("|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|")
    base = {(r["component"], r["conns"], r["mode"]): r["rps"]
            for r in rows if r["kind"] == "wasmtime"}
    for r in rows:
        if r["kind"] == "wasmtime":
            ratio = "1.00 (baseline)" if r["rps"] else "n/a"
        else:
            b = base.get((r["component"], r["conns"], r["mode"]))
            ratio = f"{r['rps'] / b:.2f}×" if (b and r["rps"] is not None) else "n/a"
        L.append(f"| {r['component']} | {r['server']} | {r['conns']} | {fmt_rps(r['rps'])} | "
                 f"{fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | "
                 f"{r['requests'] if r['requests'] is not None else 'n/a'} | "
                 f"{r['non2xx']} | {fmt_errors(r)} | {ratio} | {fmt_cpu(r)} |")
    L.append("")

    L.append("## shoal's own counters (`Stats:` line at stop, whole run incl. warm-up)\n")
    L.append("| component | server | requests | failures | instantiations | "
             "mean instantiation | warm hits |")
    L.append("|---|---|--:|--:|--:|--:|--:|")
    for s in stats:
        st = s["stats"]
        if st is None:
            L.append(f"| {s['component']} | {s['server']} | no Stats line (exit {s['rc']}) "
                     "| | | | |")
            continue
        L.append(f"| {s['component']} | {s['server']} | {st['requests']} | {st['failures']} "
                 f"| {st['instantiations']} | {st['mean_instantiate_us']:.1f} µs | "
                 f"{st['warm_hits']} |")
    L.append("")

    L.append(f"## Cold start (process spawn to first 200 on GET /), "
             f"{cfg['cold_repeats']} runs\n")
    L.append("Measured by spawning the server and polling GET / every 2 ms on a port "
             "chosen up front. shoal uses per-request isolation (start-up is the same "
             "for reuse). \"empty\" compiles the component; \"warm\" loads compiled code "
             "from the cache, after one untimed start that fills it.\n")
    L.append("| component | server | compile cache | median | min | max | runs (ms) | note |")
    L.append("|---|---|---|--:|--:|--:|---|---|")
    for c in colds:
        t = c["times"]
        if t:
            note = c.get("note", "")
            if c.get("other_pct") is not None:
                note = (note + "; " if note else "") + \
                    f"other processes {c['other_pct']:.0f}% CPU"
            L.append(f"| {c['component']} | {c['server']} | {c['cache']} | "
                     f"{fmt_ms(statistics.median(t))} | {fmt_ms(min(t))} | {fmt_ms(max(t))} "
                     f"| {', '.join(f'{x:.0f}' for x in t)} | {note} |")
        else:
            L.append(f"| {c['component']} | {c['server']} | {c['cache']} | failed | | | | |")
    L.append("")

    if notes:
        L.append("## Notes\n")
        for n in notes:
            L.append(f"- {n}")
        L.append("")

    L.append("## Problems seen\n")
    if problems:
        for p in problems:
            first, *rest = p.splitlines()
            L.append(f"- {first}")
            if rest:
                L.append("\n  ```\n" + "\n".join("  " + x for x in rest) + "\n  ```")
    else:
        L.append("None: every run answered 2xx without socket errors, every server "
                 "stopped cleanly, and no other process took more than "
                 f"{OTHER_CPU_LIMIT_PCT:.0f}% of the machine during a run.")
    L.append("")
    L.append("Server and wrk logs: `logs/` beside this file.")
    return "\n".join(L) + "\n"


def main() -> int:
    def find(envname, name):
        v = os.environ.get(envname) or shutil.which(name)
        if not v or not Path(v).exists():
            raise SystemExit(f"{name} not found (set {envname})")
        return str(Path(v).resolve())

    tools = {"shoal": find("SHOAL_BIN", "shoal"), "wasmtime": find("WASMTIME_BIN", "wasmtime"),
             "wrk": find("WRK_BIN", "wrk")}
    cfg = {
        "duration": parse_duration_s(env_str("BENCH_DURATION", "10s")),
        "warmup": parse_duration_s(env_str("BENCH_WARMUP", "2s")),
        "connections": [int(x) for x in env_str("BENCH_CONNECTIONS", "1,16,64").split(",")],
        "cold_repeats": int(env_str("BENCH_COLD_REPEATS", "5")),
        "start_timeout": float(env_str("BENCH_START_TIMEOUT", "300")),
    }
    if not (1 <= cfg["cold_repeats"] <= 50) or not all(1 <= c <= 1024 for c in
                                                        cfg["connections"]):
        raise SystemExit("BENCH_COLD_REPEATS must be 1..50 and connections 1..1024")
    components = []
    for cname, envname, default in (
        ("C http-component", "C_COMPONENT",
         REPO / "examples/wasm-apps/http-component.wasm"),
        ("Python (componentize-py)", "PY_COMPONENT", BENCH_DIR / ".tools/python-app.wasm"),
    ):
        p = Path(os.environ.get(envname) or default)
        if p.is_file():
            components.append((cname, p.resolve()))
        else:
            print(f"[bench] WARNING: {cname} component {p} missing: skipped", flush=True)
    if not components:
        raise SystemExit("no component to benchmark")

    out = Path(env_str("BENCH_OUT", str(BENCH_DIR / "results/runtime.md")))
    logs = out.parent / "logs"
    if logs.is_dir():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(sys.argv)
    knobs = " ".join(f"{k}={os.environ[k]}" for k in
                     ("BENCH_DURATION", "BENCH_WARMUP", "BENCH_CONNECTIONS",
                      "BENCH_COLD_REPEATS", "BENCH_SHOAL_REV") if os.environ.get(k))
    if knobs:
        command = f"{knobs} {command}"

    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        tmp = Path(tmp)
        shoal_cache = tmp / "shoal-throughput-cache"
        shoal_cache.mkdir()
        cfg["load_start"] = loadavg()
        rows, stats, problems, notes = throughput(components, tools, cfg, logs, shoal_cache)
        colds, cproblems = cold_starts(components, tools, cfg, logs, tmp)
        problems += cproblems
        cfg["load_end"] = loadavg()

    disturbed = []
    for r in rows:
        other = (r.get("cpu") or {}).get("other_pct")
        if other is not None and other > OTHER_CPU_LIMIT_PCT:
            disturbed.append(f"{r['component']} / {r['server']} c={r['conns']} ({other:.0f}%)")
    for c in colds:
        if c.get("other_pct") is not None and c["other_pct"] > OTHER_CPU_LIMIT_PCT:
            disturbed.append(f"cold start {c['component']} / {c['server']} / "
                             f"{c['cache'].split()[0]} ({c['other_pct']:.0f}%)")
    if disturbed:
        problems.append(f"Other processes took more than {OTHER_CPU_LIMIT_PCT:.0f}% of the "
                        f"machine during {len(disturbed)} of {len(rows) + len(colds)} "
                        "measurements, which are therefore disturbed (rerun on a quiet "
                        "machine): " + "; ".join(disturbed))
    for r in rows:
        se = r.get("socket_errors")
        if r["non2xx"] or (se and any(se.values())):
            problems.append(f"{r['component']} / {r['server']} c={r['conns']}: "
                            f"{r['non2xx']} non-2xx responses, socket errors {fmt_errors(r)}")
    md = render(cfg, tools, components, rows, stats, colds, problems, notes, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
