#!/usr/bin/env python3
"""Exercises meta-memcache, RevenueCat's client for memcached's META protocol (mg, ms, md, ma,
mn), against a memcached-compatible server, the way an application that uses it does.

Usage:
    meta_client.py HOST:PORT [HOST:PORT]

With one address, everything runs against it. With two, the main checks run against the
first, and a last section spreads keys over both with the client's consistent hashing. The
expiry checks run in a background thread alongside the others (their keys are their own), so
their sleep overlaps the rest. Every key carries a prefix unique to the run, so the script
needs no flush and can run again against the same server.

The checks hold for memcached 1.6.18 itself: run this against a real memcached to see that
they test memcached's behaviour, not ours.

Exits 0 and prints a one-line summary when every check passes; on the first failure prints
which section failed and why, and exits 1.
"""

import logging
import os
import random
import socket
import sys
import threading
import time
import traceback
import zlib

try:
    import meta_memcache
    from meta_memcache import (
        CacheClient,
        Conflict,
        Key,
        LeasePolicy,
        MemcacheServerError,
        MetaCommand,
        Miss,
        NotStored,
        RecachePolicy,
        RequestFlags,
        ServerAddress,
        SetMode,
        StalePolicy,
        Success,
        Value,
        connection_pool_factory_builder,
    )
except ImportError as e:
    sys.stderr.write(
        f"cannot import meta_memcache ({e}): run `bash scripts/test`, which pip-installs it\n"
    )
    sys.exit(2)

KIB = 1024
MIB = 1024 * KIB
U64_MAX = 2**64 - 1
# MixedSerializer's client flags: how the client tells what type a stored value was.
F_STR, F_PICKLE, F_INT, F_ZLIB, F_BINARY = 0, 1, 2, 8, 16

CHECKS = 0
CHECKS_LOCK = threading.Lock()
# Unique to this run: the script never flushes, so keys must not collide with an earlier run.
RUN = "mc%08x" % random.getrandbits(32)


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


def expect_type(got, cls, what):
    expect(
        type(got) is cls,
        f"{what}: expected a {cls.__name__} response, got {short(got)}",
    )


def expect_raises(exc_type, fn, what):
    """Calls fn; it must raise exc_type. The client logs the error it raises: silence that."""
    log = logging.getLogger("meta_memcache")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        result = fn()
    except exc_type as e:
        expect(True, "")
        return e
    except Exception as e:
        raise CheckFailed(
            f"{what}: expected {exc_type.__name__}, but got {type(e).__name__}: {e}"
        ) from e
    finally:
        log.setLevel(level)
    raise CheckFailed(f"{what}: expected {exc_type.__name__}, but it returned {short(result)}")


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"bad address {text!r}: expected HOST:PORT")
    return (host, int(port))


def make_client(addrs, max_pool_size=3):
    """A CacheClient over `addrs`, as its README builds one, with patient timeouts.

    The client sets each socket's SO_RCVBUF to its read_buffer_size, 4 KiB by default: so
    small a TCP window stalls a large reply about 200 ms per 8 KiB (a 900 KB value takes 20 s,
    from memcached as from us). 64 KiB, as an application storing large values would set it,
    is still smaller than the large values, so the client's path for a reply larger than its
    buffer is exercised."""
    return CacheClient.cache_client_from_servers(
        servers=[ServerAddress(host=h, port=p) for h, p in addrs],
        connection_pool_factory_fn=connection_pool_factory_builder(
            max_pool_size=max_pool_size,
            connection_timeout=5,
            recv_timeout=10,
            read_buffer_size=64 * KIB,
        ),
    )


def raw(addr, request, terminator):
    """Sends `request` on a fresh connection and reads until the reply ends with `terminator`:
    shows what the server stored, as another client sees it."""
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(request)
        buf = b""
        while not buf.endswith(terminator):
            chunk = s.recv(65536)
            if not chunk:
                raise CheckFailed(f"connection closed after {buf!r} in reply to {request!r}")
            buf += chunk
        return buf


def flags_of(c, key, **want):
    """meta_get with only metadata flags (no value): the ResponseFlags, or None on a miss."""
    result = c.meta_get(Key(key), flags=RequestFlags(**want))
    if isinstance(result, Miss):
        return None
    expect(isinstance(result, Success), f"meta_get {key!r} answered {short(result)}")
    return result.flags


def k(section, name):
    return f"{RUN}:{section}:{name}"


class Ctx:
    def __init__(self, addrs):
        self.addrs = addrs
        self.main = addrs[0]
        self.c = make_client([self.main])


# ---------------------------------------------------------------------------------------------
# Sections. Each uses its own keys.


def basics(ctx):
    c = ctx.c
    key = k("b", "bytes")
    expect_eq(c.set(key, b"value-1", ttl=0), True, "set bytes (ms)")
    expect_eq(c.get(key), b"value-1", "get bytes (mg)")
    expect_eq(c.set(key, b"value-2", ttl=0), True, "set overwrites")
    expect_eq(c.get(key), b"value-2", "get after overwrite")
    expect_eq(c.get(k("b", "missing")), None, "get a missing key")

    # The serializer stores each type under its own client flags and reads them back.
    typed = {
        "str": ("text value ☃", F_STR),
        "int": (42, F_INT),
        "neg": (-7, F_INT),
        "obj": ({"a": [1, 2], "b": None}, F_PICKLE),
        "binary": (bytes(range(256)) + b"\r\nEND\r\n\x00tail", F_BINARY | F_ZLIB),
        "crlf": (b"a\r\nb", F_BINARY),
    }
    for name, (value, client_flags) in typed.items():
        expect_eq(c.set(k("b", name), value, ttl=0), True, f"set {name} value")
    for name, (value, client_flags) in typed.items():
        expect_eq(c.get(k("b", name)), value, f"get {name} value")
        f = flags_of(c, k("b", name), return_client_flag=True)
        expect_eq(f.client_flag, client_flags, f"client flags (F) stored for {name}")
    expect_eq(c.get_typed(k("b", "int"), int), 42, "get_typed int")
    expect_eq(c.get_typed(k("b", "int"), str), None, "get_typed with the wrong type")

    # What ms stored is what a plain `get` on another connection sees.
    expect_eq(
        raw(ctx.main, f"get {k('b', 'crlf')}\r\n".encode(), b"END\r\n"),
        f"VALUE {k('b', 'crlf')} {F_BINARY} 4\r\na\r\nb\r\nEND\r\n".encode(),
        "classic get of a meta-set item",
    )
    # ...and what `set` stored, mg reads (flags 0: a str).
    plain = k("b", "plain")
    expect_eq(
        raw(ctx.main, f"set {plain} 0 0 5\r\nhello\r\n".encode(), b"\r\n"),
        b"STORED\r\n",
        "classic set",
    )
    expect_eq(c.get(plain), "hello", "mg of a classic-set item")

    # Store modes (ms M).
    add = k("b", "add")
    expect_eq(c.refill(add, b"first", ttl=0), True, "refill (ms ME) on a missing key")
    expect_eq(c.refill(add, b"second", ttl=0), False, "refill on a present key")
    expect_eq(c.set(add, b"third", ttl=0, set_mode=SetMode.ADD), False, "add on a present key")
    expect_eq(c.get(add), b"first", "add left the first value")
    rep = k("b", "replace")
    expect_eq(c.set(rep, b"x", ttl=0, set_mode=SetMode.REPLACE), False, "replace (MR), missing")
    expect_eq(c.get(rep), None, "replace did not create the key")
    expect_eq(c.set(rep, b"x", ttl=0), True, "set, then...")
    expect_eq(c.set(rep, b"y", ttl=0, set_mode=SetMode.REPLACE), True, "replace, present")
    expect_eq(c.get(rep), b"y", "replaced value")
    expect_eq(c.set(rep, b"-tail", ttl=0, set_mode=SetMode.APPEND), True, "append (MA)")
    expect_eq(c.set(rep, b"head-", ttl=0, set_mode=SetMode.PREPEND), True, "prepend (MP)")
    expect_eq(c.get(rep), b"head-y-tail", "after append and prepend")
    missing = k("b", "append-missing")
    expect_eq(c.set(missing, b"x", ttl=0, set_mode=SetMode.APPEND), False, "append, missing")
    expect_eq(c.set(missing, b"x", ttl=0, set_mode=SetMode.PREPEND), False, "prepend, missing")
    expect_eq(c.get(missing), None, "append/prepend did not create the key")

    # Metadata flags of mg: t, c, s, f, h, l, O (opaque), k.
    meta = k("b", "meta")
    expect_eq(c.set(meta, b"12345", ttl=0), True, "set for metadata")
    f = flags_of(c, meta, return_ttl=True, return_size=True, return_fetched=True)
    expect_eq(f.ttl, -1, "t of an item with no TTL")
    expect_eq(f.size, 5, "s: the value's size")
    expect_eq(f.fetched, False, "h0 before any fetch with a value")
    expect_eq(c.get(meta), b"12345", "fetch it")
    f = flags_of(c, meta, return_fetched=True, return_last_access=True, opaque=b"op-42")
    expect_eq(f.fetched, True, "h1 after a fetch")
    expect(f.last_access is not None and 0 <= f.last_access <= 5, f"l: {f.last_access}")
    expect_eq(f.opaque, b"op-42", "O: opaque echoed back")
    f = flags_of(c, meta, return_key=True, return_cas_token=True, no_update_lru=True)
    expect(isinstance(f.cas_token, int) and f.cas_token > 0, f"c with k and u: {f}")
    result = c.meta_get(Key(k("b", "nope")), flags=RequestFlags(opaque=b"o1", return_key=True))
    expect_type(result, Miss, "mg of a missing key with O and k")


def cas(ctx):
    c = ctx.c
    key = k("cas", "a")
    expect_eq(c.get_cas(key), (None, None), "get_cas of a missing key")
    expect_eq(c.set(key, b"v1", ttl=0), True, "set")
    value, token = c.get_cas(key)
    expect_eq(value, b"v1", "get_cas value")
    expect(isinstance(token, int) and token > 0, f"get_cas token: {token!r}")
    expect_eq(c.get_cas(key), (b"v1", token), "the token is stable while the item is")
    expect_eq(c.set(key, b"v2", ttl=0, cas_token=token), True, "set with the current token")
    expect_eq(c.get(key), b"v2", "value after the CAS-guarded set")
    expect_eq(c.set(key, b"v3", ttl=0, cas_token=token), False, "set with a stale token (EX)")
    result = c.meta_set(Key(key), b"v3", flags=RequestFlags(cas_token=token, cache_ttl=0))
    expect_type(result, Conflict, "meta_set with a stale token")
    expect_eq(c.get(key), b"v2", "the stale-token set stored nothing")
    result = c.meta_set(Key(k("cas", "absent")), b"v", flags=RequestFlags(cas_token=token))
    expect_type(result, Miss, "meta_set with a token on a missing key (NF)")
    expect_eq(c.get(k("cas", "absent")), None, "...stored nothing")

    # set_cas: ms c returns the new token, the one a get then sees.
    new_token = c.set_cas(key, b"v4", ttl=0)
    expect(isinstance(new_token, int) and new_token != token, f"set_cas token: {new_token!r}")
    expect_eq(c.get_cas(key), (b"v4", new_token), "get_cas after set_cas")
    chained = c.set_cas(key, b"v5", ttl=0, cas_token=new_token)
    expect(isinstance(chained, int) and chained != new_token, f"chained set_cas: {chained!r}")
    expect_eq(c.set_cas(key, b"v6", ttl=0, cas_token=new_token), None, "set_cas, stale token")
    expect_eq(c.get(key), b"v5", "value after chained set_cas")

    # A read-modify-write loop, as applications write it.
    counter = k("cas", "rmw")
    expect_eq(c.set(counter, 0, ttl=0), True, "set rmw counter")
    for _ in range(5):
        value, token = c.get_cas(counter)
        expect_eq(c.set(counter, value + 1, ttl=0, cas_token=token), True, "rmw step")
    expect_eq(c.get(counter), 5, "rmw result")

    # delete with a token (md C).
    _, token = c.get_cas(key)
    expect_eq(c.delete(key, cas_token=token + 1), False, "delete with a wrong token")
    expect_eq(c.get(key), b"v5", "still there")
    expect_eq(c.delete(key, cas_token=token), True, "delete with the right token")
    expect_eq(c.get(key), None, "gone")

    # multi_get_cas gives each key its own token.
    keys = [k("cas", f"m{i}") for i in range(4)]
    tokens = {}
    for i, key in enumerate(keys):
        tokens[key] = c.set_cas(key, f"m{i}", ttl=0)
    got = c.multi_get_cas(keys + [k("cas", "m-missing")])
    expected = {Key(key): (f"m{i}", tokens[key]) for i, key in enumerate(keys)}
    expected[Key(k("cas", "m-missing"))] = (None, None)
    expect_eq(got, expected, "multi_get_cas")
    expect_eq(len(set(tokens.values())), 4, "distinct tokens")


def delete_touch(ctx):
    c = ctx.c
    key = k("dt", "a")
    expect_eq(c.set(key, b"v", ttl=0), True, "set")
    expect_eq(c.delete(key), True, "delete (md) a present key")
    expect_eq(c.get(key), None, "gone after delete")
    expect_eq(c.delete(key), False, "delete a missing key (NF)")
    expect_eq(c.invalidate(key), True, "invalidate a missing key")
    expect_eq(c.set(key, b"v", ttl=0), True, "set again")
    expect_eq(c.invalidate(key), True, "invalidate a present key")
    expect_eq(c.get(key), None, "gone after invalidate")
    result = c.meta_delete(Key(key))
    expect_type(result, Miss, "meta_delete of a missing key")

    # TTLs: ms T, mg T (touch), mg t.
    expect_eq(c.set(key, b"v", ttl=100), True, "set with ttl=100")
    f = flags_of(c, key, return_ttl=True)
    expect(95 <= f.ttl <= 100, f"t after ttl=100: {f.ttl}")
    expect_eq(c.touch(key, ttl=500), True, "touch (mg T) a present key")
    f = flags_of(c, key, return_ttl=True)
    expect(495 <= f.ttl <= 500, f"t after touch 500: {f.ttl}")
    expect_eq(c.get(key), b"v", "touch kept the value")
    expect_eq(c.touch(k("dt", "missing"), ttl=100), False, "touch a missing key")
    expect_eq(c.get(key, touch_ttl=1000), b"v", "get with touch_ttl (get-and-touch)")
    f = flags_of(c, key, return_ttl=True)
    expect(995 <= f.ttl <= 1000, f"t after get with touch_ttl=1000: {f.ttl}")
    expect_eq(c.touch(key, ttl=0), True, "touch with ttl=0")
    expect_eq(flags_of(c, key, return_ttl=True).ttl, -1, "ttl=0 means no expiry (t-1)")
    expect_eq(c.get_cas(key, touch_ttl=300)[0], b"v", "get_cas with touch_ttl")
    f = flags_of(c, key, return_ttl=True)
    expect(295 <= f.ttl <= 300, f"t after get_cas with touch_ttl=300: {f.ttl}")
    got = c.multi_get([key, k("dt", "missing")], touch_ttl=700)
    expect_eq(got, {Key(key): b"v", Key(k("dt", "missing")): None}, "multi_get with touch")
    f = flags_of(c, key, return_ttl=True)
    expect(695 <= f.ttl <= 700, f"t after multi_get with touch_ttl=700: {f.ttl}")


def arith(ctx):
    c = ctx.c
    key = k("ma", "n")
    expect_eq(c.delta(key, 1), False, "delta (ma) on a missing key (NF)")
    expect_eq(c.delta_and_get(key, 1), None, "delta_and_get on a missing key")
    expect_eq(c.get(key), None, "ma without N did not create the key")
    expect_eq(
        c.delta_initialize(key, 1, initial_value=10, initial_ttl=0), True,
        "delta_initialize (ma N J) on a missing key",
    )
    expect_eq(c.get(key), "10", "the counter starts at the initial value, delta not applied")
    expect_eq(c.delta_and_get(key, 5), 15, "increment by 5 (ma v D5)")
    expect_eq(c.delta_and_get(key, -3), 12, "decrement by 3 (ma v D3 M-)")
    expect_eq(c.delta(key, 1), True, "delta without the value")
    expect_eq(
        c.delta_initialize_and_get(key, 1, initial_value=100, initial_ttl=0), 14,
        "delta_initialize_and_get on a present key applies the delta",
    )
    expect_eq(c.get(key), "14", "counter after the deltas")
    expect_eq(c.delta_and_get(key, -100), 0, "decrement clamps at 0")
    expect_eq(c.delta_and_get(key, 99), 99, "back to 99")
    expect_eq(c.delta_and_get(key, 1), 100, "99 + 1 grows the value by a digit")
    expect_eq(c.get(key), "100", "the grown value")
    wrap = k("ma", "wrap")
    expect_eq(c.set(wrap, str(U64_MAX), ttl=0), True, "set 2^64-1")
    expect_eq(c.delta_and_get(wrap, 1), 0, "increment wraps at 2^64")
    expect_eq(
        c.delta_initialize_and_get(k("ma", "dec-init"), -5, initial_value=3, initial_ttl=0), 3,
        "decrement with initialize on a missing key: the initial value",
    )

    # A counter set as an int keeps its client flags through ma.
    typed = k("ma", "typed")
    expect_eq(c.set(typed, 41, ttl=0), True, "set int 41")
    expect_eq(c.delta_and_get(typed, 1), 42, "increment it")
    expect_eq(c.get(typed), 42, "read back as an int (F2 kept)")

    # With a token (ma C) and a TTL (ma T).
    _, token = c.get_cas(typed)
    expect_eq(c.delta(typed, 1, cas_token=token), True, "delta with the current token")
    expect_eq(c.delta(typed, 1, cas_token=token), False, "delta with a stale token (EX)")
    expect_eq(
        c.delta_and_get(typed, 1, cas_token=token), None, "delta_and_get with a stale token"
    )
    expect_eq(c.get(typed), 43, "only the first token delta applied")
    expect_eq(c.delta(typed, 1, refresh_ttl=77), True, "delta with refresh_ttl")
    f = flags_of(c, typed, return_ttl=True)
    expect(72 <= f.ttl <= 77, f"t after ma T77: {f.ttl}")
    expect_eq(c.get(typed), 44, "value after refresh")
    ttl_init = k("ma", "ttl-init")
    expect_eq(
        c.delta_initialize(ttl_init, 1, initial_value=1, initial_ttl=300), True,
        "delta_initialize with initial_ttl=300",
    )
    f = flags_of(c, ttl_init, return_ttl=True)
    expect(295 <= f.ttl <= 300, f"t of the vivified counter: {f.ttl}")

    # Noreply (ma q, then mn).
    expect_eq(c.delta(typed, 10, no_reply=True), True, "delta with no_reply")
    expect_eq(c.get(typed), 54, "the no_reply delta applied")

    # A non-numeric value: the server says CLIENT_ERROR, the client raises and drops the
    # connection; the next command still works.
    text = k("ma", "text")
    expect_eq(c.set(text, "abc", ttl=0), True, "set a non-numeric value")
    expect_raises(MemcacheServerError, lambda: c.delta(text, 1), "delta on a non-number")
    expect_eq(c.get(text), "abc", "non-numeric value unchanged; the client works after")


def stale_while_revalidate(ctx):
    c = ctx.c
    key = k("swr", "a")
    policy = StalePolicy(mark_stale_on_deletion_ttl=30)
    expect_eq(c.set(key, b"v1", ttl=100), True, "set v1")
    _, old_token = c.get_cas(key)
    expect_eq(c.delete(key, stale_policy=policy), True, "delete marking stale (md I T30)")
    f = flags_of(c, key, return_ttl=True, return_cas_token=True)
    expect(f is not None, "a stale item is still there")
    expect(25 <= f.ttl <= 30, f"md I T30 set the TTL: {f.ttl}")
    expect(f.cas_token != old_token, "md I bumps the CAS")
    expect_eq(f.stale, True, "X: the item is stale")
    expect_eq(f.win, True, "W: the first read after the invalidation wins")

    # That metadata-only read took the win. Invalidate again to watch it from get_cas.
    expect_eq(c.set(key, b"v1", ttl=100), True, "set v1 again")
    _, old_token = c.get_cas(key)
    expect_eq(c.invalidate(key, stale_policy=policy), True, "invalidate marking stale")
    value, win_token = c.get_cas(key)
    expect_eq(value, None, "the winner reads a miss: it must recache")
    expect(isinstance(win_token, int) and win_token != old_token, f"win token {win_token!r}")
    expect_eq(c.get_cas(key), (b"v1", win_token), "the next reader gets the stale value (Z X)")
    expect_eq(c.get(key), b"v1", "and so does every one after")
    result = c.meta_get(Key(key), flags=RequestFlags(return_value=True))
    expect_type(result, Value, "meta_get of a stale item")
    expect_eq((result.flags.stale, result.flags.win), (True, False), "X and Z flags")

    # The winner recaches with its token; the item is fresh again.
    expect_eq(c.set(key, b"v2", ttl=100, cas_token=win_token), True, "recache with the token")
    expect_eq(c.get(key), b"v2", "fresh value")
    f = flags_of(c, key, return_ttl=True)
    expect_eq((f.stale, f.win), (False, None), "no X, W or Z after the recache")
    expect(95 <= f.ttl <= 100, f"recache TTL: {f.ttl}")

    # A writer still holding the pre-invalidation token: with mark_stale_on_cas_mismatch its
    # write (ms C I) is kept, but as stale, so readers recache it.
    late = StalePolicy(mark_stale_on_cas_mismatch=True)
    expect_eq(
        c.set(key, b"late", ttl=100, cas_token=old_token, stale_policy=late), True,
        "late write with an older token and I",
    )
    value, token = c.get_cas(key)
    expect_eq(value, None, "the late write is stale: the next reader wins a recache")
    expect_eq(c.get(key), b"late", "the one after reads the stale late value")
    expect_eq(c.set(key, b"v3", ttl=100, cas_token=token), True, "recache after the late write")
    expect_eq(c.get(key), b"v3", "fresh again")
    expect_eq(
        c.set(key, b"v4", ttl=100, cas_token=old_token), False,
        "an older token without I is refused (EX)",
    )
    expect_eq(c.delete(k("swr", "missing"), stale_policy=policy), False, "md I of a miss")

    # Early recache (mg R): when less TTL is left than the policy, one reader wins.
    early = k("swr", "early")
    recache = RecachePolicy(ttl=30)
    expect_eq(c.set(early, b"old", ttl=20), True, "set with ttl=20")
    value, token = c.get_cas(early, recache_policy=recache)
    expect_eq(value, None, "TTL 20 < 30: the first reader wins the recache")
    expect_eq(c.get(early, recache_policy=recache), b"old", "the next keeps the old value")
    result = c.meta_get(Key(early), flags=RequestFlags(return_value=True, recache_ttl=30))
    expect_eq((result.flags.win, result.flags.stale), (False, False), "Z, not stale")
    expect_eq(c.set(early, b"new", ttl=100, cas_token=token), True, "recache with the token")
    expect_eq(c.get(early, recache_policy=recache), b"new", "TTL 100 > 30: no win")
    result = c.meta_get(Key(early), flags=RequestFlags(return_value=True, recache_ttl=30))
    expect_eq(result.flags.win, None, "no W or Z after the recache")
    many = c.multi_get([early, k("swr", "missing")], recache_policy=recache)
    expect_eq(many, {Key(early): b"new", Key(k("swr", "missing")): None}, "multi_get with R")


def lease(ctx):
    c = ctx.c
    policy = LeasePolicy(ttl=30, miss_retries=5, miss_retry_wait=0.01)
    key = k("lease", "a")
    value, token = c.get_or_lease_cas(key, policy)
    expect_eq(value, None, "get_or_lease on a miss (mg N30): this client wins the lease")
    expect(isinstance(token, int) and token > 0, f"lease token: {token!r}")
    f = flags_of(c, key, return_ttl=True, return_size=True)
    expect(f is not None, "the miss planted an empty placeholder")
    expect_eq(f.size, 0, "the placeholder is empty")
    expect(25 <= f.ttl <= 30, f"the placeholder's TTL is the lease TTL: {f.ttl}")
    expect_eq(c.get(key), None, "a plain get of the placeholder reads a miss")

    # Another reader loses and waits; while it waits, the winner fills the value in.
    waits = []

    def winner_fills(seconds):
        waits.append(seconds)
        if len(waits) == 1:
            expect_eq(c.set(key, b"filled", ttl=100, cas_token=token), True, "winner fills")

    got = c.get_or_lease(key, policy, lease_wait_fn=winner_fills)
    expect_eq(got, b"filled", "the losing reader gets the value after waiting")
    expect_eq(waits, [0.01], "it waited once, as long as the policy says")
    expect_eq(c.get_or_lease(key, policy), b"filled", "a hit needs no lease")
    f = flags_of(c, key, return_ttl=True)
    expect_eq(f.win, None, "no W or Z on a filled item")

    # A loser whose retries run out reads a miss.
    other = k("lease", "b")
    expect_eq(c.get_or_lease(other, policy), None, "first reader wins")
    waits.clear()
    tight = LeasePolicy(ttl=30, miss_retries=3, miss_retry_wait=0.01)
    got = c.get_or_lease(other, tight, lease_wait_fn=waits.append)
    expect_eq(got, None, "a loser out of retries reads a miss")
    expect_eq(len(waits), 2, "it retried miss_retries - 1 times")
    # The winner writes with its token even though the losers looked at the placeholder.
    _, token = c.get_cas(other)
    expect_eq(c.set(other, b"late fill", ttl=100, cas_token=token), True, "fill")
    expect_eq(c.get(other), b"late fill", "filled")


def keys(ctx):
    c = ctx.c
    # Non-ASCII, whitespace and control characters go over the wire base64-encoded (b);
    # keys of 187 or more characters are hashed and sent base64-encoded.
    names = {
        "utf8": k("key", "🍺 ключ"),
        "space": k("key", "has space"),
        "tab": k("key", "tab\there"),
        "ctl": k("key", "ctl\x01\x7f"),
        "nul": k("key", "nul\x00byte"),
        "long186": k("key", "").ljust(186, "L"),
        "long187": k("key", "").ljust(187, "L"),
        "long250": k("key", "").ljust(250, "L"),
        "long251": k("key", "").ljust(251, "L"),
        "long1000": k("key", "").ljust(1000, "L"),
        "utf8-long": k("key", "ü" * 200),
    }
    for name, key in names.items():
        expect_eq(c.set(Key(key), f"value of {name}".encode(), ttl=0), True, f"set key {name}")
    for name, key in names.items():
        expect_eq(c.get(Key(key)), f"value of {name}".encode(), f"get key {name}")
    got = c.multi_get([Key(key) for key in names.values()] + [Key(k("key", "mißing"))])
    want = {Key(key): f"value of {name}".encode() for name, key in names.items()}
    want[Key(k("key", "mißing"))] = None
    expect_eq(got, want, "multi_get of encoded keys")
    expect_eq(c.delete(Key(names["utf8"])), True, "delete an encoded key")
    expect_eq(c.get(Key(names["utf8"])), None, "encoded key deleted")
    expect_eq(c.delta_initialize_and_get(Key(names["space"] + "#"), 1, 5, 0), 5, "ma b")
    expect_eq(c.delta_and_get(Key(names["space"] + "#"), 1), 6, "ma on an encoded key")
    value, token = c.get_cas(Key(names["tab"]))
    expect_eq(c.set(Key(names["tab"]), b"t2", ttl=0, cas_token=token), True, "ms b C")
    expect_eq(c.touch(Key(names["tab"]), ttl=100), True, "touch an encoded key")

    # The server decodes the base64 key: the item is stored under the key's own bytes, so a
    # classic `get` of the raw UTF-8 key finds what the meta client stored.
    utf8 = k("key", "é-ü")
    expect_eq(c.set(Key(utf8), b"decoded", ttl=0), True, "set a UTF-8 key")
    expect_eq(
        raw(ctx.main, b"get " + utf8.encode() + b"\r\n", b"END\r\n"),
        b"VALUE " + utf8.encode() + b" 16 7\r\ndecoded\r\nEND\r\n",
        "classic get of the decoded key",
    )
    # Custom routing keys change only the server, not the key stored.
    routed = Key(k("key", "routed"), routing_key="elsewhere")
    expect_eq(c.set(routed, b"r", ttl=0), True, "set with a routing key")
    expect_eq(c.get(k("key", "routed")), b"r", "same item without the routing key")


def sizes(ctx):
    c = ctx.c
    empty = k("size", "0")
    expect_eq(c.set(empty, b"", ttl=0), True, "set a 0-byte value")
    expect_eq(c.get(empty), b"", "get a 0-byte value")
    f = flags_of(c, empty, return_size=True)
    expect_eq(f.size, 0, "s of a 0-byte value")
    expect_eq(c.set(k("size", "0str"), "", ttl=0), True, "set an empty str")
    # The client skips deserializing empty values, so an empty str comes back as bytes.
    expect_eq(c.get(k("size", "0str")), b"", "get an empty str")

    # Values above 128 bytes are zlib-compressed by the client: random bytes barely shrink,
    # so what goes on the wire is as large as the value.
    rng = random.Random(7)
    for name, length in (("100k", 100 * KIB), ("900k", 900 * KIB)):
        key = k("size", name)
        data = rng.randbytes(length)
        wire = len(zlib.compress(data))
        expect(wire >= length, f"random {name} does not compress ({wire})")
        expect_eq(c.set(key, data, ttl=0), True, f"set {name} value")
        expect_eq(c.get(key), data, f"get {name} value")
        f = flags_of(c, key, return_size=True, return_client_flag=True)
        expect_eq(f.size, wire, f"s of the {name} value: its wire size")
        expect_eq(f.client_flag, F_BINARY | F_ZLIB, f"client flags of the {name} value")
        value, token = c.get_cas(key)
        expect_eq(value, data, f"get_cas {name}")
        expect_eq(c.set(key, data[::-1], ttl=0, cas_token=token), True, f"CAS set {name}")
        expect_eq(c.get(key), data[::-1], f"get {name} after the CAS set")
    # A large value that compresses well.
    text = ("the quick brown fox " * 50000).encode()[: 900 * KIB]
    expect_eq(c.set(k("size", "text"), text, ttl=0), True, "set 900 KB of text")
    expect_eq(c.get(k("size", "text")), text, "get 900 KB of text")
    # Three large values in one multi_get.
    big = c.multi_get([k("size", "100k"), k("size", "900k"), k("size", "text")])
    expect_eq(
        [len(v) for v in big.values()], [100 * KIB, 900 * KIB, 900 * KIB], "multi_get large"
    )
    # Over the item size limit: SERVER_ERROR; the client raises and carries on.
    too_big = rng.randbytes(MIB + 1024)
    expect_raises(
        MemcacheServerError, lambda: c.set(k("size", "2big"), too_big, ttl=0),
        "set a value over 1 MB",
    )
    expect_eq(c.get(k("size", "2big")), None, "nothing stored")
    expect_eq(c.get(empty), b"", "the client works after the error")


def pipelining(ctx):
    c = ctx.c
    # multi_get sends all its mg at once and reads the replies in order.
    keys = [k("pipe", f"{i}") for i in range(100)]
    for i, key in enumerate(keys[::2]):
        expect_eq(c.set(key, f"v{i}", ttl=0), True, "set even keys")
    got = c.multi_get(keys)
    want = {Key(key): (f"v{i // 2}" if i % 2 == 0 else None) for i, key in enumerate(keys)}
    expect_eq(got, want, "multi_get of 100 keys, half missing")
    expect_eq(c.multi_get([]), {}, "multi_get of no keys")
    dup = c.multi_get([keys[0], keys[0], keys[1]])
    expect_eq(dup, {Key(keys[0]): "v0", Key(keys[1]): None}, "multi_get with a repeat")

    # Pipelined writes through the router: several ms in one write, replies read after.
    pkeys = [Key(k("pipe", f"w{i}")) for i in range(30)]
    results = c.router.exec_multi(
        command=MetaCommand.META_SET,
        keys=pkeys,
        values=[meta_memcache.protocol.ValueContainer(f"w{i}".encode()) for i in range(30)],
        flags=RequestFlags(cache_ttl=0),
    )
    expect_eq(
        [type(results[key]).__name__ for key in pkeys], ["Success"] * 30, "pipelined ms"
    )
    expect_eq(
        c.multi_get(pkeys), {key: f"w{i}".encode() for i, key in enumerate(pkeys)},
        "values of the pipelined ms",
    )
    results = c.router.exec_multi(
        command=MetaCommand.META_DELETE, keys=pkeys[:10] + [Key(k("pipe", "none"))]
    )
    expect_eq(
        [type(results[key]).__name__ for key in pkeys[:10]], ["Success"] * 10, "pipelined md"
    )
    expect_type(results[Key(k("pipe", "none"))], Miss, "pipelined md of a miss")
    expect_eq(
        sum(v is not None for v in c.multi_get(pkeys).values()), 20, "10 deleted, 20 left"
    )

    # Quiet mode: q suppresses HD, and the client closes each batch with mn.
    qkeys = [k("pipe", f"q{i}") for i in range(20)]
    for i, key in enumerate(qkeys):
        expect_eq(c.set(key, f"q{i}", ttl=0, no_reply=True), True, "set with no_reply")
    expect_eq(
        c.multi_get(qkeys), {Key(key): f"q{i}" for i, key in enumerate(qkeys)},
        "values of the no_reply sets",
    )
    for key in qkeys[:5]:
        expect_eq(c.delete(key, no_reply=True), True, "delete with no_reply")
    expect_eq(c.delete(k("pipe", "none"), no_reply=True), True, "no_reply delete of a miss")
    expect_eq(c.touch(qkeys[5], ttl=100, no_reply=True), True, "touch with no_reply")
    expect_eq(
        sum(v is not None for v in c.multi_get(qkeys).values()), 15, "5 deleted quietly"
    )
    f = flags_of(c, qkeys[5], return_ttl=True)
    expect(95 <= f.ttl <= 100, f"the no_reply touch applied: {f.ttl}")
    # A quiet write that fails still answers (q hides only successes); the next reply is in
    # step.
    expect_eq(
        c.set(qkeys[6], b"x", ttl=0, no_reply=True, set_mode=SetMode.ADD), True,
        "quiet add on a present key: its NS is not read as another command's reply",
    )
    expect_eq(c.get(qkeys[6]), "q6", "replies still in step after a quiet failure")
    results = c.router.exec_multi(
        command=MetaCommand.META_SET,
        keys=pkeys[:5],
        values=[meta_memcache.protocol.ValueContainer(b"quiet") for _ in range(5)],
        flags=RequestFlags(cache_ttl=0, no_reply=True),
    )
    expect_eq(len(results), 5, "pipelined quiet ms")
    expect_eq(
        c.multi_get(pkeys[:5]), {key: b"quiet" for key in pkeys[:5]}, "quiet pipelined values"
    )
    expect_eq(c.get(qkeys[7]), "q7", "replies still in step after quiet pipelined writes")


def concurrency(ctx):
    c = make_client([ctx.main], max_pool_size=8)
    errors = []
    threads = 8

    def run(fn, *args):
        ts = [threading.Thread(target=guard, args=(fn, i) + args) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        expect(not any(t.is_alive() for t in ts), "a thread hung for 60 s")
        if errors:
            raise errors[0]

    def guard(fn, i, *args):
        try:
            fn(i, *args)
        except BaseException as e:
            errors.append(e)

    counter = k("conc", "counter")
    expect_eq(c.delta_initialize(counter, 0, initial_value=0, initial_ttl=0), True, "counter")

    def bump(i):
        for _ in range(100):
            if not c.delta(counter, 1):
                raise CheckFailed("delta failed")

    run(bump)
    expect_eq(c.get(counter), str(threads * 100), "8 threads x 100 increments")

    def own_keys(i):
        rng = random.Random(i)
        for j in range(50):
            key = k("conc", f"t{i}-{j}")
            data = rng.randbytes(rng.choice((0, 10, 4 * KIB, 64 * KIB)))
            if not c.set(key, data, ttl=0):
                raise CheckFailed(f"set {key}")
            if c.get(key) != data:
                raise CheckFailed(f"get {key} returned something else")

    run(own_keys)
    expect(True, "")

    # CAS increments from 8 threads: retries on conflicts, none lost.
    cas_counter = k("conc", "cas")
    expect_eq(c.set(cas_counter, 0, ttl=0), True, "cas counter")

    def cas_bump(i):
        for _ in range(25):
            while True:
                value, token = c.get_cas(cas_counter)
                if c.set(cas_counter, value + 1, ttl=0, cas_token=token):
                    break

    run(cas_bump)
    expect_eq(c.get(cas_counter), threads * 25, "CAS increments from 8 threads")

    # A thundering herd on a missing key: exactly one reader wins the lease and fills it, the
    # others wait and read the value it wrote.
    herd = k("conc", "herd")
    barrier = threading.Barrier(threads)
    outcomes = [None] * threads
    policy = LeasePolicy(ttl=30, miss_retries=500, miss_retry_wait=0.01, miss_max_retry_wait=0.01)

    def reader(i):
        barrier.wait(30)
        value, token = c.get_or_lease_cas(herd, policy)
        if value is None:
            outcomes[i] = "won"
            time.sleep(0.2)  # computing the value
            if not c.set(herd, b"computed", ttl=100, cas_token=token):
                raise CheckFailed("the lease winner could not fill the value")
        else:
            outcomes[i] = value

    run(reader)
    expect_eq(outcomes.count("won"), 1, f"exactly one lease winner: {outcomes}")
    expect_eq(outcomes.count(b"computed"), threads - 1, f"the others read its value: {outcomes}")
    counters = c.get_counters()
    expect_eq(sum(p.total_errors for p in counters.values()), 0, "no connection errors")


def timed(ctx):
    """Expiry. Runs in the background on its own client: sleeps once, checks after."""
    c = make_client([ctx.main])
    expect_eq(c.set(k("t", "ttl1"), b"v", ttl=1), True, "set with ttl=1")
    expect_eq(c.set(k("t", "touched"), b"v", ttl=1), True, "set with ttl=1, to touch")
    expect_eq(c.touch(k("t", "touched"), ttl=100), True, "touch it to 100")
    expect_eq(c.set(k("t", "gat"), b"v", ttl=1), True, "set with ttl=1, to get-and-touch")
    expect_eq(c.get(k("t", "gat"), touch_ttl=100), b"v", "get with touch_ttl=100")
    expect_eq(c.set(k("t", "shorten"), b"v", ttl=100), True, "set with ttl=100")
    expect_eq(c.touch(k("t", "shorten"), ttl=1), True, "touch it to 1")
    expect_eq(c.set(k("t", "stale"), b"v", ttl=100), True, "set, to invalidate")
    expect_eq(
        c.invalidate(k("t", "stale"), stale_policy=StalePolicy(mark_stale_on_deletion_ttl=1)),
        True, "invalidate with a stale TTL of 1",
    )
    expect_eq(
        c.get_or_lease(k("t", "lease"), LeasePolicy(ttl=1, miss_retries=1)), None,
        "lease with a TTL of 1",
    )
    expect_eq(
        c.delta_initialize(k("t", "counter"), 1, initial_value=5, initial_ttl=1), True,
        "counter with initial_ttl=1",
    )
    expect_eq(c.delta(k("t", "counter-long"), 1), False, "no counter yet")
    expect_eq(
        c.delta_initialize(k("t", "counter-long"), 1, initial_value=5, initial_ttl=1), True,
        "counter with initial_ttl=1, to refresh",
    )
    expect_eq(c.delta(k("t", "counter-long"), 1, refresh_ttl=100), True, "ma T100")
    time.sleep(2.5)
    for name in ("ttl1", "shorten", "stale", "lease", "counter"):
        # A real miss (EN), not a stale item or an empty lease placeholder.
        expect_eq(flags_of(c, k("t", name), return_size=True), None, f"{name} expired")
    got = c.multi_get([k("t", "touched"), k("t", "gat"), k("t", "counter-long")])
    expect_eq(
        [got[Key(k("t", name))] for name in ("touched", "gat", "counter-long")],
        [b"v", b"v", "6"],
        "after 2.5 s the items whose TTL was raised are still there",
    )
    result = c.meta_get(
        Key(k("t", "lease")), flags=RequestFlags(return_value=True, vivify_on_miss_ttl=30)
    )
    expect_type(result, Value, "mg N30 on the expired lease")
    expect_eq(result.flags.win, True, "the expired lease can be won again (W)")


def hash_ring(ctx):
    """The client's consistent hashing over both servers: each key on exactly one."""
    ring = make_client(ctx.addrs)
    keys = [k("ring", f"{i}") for i in range(200)] + [k("ring", f"ü{i}") for i in range(20)]
    for key in keys:
        expect_eq(ring.set(Key(key), ("v-" + key).encode(), ttl=0), True, f"ring set {key}")
    got = ring.multi_get([Key(key) for key in keys])
    expect_eq(got, {Key(key): ("v-" + key).encode() for key in keys}, "ring multi_get")
    seen = []
    for addr in ctx.addrs:
        plain = make_client([addr])
        on_server = plain.multi_get([Key(key) for key in keys])
        seen.append({key.key for key, v in on_server.items() if v is not None})
    expect(all(seen), f"both servers hold some keys: {[len(s) for s in seen]}")
    expect_eq(seen[0] & seen[1], set(), "no key on both servers")
    expect_eq(seen[0] | seen[1], set(keys), "every key on one server")
    for key in keys[::2]:
        expect_eq(ring.delete(Key(key)), True, "ring delete")
    left = ring.multi_get([Key(key) for key in keys])
    expect_eq(sum(v is not None for v in left.values()), len(keys) // 2, "half deleted")


def main(argv):
    args = list(argv[1:])
    if not 1 <= len(args) <= 2:
        sys.stderr.write(__doc__)
        return 2
    addrs = [parse_addr(a) for a in args]
    ctx = Ctx(addrs)
    started = time.monotonic()

    sections = [basics, cas, delete_touch, arith, stale_while_revalidate, lease, keys, sizes,
                pipelining, concurrency]
    timed_errors = []

    def run_timed():
        try:
            timed(ctx)
        except BaseException as e:
            timed_errors.append((e, traceback.format_exc()))

    background = threading.Thread(target=run_timed, daemon=True)
    section = "setup"
    try:
        background.start()
        for fn in sections:
            section = fn.__name__
            fn(ctx)
        section = "timed (expiry, in the background)"
        background.join(timeout=60)
        expect(not background.is_alive(), "the timed checks hung for 60 s")
        if timed_errors:
            error, trace = timed_errors[0]
            if not isinstance(error, CheckFailed):
                sys.stderr.write(trace)
            raise error
        if len(addrs) == 2:
            section = "hash_ring"
            hash_ring(ctx)
    except Exception as e:
        if not isinstance(e, CheckFailed):
            traceback.print_exc()
        where = ", ".join(f"{h}:{p}" for h, p in addrs)
        sys.stderr.write(f"\nFAILED in section {section} against {where}:\n  {e}\n")
        return 1

    names = [fn.__name__ for fn in sections] + ["timed"]
    if len(addrs) == 2:
        names.append("hash_ring")
    print(
        f"meta-memcache {meta_memcache.__version__}: {CHECKS} checks passed in "
        f"{time.monotonic() - started:.1f} s against "
        + ", ".join(f"{h}:{p}" for h, p in addrs)
        + f" ({', '.join(names)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
