#!/usr/bin/env python3
"""Runtime benchmark: `shoal run` against `wasmtime serve`, side by side.

For every component (the C wasi:http demo app, and the JS and Python ones of
examples/wasm-apps, a language runtime inside each) it serves
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
  C_COMPONENT, JS_COMPONENT, PY_COMPONENT   the components
  BENCH_OUT            markdown output (default bench/results/runtime.md)
"""

from __future__ import annotations

import datetime
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import (  # noqa: E402
    BENCH_DIR, C_COMPONENT, CLK_TCK, HOST, OTHER_CPU_LIMIT_PCT, Proc, cmd_version, env_str,
    find_bin, fmt_errors, fmt_ms, fmt_rps, free_port, has_socket_errors, loadavg, log,
    machine_info, md_head, md_row, parse_duration_s, proc_cpu_s, proc_stat_ticks,
    rusage_cpu_s, write_report, wrk_duration_arg,
)

APPS_DIR = BENCH_DIR.parent / "examples" / "wasm-apps"
STOP_TIMEOUT_S = 30
POLL_INTERVAL_S = 0.002


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


def start_server(spec: ServerSpec, argv: list[str], log_path: Path) -> Proc:
    """One server process, its output going to a log file."""
    return Proc(spec.name, argv, log_path, group=False, stop_signal=stop_signal_for(spec))


def wait_ready(srv: Proc, port: int, timeout_s: float) -> float:
    """Poll GET / until 200; seconds since spawn. Raises on exit/timeout."""
    deadline = srv.started_at + timeout_s
    last = None
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {srv.proc.returncode} before answering;"
                f" log tail:\n{srv.tail()}"
            )
        last = http_status(port)
        if last == 200:
            return time.monotonic() - srv.started_at
        time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(
        f"no 200 within {timeout_s}s (last status {last}); log tail:\n{srv.tail()}"
    )


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


def system_cpu_s() -> tuple[float, float] | None:
    """CPU-seconds the whole machine has been busy, and stolen by the host."""
    vals = proc_stat_ticks()
    if vals is None:
        return None
    # user nice system idle iowait irq softirq steal (guest is inside user)
    busy = vals[0] + vals[1] + vals[2] + vals[5] + vals[6]
    return busy / CLK_TCK, vals[7] / CLK_TCK


def own_cpu_s() -> float:
    """This script and its reaped children (wrk), in seconds."""
    return rusage_cpu_s(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)


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


# ---------------------------------------------------------------- wrk


def run_wrk(tools: dict, port: int, conns: int, seconds: float, log_path: Path,
            server_pid: int | None = None) -> dict:
    return benchlib.run_wrk(tools["wrk"], port, conns, seconds, 1 if conns == 1 else 2,
                            log_path, watch=lambda: CpuWatch(server_pid))


# ---------------------------------------------------------------- formatting


def fmt_cpu(r: dict) -> str:
    """server / wrk+bench / other processes, as % of all cores."""
    c = r.get("cpu") or {}
    if not c:
        return "n/a"
    text = f"{c['server_pct']:.0f} / {c['own_pct']:.0f} / {c['other_pct']:.0f}"
    if c["steal_pct"] >= 1:
        text += f" (steal {c['steal_pct']:.0f})"
    return text


def git_rev() -> str:
    # run.sh says which commit it built when it did not build the work tree.
    return os.environ.get("SHOAL_GIT_DESC") or benchlib.git_rev()


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
            log(f"{cname} / {spec.name}: starting on :{port}")
            srv = start_server(spec, argv, logs / f"throughput-{tag}.log")
            srv_ok = False
            try:
                ready = wait_ready(srv, port, cfg["start_timeout"])
                srv_ok = True
                log(f"  ready after {ready:.2f}s; warm-up {cfg['warmup']}s")
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
                    log(f"  c={conns}: {fmt_rps(r['rps'])} req/s, p50 "
                        f"{fmt_ms(r['p50_ms'])}, p99 {fmt_ms(r['p99_ms'])}, non-2xx "
                        f"{r['non2xx']}, socket errors {fmt_errors(r)}, CPU {fmt_cpu(r)}")
                    if r["rps"] is None:
                        problems.append(f"{cname} / {spec.name} c={conns}: wrk gave no "
                                        f"result (see logs/wrk-{tag}.log)")
            except RuntimeError as e:
                problems.append(f"{cname} / {spec.name}: {e}")
                log(f"  FAILED: {e}")
            finally:
                rc = srv.stop(timeout=STOP_TIMEOUT_S)
            st = parse_stats(srv.text())
            if spec.kind == "shoal":
                stats.append({"component": cname, "server": spec.name, "stats": st,
                              "rc": rc})
                if st is None and srv_ok:
                    problems.append(f"{cname} / {spec.name}: no Stats line after stop "
                                    f"(exit {rc}); log tail:\n{srv.tail()}")
            if srv_ok and rc not in (0, None):
                problems.append(f"{cname} / {spec.name}: exit status {rc} after stop")
            # shoal logs `ERROR`/`WARN` (tracing); wasmtime serve prints `error: ...`.
            errs = [ln for ln in srv.text().splitlines()
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


def cold_start_once(spec, tools, cpath, cache_args, timeout, log_path) -> float:
    port = free_port()
    srv = start_server(spec, server_argv(spec, tools, cpath, port, cache_args), log_path)
    try:
        return wait_ready(srv, port, timeout)
    finally:
        srv.stop(timeout=STOP_TIMEOUT_S)


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
                    log(f"cold start {cname} / {server} / {cache}: pre-warming")
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
                log(f"cold start {cname} / {server} / {cache}: "
                    + ", ".join(f"{t:.0f}" for t in times) + " ms")
            except RuntimeError as e:
                problems.append(f"cold start {cname} / {server} / {cache}: {e}")
                log(f"  FAILED: {e}")
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
    L += md_head(["component", "server", "conns", "req/s", "p50", "p99", "requests",
                  "non-2xx", "socket errors", "vs wasmtime serve",
                  "CPU % server / wrk / other"], "llrrrrrrlrr")
    base = {(r["component"], r["conns"], r["mode"]): r["rps"]
            for r in rows if r["kind"] == "wasmtime"}
    for r in rows:
        if r["kind"] == "wasmtime":
            ratio = "1.00 (baseline)" if r["rps"] else "n/a"
        else:
            b = base.get((r["component"], r["conns"], r["mode"]))
            ratio = f"{r['rps'] / b:.2f}×" if (b and r["rps"] is not None) else "n/a"
        L.append(md_row(r["component"], r["server"], r["conns"], fmt_rps(r["rps"]),
                        fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]),
                        r["requests"] if r["requests"] is not None else "n/a",
                        r["non2xx"], fmt_errors(r), ratio, fmt_cpu(r)))
    L.append("")

    L.append("## shoal's own counters (`Stats:` line at stop, whole run incl. warm-up)\n")
    L += md_head(["component", "server", "requests", "failures", "instantiations",
                  "mean instantiation", "warm hits"], "llrrrrr")
    for s in stats:
        st = s["stats"]
        if st is None:
            L.append(f"| {s['component']} | {s['server']} | no Stats line (exit {s['rc']}) "
                     "| | | | |")
            continue
        L.append(md_row(s["component"], s["server"], st["requests"], st["failures"],
                        st["instantiations"], f"{st['mean_instantiate_us']:.1f} µs",
                        st["warm_hits"]))
    L.append("")

    L.append(f"## Cold start (process spawn to first 200 on GET /), "
             f"{cfg['cold_repeats']} runs\n")
    L.append("Measured by spawning the server and polling GET / every 2 ms on a port "
             "chosen up front. shoal uses per-request isolation (start-up is the same "
             "for reuse). \"empty\" compiles the component; \"warm\" loads compiled code "
             "from the cache, after one untimed start that fills it.\n")
    L += md_head(["component", "server", "compile cache", "median", "min", "max",
                  "runs (ms)", "note"], "lllrrrll")
    for c in colds:
        t = c["times"]
        if t:
            note = c.get("note", "")
            if c.get("other_pct") is not None:
                note = (note + "; " if note else "") + \
                    f"other processes {c['other_pct']:.0f}% CPU"
            L.append(md_row(c["component"], c["server"], c["cache"],
                            fmt_ms(statistics.median(t)), fmt_ms(min(t)), fmt_ms(max(t)),
                            ", ".join(f"{x:.0f}" for x in t), note))
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
        return str(Path(find_bin(envname, name)).resolve())

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
        ("C http-component", "C_COMPONENT", C_COMPONENT),
        ("JS (componentize-js)", "JS_COMPONENT", APPS_DIR / "js-app.wasm"),
        ("Python (componentize-py)", "PY_COMPONENT", APPS_DIR / "python-app.wasm"),
    ):
        p = Path(os.environ.get(envname) or default)
        if p.is_file():
            components.append((cname, p.resolve()))
        else:
            log(f"WARNING: {cname} component {p} missing: skipped")
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
        if r["non2xx"] or has_socket_errors(r):
            problems.append(f"{r['component']} / {r['server']} c={r['conns']}: "
                            f"{r['non2xx']} non-2xx responses, socket errors {fmt_errors(r)}")
    md = render(cfg, tools, components, rows, stats, colds, problems, notes, command)
    print()
    write_report(out, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
