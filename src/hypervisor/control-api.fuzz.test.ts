/**
 * Goal: the control API refuses bad input with a 4xx and a JSON error naming the problem (or
 * answers 2xx to valid input), never answers 500, never crashes or hangs the host, and
 * without the right bearer token answers 401 to everything; the host binds it to loopback
 * unless told otherwise (issue 8: fuzzing, security).
 *
 * Method: the API's routes (`buildControlApi`) over a real `Host` in this process, driven
 * with `app.inject` (no socket); fast-check with fixed seeds (printed in each test name)
 * sends arbitrary JSON, mutated valid bodies, raw payloads, odd URLs and parameters, and
 * wrong tokens. The host holds one 16 MiB domain and no room for another, so a valid create
 * is refused for memory instead of booting a thread per run; boot failures are checked once
 * with room. Addresses in fuzzed bodies that would reach the network are pointed at a closed
 * loopback port (127.0.0.1:1) before sending: the fuzzer never connects anywhere else.
 *
 * 5xx allowed, each only with its code: 502/504 when a peer host cannot be reached or fails
 * the key check (`LINK_*`), 507 when the host has no memory left (`HOST_NO_MEMORY`).
 *
 * `XENVMC_FUZZ_RUNS=N` raises every fuzz test to at least N runs; `XENVMC_FUZZ_SEED=S`
 * replaces the fixed seeds.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { realClock } from '../core/clock.ts';
import { fuzzRuns, fuzzSeed } from '../core/fuzz.ts';
import { buildControlApi, startControlApi } from './control-api.ts';
import { Host } from './host.ts';
import { parseAddress } from './peer-link.ts';

const TOKEN = randomBytes(24).toString('hex');
const AUTH = `Bearer ${TOKEN}`;
/** A closed port: nothing non-root can listen on it, so a connection is refused at once. */
const DEAD_LINK = '127.0.0.1:1';
const REQUEST_DEADLINE_MS = 15_000;
const MIB = 1024 * 1024;

/** 5xx statuses the API may give, and the error codes each one stands for. */
const ALLOWED_5XX: Record<number, RegExp> = {
  502: /^LINK_(CLOSED|AUTH_FAILED|MALFORMED)$/,
  504: /^LINK_TIMEOUT$/,
  507: /^HOST_NO_MEMORY$/,
};

let host: Host;
let app: FastifyInstance;
const hostLog: string[] = [];
let shutdowns = 0;
/** Requests sent and answers checked, and how many got each status, for the summary line. */
let requestsChecked = 0;
const statusCounts = new Map<number, number>();

function withDeadline<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no answer within ${REQUEST_DEADLINE_MS} ms: ${what}`)),
      REQUEST_DEADLINE_MS,
    );
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

function describeRequest(options: InjectOptions): string {
  const payload =
    typeof options.payload === 'string' ? options.payload : JSON.stringify(options.payload);
  return `${options.method} ${options.url} ${(payload ?? '').slice(0, 300)}`;
}

/** Sends one request and checks the answer's status and shape; returns it. */
async function send(options: InjectOptions): Promise<LightMyRequestResponse> {
  const what = describeRequest(options);
  const response = await withDeadline(app.inject(options), what);
  requestsChecked++;
  const status = response.statusCode;
  statusCounts.set(status, (statusCounts.get(status) ?? 0) + 1);
  assert(status >= 200 && status < 600, `status ${status} for ${what}`);
  assert.notEqual(status, 500, `500 for ${what}: ${response.body.slice(0, 500)}`);
  if (status === 204 || options.method === 'HEAD') return response;
  let body: unknown;
  try {
    body = response.json();
  } catch {
    assert.fail(`a ${status} answer that is not JSON for ${what}: ${response.body.slice(0, 200)}`);
  }
  if (status >= 400) {
    const error = (body as { error?: { code?: unknown; message?: unknown } }).error;
    assert(
      typeof error?.code === 'string' && error.code.length > 0,
      `a ${status} answer names an error code for ${what}: ${response.body.slice(0, 300)}`,
    );
    assert(
      typeof error.message === 'string' && error.message.length > 0,
      `a ${status} answer has a message for ${what}`,
    );
    if (status >= 500) {
      const allowed = ALLOWED_5XX[status];
      assert(
        allowed?.test(error.code) === true,
        `${status} ${error.code} for ${what}: ${error.message}`,
      );
    }
  }
  return response;
}

function authed(options: InjectOptions): InjectOptions {
  return { ...options, headers: { authorization: AUTH, ...options.headers } };
}

/** An address that would reach the network becomes the closed loopback port. */
function tameLink(text: unknown, listen = false): unknown {
  if (typeof text !== 'string') return text;
  try {
    parseAddress(text);
  } catch {
    return text;
  }
  return listen ? '127.0.0.1:0' : DEAD_LINK;
}

/** Applies `tameLink` to every field of a body that names an address. */
function tameBody(url: string, body: unknown): unknown {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return body;
  const copy: Record<string, unknown> = { ...body };
  if ('to' in copy) copy.to = tameLink(copy.to);
  if ('listen' in copy) copy.listen = tameLink(copy.listen, true);
  if (url === '/v1/peers' && Array.isArray(copy.links)) {
    copy.links = copy.links.map((link) => tameLink(link));
  }
  return copy;
}

const INTERESTING: unknown[] = [
  0,
  -1,
  1,
  1.5,
  -0.5,
  1e30,
  -1e30,
  2 ** 53,
  2 ** 53 + 2,
  Number.MAX_VALUE,
  4096,
  65536,
  65535,
  64 * 1024 * MIB * 1024,
  '',
  ' ',
  '0',
  '-1',
  '16MiB',
  '-16MiB',
  '1e30',
  '1e30GiB',
  '99999999999999999999GiB',
  '17592186044416',
  '4.5KiB',
  'NaN',
  'Infinity',
  '..',
  '../../etc/passwd',
  '%00',
  '\u0000',
  '\u202e',
  'é',
  '🙂'.repeat(40),
  'x'.repeat(65),
  'x'.repeat(301),
  'x'.repeat(50_000),
  '127.0.0.1:1',
  '[::1]:1',
  '127.0.0.1:99999',
  '10.77.0.300',
  '10.77.0.9',
  'localhost:0',
  null,
  true,
  false,
  [],
  {},
  [1, 2, 3],
  { kind: 'dirtier' },
];

const interesting = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...INTERESTING) },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
);

/** A valid body per route, as the CLI would send it. */
const VALID_BODIES: Record<string, Record<string, unknown>> = {
  '/v1/domains': {
    name: 'fz1',
    memory: '16MiB',
    ip: '10.77.0.9',
    tenant: 'blue',
    programs: [{ kind: 'dirtier', params: { dirtyRatePagesPerSec: 10 }, dataPages: 16 }],
    regionPages: { kernel: 1024 },
  },
  '/v1/domains/vm1/migrate': { to: DEAD_LINK, policy: 'xen', policyOptions: { maxRounds: 3 } },
  '/v1/forwards': { listen: '127.0.0.1:0', domain: '10.77.0.9', port: 25 },
  '/v1/peers': { links: [DEAD_LINK] },
  '/v1/link-test': { to: DEAD_LINK, bytes: 4096 },
};
const POST_ROUTES = Object.keys(VALID_BODIES);

/** A valid body with fields dropped, replaced, added, or nested values replaced. */
function mutatedBody(valid: Record<string, unknown>): fc.Arbitrary<unknown> {
  const keys = Object.keys(valid);
  return fc
    .record({
      drop: fc.subarray(keys),
      set: fc.array(
        fc.tuple(fc.constantFrom(...keys, 'extra', '__proto__', 'constructor', ''), interesting),
        { maxLength: 3 },
      ),
      nested: fc.option(fc.tuple(fc.constantFrom(...keys), interesting)),
    })
    .map(({ drop, set, nested }) => {
      const entries = Object.entries(valid).filter(([key]) => !drop.includes(key));
      const body = Object.fromEntries([...entries, ...set]);
      if (nested) {
        const [key, value] = nested;
        const inner = body[key];
        if (Array.isArray(inner) && inner.length > 0) {
          body[key] = [{ ...(inner[0] as object), kind: value }, value];
        } else if (typeof inner === 'object' && inner !== null) {
          body[key] = { ...inner, [`${key}X`]: value, maxRounds: value };
        }
      }
      return body;
    });
}

function startHost(memoryLimitBytes: number): Promise<Host> {
  const created = new Host(
    { clock: realClock },
    {
      name: 'fuzz-api',
      linkListen: { host: '127.0.0.1', port: 0 },
      clusterKey: randomBytes(32),
      linkBytesPerSec: null,
      memoryLimitBytes,
      log: (line) => hostLog.push(line),
    },
  );
  return created.listen().then(() => created);
}

/** `xenvmc host --help`, started at once and read by the last test (tsx takes seconds). */
let hostHelp: Promise<string>;

describe('control API under hostile input', () => {
  before(async () => {
    const bin = fileURLToPath(new URL('../../bin/xenvmc.js', import.meta.url));
    hostHelp = new Promise((resolve) =>
      execFile(process.execPath, [bin, 'host', '--help'], { timeout: 60_000 }, (_e, stdout) =>
        resolve(String(stdout)),
      ),
    );
    host = await startHost(16 * MIB);
    app = buildControlApi(host, { token: TOKEN, onShutdown: () => shutdowns++ });
    await app.ready();
  });

  after(async () => {
    await app?.close();
    await host?.close();
    const statuses = [...statusCounts.entries()]
      .sort(([a], [b]) => a - b)
      .map(([status, count]) => `${status}x${count}`)
      .join(' ');
    console.log(`control API fuzz: ${requestsChecked} requests checked (${statuses})`);
  });

  it('answers 422 naming the problem when the guest cannot boot with the programs given', async () => {
    const cases: { programs: unknown[]; names: RegExp }[] = [
      { programs: [{ kind: 'no-such-program' }], names: /no-such-program/ },
      { programs: [{ kind: 'dirtier', dataPages: 1e9 }], names: /pages/ },
    ];
    for (const { programs, names } of cases) {
      const response = await send(
        authed({
          method: 'POST',
          url: '/v1/domains',
          payload: { name: 'boot-fail', memory: '16MiB', programs },
        }),
      );
      assert.equal(response.statusCode, 422, `422 for ${JSON.stringify(programs)}`);
      assert.match(response.json().error.message, names, 'the message names the problem');
      assert.equal(host.memoryUsedBytes(), 0, 'a failed boot holds no memory');
    }
  });

  it('creates the one domain the fuzzing runs against', async () => {
    const response = await send(
      authed({ method: 'POST', url: '/v1/domains', payload: { name: 'vm1', memory: '16MiB' } }),
    );
    assert.equal(response.statusCode, 201, `vm1 created: ${response.body}`);
  });

  it(`fuzz: without the right token every request is 401 (seed ${fuzzSeed(2201)}, ${fuzzRuns(300)} runs)`, async () => {
    const method = fc.constantFrom<InjectOptions['method']>(
      'GET',
      'POST',
      'DELETE',
      'PUT',
      'PATCH',
    );
    const url = fc.oneof(
      fc.constantFrom(
        '/v1/host',
        '/v1/domains',
        '/v1/domains/vm1',
        '/v1/domains/vm1/pause',
        '/v1/domains/vm1/resume',
        '/v1/domains/vm1/migrate',
        '/v1/link-samples',
        '/v1/link-test',
        '/v1/peers',
        '/v1/forwards',
        '/v1/migrations/x',
        '/v1/shutdown',
        '/',
        '/health',
        '/v1/../v1/host',
      ),
      fc.webPath(),
    );
    const authorization = fc.oneof(
      fc.constant(undefined),
      fc.constantFrom(
        '',
        'Bearer',
        'Bearer ',
        `Bearer ${TOKEN}x`,
        `bearer ${TOKEN}`,
        `Bearer  ${TOKEN}`,
        ` Bearer ${TOKEN}`,
        `Bearer ${TOKEN.slice(0, -1)}`,
        `Bearer ${TOKEN.slice(0, -1)}${TOKEN.endsWith('0') ? '1' : '0'}`,
        TOKEN,
        `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}`,
        `Bearer ${TOKEN.toUpperCase() === TOKEN ? TOKEN.toLowerCase() : TOKEN.toUpperCase()}`,
      ),
      fc.string({ unit: fc.constantFrom(...'Bearer abcdef0123456789'), maxLength: 60 }),
    );
    const payload = fc.option(fc.jsonValue({ maxDepth: 2 }));
    await fc.assert(
      fc.asyncProperty(method, url, authorization, payload, async (m, u, auth, body) => {
        const headers: Record<string, string> = {};
        if (auth !== undefined) headers.authorization = auth;
        const path = u.startsWith('/') ? u : `/${u}`;
        const options: InjectOptions = { method: m, url: path, headers };
        if (body !== null && m !== 'GET')
          options.payload = tameBody(u, body) as InjectOptions['payload'];
        const response = await send(options);
        assert.equal(response.statusCode, 401, `401 for ${describeRequest(options)}`);
        assert.equal(response.json().error.code, 'UNAUTHORIZED', 'the error says unauthorized');
      }),
      { seed: fuzzSeed(2201), numRuns: fuzzRuns(300) },
    );
    assert.equal(shutdowns, 0, 'no unauthenticated request shut the host down');
  });

  it(`fuzz: arbitrary JSON bodies on every POST route (seed ${fuzzSeed(2202)}, ${fuzzRuns(400)} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...POST_ROUTES),
        fc.jsonValue({ maxDepth: 4 }),
        async (url, body) => {
          await send(
            authed({
              method: 'POST',
              url,
              payload: tameBody(url, body) as InjectOptions['payload'],
            }),
          );
        },
      ),
      { seed: fuzzSeed(2202), numRuns: fuzzRuns(400) },
    );
  });

  it(`fuzz: mutated valid bodies on every POST route (seed ${fuzzSeed(2203)}, ${fuzzRuns(600)} runs)`, async () => {
    const request = fc.oneof(
      ...POST_ROUTES.map((url) =>
        mutatedBody(VALID_BODIES[url]!).map((body) => ({ url, body: tameBody(url, body) })),
      ),
    );
    await fc.assert(
      fc.asyncProperty(request, async ({ url, body }) => {
        await send(
          authed({
            method: 'POST',
            url,
            payload: JSON.stringify(body),
            headers: {
              authorization: AUTH,
              'content-type': 'application/json',
            },
          }),
        );
      }),
      { seed: fuzzSeed(2203), numRuns: fuzzRuns(600) },
    );
  });

  it(`fuzz: raw payloads and content types (seed ${fuzzSeed(2204)}, ${fuzzRuns(200)} runs)`, async () => {
    const contentType = fc.constantFrom(
      'application/json',
      'application/json; charset=utf-8',
      'application/json; charset=latin1',
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/octet-stream',
      '',
      'application/json, text/plain',
    );
    const payload = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 200 }),
      fc.constantFrom(
        '',
        '{',
        '{"name":',
        '{"__proto__":{"x":1},"name":"a","memory":"16MiB"}',
        '{"constructor":{"prototype":{"x":1}},"name":"a","memory":"16MiB"}',
        '{"name":"a","name":"b","memory":"16MiB"}',
        `{"name":"a","memory":${'9'.repeat(400)}}`,
        `${'['.repeat(5000)}${']'.repeat(5000)}`,
        `{"links":[${'"127.0.0.1:1",'.repeat(300)}"127.0.0.1:1"]}`,
        'null',
        '"string"',
        '123',
      ),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...POST_ROUTES),
        payload,
        contentType,
        async (url, body, type) => {
          const headers: Record<string, string> = { authorization: AUTH };
          if (type !== '') headers['content-type'] = type;
          await send({ method: 'POST', url, payload: body, headers });
        },
      ),
      { seed: fuzzSeed(2204), numRuns: fuzzRuns(200) },
    );
    // A body above the 1 MiB limit is refused before it is parsed.
    const big = await send(
      authed({
        method: 'POST',
        url: '/v1/domains',
        payload: JSON.stringify({ name: 'x'.repeat(2 * MIB), memory: '16MiB' }),
        headers: { authorization: AUTH, 'content-type': 'application/json' },
      }),
    );
    assert.equal(big.statusCode, 413, 'a body above the limit is 413');
  });

  it(`fuzz: odd URLs, names and query parameters (seed ${fuzzSeed(2205)}, ${fuzzRuns(400)} runs)`, async () => {
    const segment = fc.oneof(
      fc.constantFrom(
        '..',
        '.',
        '%2e%2e',
        '%2E%2E%2F',
        '%00',
        '%',
        '%zz',
        '%F0%9F%99%82',
        '%C0%AF',
        'vm1%00',
        'VM1',
        'vm1 ',
        '-1',
        'NaN',
        '1e30',
        'x'.repeat(100),
        'x'.repeat(101),
        'x'.repeat(5000),
        '',
      ),
      fc.string({ maxLength: 40 }).map(encodeURIComponent),
      fc.string({ unit: 'binary', maxLength: 20 }).map(encodeURIComponent),
    );
    const request = fc.oneof(
      fc.record({
        method: fc.constantFrom('GET', 'DELETE', 'POST'),
        url: segment.map((name) => `/v1/domains/${name}`),
      }),
      fc.record({
        method: fc.constant('POST'),
        url: fc
          .tuple(segment, fc.constantFrom('pause', 'resume', 'migrate', 'x', '..'))
          .map(([name, verb]) => `/v1/domains/${name}/${verb}`),
      }),
      fc.record({
        method: fc.constant('GET'),
        url: segment.map((id) => `/v1/migrations/${id}`),
      }),
      fc.record({
        method: fc.constant('GET'),
        url: fc
          .oneof(segment, fc.constantFrom('-1', '1e308', 'Infinity', '&since=1', '[]'))
          .map((since) => `/v1/link-samples?since=${since}`),
      }),
      fc.record({
        method: fc.constantFrom('GET', 'POST', 'DELETE', 'OPTIONS', 'HEAD'),
        url: fc.array(segment, { maxLength: 4 }).map((parts) => `/${parts.join('/')}`),
      }),
    );
    await fc.assert(
      fc.asyncProperty(request, async ({ method, url }) => {
        // Never destroy or pause the fuzzed domain by accident: its name is reserved (inject
        // trims the URL as a URL parser does, so 'vm1 ' names it too).
        if (/^\/v1\/domains\/vm1(\/|$)/.test(url.trim()) && method !== 'GET') return;
        const options = authed({ method: method as InjectOptions['method'], url });
        if (method === 'POST' && url.endsWith('/migrate')) options.payload = { to: DEAD_LINK };
        await send(options);
      }),
      { seed: fuzzSeed(2205), numRuns: fuzzRuns(400) },
    );
  });

  it('still serves after the fuzzing: vm1 runs, the host answers', async () => {
    // Migrations of vm1 the fuzzer started to a closed port fail and leave vm1 running.
    const deadline = Date.now() + 10_000;
    let status = '';
    while (Date.now() < deadline) {
      const response = await send(authed({ method: 'GET', url: '/v1/domains/vm1' }));
      status = response.json().status;
      if (status === 'running' || status === 'paused') break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert(
      status === 'running' || status === 'paused',
      `vm1 is alive (${status}); host log: ${hostLog.slice(-8).join(' | ')}`,
    );
    const view = await send(authed({ method: 'GET', url: '/v1/host' }));
    assert.equal(view.statusCode, 200, 'GET /v1/host answers');
    assert.equal(view.json().domains.length, 1, 'still exactly one domain');
  });

  it('binds to loopback by default, and a real socket refuses a request without the token', async () => {
    const help = await hostHelp;
    assert.match(
      help,
      /--control <addr>[\s\S]*?\(default: "127\.0\.0\.1:\d+"\)/,
      `xenvmc host --control defaults to loopback: ${help}`,
    );
    assert.match(
      help,
      /--listen <addr>[\s\S]*?\(default: "127\.0\.0\.1:\d+"\)/,
      'and so does the peer link',
    );

    const other = await startHost(0);
    const api = await startControlApi(other, {
      token: TOKEN,
      host: '127.0.0.1',
      port: 0,
      onShutdown: () => {},
    });
    try {
      const { address: boundHost, port } = api.app.server.address() as net.AddressInfo;
      assert.equal(boundHost, '127.0.0.1', 'listening on loopback only');
      const raw = (request: string): Promise<string> =>
        new Promise((resolve, reject) => {
          const socket = net.connect(port, '127.0.0.1');
          let answer = '';
          socket.on('data', (chunk) => {
            answer += chunk.toString('latin1');
          });
          socket.on('close', () => resolve(answer));
          socket.on('error', reject);
          socket.setTimeout(10_000, () => socket.destroy());
          socket.end(request);
        });
      const noToken = await raw('GET /v1/host HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      assert.match(noToken, /^HTTP\/1\.1 401 /, `401 on a real socket: ${noToken.slice(0, 80)}`);
      const traversal = await raw(
        `GET /../../../etc/passwd HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nConnection: close\r\n\r\n`,
      );
      assert.match(
        traversal,
        /^HTTP\/1\.1 (400|404) /,
        `no path traversal: ${traversal.slice(0, 80)}`,
      );
      const hugeHeader = await raw(
        `GET /v1/host HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\nConnection: close\r\n\r\n`,
      );
      assert.match(
        hugeHeader,
        /^HTTP\/1\.1 431 /,
        `huge headers are refused: ${hugeHeader.slice(0, 80)}`,
      );
      const garbage = await raw('\u0000\u0001 not http at all\r\n\r\n');
      assert.match(garbage, /^(HTTP\/1\.1 400 |$)/, `garbage is refused: ${garbage.slice(0, 80)}`);
      const ok = await raw(
        `GET /v1/host HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nConnection: close\r\n\r\n`,
      );
      assert.match(ok, /^HTTP\/1\.1 200 /, 'and it still serves a good request');
    } finally {
      await api.app.close();
      await other.close();
    }
  });
});
