#!/usr/bin/env python3
"""Exercises pylibmc (libmemcached) in binary-protocol mode against a memcached-compatible server.

Usage:
    pylibmc_client.py HOST:PORT [--expect-version VERSION] [--sasl HOST:PORT USER PASSWORD]

Every section runs against HOST:PORT with `binary=True`: get and set of every value kind,
multi-key commands, add/replace/append/prepend, gets/cas, incr/decr, touch, large values,
keys with spaces and control bytes, flush_all, libmemcached's quiet (noreply)
mode, a pool of clients on threads. With --sasl, a client with `username=`/`password=`
authenticates (SASL PLAIN) against that server, and bad credentials are refused. The checks
hold for memcached 1.6 itself too (its SASL with a Cyrus sasldb): run this against a real
memcached to see that they test memcached's behaviour, not ours.

Exits 0 and prints a one-line summary when every check passes; on the first failure prints
which section failed and why, and exits 1.
"""

import glob
import os
import socket
import struct
import sys
import threading
import time
import traceback

# pylibmc's wheel bundles a Cyrus SASL library that looks for its mechanism plugins where
# CentOS keeps them (/usr/lib64/sasl2); point it at this system's (libsasl2-modules), before
# pylibmc initialises SASL on import.
for plugin_dir in sorted(glob.glob("/usr/lib/*/sasl2")) + ["/usr/lib64/sasl2", "/usr/lib/sasl2"]:
    if glob.glob(os.path.join(plugin_dir, "libplain.so*")):
        os.environ.setdefault("SASL_PATH", plugin_dir)
        break

try:
    import pylibmc
except ImportError as e:
    sys.stderr.write(
        f"cannot import pylibmc ({e}): run `bash scripts/test`, which pip-installs it\n"
    )
    sys.exit(2)

MIB = 1024 * 1024
U64_MAX = 2**64 - 1

CHECKS = 0
CHECKS_LOCK = threading.Lock()


class CheckFailed(Exception):
    pass


def short(value, limit=80):
    text = repr(value)
    if len(text) > limit:
        length = len(value) if hasattr(value, "__len__") else "?"
        text = f"{text[:limit]}... ({length} long)"
    return text


def expect(condition, message):
    global CHECKS
    with CHECKS_LOCK:
        CHECKS += 1
    if not condition:
        raise CheckFailed(message)


def expect_eq(got, want, what):
    expect(got == want, f"{what}: expected {short(want)}, got {short(got)}")


def expect_raises(exc_type, fn, what, contains=None):
    """Calls fn; it must raise exc_type (whose text contains `contains`, if given)."""
    try:
        result = fn()
    except exc_type as e:
        if contains is not None:
            expect(contains in str(e), f"{what}: {exc_type.__name__} without {contains!r}: {e}")
        else:
            expect(True, what)
        return e
    raise CheckFailed(f"{what}: expected {exc_type.__name__}, got {short(result)}")


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"bad address {text!r}: expected HOST:PORT")
    return text


def client(addr, **kwargs):
    """A binary-protocol client of one server, CAS uniques on."""
    behaviors = {"cas": True, "tcp_nodelay": True, "connect_timeout": 5000,
                 "receive_timeout": 10_000_000, "send_timeout": 10_000_000}
    behaviors.update(kwargs.pop("behaviors", {}))
    return pylibmc.Client([addr], binary=True, behaviors=behaviors, **kwargs)


def raw_getk(addr, key):
    """The key and value a binary GETK of `key` returns, on a connection of its own (None on a
    miss): shows the exact key bytes the server stored."""
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(struct.pack(">BBHBBHIIQ", 0x80, 0x0C, len(key), 0, 0, 0, len(key), 7, 0) + key)
        reply = b""
        while len(reply) < 24 or len(reply) < 24 + struct.unpack(">I", reply[8:12])[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise CheckFailed(f"GETK {key!r}: the server closed the connection")
            reply += chunk
    _, opcode, keylen, extlen, _, status, bodylen, opaque, _ = struct.unpack(
        ">BBHBBHIIQ", reply[:24])
    expect_eq((opcode, opaque), (0x0C, 7), f"GETK {key!r}: opcode and opaque")
    if status == 1:
        return None
    expect_eq(status, 0, f"GETK {key!r}: status")
    body = reply[24:24 + bodylen]
    return body[extlen:extlen + keylen], body[extlen + keylen:]


class Ctx:
    def __init__(self, addr, expect_version, sasl):
        self.addr = addr
        self.expect_version = expect_version
        self.sasl = sasl
        self.c = client(addr)


# ---------------------------------------------------------------------------------------------
# Sections. Each starts from an empty cache.


def basics(ctx):
    c = ctx.c
    stats = c.get_stats()
    expect_eq(len(stats), 1, "get_stats() answers for one server")
    version = stats[0][1].get("version")
    if isinstance(version, bytes):
        version = version.decode()
    expect(version is not None and version.startswith("1.6."), f"version {version!r}")
    if ctx.expect_version is not None:
        expect_eq(version, ctx.expect_version, "the server's version")
    expect_eq(c.get("missing"), None, "get of a missing key")
    expect_eq(c.get("missing", "dflt"), "dflt", "get of a missing key with a default")
    for key, value in [
        ("str", "hello"),
        ("bytes", b"\x00\xff\r\n binary"),
        ("int", 42),
        ("negative", -7),
        ("long", 2**70),
        ("float", 1.5),
        ("bool", True),
        ("empty", ""),
        ("empty_bytes", b""),
        ("dict", {"a": [1, 2, (3, "x")]}),
    ]:
        expect(c.set(key, value), f"set {key}")
        expect_eq(c.get(key), value, f"get {key}")
    expect(key in c and "missing" not in c, "__contains__")
    c["item"] = "via []"
    expect_eq(c["item"], "via []", "__getitem__")
    del c["item"]
    expect_eq(c.get("item"), None, "__delitem__")
    # Overwrite changes the value and type.
    c.set("k", "one")
    c.set("k", 2)
    expect_eq(c.get("k"), 2, "set overwrites")
    # An absolute time in the past: gone at once.
    expect(c.set("past", "x", time=1_000_000_000), "set with a past absolute time")
    expect_eq(c.get("past"), None, "an item set with a past absolute time")
    expect(c.set("later", "x", time=3600), "set with a relative time")
    expect_eq(c.get("later"), "x", "an item set to expire in an hour")


def multi(ctx):
    c = ctx.c
    items = {f"m{i}": f"value{i}" for i in range(50)}
    expect_eq(c.set_multi(items), [], "set_multi returns no failed keys")
    keys = list(items) + ["absent1", "absent2"]
    expect_eq(c.get_multi(keys), items, "get_multi of 50 hits and 2 misses")
    expect_eq(c.get_multi([]), {}, "get_multi of nothing")
    expect_eq(c.set_multi({"a": 1, "b": b"2"}, key_prefix="p:"), [], "set_multi with a prefix")
    expect_eq(c.get_multi(["a", "b", "c"], key_prefix="p:"), {"a": 1, "b": b"2"},
              "get_multi with a prefix")
    expect_eq(c.get("p:a"), 1, "a prefixed key read plainly")
    expect(c.delete_multi(["m0", "m1"]), "delete_multi of present keys")
    expect(not c.delete_multi(["m2", "absent1"]), "delete_multi with a missing key is False")
    expect_eq(c.get_multi(["m0", "m1", "m2", "m3"]), {"m3": "value3"}, "after delete_multi")
    expect(c.add_multi({"m3": "x", "new": "y"}) == ["m3"], "add_multi fails the present key")
    expect_eq(c.get_multi(["m3", "new"]), {"m3": "value3", "new": "y"}, "after add_multi")


def store_modes(ctx):
    c = ctx.c
    expect(c.add("a", "first"), "add of a missing key")
    expect(not c.add("a", "second"), "add of a present key")
    expect_eq(c.get("a"), "first", "add kept the first value")
    expect(c.replace("a", "replaced"), "replace of a present key")
    expect_eq(c.get("a"), "replaced", "after replace")
    expect_raises(pylibmc.NotFound, lambda: c.replace("missing", "x"), "replace of a missing key")
    expect(c.append("a", "-end"), "append")
    expect(c.prepend("a", "start-"), "prepend")
    expect_eq(c.get("a"), "start-replaced-end", "after append and prepend")
    expect(not c.append("missing", "x"), "append to a missing key")
    expect(not c.prepend("missing", "x"), "prepend to a missing key")
    expect_eq(c.get("missing"), None, "append and prepend created nothing")
    expect(c.delete("a"), "delete of a present key")
    expect(not c.delete("a"), "delete of a missing key")
    expect_eq(c.get("a"), None, "after delete")


def cas(ctx):
    c = ctx.c
    c.set("k", "v1")
    value, unique = c.gets("k")
    expect_eq(value, "v1", "gets value")
    expect(isinstance(unique, int) and unique > 0, f"gets unique {unique!r}")
    expect(c.cas("k", "v2", unique), "cas with the current unique")
    expect_eq(c.get("k"), "v2", "after cas")
    expect(not c.cas("k", "v3", unique), "cas with a stale unique")
    expect_eq(c.get("k"), "v2", "a stale cas changed nothing")
    _, newer = c.gets("k")
    expect(newer != unique, "cas gave a new unique")
    expect_raises(pylibmc.NotFound, lambda: c.cas("missing", "x", unique), "cas of a missing key")
    expect_eq(c.gets("missing"), (None, None), "gets of a missing key")
    c.set("k", "v4")
    _, after_set = c.gets("k")
    expect(after_set != newer, "set gave a new unique")
    toucher(ctx).touch("k", 100)
    expect_eq(c.gets("k")[1], after_set, "touch kept the unique")


def arith(ctx):
    c = ctx.c
    c.set("n", 10)
    expect_eq(c.incr("n"), 11, "incr by 1")
    expect_eq(c.incr("n", 30), 41, "incr by 30")
    expect_eq(c.decr("n", 1), 40, "decr by 1")
    expect_eq(c.get("n"), 40, "the number after incr and decr")
    expect_eq(c.decr("n", 100), 0, "decr stops at 0")
    c.set("big", str(U64_MAX))
    expect_eq(c.incr("big", 2), 1, "incr wraps at 2^64")
    expect_raises(pylibmc.NotFound, lambda: c.incr("missing"), "incr of a missing key")
    expect_raises(pylibmc.NotFound, lambda: c.decr("missing"), "decr of a missing key")
    expect_eq(c.get("missing"), None, "incr and decr created nothing")
    c.set_multi({"c1": 1, "c2": 2})
    expect_eq(c.incr_multi(["c1", "c2"], delta=5), None, "incr_multi")
    expect_eq(c.get_multi(["c1", "c2"]), {"c1": 6, "c2": 7}, "after incr_multi")
    # libmemcached takes a non-numeric reply (DELTA_BADVAL) as a failed read and marks the
    # server down for a while: a client of its own.
    bad = client(ctx.addr)
    bad.set("text", "abc")
    expect_raises(pylibmc.Error, lambda: bad.incr("text"), "incr of a non-numeric value")
    bad.disconnect_all()


def toucher(ctx):
    """A client for touch. libmemcached 1.0.16 answers a touch that hits only after its poll
    timeout (5 s by default; memcached's reply, flags in 4 bytes of extras, is complete), so
    this client waits 300 ms."""
    return client(ctx.addr, behaviors={"_poll_timeout": 300})


def touch(ctx):
    c = toucher(ctx)
    c.set("t", "x")
    expect(c.touch("t", 100), "touch of a present key")
    expect(not c.touch("missing", 100), "touch of a missing key")
    expect_eq(c.get("t"), "x", "touch kept the value")
    expect(c.touch("t", 1_000_000_000), "touch to a past absolute time")
    expect_eq(c.get("t"), None, "an item touched to a past absolute time")


def large(ctx):
    c = ctx.c
    value = bytes(range(256)) * (900_000 // 256)
    expect(c.set("large", value), "set of a 900 KB value")
    expect_eq(c.get("large"), value, "get of a 900 KB value")
    expect_eq(c.get_multi(["large", "nothing"]), {"large": value}, "get_multi of it")
    expect(c.set("nearly", b"v" * (MIB - 1024)), "set of 1 MiB less 1 KiB")
    expect_eq(len(c.get("nearly")), MIB - 1024, "get of 1 MiB less 1 KiB")
    expect_raises(pylibmc.TooBig, lambda: c.set("huge", b"x" * (2 * MIB)), "set of 2 MiB")
    expect_eq(c.get("large"), value, "the connection works after a value too large")
    expect_eq(c.get("huge"), None, "nothing stored for the value too large")


def keys(ctx):
    c = ctx.c
    odd = [
        "with space",
        "crlf\r\nin key",
        "tab\tkey",
        "nul\x00inside",
        "\x7fdel",
        "unicodé",
        b"\xff\xfe raw bytes",
        "k" * 250,
    ]
    for key in odd:
        expect(c.set(key, f"value of {key!r}"), f"set {key!r}")
    for key in odd:
        expect_eq(c.get(key), f"value of {key!r}", f"get {key!r}")
        raw = key if isinstance(key, bytes) else key.encode()
        got = raw_getk(ctx.addr, raw)
        expect(got is not None and got[0] == raw, f"the server holds {key!r} as {raw!r}: {got!r}")
    got = c.get_multi(odd)
    expect_eq(len(got), len(odd), "get_multi of the odd keys")
    expect_eq(c.get("with"), None, "a key with a space is one key")
    expect_eq(c.get("nul"), None, "a key with a NUL is not cut at it")
    expect_raises(ValueError, lambda: c.set("k" * 251, "x"), "a 251-byte key", "too long")


def flush(ctx):
    c = ctx.c
    c.set_multi({"f1": 1, "f2": 2})
    expect(c.flush_all(), "flush_all")
    expect_eq(c.get_multi(["f1", "f2"]), {}, "flush_all emptied the cache")
    c.set("f3", 3)
    expect(c.flush_all(time=100), "flush_all in 100 s")
    expect_eq(c.get("f3"), 3, "a delayed flush_all keeps items for now")
    expect(c.flush_all(), "flush_all again (cancels nothing, empties now)")
    expect_eq(c.get("f3"), None, "after the second flush_all")


def quiet(ctx):
    """libmemcached's noreply mode sends the quiet opcodes (SETQ, DELETEQ, ...)."""
    q = client(ctx.addr, behaviors={"_noreply": True})
    for i in range(20):
        q.set(f"q{i}", i)
    q.delete("q0")
    q.add("q1", "ignored")
    q.add("qnew", "added")
    q.replace("q2", "replaced")
    q.append("q3", "0")
    q.prepend("q4", "1")
    check = ctx.c
    deadline = time.monotonic() + 5
    while check.get("q19") != 19 and time.monotonic() < deadline:
        time.sleep(0.01)
    got = check.get_multi(["q0", "q1", "q2", "q3", "q4", "q19", "qnew"])
    expect_eq(got, {"q1": 1, "q2": "replaced", "q3": 30, "q4": 14, "q19": 19, "qnew": "added"},
              "after quiet commands")
    q.disconnect_all()


def pool(ctx):
    """Eight threads on a pool of four clients."""
    mc = client(ctx.addr)
    p = pylibmc.ClientPool(mc, 4)
    errors = []

    def worker(t):
        try:
            for i in range(100):
                with p.reserve(block=True) as c:
                    key = f"t{t}-{i}"
                    c.set(key, i)
                    if c.get(key) != i:
                        errors.append(f"{key}: read back {c.get(key)!r}")
                    if i % 10 == 0:
                        c.incr(key, 5)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    expect_eq(errors, [], "errors on the pool's threads")
    got = ctx.c.get_multi([f"t{t}-{i}" for t in range(8) for i in range(0, 100, 10)])
    expect_eq(set(got.values()), {i + 5 for i in range(0, 100, 10)}, "the pool's increments")


def sasl(ctx):
    addr, user, password = ctx.sasl
    c = client(addr, username=user, password=password)
    expect(c.set("sasl", "authenticated"), "set after SASL PLAIN")
    expect_eq(c.get("sasl"), "authenticated", "get after SASL PLAIN")
    expect_eq(c.incr("sasl-n", 1) if c.set("sasl-n", 1) else None, 2, "incr after SASL PLAIN")
    expect(c.delete("sasl"), "delete after SASL PLAIN")
    expect(c.flush_all(), "flush_all after SASL PLAIN")
    wrong = client(addr, username=user, password=password + "x")
    expect_raises(pylibmc.Error, lambda: wrong.set("x", "y"), "a wrong password")
    nobody = client(addr)
    expect_raises(pylibmc.Error, lambda: nobody.set("x", "y"), "no credentials")
    expect_eq(c.get("x"), None, "the refused set stored nothing")


def main(argv):
    args = list(argv[1:])
    expect_version = None
    sasl_args = None
    if "--expect-version" in args:
        i = args.index("--expect-version")
        expect_version = args[i + 1]
        del args[i : i + 2]
    if "--sasl" in args:
        i = args.index("--sasl")
        sasl_args = (parse_addr(args[i + 1]), args[i + 2], args[i + 3])
        del args[i : i + 4]
    if len(args) != 1:
        sys.stderr.write(__doc__)
        return 2
    addr = parse_addr(args[0])
    started = time.monotonic()
    sections = [basics, multi, store_modes, cas, arith, touch, large, keys, flush, quiet, pool]
    section = "setup"
    try:
        ctx = Ctx(addr, expect_version, sasl_args)
        for fn in sections:
            section = fn.__name__
            ctx.c.flush_all()
            fn(ctx)
        if sasl_args is not None:
            section = "sasl"
            sections.append(sasl)
            sasl(ctx)
    except Exception as e:
        if not isinstance(e, CheckFailed):
            traceback.print_exc()
        sys.stderr.write(f"\nFAILED in section {section} against {addr}:\n  {e}\n")
        return 1
    print(
        f"pylibmc {pylibmc.__version__} (libmemcached {pylibmc.libmemcached_version}, binary): "
        f"{CHECKS} checks passed in {time.monotonic() - started:.1f} s against {addr}"
        + (f" and {sasl_args[0]} (SASL)" if sasl_args else "")
        + f" ({', '.join(fn.__name__ for fn in sections)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
