/**
 * Goal: a host lets a peer in (for a migration, frames or a link test) only once the peer has
 * proved it holds the cluster key, and proves the key back; anything else it refuses with a
 * logged reason and goes on serving (issue 8: security, fuzzing).
 *
 * Method: a real `Host` in this process listening on loopback, and raw TCP clients that speak
 * the handshake from the protocol as peer-link.ts draws it, with an HMAC written here (an
 * independent reference). fast-check (fixed seeds, printed in each test name) feeds it
 * arbitrary bytes, arbitrary and mutated handshake messages, huge length prefixes, and
 * migration streams after a failed or skipped proof; fake servers test the other direction
 * (the connecting host must check the target's proof before it proves anything). Stalled
 * peers are started first and checked last, so the 5 s handshake timeout is waited once.
 *
 * `XENVMC_FUZZ_RUNS=N` raises every fuzz test to at least N runs; `XENVMC_FUZZ_SEED=S`
 * replaces the fixed seeds (a failing run prints its seed in the test name).
 */

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { realClock } from '../core/clock.ts';
import { TestbedError } from '../core/errors.ts';
import { fuzzRuns, fuzzSeed } from '../core/fuzz.ts';
import { defaultLayout } from '../memory/layout.ts';
import { encodeDomainInfo, encodeHeader } from '../migration/codec.ts';
import { Host } from './host.ts';
import {
  connectToPeer,
  HANDSHAKE_TIMEOUT_MS,
  type LinkPurpose,
  MAX_CONTROL_MESSAGE_BYTES,
  MAX_HANDSHAKE_MESSAGE_BYTES,
} from './peer-link.ts';

const KEY = Buffer.from(randomBytes(32).toString('hex'), 'utf8');
const WRONG_KEY = Buffer.from(randomBytes(32).toString('hex'), 'utf8');
const PURPOSES: LinkPurpose[] = ['migration', 'frames', 'linkTest'];
/** How long the host may take to drop a peer that broke the protocol or hung up. */
const REFUSE_WITHIN_MS = 3000;

// ---- an independent reference of the handshake --------------------------------------------

function frame(message: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const header = Buffer.alloc(4);
  header.writeUInt32LE(body.length, 0);
  return Buffer.concat([header, body]);
}

interface Transcript {
  purpose: string;
  clientHost: string;
  clientNonce: string;
  serverHost: string;
  serverNonce: string;
}

function hmacProof(key: Buffer, role: 'client' | 'server', t: Transcript): string {
  const transcript = JSON.stringify([
    t.purpose,
    t.clientHost,
    t.clientNonce,
    t.serverHost,
    t.serverNonce,
  ]);
  return createHmac('sha256', key).update(`xenvmc-${role}\0${transcript}`).digest('hex');
}

/** Length-prefixed JSON messages in `bytes` (stops at the first incomplete or invalid one). */
function parseMessages(bytes: Buffer): Record<string, unknown>[] {
  const messages: Record<string, unknown>[] = [];
  let offset = 0;
  while (bytes.length - offset >= 4) {
    const length = bytes.readUInt32LE(offset);
    if (bytes.length - offset - 4 < length) break;
    try {
      messages.push(JSON.parse(bytes.subarray(offset + 4, offset + 4 + length).toString('utf8')));
    } catch {
      break;
    }
    offset += 4 + length;
  }
  return messages;
}

/** A raw TCP connection: what the peer sent, and when it closed. */
class RawPeer {
  readonly socket: net.Socket;
  received = Buffer.alloc(0);
  closed = false;
  readonly closedPromise: Promise<void>;
  localPort = 0;
  /** How many host log lines there were when this connection opened. */
  readonly logMark = hostLog.length;
  private readonly waiters: (() => void)[] = [];

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.localPort = socket.localPort ?? 0;
    socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
      for (const wake of this.waiters.splice(0)) wake();
    });
    socket.on('error', () => {});
    this.closedPromise = new Promise((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        for (const wake of this.waiters.splice(0)) wake();
        resolve();
      }),
    );
  }

  static connect(port: number): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => resolve(new RawPeer(socket)));
      socket.once('error', reject);
    });
  }

  messages(): Record<string, unknown>[] {
    return parseMessages(this.received);
  }

  /** Resolves once `count` messages arrived or the socket closed (false), or on timeout. */
  async waitMessages(count: number, timeoutMs = REFUSE_WITHIN_MS): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.messages().length < count) {
      if (this.closed || Date.now() > deadline) return false;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return true;
  }

  write(bytes: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  /** Resolves true when the peer closed within `timeoutMs`. */
  async closesWithin(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const result = await Promise.race([this.closedPromise.then(() => true), timedOut]);
    clearTimeout(timer);
    return result;
  }
}

/** Runs a key-holding client's handshake; returns the open connection or throws. */
async function handshake(
  port: number,
  init: { key: Buffer; purpose: string; host?: string },
): Promise<RawPeer> {
  const peer = await RawPeer.connect(port);
  const clientNonce = randomBytes(16).toString('hex');
  const clientHost = init.host ?? 'fuzzer';
  peer.write(frame({ hello: 'xenvmc', purpose: init.purpose, host: clientHost, clientNonce }));
  assert(await peer.waitMessages(1), 'the host answers a valid hello with its challenge');
  const challenge = peer.messages()[0]!;
  const transcript: Transcript = {
    purpose: init.purpose,
    clientHost,
    clientNonce,
    serverHost: String(challenge.host),
    serverNonce: String(challenge.serverNonce),
  };
  assert.equal(
    challenge.proof,
    hmacProof(KEY, 'server', transcript),
    'the host proves the cluster key over the whole transcript',
  );
  peer.write(frame({ proof: hmacProof(init.key, 'client', transcript) }));
  assert(await peer.waitMessages(2), 'the host answers the proof with a verdict');
  return peer;
}

// ---- the host under test ------------------------------------------------------------------

let host: Host;
let hostPort = 0;
const hostLog: string[] = [];

/**
 * The host's refusal line for `peer`'s connection: it names the peer's address (our local
 * port); only lines logged since the peer connected count, as ports are reused.
 */
async function waitForLog(peer: RawPeer, timeoutMs = REFUSE_WITHIN_MS): Promise<string | null> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const line = hostLog
      .slice(peer.logMark)
      .find((candidate) => candidate.includes(`:${peer.localPort} failed`));
    if (line !== undefined) return line;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return null;
}

/** The host never let anyone in: no domain, no reservation, nothing received. */
function assertNothingAccepted(context: string): void {
  assert.equal(host.memoryUsedBytes(), 0, `${context}: the host reserved no memory`);
  assert.deepEqual(host.listDomains(), [], `${context}: the host created no domain`);
  // The host logs `received <name> from <host>: ...` and `created dom<id> ...` (whole lines;
  // a fuzzed host name may contain those words inside a refusal line).
  const accepted = hostLog.filter((line) => /^(received \S+ from |created dom)/.test(line));
  assert.deepEqual(accepted, [], `${context}: the host received no domain`);
  // A peer's strings cannot forge log lines: refusals are one line of printable text.
  const forged = hostLog.filter((line) => [...line].some((char) => char.charCodeAt(0) < 0x20));
  assert.deepEqual(forged, [], `${context}: no control characters from a peer in the log`);
}

/** A 16 MiB domain's HEADER and DOMAIN_INFO (what would make the host reserve memory). */
function migrationPrefix(name: string): Buffer {
  const layout = defaultLayout(4096);
  return Buffer.concat([
    encodeHeader(),
    encodeDomainInfo({
      name,
      domId: 9,
      pageCount: 4096,
      layout,
      ip: null,
      tenant: 'fuzz',
      programs: [],
    }),
  ]);
}

function startHost(name: string, key: Buffer, log: (line: string) => void): Promise<Host> {
  const created = new Host(
    { clock: realClock },
    {
      name,
      linkListen: { host: '127.0.0.1', port: 0 },
      clusterKey: key,
      linkBytesPerSec: null,
      memoryLimitBytes: 64 * 1024 * 1024,
      log,
    },
  );
  return created.listen().then(() => created);
}

// Peers that stall: started before everything else, checked at the end (one timeout wait).
const stalled: { what: string; check: () => Promise<void> }[] = [];
/** Sockets and servers to close whatever happens. */
const cleanups: (() => void)[] = [];

describe('peer link handshake under hostile input', () => {
  before(async () => {
    host = await startHost('fuzz-target', KEY, (line) => hostLog.push(line));
    hostPort = host.linkAddress().port;
    const startedMs = Date.now();

    // A client that sends a partial hello and then nothing: dropped after the timeout.
    const slow = await RawPeer.connect(hostPort);
    cleanups.push(() => slow.socket.destroy());
    slow.write(frame({ hello: 'xenvmc' }).subarray(0, 6));
    stalled.push({
      what: 'a client that stops inside its hello',
      check: async () => {
        const left = HANDSHAKE_TIMEOUT_MS + REFUSE_WITHIN_MS - (Date.now() - startedMs);
        assert(await slow.closesWithin(Math.max(left, 0)), 'the host drops a stalled client');
        const line = await waitForLog(slow);
        assert.match(line ?? '', /LINK_TIMEOUT/, `the host logs the timeout: ${line}`);
      },
    });
    // A client that sends a valid hello and never proves anything.
    const silent = await RawPeer.connect(hostPort);
    cleanups.push(() => silent.socket.destroy());
    silent.write(
      frame({
        hello: 'xenvmc',
        purpose: 'migration',
        host: 'silent',
        clientNonce: randomBytes(16).toString('hex'),
      }),
    );
    stalled.push({
      what: 'a client that never sends its proof',
      check: async () => {
        const left = HANDSHAKE_TIMEOUT_MS + REFUSE_WITHIN_MS - (Date.now() - startedMs);
        assert(await silent.closesWithin(Math.max(left, 0)), 'the host drops a silent client');
        const line = await waitForLog(silent);
        assert.match(line ?? '', /LINK_TIMEOUT/, `the host logs the timeout: ${line}`);
        assert.equal(silent.messages().length, 1, 'the silent client got only the challenge');
      },
    });
    // A server that accepts and never answers: the connecting side gives up.
    const mute = net.createServer(() => {});
    await new Promise<void>((resolve) => mute.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => mute.close());
    const mutePort = (mute.address() as net.AddressInfo).port;
    const muteResult = connectToPeer(
      { host: '127.0.0.1', port: mutePort },
      { clusterKey: KEY, localHost: 'fuzz', purpose: 'migration' },
    ).then(
      () => null,
      (error: unknown) => error,
    );
    stalled.push({
      what: 'a target that never answers the hello',
      check: async () => {
        const error = await muteResult;
        mute.close();
        assert(error instanceof TestbedError, `connectToPeer fails with a TestbedError: ${error}`);
        assert.equal(error.code, 'LINK_TIMEOUT', 'the connecting host times out');
      },
    });
  });

  after(async () => {
    for (const cleanup of cleanups) cleanup();
    await host?.close();
  });

  it(`fuzz: arbitrary bytes from an unauthenticated client are refused with a logged reason (seed ${fuzzSeed(1101)}, ${fuzzRuns(120)} runs)`, async () => {
    const chunks = fc.array(fc.uint8Array({ maxLength: 96 }), { minLength: 1, maxLength: 4 });
    await fc.assert(
      fc.asyncProperty(chunks, async (parts) => {
        const peer = await RawPeer.connect(hostPort);
        for (const part of parts) peer.write(part);
        peer.socket.end();
        assert(await peer.closesWithin(REFUSE_WITHIN_MS), 'the host closes the connection');
        const line = await waitForLog(peer);
        assert.match(line ?? '', /failed: LINK_[A-Z_]+: /, `logged with a link code: ${line}`);
        assert(
          !peer.messages().some((m) => m.ok === true),
          'an unauthenticated client is never told ok',
        );
      }),
      { seed: fuzzSeed(1101), numRuns: fuzzRuns(120) },
    );
    assertNothingAccepted('arbitrary bytes');
  });

  it(`fuzz: arbitrary and mutated handshake messages never get in (seed ${fuzzSeed(1102)}, ${fuzzRuns(150)} runs)`, async () => {
    const nonce = fc.oneof(
      fc.constant('valid'),
      fc.string({ maxLength: 40 }),
      fc.constantFrom('', '0'.repeat(32), 'G'.repeat(32), `${'a'.repeat(31)}|`, 'a'.repeat(5000)),
      fc.jsonValue({ maxDepth: 2 }),
    );
    const hello = fc.record(
      {
        hello: fc.oneof(fc.constant('xenvmc'), fc.jsonValue({ maxDepth: 1 })),
        purpose: fc.oneof(fc.constantFrom(...PURPOSES), fc.jsonValue({ maxDepth: 1 })),
        host: fc.oneof(
          fc.string({ maxLength: 80 }),
          fc.constantFrom('\n2026-01-01 [fuzz-target] received vm1', 'x'.repeat(3000)),
          fc.jsonValue({ maxDepth: 1 }),
        ),
        clientNonce: nonce,
        extra: fc.jsonValue({ maxDepth: 2 }),
      },
      { requiredKeys: [] },
    );
    const proofMessage = fc.oneof(
      fc.constant({ kind: 'wrongKeyProof' as const }),
      fc.record({
        kind: fc.constant('value' as const),
        proof: fc.oneof(
          fc.jsonValue({ maxDepth: 2 }),
          // 64 characters (a proof's length) of which some take more than one UTF-8 byte.
          fc.string({ minLength: 63, maxLength: 63 }).map((text) => `é${text}`),
        ),
      }),
      fc.constant({ kind: 'replayServerProof' as const }),
      fc.constant({ kind: 'none' as const }),
    );
    const tail = fc.oneof(
      fc.constant({ kind: 'nothing' as const }),
      fc.record({ kind: fc.constant('bytes' as const), bytes: fc.uint8Array({ maxLength: 64 }) }),
      fc.record({
        kind: fc.constant('hugeLength' as const),
        length: fc.oneof(
          fc.constantFrom(
            MAX_HANDSHAKE_MESSAGE_BYTES + 1,
            MAX_CONTROL_MESSAGE_BYTES,
            MAX_CONTROL_MESSAGE_BYTES + 1,
            0xffffffff,
          ),
          fc.integer({ min: MAX_HANDSHAKE_MESSAGE_BYTES + 1, max: 0xffffffff }),
        ),
      }),
      fc.record({ kind: fc.constant('json' as const), value: fc.jsonValue({ maxDepth: 3 }) }),
      fc.constant({ kind: 'migrationStream' as const }),
    );
    const stream = migrationPrefix('intruder');
    await fc.assert(
      fc.asyncProperty(
        hello,
        proofMessage,
        fc.array(tail, { maxLength: 3 }),
        fc.boolean(),
        async (helloFields, proofChoice, tails, waitForChallenge) => {
          const peer = await RawPeer.connect(hostPort);
          const clientNonce =
            helloFields.clientNonce === 'valid'
              ? randomBytes(16).toString('hex')
              : helloFields.clientNonce;
          peer.write(frame({ ...helloFields, clientNonce }));
          if (waitForChallenge) await peer.waitMessages(1, 500);
          const challenge = peer.messages()[0];
          if (proofChoice.kind === 'wrongKeyProof') {
            const transcript: Transcript = {
              purpose: String(helloFields.purpose),
              clientHost: String(helloFields.host),
              clientNonce: String(clientNonce),
              serverHost: String(challenge?.host ?? ''),
              serverNonce: String(challenge?.serverNonce ?? ''),
            };
            peer.write(frame({ proof: hmacProof(WRONG_KEY, 'client', transcript) }));
          } else if (proofChoice.kind === 'value') {
            peer.write(frame({ proof: proofChoice.proof }));
          } else if (proofChoice.kind === 'replayServerProof') {
            // Reflect the host's own proof back at it.
            peer.write(frame({ proof: challenge?.proof ?? '' }));
          }
          for (const part of tails) {
            if (part.kind === 'bytes') peer.write(part.bytes);
            else if (part.kind === 'json') peer.write(frame(part.value));
            else if (part.kind === 'migrationStream') peer.write(stream);
            else if (part.kind === 'hugeLength') {
              const header = Buffer.alloc(8, 0x41);
              header.writeUInt32LE(part.length, 0);
              peer.write(header);
            }
          }
          peer.socket.end();
          assert(await peer.closesWithin(REFUSE_WITHIN_MS), 'the host closes the connection');
          const line = await waitForLog(peer);
          assert.match(line ?? '', /failed: LINK_[A-Z_]+: /, `logged with a link code: ${line}`);
          assert(
            !peer.messages().some((m) => m.ok === true),
            `never told ok: ${JSON.stringify(peer.messages())}`,
          );
          assert(
            !peer.messages().some((m) => m.type === 'reserved'),
            'no memory is reserved for an unauthenticated migration',
          );
        },
      ),
      { seed: fuzzSeed(1102), numRuns: fuzzRuns(150) },
    );
    assertNothingAccepted('mutated handshakes');
  });

  it('refuses a huge length prefix at once, before buffering it', async () => {
    for (const length of [MAX_HANDSHAKE_MESSAGE_BYTES + 1, MAX_CONTROL_MESSAGE_BYTES, 0xffffffff]) {
      const peer = await RawPeer.connect(hostPort);
      const header = Buffer.alloc(4);
      header.writeUInt32LE(length, 0);
      peer.write(header);
      // No half-close: the host must not wait for the announced bytes.
      assert(await peer.closesWithin(REFUSE_WITHIN_MS), `the host drops a ${length}-byte prefix`);
      const line = await waitForLog(peer);
      assert.match(line ?? '', /LINK_MALFORMED: .*exceeds the limit/, `logged: ${line}`);
    }
  });

  it('refuses JSON that is not an object (null, numbers, arrays) with a clear reason', async () => {
    for (const value of [null, 7, 'xenvmc', [1, 2], true]) {
      const peer = await RawPeer.connect(hostPort);
      peer.write(frame(value));
      assert(await peer.closesWithin(REFUSE_WITHIN_MS), `the host drops ${JSON.stringify(value)}`);
      const line = await waitForLog(peer);
      assert.match(line ?? '', /LINK_MALFORMED: .*not an object/, `logged: ${line}`);
    }
  });

  it('refuses a flood of small messages before the handshake (nothing queued)', async () => {
    const peer = await RawPeer.connect(hostPort);
    const flood = Buffer.concat(Array.from({ length: 2000 }, () => frame({})));
    peer.write(flood);
    assert(await peer.closesWithin(REFUSE_WITHIN_MS), 'the host drops the flooding client');
    const line = await waitForLog(peer);
    assert.match(line ?? '', /LINK_MALFORMED/, `logged: ${line}`);
  });

  it('refuses a client with the wrong key: the client gives up first, the host logs it', async () => {
    await assert.rejects(
      connectToPeer(
        { host: '127.0.0.1', port: hostPort },
        { clusterKey: WRONG_KEY, localHost: 'intruder', purpose: 'migration' },
      ),
      (error: unknown) => error instanceof TestbedError && error.code === 'LINK_AUTH_FAILED',
      'a host without the key sees the target fail its proof and gives up',
    );
    await new Promise((resolve) => setTimeout(resolve, 100));
    assertNothingAccepted('wrong key');
  });

  it('refuses a proof made with the wrong key: verdict ok:false and a logged reason', async () => {
    const peer = await handshake(hostPort, { key: WRONG_KEY, purpose: 'migration' });
    assert.deepEqual(
      peer.messages()[1],
      { ok: false, error: 'cluster key mismatch' },
      'the verdict says why',
    );
    assert(await peer.closesWithin(REFUSE_WITHIN_MS), 'the host closes the connection');
    const line = await waitForLog(peer);
    assert.match(
      line ?? '',
      /LINK_AUTH_FAILED: host 'fuzzer' at [0-9.:]+ failed/,
      `logged: ${line}`,
    );
  });

  it('refuses a proof of the right length in characters but not in bytes', async () => {
    // 64 characters, 65 UTF-8 bytes: a byte-wise compare must not throw on the length.
    const proofText = `é${'a'.repeat(63)}`;
    const peer = await RawPeer.connect(hostPort);
    peer.write(
      frame({
        hello: 'xenvmc',
        purpose: 'migration',
        host: 'intruder',
        clientNonce: randomBytes(16).toString('hex'),
      }),
    );
    assert(await peer.waitMessages(1), 'challenge');
    peer.write(frame({ proof: proofText }));
    assert(await peer.closesWithin(REFUSE_WITHIN_MS), 'the host closes the connection');
    const line = await waitForLog(peer);
    assert.match(line ?? '', /LINK_AUTH_FAILED/, `logged as a failed proof: ${line}`);
  });

  it('refuses a replayed client transcript (fresh server nonce every time)', async () => {
    // A genuine session, recorded: hello and proof bytes as a key holder sent them.
    const sent: Buffer[] = [];
    const peer = await RawPeer.connect(hostPort);
    const clientNonce = randomBytes(16).toString('hex');
    const hello = frame({ hello: 'xenvmc', purpose: 'frames', host: 'h9', clientNonce });
    sent.push(hello);
    peer.write(hello);
    assert(await peer.waitMessages(1), 'challenge');
    const challenge = peer.messages()[0]!;
    const transcript: Transcript = {
      purpose: 'frames',
      clientHost: 'h9',
      clientNonce,
      serverHost: String(challenge.host),
      serverNonce: String(challenge.serverNonce),
    };
    const answer = frame({ proof: hmacProof(KEY, 'client', transcript) });
    sent.push(answer);
    peer.write(answer);
    assert(await peer.waitMessages(2), 'verdict');
    assert.deepEqual(peer.messages()[1], { ok: true }, 'the genuine session gets in');
    peer.socket.destroy();

    for (const paced of [false, true]) {
      const replay = await RawPeer.connect(hostPort);
      replay.write(sent[0]!);
      if (paced) assert(await replay.waitMessages(1), 'challenge to the replay');
      replay.write(sent[1]!);
      assert(await replay.waitMessages(2), 'a verdict for the replay');
      assert.equal(replay.messages()[1]!.ok, false, 'a replayed proof is refused');
      const line = await waitForLog(replay);
      assert.match(line ?? '', /LINK_AUTH_FAILED/, `logged: ${line}`);
    }
  });

  it('accepts a migration only from a peer that proved the key', async () => {
    const stream = migrationPrefix('vm-intruder');
    // 1. No proof at all: the stream follows the hello.
    const noProof = await RawPeer.connect(hostPort);
    noProof.write(
      frame({
        hello: 'xenvmc',
        purpose: 'migration',
        host: 'intruder',
        clientNonce: randomBytes(16).toString('hex'),
      }),
    );
    noProof.write(stream);
    assert(await noProof.closesWithin(REFUSE_WITHIN_MS), 'dropped without a proof');
    // 2. A wrong proof, and the stream sent at once without waiting for the verdict.
    const wrong = await RawPeer.connect(hostPort);
    const clientNonce = randomBytes(16).toString('hex');
    wrong.write(frame({ hello: 'xenvmc', purpose: 'migration', host: 'intruder', clientNonce }));
    assert(await wrong.waitMessages(1), 'challenge');
    const challenge = wrong.messages()[0]!;
    const transcript: Transcript = {
      purpose: 'migration',
      clientHost: 'intruder',
      clientNonce,
      serverHost: String(challenge.host),
      serverNonce: String(challenge.serverNonce),
    };
    wrong.write(
      Buffer.concat([frame({ proof: hmacProof(WRONG_KEY, 'client', transcript) }), stream]),
    );
    assert(await wrong.closesWithin(REFUSE_WITHIN_MS), 'dropped with a wrong proof');
    assert(!wrong.messages().some((m) => m.type === 'reserved'), 'nothing reserved');
    for (const peer of [noProof, wrong]) {
      const line = await waitForLog(peer);
      assert.match(line ?? '', /LINK_(MALFORMED|AUTH_FAILED)/, `logged: ${line}`);
    }
    assertNothingAccepted('migration without a proof');

    // Control: the same stream from a key holder is taken (the host reserves memory), so the
    // refusals above are the handshake's doing, not the stream's.
    const genuine = await handshake(hostPort, { key: KEY, purpose: 'migration' });
    assert.deepEqual(genuine.messages()[1], { ok: true }, 'a key holder gets in');
    genuine.write(stream);
    assert(await genuine.waitMessages(3, 20_000), 'the host reserves memory for a key holder');
    assert.equal(genuine.messages()[2]!.type, 'reserved', 'reserved');
    genuine.socket.destroy();
    const line = await waitForLog(genuine, 10_000);
    assert.match(line ?? '', /STREAM_TRUNCATED|LINK|closed/, `the cut stream is logged: ${line}`);
    const deadline = Date.now() + 10_000;
    while (host.memoryUsedBytes() !== 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal(host.memoryUsedBytes(), 0, 'the partial copy is discarded');
  });

  it(`fuzz: garbage after a valid handshake is refused and the host keeps serving (seed ${fuzzSeed(1103)}, ${fuzzRuns(45)} runs)`, async () => {
    const garbage = fc.oneof(
      fc.uint8Array({ minLength: 1, maxLength: 128 }),
      fc.jsonValue({ maxDepth: 2 }).map((value) => new Uint8Array(frame(value))),
      fc
        .record({ type: fc.integer({ min: 0, max: 8 }), length: fc.nat() })
        .map(({ type, length }) => {
          const header = Buffer.alloc(8);
          header.writeUInt32LE(type, 0);
          header.writeUInt32LE(length >>> 0, 4);
          return new Uint8Array(header);
        }),
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...PURPOSES), garbage, async (purpose, bytes) => {
        const peer = await handshake(hostPort, { key: KEY, purpose });
        assert.deepEqual(peer.messages()[1], { ok: true }, 'a key holder gets in');
        peer.write(bytes);
        peer.socket.end();
        assert(await peer.closesWithin(REFUSE_WITHIN_MS), `the host closes the ${purpose} link`);
      }),
      { seed: fuzzSeed(1103), numRuns: fuzzRuns(45) },
    );
    assertNothingAccepted('garbage after the handshake');
  });

  it('checks the target: a server without the key gets no proof from the connecting host', async () => {
    // What a recorded genuine challenge looks like (to replay it below).
    const recorded = await RawPeer.connect(hostPort);
    recorded.write(
      frame({
        hello: 'xenvmc',
        purpose: 'migration',
        host: 'fuzz-source',
        clientNonce: randomBytes(16).toString('hex'),
      }),
    );
    assert(await recorded.waitMessages(1), 'challenge');
    const genuineChallenge = recorded.messages()[0]!;
    recorded.socket.destroy();

    const impostors: { what: string; answer: (hello: Record<string, unknown>) => unknown[] }[] = [
      {
        what: 'a random proof',
        answer: () => [
          {
            serverNonce: randomBytes(16).toString('hex'),
            host: 'fake',
            proof: randomBytes(32).toString('hex'),
          },
        ],
      },
      {
        what: 'a proof made with the wrong key',
        answer: (hello) => {
          const serverNonce = randomBytes(16).toString('hex');
          const transcript: Transcript = {
            purpose: String(hello.purpose),
            clientHost: String(hello.host),
            clientNonce: String(hello.clientNonce),
            serverHost: 'fake',
            serverNonce,
          };
          return [{ serverNonce, host: 'fake', proof: hmacProof(WRONG_KEY, 'server', transcript) }];
        },
      },
      { what: 'a replayed genuine challenge', answer: () => [genuineChallenge] },
      { what: 'a verdict without a challenge', answer: () => [{ ok: true }] },
      {
        what: 'no nonce and an empty proof',
        answer: () => [{ host: 'fake', proof: '' }, { ok: true }],
      },
      { what: 'null', answer: () => [null] },
      {
        what: 'a proof of 64 characters and 65 bytes',
        answer: () => [
          {
            serverNonce: randomBytes(16).toString('hex'),
            host: 'fake',
            proof: `é${'a'.repeat(63)}`,
          },
        ],
      },
    ];
    for (const impostor of impostors) {
      const heard: Record<string, unknown>[][] = [];
      const server = net.createServer((socket) => {
        const bytes: Buffer[] = [];
        const index = heard.push([]) - 1;
        socket.on('error', () => {});
        socket.on('data', (chunk: Buffer) => {
          bytes.push(chunk);
          const messages = parseMessages(Buffer.concat(bytes));
          if (messages.length === 1 && heard[index]!.length === 0) {
            for (const message of impostor.answer(messages[0]!)) socket.write(frame(message));
          }
          heard[index] = messages;
        });
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as net.AddressInfo).port;
      await assert.rejects(
        connectToPeer(
          { host: '127.0.0.1', port },
          { clusterKey: KEY, localHost: 'fuzz-source', purpose: 'migration' },
        ),
        (error: unknown) =>
          error instanceof TestbedError && /^LINK_(AUTH_FAILED|MALFORMED)$/.test(error.code),
        `connectToPeer refuses ${impostor.what}`,
      );
      await new Promise((resolve) => setTimeout(resolve, 20));
      server.close();
      assert.equal(heard.length, 1, `${impostor.what}: one connection`);
      assert.equal(heard[0]!.length, 1, `${impostor.what}: the impostor heard only the hello`);
      assert(!('proof' in heard[0]![0]!), `${impostor.what}: no proof was sent`);
    }
  });

  it('a relay that changes the purpose or a host name in transit breaks the proofs', async () => {
    for (const field of ['purpose', 'host'] as const) {
      const relay = net.createServer((client) => {
        client.on('error', () => {});
        const upstream = net.connect(hostPort, '127.0.0.1');
        upstream.on('error', () => {});
        let first = true;
        client.on('data', (chunk: Buffer) => {
          if (first) {
            first = false;
            const hello = parseMessages(chunk)[0]!;
            const altered =
              field === 'purpose' ? { ...hello, purpose: 'linkTest' } : { ...hello, host: 'h0' };
            upstream.write(frame(altered));
          } else {
            upstream.write(chunk);
          }
        });
        upstream.on('data', (chunk) => client.write(chunk));
        upstream.on('close', () => client.destroy());
        client.on('close', () => upstream.destroy());
      });
      await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
      const port = (relay.address() as net.AddressInfo).port;
      await assert.rejects(
        connectToPeer(
          { host: '127.0.0.1', port },
          { clusterKey: KEY, localHost: 'fuzz-source', purpose: 'frames' },
        ),
        (error: unknown) => error instanceof TestbedError && error.code === 'LINK_AUTH_FAILED',
        `a relay that alters the ${field} is caught`,
      );
      relay.close();
    }
  });

  it(`fuzz: a target that answers with arbitrary bytes never gets a proof (seed ${fuzzSeed(1104)}, ${fuzzRuns(100)} runs)`, async () => {
    let heard: Buffer = Buffer.alloc(0);
    let reply: Uint8Array[] = [];
    const server = net.createServer((socket) => {
      heard = Buffer.alloc(0);
      socket.on('error', () => {});
      let answered = false;
      socket.on('data', (chunk: Buffer) => {
        heard = Buffer.concat([heard, chunk]);
        if (answered) return;
        answered = true;
        for (const part of reply) socket.write(part);
        socket.end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const answer = fc.oneof(
      fc.uint8Array({ maxLength: 96 }),
      fc.jsonValue({ maxDepth: 2 }).map((value) => new Uint8Array(frame(value))),
      fc
        .record({
          serverNonce: fc.oneof(
            fc.constant(randomBytes(16).toString('hex')),
            fc.jsonValue({ maxDepth: 1 }),
          ),
          host: fc.jsonValue({ maxDepth: 1 }),
          proof: fc.oneof(
            fc.string({
              unit: fc.constantFrom(...'0123456789abcdef'),
              minLength: 64,
              maxLength: 64,
            }),
            fc.string({ minLength: 63, maxLength: 63 }).map((text) => `é${text}`),
            fc.jsonValue(),
          ),
          ok: fc.jsonValue({ maxDepth: 1 }),
        })
        .map((value) => new Uint8Array(frame(value))),
    );
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(answer, { minLength: 1, maxLength: 3 }), async (parts) => {
          reply = parts;
          const started = Date.now();
          const outcome = await connectToPeer(
            { host: '127.0.0.1', port },
            { clusterKey: KEY, localHost: 'fuzz-source', purpose: 'migration' },
          ).then(
            (link) => {
              link.socket.destroy();
              return null;
            },
            (error: unknown) => error,
          );
          assert(outcome instanceof TestbedError, `fails with a TestbedError, not ${outcome}`);
          assert.match(outcome.code, /^LINK_/, 'a link error code');
          assert(Date.now() - started < REFUSE_WITHIN_MS, 'fails at once when the target hangs up');
          await new Promise((resolve) => setTimeout(resolve, 5));
          assert.equal(parseMessages(heard).length, 1, 'the impostor heard only the hello');
        }),
        { seed: fuzzSeed(1104), numRuns: fuzzRuns(100) },
      );
    } finally {
      server.close();
    }
  });

  it('keeps serving: a key holder runs a link test, and stalled peers were dropped in time', async () => {
    const other = await startHost('fuzz-source', KEY, () => {});
    try {
      const result = await other.linkTest(`127.0.0.1:${hostPort}`, 256 * 1024);
      assert.equal(result.bytes, 256 * 1024, 'the link test ran through the fuzzed host');
      const stranger = await startHost('fuzz-stranger', WRONG_KEY, () => {});
      try {
        await assert.rejects(
          stranger.linkTest(`127.0.0.1:${hostPort}`, 1024),
          (error: unknown) => error instanceof TestbedError && error.code === 'LINK_AUTH_FAILED',
          'a host with another key is refused',
        );
      } finally {
        await stranger.close();
      }
    } finally {
      await other.close();
    }
    for (const peer of stalled) await peer.check();
    assertNothingAccepted('at the end');
  });
});
