#!/usr/bin/env node
// Exercises memjs, a Node.js client that speaks only memcached's binary protocol, against a
// memcached-compatible server.
//
// Usage:
//     node memjs_client.js HOST:PORT [--expect-version VERSION] [--sasl HOST:PORT USER PASSWORD]
//
// Against HOST:PORT: set/get of text, binary and empty values, add/replace/append/prepend,
// delete, increment/decrement, touch, flush, stats, a 900 KB value and one too large, keys
// with spaces and control bytes, and many requests in flight at once. With --sasl, a client
// with `username`/`password` authenticates (SASL PLAIN: memjs lists the mechanisms, then
// sends PLAIN) against that server, and bad credentials are refused. The checks hold for
// memcached 1.6 itself too (its SASL with a Cyrus sasldb): run this against a real memcached
// to see that they test memcached's behaviour, not ours.
//
// Exits 0 and prints a one-line summary when every check passes; on the first failure prints
// which section failed and why, and exits 1.

'use strict';

let memjs;
try {
  memjs = require('memjs');
} catch (e) {
  process.stderr.write(
    `cannot load memjs (${e.message}): run \`bash scripts/test\`, which installs it ` +
      '(npm ci in tests/node)\n');
  process.exit(2);
}
const memjsVersion = require('memjs/package.json').version;

let checks = 0;

class CheckFailed extends Error {}

function short(value) {
  let text;
  if (Buffer.isBuffer(value)) {
    text = value.length > 60
      ? `<Buffer of ${value.length} bytes>` : `<Buffer ${JSON.stringify(value.toString('latin1'))}>`;
  } else {
    text = JSON.stringify(value, (k, v) =>
      (v && v.type === 'Buffer' ? `<Buffer ${Buffer.from(v.data).toString('hex')}>` : v));
  }
  return text === undefined ? String(value) : text;
}

function expect(condition, message) {
  checks += 1;
  if (!condition) {
    throw new CheckFailed(message);
  }
}

function same(a, b) {
  if (Buffer.isBuffer(a) && Buffer.isBuffer(b)) {
    return a.equals(b);
  }
  return JSON.stringify(a) === JSON.stringify(b);
}

function expectEq(got, want, what) {
  expect(same(got, want), `${what}: expected ${short(want)}, got ${short(got)}`);
}

async function expectRejects(promise, what, contains) {
  let result;
  try {
    result = await promise;
  } catch (e) {
    // memjs rejects with an Error, or with a bare string (a failed authentication).
    const text = e instanceof Error ? e.message : String(e);
    if (contains !== undefined) {
      expect(text.includes(contains), `${what}: error without ${contains}: ${text}`);
    } else {
      expect(true, what);
    }
    return e;
  }
  throw new CheckFailed(`${what}: expected an error, got ${short(result)}`);
}

// Messages memjs logs (it logs every error status it gets), shown on a failure.
const logged = [];
const logger = { log: (...args) => logged.push(args.join(' ')) };

function client(addr, options = {}) {
  return memjs.Client.create(addr, Object.assign({
    timeout: 10, conntimeout: 10, retries: 1, logger,
  }, options));
}

// stats() calls back once per server, with the server and its stats.
function stats(c, key = '') {
  return new Promise((resolve, reject) => {
    c.statsWithKey(key, (err, server, result) => (err ? reject(err) : resolve(result)));
  });
}

// -------------------------------------------------------------------------------------------
// Sections. Each starts from an empty cache.

async function basics(ctx) {
  const c = ctx.c;
  const s = await stats(c);
  expect(typeof s.version === 'string' && s.version.startsWith('1.6.'),
    `stats version ${short(s.version)}`);
  if (ctx.expectVersion !== undefined) {
    expectEq(s.version, ctx.expectVersion, "the server's version");
  }
  expect(Number(s.curr_connections) >= 1, `stats curr_connections ${s.curr_connections}`);
  let r = await c.get('missing');
  expectEq([r.value, r.flags], [null, null], 'get of a missing key');
  expectEq(await c.set('str', 'hello'), true, 'set of a string');
  r = await c.get('str');
  expectEq(r.value, Buffer.from('hello'), 'get of a string');
  expectEq(r.flags, Buffer.from([0, 0, 0, 0]), 'the flags memjs stores');
  const binary = Buffer.from([0, 1, 2, 0xff, 0x80, 13, 10, 0x20]);
  await c.set('bin', binary);
  expectEq((await c.get('bin')).value, binary, 'get of binary bytes');
  await c.set('empty', '');
  expectEq((await c.get('empty')).value, Buffer.alloc(0), 'get of an empty value');
  await c.set('k', 'one');
  await c.set('k', 'two');
  expectEq((await c.get('k')).value, Buffer.from('two'), 'set overwrites');
  // An absolute time in the past: gone at once; a relative one stays.
  expectEq(await c.set('past', 'x', { expires: 1000000000 }), true, 'set with a past time');
  expectEq((await c.get('past')).value, null, 'an item set with a past absolute time');
  await c.set('later', 'x', { expires: 3600 });
  expectEq((await c.get('later')).value, Buffer.from('x'), 'an item set for an hour');
}

async function storeModes(ctx) {
  const c = ctx.c;
  expectEq(await c.add('a', 'first'), true, 'add of a missing key');
  expectEq(await c.add('a', 'second'), false, 'add of a present key');
  expectEq((await c.get('a')).value, Buffer.from('first'), 'add kept the first value');
  expectEq(await c.replace('a', 'replaced'), true, 'replace of a present key');
  expectEq(await c.replace('missing', 'x'), false, 'replace of a missing key');
  expectEq(await c.append('a', '-end'), true, 'append');
  // memjs 1.3.2's prepend sends opcode 0x0e, APPEND (lib/memjs/memjs.js): it appends.
  expectEq(await c.prepend('a', '+more'), true, 'prepend (an APPEND)');
  expectEq((await c.get('a')).value, Buffer.from('replaced-end+more'), 'after append, prepend');
  // memcached answers NOT_STORED (5), which memjs reports as an error.
  await expectRejects(c.append('missing', 'x'), 'append to a missing key', 'MemJS APPEND');
  await expectRejects(c.prepend('missing', 'x'), 'prepend to a missing key', 'MemJS PREPEND');
  expectEq((await c.get('missing')).value, null, 'append and prepend created nothing');
  expectEq(await c.delete('a'), true, 'delete of a present key');
  expectEq(await c.delete('a'), false, 'delete of a missing key');
  expectEq((await c.get('a')).value, null, 'after delete');
}

async function arith(ctx) {
  const c = ctx.c;
  let r = await c.increment('n', 5, { initial: 10 });
  expectEq(r, { success: true, value: 10 }, 'increment of a missing key creates it');
  expectEq((await c.get('n')).value, Buffer.from('10'), 'the created number');
  r = await c.increment('n', 5, {});
  expectEq(r, { success: true, value: 15 }, 'increment by 5');
  r = await c.decrement('n', 3, {});
  expectEq(r, { success: true, value: 12 }, 'decrement by 3');
  r = await c.decrement('n', 100, {});
  expectEq(r, { success: true, value: 0 }, 'decrement stops at 0');
  expectEq((await c.get('n')).value, Buffer.from('0 '), 'a shorter number is padded');
  r = await c.decrement('d', 1, { initial: 7 });
  expectEq(r, { success: true, value: 7 }, 'decrement of a missing key creates it');
  await c.set('text', 'abc');
  await expectRejects(c.increment('text', 1, {}), 'increment of a non-numeric value',
    'MemJS INCREMENT');
  expectEq((await c.get('text')).value, Buffer.from('abc'), 'the non-numeric value stays');
}

async function touch(ctx) {
  const c = ctx.c;
  await c.set('t', 'x');
  expectEq(await c.touch('t', 100), true, 'touch of a present key');
  expectEq(await c.touch('missing', 100), false, 'touch of a missing key');
  expectEq((await c.get('t')).value, Buffer.from('x'), 'touch kept the value');
  expectEq(await c.touch('t', 1000000000), true, 'touch to a past absolute time');
  expectEq((await c.get('t')).value, null, 'an item touched to a past absolute time');
}

async function large(ctx) {
  const c = ctx.c;
  const value = Buffer.alloc(900000);
  for (let i = 0; i < value.length; i++) {
    value[i] = i % 251;
  }
  expectEq(await c.set('large', value), true, 'set of a 900 KB value');
  expectEq((await c.get('large')).value, value, 'get of a 900 KB value');
  await expectRejects(c.set('huge', Buffer.alloc(2 * 1024 * 1024, 120)), 'set of 2 MiB',
    'MemJS SET');
  expectEq((await c.get('large')).value, value, 'the connection works after a value too large');
  expectEq((await c.get('huge')).value, null, 'nothing stored for the value too large');
}

async function keys(ctx) {
  const c = ctx.c;
  const odd = [
    'with space',
    'crlf\r\nin key',
    'tab\tkey',
    'unicodé',
    Buffer.from([0xff, 0x00, 0x20, 0x0a]),
    'k'.repeat(250),
  ];
  for (const key of odd) {
    expectEq(await c.set(key, `value of ${short(key)}`), true, `set ${short(key)}`);
  }
  for (const key of odd) {
    expectEq((await c.get(key)).value, Buffer.from(`value of ${short(key)}`), `get ${short(key)}`);
  }
  expectEq((await c.get('with')).value, null, 'a key with a space is one key');
  // A key over 250 bytes: memcached answers EINVAL and closes the connection (on a client
  // of its own: memjs may write to a socket the server has ended before it notices).
  const refused = client(ctx.addr);
  await expectRejects(refused.get('k'.repeat(251)), 'a 251-byte key', 'Invalid arguments');
  refused.close();
  expectEq((await c.get('with space')).value, Buffer.from('value of "with space"'),
    'another connection after the refused key');
}

async function inFlight(ctx) {
  // memjs writes every request at once and matches replies by opaque.
  const c = ctx.c;
  const n = 300;
  const sets = [];
  for (let i = 0; i < n; i++) {
    sets.push(c.set(`f${i}`, `v${i}`));
  }
  expectEq((await Promise.all(sets)).every((ok) => ok === true), true, `${n} sets in flight`);
  const gets = [];
  for (let i = 0; i < n; i++) {
    gets.push(c.get(`f${i}`));
  }
  const got = await Promise.all(gets);
  expectEq(got.every((r, i) => r.value.toString() === `v${i}`), true, `${n} gets in flight`);
  const incrs = [];
  await c.set('counter', '0');
  for (let i = 0; i < 100; i++) {
    incrs.push(c.increment('counter', 1, {}));
  }
  await Promise.all(incrs);
  expectEq((await c.get('counter')).value, Buffer.from('100'), '100 increments in flight');
}

async function flush(ctx) {
  const c = ctx.c;
  await c.set('f1', '1');
  await c.set('f2', '2');
  const results = await c.flush();
  expectEq(Object.values(results), [true], 'flush answers for the one server');
  expectEq([(await c.get('f1')).value, (await c.get('f2')).value], [null, null],
    'flush emptied the cache');
  const reset = await stats(c, 'reset');
  expectEq(reset, {}, 'stats reset answers an empty group');
}

async function sasl(ctx) {
  const [addr, user, password] = ctx.sasl;
  const c = client(addr, { username: user, password });
  expectEq(await c.set('sasl', 'authenticated'), true, 'set after SASL PLAIN');
  expectEq((await c.get('sasl')).value, Buffer.from('authenticated'), 'get after SASL PLAIN');
  expectEq(await c.increment('sasl-n', 1, { initial: 1 }), { success: true, value: 1 },
    'increment after SASL PLAIN');
  expectEq(await c.delete('sasl'), true, 'delete after SASL PLAIN');
  expectEq(await c.touch('sasl-n', 100), true, 'touch after SASL PLAIN');
  expectEq(Object.values(await c.flush()), [true], 'flush after SASL PLAIN');
  const s = await stats(c);
  expect(Number(s.auth_cmds) >= 1, `auth_cmds ${s.auth_cmds}`);
  c.close();

  // The same credentials in the server string, memjs's "user:pass@host:port".
  const inline = memjs.Client.create(`${user}:${password}@${addr}`,
    { timeout: 10, conntimeout: 10, retries: 1, logger });
  expectEq(await inline.set('inline', 'x'), true, 'set with credentials in the server string');
  inline.close();

  const wrong = client(addr, { username: user, password: `${password}x` });
  await expectRejects(wrong.set('x', 'y'), 'a wrong password', 'authentication failed');
  wrong.close();
  const nobody = client(addr);
  await expectRejects(nobody.set('x', 'y'), 'no credentials');
  nobody.close();
  const check = client(addr, { username: user, password });
  expectEq((await check.get('x')).value, null, 'the refused sets stored nothing');
  check.close();
}

function parseAddr(text) {
  if (!/^[^:]+:\d+$/.test(text || '')) {
    process.stderr.write(`bad address ${JSON.stringify(text)}: expected HOST:PORT\n`);
    process.exit(2);
  }
  return text;
}

async function main(argv) {
  const args = argv.slice(2);
  const ctx = {};
  let i = args.indexOf('--expect-version');
  if (i >= 0) {
    ctx.expectVersion = args[i + 1];
    args.splice(i, 2);
  }
  i = args.indexOf('--sasl');
  if (i >= 0) {
    ctx.sasl = [parseAddr(args[i + 1]), args[i + 2], args[i + 3]];
    args.splice(i, 4);
  }
  if (args.length !== 1) {
    process.stderr.write(
      'usage: memjs_client.js HOST:PORT [--expect-version V] [--sasl HOST:PORT USER PASSWORD]\n');
    return 2;
  }
  ctx.addr = parseAddr(args[0]);
  ctx.c = client(ctx.addr);
  const started = Date.now();
  const sections = [basics, storeModes, arith, touch, large, keys, inFlight, flush];
  if (ctx.sasl) {
    sections.push(sasl);
  }
  let section = 'setup';
  try {
    for (const fn of sections) {
      section = fn.name;
      await ctx.c.flush();
      await fn(ctx);
    }
  } catch (e) {
    if (!(e instanceof CheckFailed)) {
      process.stderr.write(`${e.stack}\n`);
    }
    process.stderr.write(`\nFAILED in section ${section} against ${ctx.addr}:\n  ${e.message}\n`);
    if (logged.length) {
      process.stderr.write(`memjs logged:\n  ${logged.slice(-10).join('\n  ')}\n`);
    }
    return 1;
  } finally {
    ctx.c.close();
  }
  process.stdout.write(
    `memjs ${memjsVersion}: ${checks} checks passed in ${(Date.now() - started) / 1000} s ` +
      `against ${ctx.addr}${ctx.sasl ? ` and ${ctx.sasl[0]} (SASL)` : ''} ` +
      `(${sections.map((fn) => fn.name).join(', ')})\n`);
  return 0;
}

main(process.argv).then((code) => process.exit(code), (e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exit(1);
});
