#!/usr/bin/env python3
"""Runs the workspace's test binaries in two lanes, as `cargo test --workspace` would run them
one after another.

Usage: python3 scripts/run_tests.py ARTIFACTS.json
where ARTIFACTS.json is the output of
`cargo test --workspace --no-run --message-format=json-render-diagnostics`.

The tests that start clusters of processes (fault injection, membership, ...) take a
machine-wide lock (tests/src/procs.rs) and time what they see, so they run one binary after
another in the *serial lane*, at normal priority, with their output streamed. The binaries
that need neither the lock nor this machine's quiet (unit tests, simulations, the client
tests) run in the *side lane* beside it, at a lower CPU priority so
the serial lane's timings keep the cores they had; their output is printed after. A binary
named in neither list runs in the serial lane, the safe default for a new test file.

Every binary runs, whatever fails; the exit status is 1 if any failed. Each runs in its
package's directory with CARGO_MANIFEST_DIR and CARGO_PKG_NAME set, as cargo runs it.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

# package:kind:name of the binaries that run beside the serial lane. None of them starts a
# ProcCluster or a Net (the machine-wide lock would only make them wait) or times a cluster.
# Tests that compare what time shows (the seconds an item has left, against a single node's
# or memcached's answer), such as `meta` and `differential`, stay in the serial lane: under
# the side lane's lower priority a request can wait a second and more (seen in CI: `meta`
# read t98 where a single node said t100).
SIDE_LANE = {
    "tailorkv-common:lib:tailorkv_common",
    "tailorkv-datalet:lib:tailorkv_datalet",
    "tailorkv-controlet:lib:tailorkv_controlet",
    "tailorkv-controlet:bin:cluster",
    "tailorkv-controlet:bin:controlet",
    "tailorkv-controlet:bin:datalet",
    "tailorkv-controlet:bin:tailorkv-admin",
    "tailorkv-tests:lib:tailorkv_tests",
    "tailorkv-examples:bin:loadgen",
    "tailorkv-examples:bin:staleness",
    "tailorkv-examples:test:loadgen",
    "tailorkv-tests:test:binary",
    "tailorkv-tests:test:binary_clients",
    "tailorkv-tests:test:binary_protocol",
    "tailorkv-tests:test:disk_crash",
    "tailorkv-tests:test:eventual_repair",
    "tailorkv-tests:test:fuzz_corpus",
    "tailorkv-tests:test:memcache_async",
    "tailorkv-tests:test:meta_client",
    "tailorkv-tests:test:pymemcache",
    "tailorkv-tests:test:remote_datalet",
    "tailorkv-tests:test:server",
    "tailorkv-tests:test:simulation",
}

# The side lane's niceness: the kernel then gives the serial lane's processes the cores
# whenever both want them.
SIDE_NICE = 10


def binaries(path):
    """(key, src_path, executable, package_dir, package_name) of every test binary built."""
    found = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
                continue
            if not msg["profile"]["test"]:
                continue
            target = msg["target"]
            package = msg["package_id"].rsplit("#", 1)[-1].split("@")[0]
            # Older package ids: "name version (source)".
            if " " in msg["package_id"]:
                package = msg["package_id"].split(" ")[0]
            key = f"{package}:{target['kind'][0]}:{target['name']}"
            found.append(
                (key, target["src_path"], msg["executable"],
                 os.path.dirname(msg["manifest_path"]), package)
            )
    # cargo's own order: by package, then libraries, binaries, tests, by name.
    order = {"lib": 0, "bin": 1, "test": 2}
    found.sort(key=lambda b: (b[4], order.get(b[0].split(":")[1], 3), b[0]))
    return found


def run(binary, out, nice):
    """Runs one test binary, its output to `out`; returns (ok, seconds)."""
    key, src, exe, cwd, package = binary
    env = dict(os.environ, CARGO_MANIFEST_DIR=cwd, CARGO_PKG_NAME=package)
    out.write(f"     Running {os.path.relpath(src, cwd)} ({exe})\n")
    out.flush()
    start = time.monotonic()
    rc = subprocess.call(
        [exe], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )
    return rc == 0, time.monotonic() - start


def lane(name, members, out, nice, results):
    start = time.monotonic()
    for binary in members:
        ok, secs = run(binary, out, nice)
        results.append((name, binary[0], ok, secs))
    results.append((name, "(lane)", True, time.monotonic() - start))


def main(argv=None, serial_out=None):
    """Runs the binaries of argv[1]'s artifacts; the serial lane's output goes to
    `serial_out` (a real file; stdout by default), the summary to stdout."""
    argv = sys.argv if argv is None else argv
    serial_out = serial_out or sys.stdout
    found = binaries(argv[1])
    keys = {b[0] for b in found}
    unknown = sorted(SIDE_LANE - keys)
    if unknown:
        # A renamed or removed binary: say so rather than silently run less beside.
        print(f"run_tests.py: side-lane binaries not built: {', '.join(unknown)}", file=sys.stderr)
        return 2
    serial = [b for b in found if b[0] not in SIDE_LANE]
    side = [b for b in found if b[0] in SIDE_LANE]
    results = []
    with tempfile.TemporaryFile("w+") as side_out:
        thread = threading.Thread(
            target=lane, args=("side", side, side_out, SIDE_NICE, results))
        thread.start()
        try:
            lane("serial", serial, serial_out, 0, results)
        finally:
            thread.join()
        side_out.seek(0)
        print(f"== the side lane's output ({len(side)} binaries, run beside the serial lane)")
        sys.stdout.write(side_out.read())
    print("== test binaries: lane, seconds, result")
    failed = []
    for name, key, ok, secs in results:
        print(f"{name:6} {secs:7.1f} s  {'ok' if ok else 'FAILED'}  {key}")
        if not ok:
            failed.append(key)
    if failed:
        print(f"run_tests.py: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
