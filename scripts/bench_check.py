#!/usr/bin/env python3
"""Checks a benchmark run against the servers' own counters: a run counts only if the servers
executed the commands the client counted and no error counter moved.

Usage (the benchmark scripts call it; it can be run by hand too):

  bench_check.py snapshot OUT ROLE=HOST:PORT...
      Writes every numeric counter of each server's `stats` to OUT (JSON). ROLE is `count`
      for a server the client talks to (its executed commands must account for the client's)
      or `watch` for a server behind one (a memcached:// datalet's backend: only its error
      counters are checked). Several `count` servers (a cluster) are summed.
      With $BENCH_CHECK_TLS_CA set to a CA file, every server is asked over TLS (a controlet
      with `--tls-cert`, a memcached with `-Z`).
  bench_check.py verify BEFORE AFTER KIND CLIENT OUT [SLACK]
      Compares the counters' change from BEFORE to AFTER with what the client counted and
      writes the verdict to OUT (JSON); prints it in one line. KIND is `loadgen` (CLIENT is its
      --json report) or `memcaslap` (CLIENT is its output; SLACK is its concurrency, see below).

What is compared, with S the summed change of the `count` servers' counters between the two
snapshots, which bracket the whole client process (preload and warmup included):

- `loadgen` counts every request it got a reply to, whatever the phase (`answered`), and
  waits for every reply before it exits. So S(cmd_get) must equal its answered gets and
  S(cmd_set) its answered sets, exactly, and its own error count must be 0.
- `memcaslap` prints the gets and sets it issued (`cmd_get:`, `cmd_set:`), counted when sent;
  it stops with up to one request in flight on each of its connections, which the server may
  never execute. So its counts may exceed S(cmd_get) and S(cmd_set) by SLACK (its
  concurrency) in all, and never fall short. It checks no reply: an error reply counts as a
  transaction in its figures, so this check is the only one its runs get.
- Either way no other command may have run (S of cmd_touch, cmd_flush, incr/decr and delete
  hits and misses is 0: neither client sends them), and no error counter of any server,
  `count` or `watch`, may have moved (ERROR_COUNTERS: items refused as too large or for
  memory, evictions, connections refused, allocation failures).
- With $BENCH_CHECK_EVICTING set (a benchmark of a full cache), evictions are what is
  measured, not an error: they must instead have risen on every `count` server, or the run
  did not measure eviction.

Both memcached 1.6 and the controlet count `cmd_get` per key looked up and `cmd_set` per
storage command (cas included) carried out, and neither counts a request refused as
malformed (`CLIENT_ERROR`, `ERROR`): a refused request shows up as a shortfall. A controlet in
a cluster counts only what its own clients asked, not the writes it applies for its peers,
so the nodes' counts add up to the client's. What this cannot see is a request the server
executed and answered with an error of its own that no counter names (a controlet's
`SERVER_ERROR` from a failed datalet or a lost quorum); loadgen verifies every reply and
counts those as errors, memcaslap does not.
"""

import json
import os
import socket
import ssl
import sys

# Counters whose change means the server did not do what the client asked, or could not.
ERROR_COUNTERS = (
    "store_too_large",
    "store_no_memory",
    "evictions",
    "rejected_connections",
    "listen_disabled_num",
    "auth_errors",
    "malloc_fails",
    "read_buf_oom",
    "response_obj_oom",
)

# Commands neither benchmark client sends.
OTHER_COMMANDS = (
    "cmd_touch",
    "cmd_flush",
    "incr_hits",
    "incr_misses",
    "decr_hits",
    "decr_misses",
    "delete_hits",
    "delete_misses",
)


def connect(host, port, timeout):
    """A connection to host:port; over TLS, trusting the CA in $BENCH_CHECK_TLS_CA, if set
    (a controlet serving `--tls-cert`)."""
    s = socket.create_connection((host, int(port)), timeout=timeout)
    ca = os.environ.get("BENCH_CHECK_TLS_CA")
    if not ca:
        return s
    return ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname=host)


def stats(host, port, timeout=5.0):
    """The numeric counters of `stats` on host:port."""
    with connect(host, port, timeout) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError(f"{host}:{port} closed the connection during stats")
            buf += chunk
    out = {}
    for line in buf.decode("ascii", "replace").split("\r\n"):
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == "STAT" and parts[2].isdigit():
            out[parts[1]] = int(parts[2])
    return out


def snapshot(specs):
    """`ROLE=HOST:PORT` each: a list of {role, addr, stats}."""
    snap = []
    for spec in specs:
        role, _, addr = spec.partition("=")
        if role not in ("count", "watch") or ":" not in addr:
            raise SystemExit(f"bench_check: bad server {spec!r} (count=HOST:PORT or watch=HOST:PORT)")
        host, port = addr.rsplit(":", 1)
        snap.append({"role": role, "addr": addr, "stats": stats(host, port)})
    return snap


def deltas(before, after):
    """Per server: the change of every counter present in both snapshots."""
    if [s["addr"] for s in before] != [s["addr"] for s in after]:
        raise ValueError("the snapshots are of different servers")
    out = []
    for b, a in zip(before, after):
        if a["stats"].get("pid", b["stats"].get("pid")) != b["stats"].get("pid"):
            raise ValueError(f"{a['addr']} restarted between the snapshots")
        d = {k: a["stats"][k] - v for k, v in b["stats"].items() if k in a["stats"]}
        out.append({"role": b["role"], "addr": b["addr"], "delta": d})
    return out


def client_counts(kind, path):
    """What the client says it did: {gets, sets, errors}."""
    if kind == "loadgen":
        with open(path) as f:
            report = json.load(f)
        answered = report["answered"]
        return {"gets": answered["gets"], "sets": answered["sets"],
                "errors": report["errors"]["total"], "samples": report["error_samples"][:2]}
    if kind == "memcaslap":
        counts = {}
        with open(path) as f:
            for line in f:
                name, _, value = line.strip().partition(": ")
                if name in ("cmd_get", "cmd_set") and value.isdigit():
                    counts[name] = int(value)
        if len(counts) != 2:
            raise ValueError("memcaslap printed no cmd_get/cmd_set totals")
        return {"gets": counts["cmd_get"], "sets": counts["cmd_set"], "errors": None}
    raise ValueError(f"unknown client kind {kind!r}")


def judge(kind, client, servers, slack=0):
    """The verdict: {valid, why: [reasons it is not], server: summed executed commands}."""
    why = []
    counted = [s["delta"] for s in servers if s["role"] == "count"]
    total = lambda name: sum(d.get(name, 0) for d in counted)
    executed = {"gets": total("cmd_get"), "sets": total("cmd_set"),
                "other": sum(total(n) for n in OTHER_COMMANDS)}
    if not counted:
        why.append("no server to count on")
    if kind == "loadgen":
        if client["errors"]:
            example = f" (e.g. {'; '.join(client['samples'])})" if client.get("samples") else ""
            why.append(f"loadgen counted {client['errors']} errors{example}")
        for op in ("gets", "sets"):
            if executed[op] != client[op]:
                why.append(f"the server executed {executed[op]} {op}, loadgen had "
                           f"{client[op]} answered")
    else:
        short = {op: client[op] - executed[op] for op in ("gets", "sets")}
        for op, n in short.items():
            if n < 0:
                why.append(f"the server executed {executed[op]} {op}, more than the "
                           f"{client[op]} memcaslap sent")
        if sum(short.values()) > slack:
            why.append(f"memcaslap sent {client['gets']} gets and {client['sets']} sets; the "
                       f"server executed {executed['gets']} and {executed['sets']} "
                       f"({sum(short.values())} fewer, more than the {slack} that may be in "
                       "flight at the end)")
    if executed["other"]:
        why.append(f"the server executed {executed['other']} other commands")
    evicting = bool(os.environ.get("BENCH_CHECK_EVICTING"))
    for s in servers:
        for name in ERROR_COUNTERS:
            if evicting and name == "evictions":
                continue
            if s["delta"].get(name, 0):
                why.append(f"{name} rose by {s['delta'][name]} on {s['addr']}")
        if evicting and s.get("role") == "count" and not s["delta"].get("evictions", 0):
            why.append(f"nothing was evicted on {s['addr']}: the run did not measure eviction")
    return {"valid": not why, "why": why, "client": client, "server": executed}


def verify(before_path, after_path, kind, client_path, out_path, slack=0):
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    try:
        verdict = judge(kind, client_counts(kind, client_path), deltas(before, after), slack)
    except (OSError, ValueError, KeyError) as e:
        verdict = {"valid": False, "why": [f"cannot check: {e}"]}
    with open(out_path, "w") as f:
        json.dump(verdict, f)
    return verdict


def summary(verdict):
    if verdict["valid"]:
        c, s = verdict["client"], verdict["server"]
        return f"valid (server executed {s['gets']} gets, {s['sets']} sets; client {c['gets']}, {c['sets']})"
    return "INVALID: " + "; ".join(verdict["why"])


def main(argv):
    if len(argv) >= 3 and argv[1] == "snapshot":
        try:
            snap = snapshot(argv[3:])
        except OSError as e:
            raise SystemExit(f"bench_check: stats failed: {e}")
        with open(argv[2], "w") as f:
            json.dump(snap, f)
        return
    if len(argv) in (7, 8) and argv[1] == "verify":
        slack = int(argv[7]) if len(argv) == 8 else 0
        print(summary(verify(argv[2], argv[3], argv[4], argv[5], argv[6], slack)))
        return
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
