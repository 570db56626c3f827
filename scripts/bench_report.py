#!/usr/bin/env python3
"""Writes the benchmark report, BENCHMARKS.md, from the raw results of a run of scripts/bench.

Usage (scripts/bench calls it): bench_report.py RESULTS OUT_MD DAT PNG

  RESULTS  the run's raw results: per run TABLE__SYSTEM__cCONNECTIONS__rROUND with the
           ending .json (loadgen's --json report), .txt (memcaslap's output), .fail (why the
           run failed), .check (bench_check.py's verdict) and .other (the % of the machine's
           CPU other processes used); cmd__TABLE__SYSTEM.txt (the commands of round 1);
           nutcracker.yml (twemproxy's configuration)
  OUT_MD   the markdown to write
  DAT      where to write table 5's throughputs, one line per connection count, for gnuplot
  PNG      the plot scripts/bench draws from DAT afterwards, linked from the markdown

The run's settings and the machine's facts come from the environment: BENCH_SECS,
BENCH_NROUNDS, BENCH_NKEYS, BENCH_SWEEP_LIST, BENCH_NSWEEP_ROUNDS, BENCH_SPREAD,
BENCH_REMOTE_OK, BENCH_QUICK, BENCH_CMDLINE, BENCH_START_EPOCH, BENCH_NPROC, BENCH_GIT,
BENCH_LOAD_BEFORE, BENCH_LOAD_AFTER, BENCH_DISK_FS and the BENCH_*_VERSION of memcached,
nutcracker and memcaslap.

A run counts only if it finished and passed the server check (bench_check.py): medians and
ratios are taken over those; the others are marked in the tables and listed at the end.
"""

import datetime
import itertools
import json
import os
import platform
import statistics
import sys

LABEL = {
    "ctl-memory": "controlet, memory datalet",
    "memcached": "memcached 1.6 (-t 2)",
    "ctl-disk": "controlet, disk datalet (group commit)",
    "ctl-disk-b1": "controlet, disk datalet, --disk-max-batch 1",
    "ctl-remote-memcached": "controlet, memcached:// datalet -> memcached",
    "ctl-remote-datalet": "controlet, memcached:// datalet -> datalet --store memory",
    "twemproxy": "twemproxy (nutcracker) -> memcached",
}

TABLE = {"t1": "table 1", "t1s": "table 1c", "t1psplit": "table 1d (split)",
         "t1pshared": "table 1d (shared)", "t1lg1": "table 1b (loadgen --threads 1)",
         "t1lg3": "table 1b (loadgen --threads 3)", "t2": "table 2", "t3": "table 3", "t4": "table 4 (read-heavy)",
         "t4w": "table 4 (write-heavy)"}


def read(path):
    """The text of the file at `path`."""
    with open(path) as f:
        return f.read()


def server_check(base):
    """The run's verdict from the servers' counters (bench_check.py): (valid, reasons)."""
    try:
        with open(base + ".check") as f:
            v = json.load(f)
        return v["valid"], v.get("why", [])
    except (OSError, ValueError, KeyError):
        return False, ["no server check"]


def loadgen_run(report):
    """The measures of a run from loadgen's --json `report`."""
    lat = report["latency_us"]["all"]
    cpu = report.get("cpu")
    return {"ops": report["ops_per_sec"], "p50": lat["p50"], "p99": lat["p99"],
            "p999": lat["p999"], "errors": report["errors"]["total"],
            "samples": report["error_samples"],
            "cpu": cpu and ([(p["name"], p["us_per_op"]) for p in cpu["processes"]]
                            + [("loadgen", cpu["loadgen"]["us_per_op"])])}


def memcaslap_run(output):
    """The measures of a run from memcaslap's `output`: its final `TPS:`."""
    tps = None
    for line in output.splitlines():
        if line.startswith("Run time:"):
            f = line.split()
            tps = float(f[f.index("TPS:") + 1])
    return {"ops": tps, "errors": 0} if tps is not None else {"fail": "no TPS line"}


def ok(runs):
    """The runs that finished and passed the server check: the only ones reported."""
    return [r for r in runs if "fail" not in r and r["valid"]]


def med(runs, key):
    vals = [r[key] for r in ok(runs)]
    return statistics.median(vals) if vals else None


def per_round(runs):
    """Each round's throughput, INVALID or failed ones marked."""
    def one(r):
        if "fail" in r:
            return "failed"
        return n0(r["ops"]) if r["valid"] else f"INVALID ({n0(r['ops'])})"
    return " / ".join(one(r) for r in runs) or "not run"


def checked(runs):
    """The server-check column: how many of the finished runs passed."""
    done = [r for r in runs if "fail" not in r]
    if not done:
        return "n/a"
    good = len(ok(runs))
    return f"{good}/{len(done)} valid" if good == len(done) else f"**{good}/{len(done)} valid**"


def n0(x):
    return "n/a" if x is None else f"{x:,.0f}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def rx(x):
    return "n/a" if x is None else f"{x:.2f}x"


def goal(x, op, target):
    if x is None:
        return "not measured"
    met = x >= target if op == ">=" else x <= target
    return ("met" if met else "**not met**")


def failures_of(table, system, runs):
    """One line for each run of `runs` that failed, was INVALID or counted errors."""
    table = TABLE.get(table, table)
    out = []
    for i, r in enumerate(runs, 1):
        if "fail" in r:
            out.append(f"{table}, {LABEL[system]}, round {i}: failed: {r['fail']}")
            continue
        if not r["valid"]:
            out.append(f"{table}, {LABEL[system]}, round {i}: INVALID (left out): "
                       + "; ".join(r["why"]))
        if r.get("errors"):
            out.append(f"{table}, {LABEL[system]}, round {i}: {r['errors']} errors, "
                       f"e.g. {'; '.join(r['samples'][:2])}")
    return out


class Results:
    """The raw results of one run of scripts/bench, and the failures noted while reporting
    them."""

    def __init__(self, res):
        self.res = res
        self.failures = []

    def load(self, table, system, conns, n):
        """Per round: a dict of measures, or {'fail': reason}. A finished run also carries its
        server check: 'valid', and 'why' it is not."""
        out = []
        for r in range(1, n + 1):
            base = f"{self.res}/{table}__{system}__c{conns}__r{r}"
            if os.path.exists(base + ".fail"):
                out.append({"fail": read(base + ".fail").strip()})
                continue
            if os.path.exists(base + ".json"):
                out.append(loadgen_run(json.loads(read(base + ".json"))))
            elif os.path.exists(base + ".txt"):
                out.append(memcaslap_run(read(base + ".txt")))
            else:
                continue
            if "fail" not in out[-1]:
                out[-1]["valid"], out[-1]["why"] = server_check(base)
        return out

    def note_failures(self, table, system, runs):
        self.failures.extend(failures_of(table, system, runs))

    def versus(self, table, n, note=True):
        """The runs of the controlet (memory) and of memcached at 50 connections in `table`,
        their failures noted unless `note` is false (another table shows them)."""
        c = self.load(table, "ctl-memory", 50, n)
        m = self.load(table, "memcached", 50, n)
        if note:
            self.note_failures(table, "ctl-memory", c)
            self.note_failures(table, "memcached", m)
        return c, m

    def latency_table(self, table, systems, conns, n, with_p999=True, base_system=None):
        head = "| system | ops/s (median) | ops/s per round |"
        if base_system:
            head += f" vs {LABEL[base_system].split(',')[-1].strip()} |"
        head += " p50 µs | p99 µs |" + (" p99.9 µs |" if with_p999 else "") + " errors | server check |"
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        base = med(self.load(table, base_system, conns, n), "ops") if base_system else None
        for s in systems:
            runs = self.load(table, s, conns, n)
            self.note_failures(table, s, runs)
            row = f"| {LABEL[s]} | {n0(med(runs, 'ops'))} | {per_round(runs)} |"
            if base_system:
                row += f" {rx(ratio(med(runs, 'ops'), base))} |"
            row += f" {n0(med(runs, 'p50'))} | {n0(med(runs, 'p99'))} |"
            if with_p999:
                row += f" {n0(med(runs, 'p999'))} |"
            done = [r for r in runs if "fail" not in r]
            row += f" {sum(r.get('errors', 0) for r in done)} |" if done else " n/a |"
            row += f" {checked(runs)} |"
            lines.append(row)
        return "\n".join(lines)

    def cpu_table(self, table, systems, conns, n):
        """CPU µs per operation of each process, medians over the rounds."""
        lines = [("| system | server processes: CPU µs per op | loadgen: CPU µs per op "
                  "| all: CPU µs per op |"), "|---|---|---|---|"]
        for s in systems:
            runs = [r for r in ok(self.load(table, s, conns, n)) if r.get("cpu")]
            if not runs:
                lines.append(f"| {LABEL[s]} | n/a | n/a | n/a |")
                continue
            procs = runs[0]["cpu"]
            meds = [statistics.median(r["cpu"][i][1] for r in runs) for i in range(len(procs))]
            servers = ", ".join(f"{name} {m:.1f}" for (name, _), m in zip(procs[:-1], meds[:-1]))
            total = statistics.median(sum(u for _, u in r["cpu"]) for r in runs)
            lines.append(f"| {LABEL[s]} | {servers} | {meds[-1]:.1f} | {total:.1f} |")
        return "\n".join(lines)

    def commands(self, table, systems):
        blocks = []
        for s in systems:
            path = f"{self.res}/cmd__{table}__{s}.txt"
            if os.path.exists(path):
                blocks.append(f"# {LABEL[s]}\n" + read(path).strip())
        if not blocks:
            return ""
        return ("Commands of round 1 (servers in start order, then the client; every run gets fresh "
                "processes on fresh ports):\n\n```sh\n" + "\n\n".join(blocks) + "\n```\n")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return "unknown"


def main(argv):
    res, out_md, dat, png = argv[1:5]
    E = os.environ
    secs, rounds, keys = int(E["BENCH_SECS"]), int(E["BENCH_NROUNDS"]), int(E["BENCH_NKEYS"])
    sweep = [int(c) for c in E["BENCH_SWEEP_LIST"].split()]
    sweep_rounds = int(E["BENCH_NSWEEP_ROUNDS"])
    remote_ok = E["BENCH_REMOTE_OK"] == "1"
    results = Results(res)

    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 (Python < 3.11 too)
    took = (now.timestamp() - int(E["BENCH_START_EPOCH"])) / 60
    md = []
    w = md.append
    w("# Benchmarks\n")
    w(f"Generated by `{E['BENCH_CMDLINE']}` "
      f"(BENCH_SECONDS={secs}, BENCH_ROUNDS={rounds}, BENCH_KEYS={keys}); do not edit by hand, "
      f"rerun the script. The whole run, build included, took {took:.0f} minutes.\n")
    if E["BENCH_QUICK"] == "1":
        w("**This is a `--quick` smoke run: too short and too few rounds to quote.**\n")

    w("## Machine\n")
    w(f"- {E['BENCH_NPROC']} CPUs (nproc): {cpu_model()}, {mem_total()} of memory")
    w(f"- kernel {platform.release()} ({platform.machine()})")
    w(f"- date {now.strftime('%Y-%m-%d %H:%M UTC')}; built from tailorkv commit {E['BENCH_GIT']}")
    w(f"- {E['BENCH_MEMCACHED_VERSION']}; {E['BENCH_NUTCRACKER_VERSION']}; "
      f"memcaslap from {E['BENCH_MEMCASLAP_VERSION']}")
    w(f"- disk datalet directory on {E['BENCH_DISK_FS']}")
    w(f"- load average (1, 5, 15 min) before the runs: {E['BENCH_LOAD_BEFORE']}, after: "
      f"{E['BENCH_LOAD_AFTER']}")
    others = []
    for name in sorted(os.listdir(res)):
        if name.endswith(".other"):
            table, system, conns, rnd = name[:-len(".other")].split("__")
            others.append((float(read(f"{res}/{name}")), table, system, conns[1:], rnd[1:]))
    if others:
        vals = sorted(o[0] for o in others)
        w(f"- CPU used by processes other than the benchmark's during its {len(vals)} runs (a noise "
          f"gauge, as a share of all {E['BENCH_NPROC']} cores; from /proc/stat less the script's own "
          f"children): median {statistics.median(vals):.0f}%, max {vals[-1]:.0f}%; runs above 10% are "
          "listed at the end")
    w(f"- **client and servers share the same {E['BENCH_NPROC']} cores**: every number below is "
      "what is left to the server(s) after the load generator took its share, all over loopback "
      "TCP. On separate machines all of them would be higher, and the ratios may differ.\n")

    # Results first collected, so the summary can lead.
    t1 = {s: results.load("t1", s, 50, rounds) for s in ("ctl-memory", "memcached")}
    t2 = {s: results.load("t2", s, 50, rounds) for s in ("ctl-remote-memcached", "twemproxy")}
    t3 = {s: results.load("t3", s, 50, rounds) for s in ("ctl-memory", "memcached")}
    r1 = ratio(med(t1["ctl-memory"], "ops"), med(t1["memcached"], "ops"))
    r1p = ratio(med(t1["ctl-memory"], "p99"), med(t1["memcached"], "p99"))
    r2 = ratio(med(t2["ctl-remote-memcached"], "ops"), med(t2["twemproxy"], "ops"))
    r2p = ratio(med(t2["ctl-remote-memcached"], "p99"), med(t2["twemproxy"], "p99"))
    r3 = ratio(med(t3["ctl-memory"], "ops"), med(t3["memcached"], "ops"))

    checks = [server_check(f"{res}/{name[:-len('.check')]}")[0]
              for name in os.listdir(res) if name.endswith(".check")]

    w("## Summary\n")
    w("| comparison (medians of the same run) | ratio | goal | |")
    w("|---|---|---|---|")
    w(f"| 1. controlet (memory) / memcached, loadgen throughput | {rx(r1)} | >= 1.0x | {goal(r1, '>=', 1.0)} |")
    w(f"| 1. controlet (memory) / memcached, loadgen p99 latency | {rx(r1p)} | <= 1.0x | {goal(r1p, '<=', 1.0)} |")
    w(f"| 2. controlet over memcached / twemproxy over memcached, throughput | {rx(r2)} | >= 1.2x | {goal(r2, '>=', 1.2)} |")
    w(f"| 3. controlet (memory) / memcached, memcaslap throughput | {rx(r3)} | >= 1.0x | {goal(r3, '>=', 1.0)} |")
    w("")
    w(f"Server check: {sum(checks)} of {len(checks)} runs of tables 1 to 5 passed (their servers' "
      "own counters account for every request the client counted, and no error counter moved); "
      + ("the others are marked INVALID and left out of every median and ratio; the reasons are "
         "listed at the end." if sum(checks) < len(checks) else "none is left out.")
      + " Tables 6 and 7 are checked the same way, run by run.\n")

    w("## Reading these numbers\n")
    w(f"- **What is measured.** Closed-loop load over loopback TCP: each client connection sends one "
      f"request, waits for the reply, then sends the next (`loadgen --pipeline 1`). Unless a table "
      f"says otherwise: 50 connections, 90% gets and 10% sets, 100-byte values, {keys:,} keys "
      f"picked uniformly, every key set once before measuring (`--preload`), {secs} s measured per "
      f"run. Throughput is replies per second; latency is from sending a request to reading its "
      f"whole reply, over all requests, in microseconds. With a closed loop, throughput and latency "
      f"are two views of one thing (mean latency ≈ connections / throughput).")
    w("- **loadgen counts only verified replies.** Every value names the write that made it; the "
      "40-byte header of every hit is checked, 1% of hits are compared byte for byte, and a "
      "wrong value, a server error, a protocol error or a timeout is an error, not an op. The "
      "errors column counts them; a correct server shows 0.")
    w("- **Every run is checked against the server's own counters.** The servers' `stats` are read "
      "just before the client process starts and just after it exits (`scripts/bench_check.py`). "
      "loadgen reports every request it got a reply to over its whole run, preload included "
      "(`answered`), and waits for every reply, so the server's `cmd_get` and `cmd_set` must have "
      "risen by exactly those counts; no other command (`cmd_touch`, `cmd_flush`, incr, decr, "
      "delete) may have run, and no error counter (`store_too_large`, `store_no_memory`, "
      "`evictions`, `rejected_connections`, allocation failures) may have moved, on the server "
      "the client talks to or on the memcached or datalet behind a `memcached://` controlet. "
      "twemproxy has no such `stats`; it forwards each request as it came, so the memcached "
      "behind it is counted instead. A run that fails the check is marked INVALID, with its "
      "throughput in brackets, and left out of every median and ratio; the server check column "
      "counts the runs that passed, and the reasons are listed at the end.")
    w("- **What memcaslap (table 3) checks, and what it does not.** It is there as a second, "
      "independent client. It counts a transaction for every request it sends, whatever the "
      "reply: an `ERROR` or `CLIENT_ERROR` counts as much as a hit, and it verifies no value "
      "(its `--verify` is left at its default, none). Its figure is its own count of requests "
      "divided by the run time. Its keys are its own, each starting with eight `\\x10` bytes, "
      "which memcached stores and so does the controlet. So its runs are judged by the server "
      "check alone: the server's `cmd_get` and `cmd_set` must account for the gets and sets "
      "memcaslap says it sent, less at most one request per connection (50) that it sent and "
      "counted but the server never carried out before memcaslap closed the connection, and no "
      "error counter may move. What neither check sees is a request the server carried out and "
      "answered with an error of its own that no counter names (a controlet's `SERVER_ERROR` "
      "from a failed datalet); loadgen counts those as errors, memcaslap does not, and it "
      "runs here only against the memory datalet and memcached, which answer none.")
    w(f"- **Medians of {rounds} round{'s' if rounds > 1 else ''}.** Each configuration runs "
      f"{rounds} time{'s' if rounds > 1 else ''}; inside a round the "
      "systems being compared run one after the other (their order reversed every other round), "
      "so a burst of noise from the shared machine hits both; each column shows the median of "
      "the rounds (latency percentiles too are medians of the per-round percentiles), and the "
      "per-round throughputs show how noisy they were. Ratios divide medians of the same run.")
    w("- **Where the time goes.** Under tables 1 and 2, the CPU time each process used while "
      "measuring, per operation (`loadgen --cpu-of`, from /proc): the 2 cores hold about 2 s of "
      "CPU per second, so a system that costs fewer µs per op in all its processes, loadgen "
      "included, can serve more. A `perf` profile of the controlet under the load of table 1 "
      "(taken separately, not by this script) puts about 75-85% of its CPU time in the kernel "
      "(the TCP stack, scheduling, wakeups) and 15-25% in user space. Both servers are "
      "syscall-bound here: one small request per read and one small reply per write, on cores "
      "shared with the client, so differences between servers are mostly differences in how many "
      "syscalls and wakeups they make per request.\n")

    w("## 1. controlet (memory datalet) vs memcached, loadgen\n")
    w("`controlet --threads 2` against `memcached -t 2`, each fresh for every run; loadgen with 50 "
      "connections, 90% gets, 100-byte values, preloaded, uniform keys.\n")
    w(results.latency_table("t1", ["ctl-memory", "memcached"], 50, rounds))
    w(f"\nThroughput controlet / memcached: **{rx(r1)}** (goal >= 1.0x: {goal(r1, '>=', 1.0)}). "
      f"p99 controlet / memcached: **{rx(r1p)}** (goal: ours no worse, <= 1.0x: {goal(r1p, '<=', 1.0)}).\n")
    w("CPU per operation while measuring (medians of the rounds):\n")
    w(results.cpu_table("t1", ["ctl-memory", "memcached"], 50, rounds) + "\n")
    w(results.commands("t1", ["ctl-memory", "memcached"]))

    w("### 1b. The tail depends on how the client's threads share the cores\n")
    w(f"The load of table 1 again, with loadgen on 1 and on 3 worker threads (`--threads`) instead "
      f"of one per core ({E['BENCH_NPROC']}); medians of {rounds} round{'s' if rounds > 1 else ''}.\n")
    lines = [("| loadgen threads | controlet ops/s | memcached ops/s | throughput ratio "
              "| controlet p99 µs | memcached p99 µs | p99 ratio | server check |"),
             "|---|---|---|---|---|---|---|---|"]
    for label, table in ((f"{E['BENCH_NPROC']} (table 1)", "t1"), ("1", "t1lg1"), ("3", "t1lg3")):
        c, m = results.versus(table, rounds, note=table != "t1")
        lines.append(f"| {label} | {n0(med(c, 'ops'))} | {n0(med(m, 'ops'))} | "
                     f"{rx(ratio(med(c, 'ops'), med(m, 'ops')))} | {n0(med(c, 'p99'))} | "
                     f"{n0(med(m, 'p99'))} | {rx(ratio(med(c, 'p99'), med(m, 'p99')))} | "
                     f"{checked(c + m)} |")
    w("\n".join(lines) + "\n")
    w("Where the controlet's p99 sits near 4 ms, that is one scheduler tick of this kernel (250 Hz, "
      "no forced preemption). With two loadgen threads and two controlet threads on two cores, all "
      "four stay busy and rarely sleep, so the kernel switches between them about once a tick, and a "
      "request whose client or server thread is switched out waits about that long; memcached's "
      "threads sleep and wake thousands of times a second, which switches the client's threads much "
      "more often and shortens each wait. That is a property of client and server sharing two "
      "cores, not of the work per request (see the CPU per operation above), and the rows with "
      "other client thread counts show how much the tail ratio depends on it.\n")

    spread = int(E["BENCH_SPREAD"])
    w(f"### 1c. The spread over {spread} runs\n")
    w(f"The load of table 1, {spread} runs of each system, each on a fresh server, alternating; every "
      "run's throughput, lowest first. A gap of more than 10% between neighbours would mean two "
      "modes.\n")
    lines = ["| system | runs (ops/s, lowest first) | median | min-max | (max-min)/median | two modes? | server check |",
             "|---|---|---|---|---|---|---|"]
    spread_meds = {}
    for s in ["ctl-memory", "memcached"]:
        runs = results.load("t1s", s, 50, spread)
        results.note_failures("table 1c", s, runs)
        vals = sorted(r["ops"] for r in ok(runs))
        if not vals:
            lines.append(f"| {LABEL[s]} | n/a | n/a | n/a | n/a | n/a | {checked(runs)} |")
            continue
        m = statistics.median(vals)
        spread_meds[s] = m
        gaps = [b / a - 1 for a, b in itertools.pairwise(vals) if a]
        modes = "yes" if any(g > 0.10 for g in gaps) else "no"
        lines.append(f"| {LABEL[s]} | {', '.join(f'{v:,.0f}' for v in vals)} | {m:,.0f} | "
                     f"{vals[0]:,.0f}-{vals[-1]:,.0f} | {(vals[-1] - vals[0]) / m:.1%} | {modes} | {checked(runs)} |")
    w("\n".join(lines) + "\n")
    if len(spread_meds) == 2:
        w(f"Median controlet / memcached over the {spread} runs: "
          f"**{rx(ratio(spread_meds['ctl-memory'], spread_meds['memcached']))}**.\n")
    if int(E["BENCH_NPROC"]) >= 2:
        w("### 1d. Where the kernel puts the threads decides the throughput\n")
        w("The load of table 1 with the threads pinned (`taskset`): the servers on CPU 0 and loadgen "
          "on CPU 1, or everything on CPU 1 with CPU 0 idle; medians of "
          f"{rounds} round{'s' if rounds > 1 else ''}. Unpinned, the kernel may settle the four busy "
          "threads (two server, two client) into either kind of placement, or between; runs of "
          "one command that land in two modes, as seen on another machine, would follow from "
          "that.\n")
        lines = ["| placement | controlet ops/s | memcached ops/s | ratio | controlet p99 µs | memcached p99 µs | server check |",
                 "|---|---|---|---|---|---|---|"]
        for label, table in (("unpinned (table 1c)", "t1s"), ("servers CPU 0, loadgen CPU 1", "t1psplit"),
                             ("all on CPU 1", "t1pshared")):
            n = spread if table == "t1s" else rounds
            c, m = results.versus(table, n, note=table != "t1s")
            lines.append(f"| {label} | {n0(med(c, 'ops'))} | {n0(med(m, 'ops'))} | "
                         f"{rx(ratio(med(c, 'ops'), med(m, 'ops')))} | {n0(med(c, 'p99'))} | "
                         f"{n0(med(m, 'p99'))} | {checked(c + m)} |")
        w("\n".join(lines) + "\n")

    w("## 2. controlet over a memcached datalet vs twemproxy, both in front of memcached\n")
    if remote_ok:
        w("A controlet with `--datalet memcached://` and twemproxy (nutcracker) are each put in front "
          "of a fresh `memcached -t 2`; the same load as table 1 goes to the front.\n")
        w(results.latency_table("t2", ["ctl-remote-memcached", "twemproxy"], 50, rounds))
        w(f"\nThroughput controlet / twemproxy: **{rx(r2)}** (goal >= 1.2x: {goal(r2, '>=', 1.2)}). "
          f"p99 controlet / twemproxy: {rx(r2p)}.\n")
        w("CPU per operation while measuring (medians of the rounds). The controlet sends the gets "
          "queued on one memcached connection as one `gets` of many keys, which memcached answers "
          "with one write; twemproxy forwards each client's `get` as it came, and memcached answers "
          "each with a write of its own:\n")
        w(results.cpu_table("t2", ["ctl-remote-memcached", "twemproxy"], 50, rounds) + "\n")
        w(results.commands("t2", ["ctl-remote-memcached", "twemproxy"]))
        yml = f"{res}/nutcracker.yml"
        if os.path.exists(yml):
            w("twemproxy's configuration (`-c`), with that run's ports:\n\n```yaml\n"
              + read(yml).strip() + "\n```\n")
    else:
        w("Not run: the controlet of this build does not accept `--datalet memcached://`.\n")

    w("## 3. The same comparison through libmemcached's memcaslap\n")
    w(f"`memcaslap -T 2 -c 50 -X 100 -t {secs}s`: 2 threads, 50 concurrent connections, 100-byte "
      "values, its default 9:1 get:set mix over its own keys; the figure is its final `TPS:`. "
      "memcaslap verifies no reply; a run counts only if the server's `cmd_get` and `cmd_set` "
      "account for the requests memcaslap counted (see \"Reading these numbers\").\n")
    lines = ["| system | TPS (median) | TPS per round | server check |", "|---|---|---|---|"]
    for s in ("ctl-memory", "memcached"):
        results.note_failures("t3", s, t3[s])
        lines.append(f"| {LABEL[s]} | {n0(med(t3[s], 'ops'))} | {per_round(t3[s])} | {checked(t3[s])} |")
    w("\n".join(lines))
    w(f"\nThroughput controlet / memcached: **{rx(r3)}** (goal >= 1.0x: {goal(r3, '>=', 1.0)}).\n")
    w(results.commands("t3", ["ctl-memory", "memcached"]))

    w("## 4. Each datalet backend through a controlet\n")
    backends = ["ctl-memory", "ctl-disk", "ctl-disk-b1"]
    if remote_ok:
        backends += ["ctl-remote-memcached", "ctl-remote-datalet"]
    w("The same controlet (`--threads 2`) on each datalet, under the load of table 1. The disk "
      "datalet acknowledges a write once it is on disk: by default concurrent writes share one "
      "fsync (group commit, up to 1024 a batch); `--disk-max-batch 1` gives every write its own. "
      "Each disk run gets a fresh directory under a new `mktemp -d`, deleted afterwards; it is "
      "filled first by a group-commit controlet (`loadgen --preload --requests 1`), which is then "
      "stopped and the measured controlet started on the same directory (preloading at one fsync "
      "per write would take minutes per run), so its gets find values of that earlier loadgen run "
      "(loadgen's `foreign` hits, which are correct values).\n")
    if not remote_ok:
        w("The memcached:// rows are missing: the controlet of this build does not accept "
          "`--datalet memcached://`.\n")
    w("Read-heavy: 50 connections, 90% gets.\n")
    w(results.latency_table("t4", backends, 50, rounds, with_p999=False, base_system="ctl-memory"))
    w("\nWrite-heavy, where group commit matters: 32 connections, 50% gets, 50% sets.\n")
    w(results.latency_table("t4w", ["ctl-memory", "ctl-disk", "ctl-disk-b1"], 32, rounds,
                    with_p999=False, base_system="ctl-memory"))
    w("")
    w(results.commands("t4", backends).replace("Commands of round 1", "Commands of round 1, read-heavy"))
    w(results.commands("t4w", ["ctl-disk-b1"]).replace("Commands of round 1",
                                               "Commands of round 1, write-heavy, disk with one fsync per write"))

    w("## 5. Throughput vs number of connections\n")
    w(f"controlet (memory datalet, `--threads 2`) and `memcached -t 2` under the load of table 1 "
      f"with 1 to {sweep[-1]} connections, "
      + ("one round per point" if sweep_rounds == 1 else f"medians of {sweep_rounds} rounds per point")
      + f", {secs} s each.\n")
    w(f"![throughput vs connections]({os.path.relpath(png, os.path.dirname(os.path.abspath(out_md)))})\n")
    lines = [("| connections | controlet ops/s | memcached ops/s | ratio | controlet p99 µs | memcached p99 µs "
              "| server check |"), "|---|---|---|---|---|---|---|"]
    with open(dat, "w") as d:
        d.write("# connections controlet_ops memcached_ops\n")
        for c in sweep:
            a, b = results.load("t5", "ctl-memory", c, sweep_rounds), results.load("t5", "memcached", c, sweep_rounds)
            results.note_failures(f"table 5 ({c} connections)", "ctl-memory", a)
            results.note_failures(f"table 5 ({c} connections)", "memcached", b)
            ao, bo = med(a, "ops"), med(b, "ops")
            lines.append(f"| {c} | {n0(ao)} | {n0(bo)} | {rx(ratio(ao, bo))} | "
                         f"{n0(med(a, 'p99'))} | {n0(med(b, 'p99'))} | {checked(a + b)} |")
            d.write(f"{c} {'-' if ao is None else f'{ao:.0f}'} {'-' if bo is None else f'{bo:.0f}'}\n")
    w("\n".join(lines))
    w("")
    w(results.commands("t5", ["ctl-memory", "memcached"]).replace(
        "Commands of round 1", f"Commands at {sweep[0]} connection(s), round 1"))

    w("## Failures, errors and noise\n")
    w("\n".join(f"- {f}" for f in results.failures) if results.failures else "No failures: every run finished, "
      "loadgen counted no error, and every run passed the server check.")
    noisy = [o for o in others if o[0] > 10]
    if noisy:
        w(f"\nRuns during which other processes used more than 10% of the machine's CPU "
          f"({len(noisy)} of {len(others)}); treat their numbers with care:\n")
        noisy.sort(key=lambda o: (o[1], int(o[3]), o[2], int(o[4])))
        for pct, table, system, conns, rnd in noisy:
            w(f"- {TABLE.get(table, 'table 5')}, {LABEL[system]}, {conns} connection"
              f"{'' if conns == '1' else 's'}, round {rnd}: {pct:.0f}%")
    elif others:
        w("\nNo run had other processes using more than 10% of the machine's CPU.")
    w("")
    with open(out_md, "w") as f:
        f.write("\n".join(md).rstrip() + "\n")


if __name__ == "__main__":
    main(sys.argv)
