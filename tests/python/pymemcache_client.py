#!/usr/bin/env python3
"""Exercises every command of pymemcache's clients against a memcached-compatible server.

Usage:
    pymemcache_client.py HOST:PORT [HOST:PORT] [--expect-version VERSION]

With one address, everything runs against it. With two, the expiry and delayed-flush checks
run against the second in a background thread (so their sleeps overlap the rest), and
HashClient spreads keys over both. The checks hold for memcached 1.6 itself too: run this
against a real memcached to see that they test memcached's behaviour, not ours.

Exits 0 and prints a one-line summary when every check passes; on the first failure prints
which section failed and why, and exits 1.
"""

import socket
import sys
import threading
import time
import traceback

try:
    import pymemcache
    from pymemcache import serde
    from pymemcache.client.base import Client, PooledClient
    from pymemcache.client.hash import HashClient
    from pymemcache.client.retrying import RetryingClient
    from pymemcache.exceptions import (
        MemcacheClientError,
        MemcacheIllegalInputError,
        MemcacheServerError,
        MemcacheUnknownCommandError,
        MemcacheUnknownError,
    )
except ImportError as e:
    sys.stderr.write(
        f"cannot import pymemcache ({e}): run `bash scripts/test`, which pip-installs it\n"
    )
    sys.exit(2)

MIB = 1024 * 1024
# memcached's default item_size_max, and how it counts an item against it: a 48-byte header,
# an 8-byte CAS, the key and a NUL, the data and its \r\n (flags add 4 bytes when non-zero).
ITEM_SIZE_MAX = MIB
ITEM_OVERHEAD = 48 + 8 + 1 + 2
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
            expect(
                contains in str(e),
                f"{what}: raised {type(e).__name__}({e}), expected it to mention {contains!r}",
            )
        else:
            expect(True, "")
        return e
    except Exception as e:
        raise CheckFailed(
            f"{what}: expected {exc_type.__name__}, but got {type(e).__name__}: {e}"
        ) from e
    raise CheckFailed(f"{what}: expected {exc_type.__name__}, but it returned {short(result)}")


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"bad address {text!r}: expected HOST:PORT")
    return (host, int(port))


def client(addr, **kwargs):
    """A Client that waits for every reply unless told otherwise."""
    kwargs.setdefault("default_noreply", False)
    return Client(addr, connect_timeout=5, timeout=10, no_delay=True, **kwargs)


def raw_get(c, key):
    """The wire reply to `get key`, without its END: shows the flags the server stored."""
    return c.raw_command(b"get " + key, b"END\r\n")


class Ctx:
    def __init__(self, addrs, expect_version):
        self.addrs = addrs
        self.main = addrs[0]
        self.expect_version = expect_version
        self.c = client(self.main)


# ---------------------------------------------------------------------------------------------
# Sections. Each starts from an empty cache on the main server.


def basics(ctx):
    c = ctx.c
    version = c.version()
    expect(isinstance(version, bytes), f"version() returns bytes, got {version!r}")
    if ctx.expect_version is not None:
        expect_eq(version, ctx.expect_version.encode(), "version()")
    else:
        expect(version.startswith(b"1."), f"version() looks like 1.x.y, got {version!r}")

    expect_eq(c.set(b"b:bytes", b"value-1"), True, "set bytes value")
    expect_eq(c.get(b"b:bytes"), b"value-1", "get bytes value")
    expect_eq(c.set("b:str", "text value"), True, "set str key and str value")
    expect_eq(c.get("b:str"), b"text value", "get str value (no serde: comes back as bytes)")
    expect_eq(c.set("b:int", 42), True, "set int value")
    expect_eq(c.get("b:int"), b"42", "get int value (no serde: its str, as bytes)")
    binary = bytes(range(256)) + b"\r\nEND\r\n\x00tail"
    expect_eq(c.set("b:binary", binary), True, "set binary value with \\r\\n, END and NUL")
    expect_eq(c.get("b:binary"), binary, "get binary value")
    expect_eq(c.set("b:empty", b""), True, "set empty value")
    expect_eq(c.get("b:empty"), b"", "get empty value")
    expect_eq(c.set("b:bytes", b"value-2"), True, "set overwrites")
    expect_eq(c.get("b:bytes"), b"value-2", "get after overwrite")

    expect_eq(c.get("b:missing"), None, "get missing key")
    expect_eq(c.get("b:missing", default="dflt"), "dflt", "get missing key with a default")

    expect_eq(c.set("b:flags", b"v", flags=42), True, "set with flags=42")
    expect_eq(raw_get(c, b"b:flags"), b"VALUE b:flags 42 1\r\nv\r\n", "flags on the wire")
    expect_eq(c.set("b:flagmax", b"v", flags=2**32 - 1), True, "set with flags=2^32-1")
    expect_eq(
        raw_get(c, b"b:flagmax"), b"VALUE b:flagmax 4294967295 1\r\nv\r\n", "largest flags"
    )

    key250 = "k" * 250
    expect_eq(c.set(key250, b"longest"), True, "set with a 250-byte key")
    expect_eq(c.get(key250), b"longest", "get with a 250-byte key")
    expect_raises(
        MemcacheIllegalInputError, lambda: c.set("k" * 251, b"v"), "set with a 251-byte key",
        contains="too long",
    )
    expect_raises(
        MemcacheIllegalInputError, lambda: c.get("k" * 251), "get with a 251-byte key",
        contains="too long",
    )
    expect_raises(
        MemcacheIllegalInputError, lambda: c.set("has space", b"v"), "key with a space",
        contains="whitespace",
    )
    expect_raises(
        MemcacheIllegalInputError, lambda: c.set("b:nonascii", "héllo"),
        "non-ASCII str value with the default ascii encoding",
    )

    # Item access through the mapping protocol.
    c["b:item"] = b"via setitem"
    expect_eq(c["b:item"], b"via setitem", "__getitem__ after __setitem__")
    del c["b:item"]
    expect_raises(KeyError, lambda: c["b:item"], "__getitem__ after __delitem__")

    # UTF-8 keys and values, when the client allows them.
    u = client(ctx.main, allow_unicode_keys=True, encoding="utf-8")
    expect_eq(u.set("b:ключ", "значение"), True, "set with a UTF-8 key and value")
    expect_eq(u.get("b:ключ"), "значение".encode(), "get with a UTF-8 key")
    u.close()

    # key_prefix namespaces every key.
    p = client(ctx.main, key_prefix=b"ns:")
    expect_eq(p.set("x", b"namespaced"), True, "set through key_prefix")
    expect_eq(p.get("x"), b"namespaced", "get through key_prefix")
    expect_eq(c.get("ns:x"), b"namespaced", "the prefixed key is what the server stored")
    expect_eq(p.get_many(["x", "y"]), {"x": b"namespaced"}, "get_many through key_prefix")
    p.close()


def serdes(ctx):
    c = ctx.c
    s = client(ctx.main, serde=serde.pickle_serde)
    cases = [
        ("sd:bytes", b"raw", serde.FLAG_BYTES),
        ("sd:text", "héllo wörld", serde.FLAG_TEXT),
        ("sd:int", 1234567, serde.FLAG_INTEGER),
        ("sd:dict", {"a": [1, 2, 3], "b": None}, serde.FLAG_PICKLE),
    ]
    for key, value, flags in cases:
        expect_eq(s.set(key, value), True, f"pickle_serde set {key}")
        got = s.get(key)
        expect_eq(got, value, f"pickle_serde round trip of {key}")
        expect_eq(type(got), type(value), f"pickle_serde type of {key}")
        header = raw_get(c, key.encode()).split(b"\r\n", 1)[0]
        expect_eq(int(header.split()[2]), flags, f"flags stored for {key} ({header!r})")
    expect_eq(
        s.get_many([k for k, _, _ in cases] + ["sd:missing"]),
        {k: v for k, v, _ in cases},
        "pickle_serde get_many",
    )
    s.close()

    z = client(ctx.main, serde=serde.CompressedSerde(min_compress_len=100))
    text = "compress me " * 1000
    expect_eq(z.set("sd:zip", text), True, "CompressedSerde set")
    expect_eq(z.get("sd:zip"), text, "CompressedSerde round trip")
    header = raw_get(c, b"sd:zip").split(b"\r\n", 1)[0]
    flags, length = int(header.split()[2]), int(header.split()[3])
    expect(flags & serde.FLAG_COMPRESSED, f"compressed flag set in {header!r}")
    expect(length < len(text) // 10, f"stored value is compressed: {length} bytes")
    z.close()


def multi(ctx):
    c = ctx.c
    values = {f"m:{i}": f"value-{i}".encode() for i in range(50)}
    expect_eq(c.set_many(values), [], "set_many of 50 keys fails none")
    got = c.get_many(list(values) + ["m:missing-1", "m:missing-2"])
    expect_eq(got, values, "get_many of 50 hits and 2 misses")
    expect_eq(c.get_many([]), {}, "get_many of no keys")
    expect_eq(c.get_multi(["m:1", "m:2"]), {"m:1": b"value-1", "m:2": b"value-2"}, "get_multi")
    expect_eq(c.set_multi({"m:a": b"A", "m:b": b"B"}), [], "set_multi")

    gm = c.gets_many(["m:a", "m:b", "m:missing"])
    expect_eq(sorted(gm), ["m:a", "m:b"], "gets_many returns the hits")
    expect_eq(gm["m:a"][0], b"A", "gets_many value")
    cas_a, cas_b = gm["m:a"][1], gm["m:b"][1]
    expect(cas_a.isdigit() and cas_b.isdigit(), f"cas uniques are numbers: {gm!r}")
    expect(cas_a != cas_b, f"different items have different cas uniques: {gm!r}")
    expect_eq(c.gets_many([]), {}, "gets_many of no keys")

    expect_eq(c.delete_many(["m:1", "m:2", "m:missing"], noreply=False), True, "delete_many")
    expect_eq(c.get_many(["m:1", "m:2", "m:3"]), {"m:3": b"value-3"}, "after delete_many")
    expect_eq(c.delete_multi(["m:3", "m:4"], noreply=False), True, "delete_multi")
    expect_eq(c.get_many(["m:3", "m:4", "m:5"]), {"m:5": b"value-5"}, "after delete_multi")
    expect_eq(c.delete_many([]), True, "delete_many of no keys")

    # A get of many keys at once: the server may send its reply in pieces.
    many = {f"m:many:{i:04}": (b"%d" % i) * 200 for i in range(2000)}
    expect_eq(c.set_many(many), [], "set_many of 2000 keys of 200-800 bytes")
    expect_eq(c.get_many(list(many)), many, "get_many of 2000 keys")


def store_modes(ctx):
    c = ctx.c
    expect_eq(c.add("s:new", b"first"), True, "add of a new key")
    expect_eq(c.add("s:new", b"second"), False, "add of an existing key")
    expect_eq(c.get("s:new"), b"first", "add of an existing key keeps the value")

    expect_eq(c.replace("s:new", b"replaced"), True, "replace of an existing key")
    expect_eq(c.get("s:new"), b"replaced", "value after replace")
    expect_eq(c.replace("s:absent", b"x"), False, "replace of a missing key")
    expect_eq(c.get("s:absent"), None, "replace of a missing key stores nothing")

    expect_eq(c.set("s:cat", b"middle", flags=7), True, "set before append/prepend")
    expect_eq(c.append("s:cat", b"-end"), True, "append")
    expect_eq(c.prepend("s:cat", b"start-"), True, "prepend")
    expect_eq(c.get("s:cat"), b"start-middle-end", "value after append and prepend")
    # append/prepend ignore the flags and exptime they are sent.
    expect_eq(c.append("s:cat", b"!", flags=99), True, "append with other flags")
    expect_eq(
        raw_get(c, b"s:cat"), b"VALUE s:cat 7 17\r\nstart-middle-end!\r\n",
        "append keeps the item's flags",
    )
    expect_eq(c.append("s:absent", b"x"), False, "append to a missing key")
    expect_eq(c.prepend("s:absent", b"x"), False, "prepend to a missing key")
    expect_eq(c.get("s:absent"), None, "append/prepend to a missing key store nothing")

    expect_eq(c.delete("s:new", noreply=False), True, "delete of an existing key")
    expect_eq(c.get("s:new"), None, "get after delete")
    expect_eq(c.delete("s:new", noreply=False), False, "delete of a missing key")
    expect_eq(c.add("s:new", b"again"), True, "add after delete")


def cas(ctx):
    c = ctx.c
    expect_eq(c.gets("c:missing"), (None, None), "gets of a missing key")
    expect_eq(c.gets("c:missing", default=b"d", cas_default=b"0"), (b"d", b"0"), "gets defaults")
    expect_eq(c.cas("c:missing", b"v", b"1"), None, "cas of a missing key")
    expect_eq(c.get("c:missing"), None, "cas of a missing key stores nothing")

    c.set("c:k", b"v1")
    value, unique = c.gets("c:k")
    expect_eq(value, b"v1", "gets value")
    expect(unique is not None and unique.isdigit(), f"gets unique is a number: {unique!r}")
    expect_eq(c.gets("c:k"), (b"v1", unique), "gets again: same unique while unchanged")
    expect_eq(c.cas("c:k", b"v2", unique), True, "cas with the current unique")
    expect_eq(c.get("c:k"), b"v2", "value after cas")
    expect_eq(c.cas("c:k", b"v3", unique), False, "cas with a stale unique")
    expect_eq(c.get("c:k"), b"v2", "a stale cas keeps the value")

    _, unique2 = c.gets("c:k")
    expect(unique2 != unique, f"a successful cas changes the unique ({unique} -> {unique2})")
    c.set("c:k", b"v4")
    _, unique3 = c.gets("c:k")
    expect(unique3 != unique2, "a set changes the unique")
    expect_eq(c.cas("c:k", b"v5", unique2), False, "cas with the unique from before a set")
    expect_eq(c.touch("c:k", 0), True, "touch")
    expect_eq(c.gets("c:k"), (b"v4", unique3), "touch keeps the unique")
    expect_eq(c.cas("c:k", b"v5", int(unique3), flags=3), True, "cas with an int unique")
    expect_eq(raw_get(c, b"c:k"), b"VALUE c:k 3 2\r\nv5\r\n", "cas stores its flags")
    expect_eq(c.cas("c:k", b"v6", b"1", noreply=True), True, "cas noreply")
    expect_eq(c.get("c:k"), b"v5", "a stale cas with noreply stores nothing")
    expect_raises(
        MemcacheIllegalInputError, lambda: c.cas("c:k", b"v", "12a"), "cas with a non-numeric"
    )


def arith(ctx):
    c = ctx.c
    expect_eq(c.incr("a:missing", 1), None, "incr of a missing key")
    expect_eq(c.decr("a:missing", 1), None, "decr of a missing key")
    expect_eq(c.get("a:missing"), None, "incr/decr create nothing")

    c.set("a:n", b"10")
    expect_eq(c.incr("a:n", 5), 15, "incr by 5")
    expect_eq(c.incr("a:n", 0), 15, "incr by 0")
    expect_eq(c.decr("a:n", 3), 12, "decr by 3")
    expect_eq(c.get("a:n"), b"12", "the stored value is the number as text")
    expect_eq(c.decr("a:n", 100), 0, "decr below zero stops at 0")
    expect_eq(c.get("a:n"), b"0 ", "memcached pads a shorter result with spaces")
    expect_eq(c.incr("a:n", 99), 99, "incr after padding")
    expect_eq(c.incr("a:n", 1), 100, "incr that lengthens the value")
    expect_eq(c.get("a:n"), b"100", "value after lengthening")

    c.set("a:big", str(U64_MAX).encode())
    expect_eq(c.incr("a:big", 1), 0, "incr wraps around at 2^64")
    expect_eq(c.decr("a:big", 1), 0, "decr of 0")
    c.set("a:big", str(U64_MAX - 1).encode())
    expect_eq(c.incr("a:big", 1), U64_MAX, "incr to 2^64-1")
    expect_eq(c.incr("a:big", U64_MAX), U64_MAX - 1, "incr by 2^64-1 wraps")

    c.set("a:text", b"abc")
    expect_raises(
        MemcacheClientError, lambda: c.incr("a:text", 1), "incr of a non-numeric value",
        contains="non-numeric",
    )
    expect_raises(
        MemcacheClientError, lambda: c.decr("a:text", 1), "decr of a non-numeric value",
        contains="non-numeric",
    )
    expect_eq(c.get("a:text"), b"abc", "a failed incr keeps the value")
    c.set("a:neg", b"-5")
    expect_raises(
        MemcacheClientError, lambda: c.incr("a:neg", 1), "incr of a negative number",
        contains="non-numeric",
    )
    c.set("a:n", b"7")
    expect_raises(
        MemcacheClientError, lambda: c.incr("a:n", -1), "incr by a negative delta",
        contains="invalid numeric delta",
    )
    expect_raises(
        MemcacheClientError, lambda: c.incr("a:n", 2**64), "incr by 2^64",
        contains="invalid numeric delta",
    )
    expect_eq(c.incr("a:n", 1), 8, "incr after refused deltas")
    expect_eq(c.incr("a:n", 2, noreply=True), None, "incr noreply returns None")
    expect_eq(c.decr("a:n", 1, noreply=True), None, "decr noreply returns None")
    expect_eq(c.get("a:n"), b"9 ", "incr/decr noreply took effect")


def noreply(ctx):
    c = ctx.c
    n = client(ctx.main, default_noreply=True)
    expect_eq(n.set("n:k", b"one"), True, "set noreply")
    expect_eq(n.add("n:k", b"two"), True, "add noreply of an existing key still returns True")
    expect_eq(n.get("n:k"), b"one", "add noreply of an existing key did not store")
    expect_eq(n.replace("n:k", b"three"), True, "replace noreply")
    expect_eq(n.append("n:k", b"+a"), True, "append noreply")
    expect_eq(n.prepend("n:k", b"p+"), True, "prepend noreply")
    expect_eq(n.get("n:k"), b"p+three+a", "replace/append/prepend noreply took effect")
    expect_eq(n.set_many({"n:a": b"A", "n:b": b"B"}), [], "set_many noreply")
    expect_eq(n.get_many(["n:a", "n:b"]), {"n:a": b"A", "n:b": b"B"}, "after set_many noreply")
    expect_eq(n.delete("n:a"), True, "delete noreply")
    expect_eq(n.delete("n:a"), True, "delete noreply of a missing key still returns True")
    expect_eq(n.delete_many(["n:b", "n:zzz"]), True, "delete_many noreply")
    expect_eq(n.get_many(["n:a", "n:b"]), {}, "delete/delete_many noreply took effect")
    expect_eq(n.touch("n:k", -1), True, "touch noreply with a past time")
    expect_eq(n.get("n:k"), None, "touch noreply with a past time expired the key")
    expect_eq(n.touch("n:missing", 10), True, "touch noreply of a missing key")

    # Errors are silent under noreply too, and the connection stays in step.
    n.set("n:text", b"abc")
    expect_eq(n.incr("n:text", 1, noreply=True), None, "incr noreply of a non-numeric value")
    expect_eq(n.get("n:text"), b"abc", "the next reply on the connection is the get's")
    n.set("n:huge", b"x" * (ITEM_SIZE_MAX + 1))
    expect_eq(n.get("n:huge"), None, "a too-large set noreply stores nothing, silently")
    expect_eq(n.get("n:text"), b"abc", "and the connection stays in step after it")
    expect_eq(n.version(), c.version(), "version on the noreply connection")

    expect_eq(n.flush_all(), True, "flush_all noreply")
    expect_eq(n.get("n:text"), None, "flush_all noreply took effect")
    n.close()


def large(ctx):
    c = ctx.c
    near = bytes((i * 7 + 3) % 256 for i in range(MIB - 1024))
    expect_eq(c.set("l:near", near), True, "set of a value of 1 MiB - 1 KiB")
    expect_eq(c.get("l:near"), near, "get of a value of 1 MiB - 1 KiB")
    value, unique = c.gets("l:near")
    expect(value == near and unique is not None, "gets of a value of 1 MiB - 1 KiB")

    key = "l:max"
    largest = ITEM_SIZE_MAX - ITEM_OVERHEAD - len(key)
    expect_eq(c.set(key, b"m" * largest), True, f"set of the largest value that fits ({largest})")
    expect_eq(c.get(key), b"m" * largest, "get of the largest value that fits")
    expect_eq(c.append(key, b"x"), False, "append past item_size_max is not stored")
    expect_eq(c.get(key), b"m" * largest, "the refused append left the value")
    expect_raises(
        MemcacheServerError, lambda: c.set("l:over-by-one", b"m" * (largest + 1)),
        "set one byte over the largest that fits", contains="too large",
    )
    expect_raises(
        MemcacheServerError, lambda: c.set("l:over", b"o" * (MIB + 1)),
        "set of 1 MiB + 1 byte", contains="object too large for cache",
    )
    expect_raises(
        MemcacheServerError, lambda: c.set("l:over", b"o" * (2 * MIB)),
        "set of 2 MiB", contains="object too large for cache",
    )
    # pymemcache drops its connection after an error; the next call reconnects.
    expect_eq(c.get_many(["l:over", "l:over-by-one"]), {}, "refused values are not stored")
    expect_eq(c.get("l:near"), near, "the 1 MiB value is still there")

    parts = {f"l:part:{i}": bytes([65 + i]) * (300 * 1024) for i in range(4)}
    expect_eq(c.set_many(parts), [], "set_many of 4 values of 300 KiB")
    expect_eq(c.get_many(list(parts)), parts, "get_many of 4 values of 300 KiB")


def stats_and_admin(ctx):
    c = ctx.c
    s = c.stats()
    for name in [b"pid", b"uptime", b"time", b"version", b"curr_connections",
                 b"total_connections", b"cmd_get", b"cmd_set", b"get_hits", b"get_misses",
                 b"curr_items", b"total_items", b"bytes", b"limit_maxbytes", b"threads"]:
        expect(name in s, f"stats() has {name!r}; it has {sorted(s)}")
    expect_eq(s[b"version"], c.version(), "stats version is the version")
    expect(isinstance(s[b"curr_items"], int), f"curr_items is an int: {s[b'curr_items']!r}")
    expect(s[b"curr_connections"] >= 1, f"curr_connections counts us: {s[b'curr_connections']}")
    expect(isinstance(s[b"rusage_user"], float), "rusage_user is a float")

    before = s[b"curr_items"]
    c.set("st:one", b"1")
    c.set("st:two", b"2")
    s = c.stats()
    expect_eq(s[b"curr_items"], before + 2, "curr_items after two sets of new keys")
    c.delete("st:one", noreply=False)
    expect_eq(c.stats()[b"curr_items"], before + 1, "curr_items after a delete")

    expect_eq(c.raw_command("stats reset"), b"RESET", "stats reset")
    s = c.stats()
    expect_eq((s[b"cmd_get"], s[b"get_hits"], s[b"get_misses"]), (0, 0, 0), "gets after reset")
    expect_eq(s[b"curr_items"], before + 1, "stats reset keeps curr_items")
    c.get("st:two")
    c.get("st:two")
    c.get("st:missing")
    c.get_many(["st:two", "st:missing", "st:missing2"])
    s = c.stats()
    expect_eq(
        (s[b"cmd_get"], s[b"get_hits"], s[b"get_misses"]), (6, 3, 3),
        "cmd_get, get_hits, get_misses after 3 gets and a get of 3 keys",
    )

    settings = c.stats("settings")
    expect_eq(settings.get(b"item_size_max"), ITEM_SIZE_MAX, "stats settings item_size_max")
    expect_eq(settings.get(b"maxbytes"), s[b"limit_maxbytes"], "settings maxbytes")

    original_mb = s[b"limit_maxbytes"] // MIB
    expect_eq(c.cache_memlimit(100), True, "cache_memlimit 100")
    expect_eq(c.stats()[b"limit_maxbytes"], 100 * MIB, "limit_maxbytes after cache_memlimit")
    expect_raises(
        MemcacheUnknownError, lambda: c.cache_memlimit(1), "cache_memlimit below 8 MiB",
        contains="MEMLIMIT_TOO_SMALL",
    )
    expect_eq(c.cache_memlimit(original_mb), True, "cache_memlimit back")
    expect_eq(c.stats()[b"limit_maxbytes"], original_mb * MIB, "limit_maxbytes restored")

    expect_eq(c.raw_command("verbosity 1"), b"OK", "verbosity 1")
    expect_raises(MemcacheUnknownCommandError, lambda: c.raw_command("bogus_cmd"), "unknown cmd")
    expect_raises(MemcacheUnknownCommandError, c.shutdown, "shutdown (not enabled)")
    expect_eq(c.get("st:two"), b"2", "the client reconnects after errors")

    # quit: the server closes the connection; the client reconnects on its next call.
    q = client(ctx.main)
    q.set("st:q", b"q")
    count = c.stats()[b"curr_connections"]
    q.quit()
    deadline = time.monotonic() + 5
    while c.stats()[b"curr_connections"] != count - 1:
        expect(time.monotonic() < deadline, "curr_connections never dropped after quit")
        time.sleep(0.02)
    expect_eq(q.get("st:q"), b"q", "get after quit reconnects")
    q.close()

    # quit on a bare socket: the server hangs up after replying to what came before it.
    with socket.create_connection(ctx.main, timeout=10) as sock:
        sock.sendall(b"get st:two\r\nquit\r\nget st:two\r\n")
        got = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    expect_eq(got, b"VALUE st:two 0 1\r\n2\r\nEND\r\n", "a request after quit gets no reply")


def gat(ctx):
    """pymemcache 4 has no gat/gats methods: raw_command sends them."""
    c = ctx.c
    c.set("g:k", b"value", flags=5)
    expect_eq(
        c.raw_command("gat 0 g:k g:missing", b"END\r\n"), b"VALUE g:k 5 5\r\nvalue\r\n", "gat"
    )
    got = c.raw_command("gats 0 g:k", b"END\r\n")
    _, unique = c.gets("g:k")
    expect_eq(got, b"VALUE g:k 5 5 " + unique + b"\r\nvalue\r\n", "gats shows the cas unique")
    expect_eq(c.raw_command("gat 0 g:missing", b"END\r\n"), b"", "gat of a missing key")
    expect_eq(c.raw_command("gat -1 g:k", b"END\r\n"), b"VALUE g:k 5 5\r\nvalue\r\n", "gat -1")
    expect_eq(c.get("g:k"), None, "gat with a past time expires the key after returning it")


def flush_now(ctx):
    c = ctx.c
    c.set_many({"f:1": b"1", "f:2": b"2"})
    expect_eq(c.flush_all(noreply=False), True, "flush_all")
    expect_eq(c.get_many(["f:1", "f:2"]), {}, "flush_all removed everything")
    c.set("f:3", b"3")
    expect_eq(c.get("f:3"), b"3", "a set after flush_all is kept")
    expect_eq(c.flush_all(delay=0, noreply=False), True, "flush_all 0")
    expect_eq(c.get("f:3"), None, "flush_all 0 flushes at once")
    expect_eq(c.flush_all(noreply=True), True, "flush_all noreply")
    expect_eq(c.get("f:3"), None, "get after flush_all noreply")


def concurrency(ctx):
    """8 threads share a PooledClient; each checks every value it reads back."""
    threads, ops = 8, 200
    pool = PooledClient(ctx.main, max_pool_size=threads, connect_timeout=5, timeout=10,
                        no_delay=True, default_noreply=False)
    pool.set("conc:counter", b"0")
    pool.set("conc:cas", b"0")
    barrier = threading.Barrier(threads)
    errors = []
    cas_wins = [0] * threads

    def worker(t):
        try:
            barrier.wait(timeout=10)
            mine = {}
            for i in range(ops):
                key = f"conc:{t}:{i % 16}"
                op = i % 5
                if op == 0:
                    value = f"t{t}-i{i}-".encode() * (1 + i % 7)
                    if not pool.set(key, value):
                        raise CheckFailed(f"thread {t}: set {key} failed")
                    mine[key] = value
                elif op == 1:
                    got = pool.get(key)
                    if got != mine.get(key):
                        raise CheckFailed(f"thread {t}: get {key}: {got!r} != {mine.get(key)!r}")
                elif op == 2:
                    got = pool.get_many(list(mine) + [f"conc:{t}:none"])
                    if got != mine:
                        raise CheckFailed(f"thread {t}: get_many: {got!r} != {mine!r}")
                elif op == 3:
                    n = pool.incr("conc:counter", 1)
                    if not isinstance(n, int) or n < 1:
                        raise CheckFailed(f"thread {t}: incr returned {n!r}")
                else:
                    # An optimistic increment with gets/cas: retry until ours wins.
                    for _ in range(1000):
                        value, unique = pool.gets("conc:cas")
                        if pool.cas("conc:cas", str(int(value) + 1).encode(), unique):
                            cas_wins[t] += 1
                            break
                    else:
                        raise CheckFailed(f"thread {t}: cas never won in 1000 tries")
            if pool.get_many(list(mine)) != mine:
                raise CheckFailed(f"thread {t}: final get_many differs")
        except BaseException as e:  # report every failure, not only the first thread's
            errors.append(f"thread {t}: {type(e).__name__}: {e}")

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        expect(not w.is_alive(), "a worker thread hung for 60 s")
    expect(not errors, "concurrent clients saw wrong results:\n  " + "\n  ".join(errors))
    expect_eq(pool.get("conc:counter"), str(threads * ops // 5).encode(), "shared incr counter")
    expect_eq(sum(cas_wins), threads * ops // 5, "each thread's cas increments all won once")
    expect_eq(pool.get("conc:cas"), str(threads * ops // 5).encode(), "value built by cas")
    expect_eq(pool.delete("conc:cas", noreply=False), True, "PooledClient delete")
    expect_eq(pool.add("conc:cas", b"x"), True, "PooledClient add")
    expect_eq(pool.replace("conc:cas", b"y"), True, "PooledClient replace")
    expect_eq(pool.append("conc:cas", b"z"), True, "PooledClient append")
    expect_eq(pool.prepend("conc:cas", b"w"), True, "PooledClient prepend")
    expect_eq(pool.get("conc:cas"), b"wyz", "PooledClient value")
    expect_eq(pool.touch("conc:cas", 100), True, "PooledClient touch")
    expect_eq(pool.decr("conc:counter", 1), threads * ops // 5 - 1, "PooledClient decr")
    expect_eq(pool.version(), ctx.c.version(), "PooledClient version")
    expect(b"curr_items" in pool.stats(), "PooledClient stats")
    expect_eq(pool.flush_all(noreply=False), True, "PooledClient flush_all")
    expect_eq(pool.get("conc:cas"), None, "after PooledClient flush_all")
    pool.close()

    r = RetryingClient(client(ctx.main), attempts=2, retry_delay=0.01)
    expect_eq(r.set("conc:retry", b"r"), True, "RetryingClient set")
    expect_eq(r.get("conc:retry"), b"r", "RetryingClient get")
    r.close()


class Timed:
    """Expiry and a delayed flush_all, checked at fixed times after setup.

    Times have one-second resolution, in memcached and here, so every check leaves at least
    a second of margin either side of the moment it looks at.
    """

    FLUSH_DELAY = 6
    MIDDLE_AT = 2.3  # every exptime of 1 s has passed
    MIDDLE_LATEST = FLUSH_DELAY - 2.0  # the delayed flush has surely not happened yet
    END_AT = FLUSH_DELAY + 1.2  # the delayed flush has happened

    def __init__(self, addr):
        self.c = client(addr)

    def setup(self):
        c = self.c
        self.t0 = time.monotonic()
        expect_eq(c.flush_all(noreply=False), True, "flush_all before the timed checks")
        now = int(time.time())
        c.set("t:exp1", b"gone soon", expire=1)
        c.set("t:keep", b"kept")
        c.set("t:hour", b"an hour", expire=3600)
        c.set("t:abs-future", b"absolute", expire=now + 3600)
        expect_eq(c.get("t:exp1"), b"gone soon", "an item with expire=1 is there at first")
        c.set("t:touched", b"t")
        expect_eq(c.touch("t:touched", 1), True, "touch of an existing key")
        expect_eq(c.touch("t:missing", 1), False, "touch of a missing key")
        c.set("t:gat", b"g")
        expect_eq(c.raw_command("gat 1 t:gat", b"END\r\n"), b"VALUE t:gat 0 1\r\ng\r\n", "gat 1")
        c.set("t:untouched", b"u", expire=1)
        expect_eq(c.touch("t:untouched", 0), True, "touch to never expire")

        # Times in the past expire an item at once: no sleeping needed.
        c.set("t:neg", b"n", expire=-1)
        expect_eq(c.get("t:neg"), None, "set with a negative expire is not visible")
        c.set("t:abs-past", b"p", expire=now - 100)
        expect_eq(c.get("t:abs-past"), None, "set with an absolute time in the past")
        c.set("t:touch-neg", b"x")
        expect_eq(c.touch("t:touch-neg", -1), True, "touch with a negative expire")
        expect_eq(c.get("t:touch-neg"), None, "touch with a negative expire expires the key")

        c.set("t:victim", b"v")
        expect_eq(c.flush_all(delay=self.FLUSH_DELAY, noreply=False), True, "flush_all delayed")
        expect_eq(c.get("t:victim"), b"v", "a delayed flush_all leaves items for now")

    def wait_until(self, at, latest=None):
        delay = self.t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic() - self.t0
        expect(
            latest is None or now < latest,
            f"the check due at {at} s ran at {now:.1f} s, too late to be valid (machine busy?)",
        )

    def middle(self):
        c = self.c
        self.wait_until(self.MIDDLE_AT, self.MIDDLE_LATEST)
        got = c.get_many(["t:exp1", "t:touched", "t:gat", "t:untouched", "t:keep", "t:hour",
                          "t:abs-future", "t:victim"])
        expect_eq(
            got,
            {"t:untouched": b"u", "t:keep": b"kept", "t:hour": b"an hour",
             "t:abs-future": b"absolute", "t:victim": b"v"},
            f"{self.MIDDLE_AT} s in: items with a 1 s expiry are gone, the rest are there",
        )
        c.set("t:between", b"b")

    def end(self):
        c = self.c
        self.wait_until(self.END_AT)
        got = c.get_many(["t:keep", "t:hour", "t:abs-future", "t:victim", "t:between"])
        expect_eq(got, {}, f"{self.END_AT} s in: the delayed flush_all removed every item")
        c.set("t:after", b"a")
        expect_eq(c.get("t:after"), b"a", "an item stored after the delayed flush is kept")
        c.close()

    def run_all(self):
        self.setup()
        self.middle()
        self.end()


def hash_client(ctx):
    """HashClient spreads keys over two servers; each key lives on exactly one."""
    a, b = ctx.addrs
    direct = {f"{h}:{p}": client((h, p)) for h, p in (a, b)}
    hc = HashClient([a, b], connect_timeout=5, timeout=10, default_noreply=False)
    hc.flush_all()
    values = {f"h:{i}": f"v{i}".encode() for i in range(300)}
    expect_eq(hc.set_many(values), [], "HashClient set_many of 300 keys")
    expect_eq(hc.get_many(list(values) + ["h:missing"]), values, "HashClient get_many")

    per_server = {name: 0 for name in direct}
    for key, value in values.items():
        holders = [name for name, d in direct.items() if d.get(key) is not None]
        expect_eq(len(holders), 1, f"servers holding {key}")
        expect_eq(holders[0], hc.hasher.get_node(key), f"{key} is on the server its hash picks")
        per_server[holders[0]] += 1
    expect(
        all(n >= 50 for n in per_server.values()),
        f"both servers get a share of 300 keys: {per_server}",
    )

    expect_eq(hc.get("h:1"), b"v1", "HashClient get")
    expect_eq(hc.add("h:1", b"x"), False, "HashClient add of an existing key")
    expect_eq(hc.add("h:new", b"n"), True, "HashClient add")
    expect_eq(hc.replace("h:new", b"r"), True, "HashClient replace")
    expect_eq(hc.append("h:new", b"a"), True, "HashClient append")
    expect_eq(hc.prepend("h:new", b"p"), True, "HashClient prepend")
    expect_eq(hc.get("h:new"), b"pra", "HashClient value after replace/append/prepend")
    value, unique = hc.gets("h:new")
    expect_eq(hc.cas("h:new", b"c", unique), True, "HashClient cas")
    expect_eq(hc.cas("h:new", b"d", unique), False, "HashClient stale cas")
    gm = hc.gets_many(["h:1", "h:2", "h:new"])
    expect_eq({k: v for k, (v, _) in gm.items()}, {"h:1": b"v1", "h:2": b"v2", "h:new": b"c"},
              "HashClient gets_many")
    hc.set("h:n", b"5")
    expect_eq(hc.incr("h:n", 3), 8, "HashClient incr")
    expect_eq(hc.decr("h:n", 10), 0, "HashClient decr")
    expect_eq(hc.touch("h:n", 100), True, "HashClient touch")
    expect_eq(hc.delete("h:n"), True, "HashClient delete")
    expect_eq(hc.delete_many(["h:1", "h:2"]), True, "HashClient delete_many")
    expect_eq(hc.get_many(["h:n", "h:1", "h:2", "h:3"]), {"h:3": b"v3"}, "after deletes")
    hc.flush_all()
    for name, d in direct.items():
        expect_eq(d.get_many(list(values)[:50]), {}, f"HashClient flush_all flushed {name}")

    pooled = HashClient([a, b], use_pooling=True, max_pool_size=4, default_noreply=False)
    expect_eq(pooled.set_many(values), [], "pooled HashClient set_many")
    expect_eq(pooled.get_many(list(values)), values, "pooled HashClient get_many")
    pooled.quit()
    hc.quit()
    for d in direct.values():
        d.close()


# ---------------------------------------------------------------------------------------------


def main(argv):
    args = list(argv[1:])
    expect_version = None
    if "--expect-version" in args:
        i = args.index("--expect-version")
        expect_version = args[i + 1]
        del args[i : i + 2]
    if not 1 <= len(args) <= 2:
        sys.stderr.write(__doc__)
        return 2
    addrs = [parse_addr(a) for a in args]
    ctx = Ctx(addrs, expect_version)
    started = time.monotonic()

    sections = [basics, serdes, multi, store_modes, cas, arith, noreply, large, gat,
                stats_and_admin, flush_now, concurrency]
    timed = Timed(addrs[-1])
    timed_errors = []
    background = None
    if len(addrs) == 2:
        # The timed checks run on the second server while the rest run on the first.
        def run_timed():
            try:
                timed.run_all()
            except BaseException as e:
                timed_errors.append((e, traceback.format_exc()))

        background = threading.Thread(target=run_timed, daemon=True)
    else:
        sections.insert(0, lambda ctx: timed.run_all())
        sections[0].__name__ = "timed"

    section = "setup"
    try:
        if background is not None:
            background.start()
        for fn in sections:
            section = fn.__name__
            ctx.c.flush_all(noreply=False)
            fn(ctx)
        if background is not None:
            section = "timed (expiry and delayed flush_all, on the second server)"
            background.join(timeout=60)
            expect(not background.is_alive(), "the timed checks hung for 60 s")
            if timed_errors:
                error, trace = timed_errors[0]
                sys.stderr.write(trace)
                raise error
            section = "hash_client"
            hash_client(ctx)
    except Exception as e:
        if not isinstance(e, CheckFailed):
            traceback.print_exc()
        where = ", ".join(f"{h}:{p}" for h, p in addrs)
        sys.stderr.write(f"\nFAILED in section {section} against {where}:\n  {e}\n")
        return 1

    names = [fn.__name__ for fn in sections]
    if background is not None:
        names += ["timed", "hash_client"]
    print(
        f"pymemcache {pymemcache.__version__}: {CHECKS} checks passed in "
        f"{time.monotonic() - started:.1f} s against "
        + ", ".join(f"{h}:{p}" for h, p in addrs)
        + f" ({', '.join(names)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
