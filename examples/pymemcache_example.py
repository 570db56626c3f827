#!/usr/bin/env python3
"""A tailorkv (or any memcached) client in Python, with pymemcache.

    pip install pymemcache
    cargo run -p tailorkv-controlet &        # serves on 127.0.0.1:11211
    python3 examples/pymemcache_example.py [HOST:PORT]
"""

import sys

from pymemcache.client.base import Client

addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:11211"
host, _, port = addr.rpartition(":")
# default_noreply=False: wait for the server's answer to every store, to print it.
client = Client((host, int(port)), connect_timeout=5, timeout=5, default_noreply=False)

print("server version:", client.version().decode())

print("set greeting ->", client.set("greeting", "hello from Python"))
print("get greeting ->", client.get("greeting"))
print("get no-such-key ->", client.get("no-such-key"))
print("add greeting (exists) ->", client.add("greeting", "ignored"))

# Compare and swap: store only if nobody changed the item since we read it.
value, cas = client.gets("greeting")
print("cas with a fresh token ->", client.cas("greeting", "hello again", cas))
print("cas with a stale token ->", client.cas("greeting", "too late", cas))
print("get greeting ->", client.get("greeting"))

client.set("visits", "0")
print("incr visits by 1 ->", client.incr("visits", 1))
print("incr visits by 10 ->", client.incr("visits", 10))
print("decr visits by 100 ->", client.decr("visits", 100), "(never below 0)")

client.set_many({"colour": "blue", "shape": "circle"})
print("get_many ->", client.get_many(["colour", "shape", "size"]))

print("delete greeting ->", client.delete("greeting"))
print("get greeting ->", client.get("greeting"))
client.close()
