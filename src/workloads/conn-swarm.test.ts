/**
 * Goal: the connection swarm holds its connections open, carries exactly `bytesPerConnection`
 * each way on every one at its pace, and its check catches any byte lost, repeated, flipped
 * or delivered on the wrong connection; it survives a migration (a structured clone of its
 * state) mid-transfer, retries connects, turns away connections beyond its count, and rejects
 * bad parameters naming them.
 * Method: the content functions are checked directly (fast-check, fixed seeds); the program
 * runs on two fake domains (real `GuestMemory`, a manual clock, timers fired by hand) over the
 * in-memory `FakeNet` pair (src/workloads/fake-world.ts); a wrapper around the receiver's
 * `read` injects faults.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../core/errors.ts';
import type { Region } from '../memory/layout.ts';
import {
  CONN_SWARM_STAGING_BYTES,
  type ConnSwarmConfig,
  type ConnSwarmParams,
  type ConnSwarmState,
  type ConnSwarmStats,
  checkSwarmArrival,
  connSwarmFactory,
  countSwarmMismatches,
  fillSwarmBytes,
  resolveConnSwarmParams,
  swarmBytesDue,
  swarmKey,
} from './conn-swarm.ts';
import { FakeWorld } from './fake-world.ts';
import { CONNECT_RETRY_MS } from './socket-lifecycle.ts';

const SERVER_IP = '10.0.0.1';
const CLIENT_IP = '10.0.0.2';
const PORT = 7100;
const REGION: Region = { name: 'program', firstPage: 0, pageCount: 16 };

function world(bufferBytes?: number): FakeWorld<ConnSwarmParams, ConnSwarmState> {
  return new FakeWorld(connSwarmFactory, { ipA: SERVER_IP, ipB: CLIENT_IP, bufferBytes });
}

function serverParams(connections: number, bytes: number, rate: number): ConnSwarmParams {
  return {
    role: 'server',
    port: PORT,
    connections,
    bytesPerConnection: bytes,
    bytesPerSecond: rate,
  };
}

function clientParams(connections: number, bytes: number, rate: number): ConnSwarmParams {
  return { ...serverParams(connections, bytes, rate), role: 'client', peerIp: SERVER_IP };
}

function stats(domain: { stats(): unknown }): ConnSwarmStats {
  return domain.stats() as ConnSwarmStats;
}

/** Every connection done, every byte verified both ways, nothing lost or extra. */
function assertIntact(
  w: FakeWorld<ConnSwarmParams, ConnSwarmState>,
  connections: number,
  bytes: number,
): void {
  for (const [name, domain] of [
    ['server', w.a],
    ['client', w.b],
  ] as const) {
    const s = stats(domain);
    assert.equal(s.done, connections, `${name}: every connection done (${s.lastError})`);
    assert.equal(s.failed, 0, `${name}: no connection failed`);
    assert.equal(s.finished, true, `${name} finished`);
    assert.equal(s.open, 0, `${name}: nothing left open`);
    assert.equal(s.bytesSent, connections * bytes, `${name}: sent every byte`);
    assert.equal(s.bytesVerified, connections * bytes, `${name}: verified every byte`);
    assert.equal(s.mismatchedBytes, 0, `${name}: no byte differs`);
    assert.equal(s.excessBytes, 0, `${name}: no byte beyond the end`);
    assert.equal(s.shortBytes, 0, `${name}: no direction ended short`);
  }
  assert.equal(w.pair.a.openSocketCount, 0, 'the server side leaks no socket');
  assert.equal(w.pair.b.openSocketCount, 0, 'the client side leaks no socket');
}

describe('conn-swarm content', () => {
  it('gives the same bytes whatever the split of a range', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffff_ffff }),
        fc.integer({ min: 0, max: 2 ** 40 }),
        fc.array(fc.integer({ min: 0, max: 37 }), { minLength: 1, maxLength: 8 }),
        (key, offset, lengths) => {
          const total = lengths.reduce((a, b) => a + b, 0);
          const whole = new Uint8Array(total);
          fillSwarmBytes(key, offset, whole);
          let at = 0;
          for (const length of lengths) {
            const part = new Uint8Array(length);
            fillSwarmBytes(key, offset + at, part);
            assert.deepEqual(part, whole.subarray(at, at + length), `part at ${at}`);
            at += length;
          }
          assert.equal(countSwarmMismatches(key, offset, whole), 0, 'a range matches itself');
        },
      ),
      { seed: 8101, numRuns: 300 },
    );
  });

  it('tells a dropped, repeated or flipped span, and another direction or connection', () => {
    const key = swarmKey(1, 40000, 'up');
    const stream = new Uint8Array(4096);
    fillSwarmBytes(key, 0, stream);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2000 }),
        fc.integer({ min: 1, max: 64 }),
        (at, span) => {
          const dropped = new Uint8Array([
            ...stream.subarray(0, at),
            ...stream.subarray(at + span, 3000),
          ]);
          assert.ok(countSwarmMismatches(key, 0, dropped) > 0, `drop of ${span} at ${at} seen`);
          const repeated = new Uint8Array([
            ...stream.subarray(0, at + span),
            ...stream.subarray(at, 3000),
          ]);
          assert.ok(countSwarmMismatches(key, 0, repeated) > 0, `repeat of ${span} at ${at} seen`);
          const flipped = stream.slice(0, 3000);
          flipped[at] = flipped[at]! ^ 0x01;
          assert.equal(countSwarmMismatches(key, 0, flipped), 1, `flip at ${at} seen once`);
        },
      ),
      { seed: 8102, numRuns: 200 },
    );
    for (const other of [
      swarmKey(1, 40000, 'down'),
      swarmKey(1, 40001, 'up'),
      swarmKey(2, 40000, 'up'),
    ]) {
      assert.ok(
        countSwarmMismatches(other, 0, stream) > 4000,
        `key ${other} gives other bytes than ${key}`,
      );
    }
  });

  it('splits an arrival into verified, mismatched and excess bytes', () => {
    const key = swarmKey(3, 50000, 'down');
    const bytes = new Uint8Array(100);
    fillSwarmBytes(key, 950, bytes);
    bytes[10] = bytes[10]! ^ 0xff;
    assert.deepEqual(
      checkSwarmArrival(key, 950, 1000, bytes),
      { verified: 49, mismatched: 1, excess: 50 },
      'the 50 bytes past 1000 are excess, one flipped byte within',
    );
    assert.deepEqual(
      checkSwarmArrival(key, 1200, 1000, bytes),
      { verified: 0, mismatched: 0, excess: 100 },
      'every byte past the end is excess',
    );
  });

  it('paces by elapsed guest time, capped at the total', () => {
    const config = resolveConnSwarmParams(clientParams(1, 10_000, 2000), REGION);
    assert.equal(swarmBytesDue(config, 100, 50), 0, 'nothing due before the opening');
    assert.equal(swarmBytesDue(config, 100, 1100), 2000, 'one second: one second of pace');
    assert.equal(swarmBytesDue(config, 100, 1100.4), 2000, 'whole bytes only');
    assert.equal(swarmBytesDue(config, 100, 60_000), 10_000, 'never more than the total');
  });
});

describe('conn-swarm program', () => {
  it('holds every connection open at its pace and carries every byte both ways', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 0, max: 40_000 }),
        fc.integer({ min: 500, max: 50_000 }),
        fc.integer({ min: 1, max: 20_000 }),
        (connections, bytes, rate, bufferBytes) => {
          const w = world(bufferBytes);
          w.a.start(serverParams(connections, bytes, rate));
          w.b.start(clientParams(connections, bytes, rate));
          w.run(100);
          if (bytes >= (rate * 2) / 10) {
            // Paced: after 100 ms about a tenth of a second's bytes went, and all are open.
            assert.equal(stats(w.b).open, connections, 'every connection open early on');
            assert.ok(stats(w.b).bytesSent <= connections * rate, 'no more than the pace');
          }
          w.run();
          assertIntact(w, connections, bytes);
          assert.equal(stats(w.a).openPeak, connections, 'server held them all at once');
          assert.equal(stats(w.b).openPeak, connections, 'client held them all at once');
        },
      ),
      { seed: 8103, numRuns: 40 },
    );
  });

  it('survives a migration of either side mid-transfer', () => {
    for (const side of ['a', 'b'] as const) {
      const w = world(3000);
      w.a.start(serverParams(8, 30_000, 10_000));
      w.b.start(clientParams(8, 30_000, 10_000));
      w.run(1500);
      assert.ok(stats(w.b).bytesSent > 0, 'bytes flowed before the migration');
      w[side].migrate(w.pair, 700);
      w.run();
      assertIntact(w, 8, 30_000);
    }
  });

  it('counts a flipped, a dropped and a repeated byte', () => {
    for (const fault of ['flip', 'drop', 'repeat'] as const) {
      const w = world();
      const read = w.pair.a.read.bind(w.pair.a);
      let injected = false;
      w.a.net = {
        ip: SERVER_IP,
        listen: (port) => w.pair.a.listen(port),
        unlisten: (port) => w.pair.a.unlisten(port),
        connect: (ip, port) => w.pair.a.connect(ip, port),
        write: (socket, bytes) => w.pair.a.write(socket, bytes),
        end: (socket) => w.pair.a.end(socket),
        close: (socket) => w.pair.a.close(socket),
        info: (socket) => w.pair.a.info(socket),
        read: (socket, maxBytes) => {
          const bytes = read(socket, maxBytes);
          if (injected || bytes.byteLength < 2) return bytes;
          injected = true;
          if (fault === 'flip') bytes[1] = bytes[1]! ^ 0x80;
          if (fault === 'drop') return bytes.subarray(1);
          if (fault === 'repeat') return new Uint8Array([bytes[0]!, ...bytes]);
          return bytes;
        },
      };
      w.a.start(serverParams(2, 5000, 5000));
      w.b.start(clientParams(2, 5000, 5000));
      w.run();
      const s = stats(w.a);
      assert.ok(injected, `${fault} injected`);
      if (fault === 'flip') assert.equal(s.mismatchedBytes, 1, 'one flipped byte');
      else assert.ok(s.mismatchedBytes > 0, `${fault}: later bytes differ`);
      if (fault === 'drop') assert.equal(s.shortBytes, 1, 'the drop ends one byte short');
      if (fault === 'repeat') assert.equal(s.excessBytes, 1, 'the repeat ends one byte long');
      assert.equal(s.bytesVerified < 10_000, true, `${fault}: not every byte verified`);
    }
  });

  it('retries connects until the server listens, and the server turns away extras', () => {
    const w = world();
    w.b.start(clientParams(3, 2000, 4000));
    w.run(CONNECT_RETRY_MS * 3 + 1);
    assert.equal(stats(w.b).connecting, 3, 'all three wait for a server');
    assert.equal(stats(w.b).connectTries >= 9, true, 'each tried more than once');
    w.a.start(serverParams(2, 2000, 4000));
    w.run();
    const server = stats(w.a);
    const client = stats(w.b);
    assert.equal(server.done, 2, 'the server served its two');
    assert.equal(server.refused, 1, 'and turned one away');
    // The turned-away one sees the server's end at once: it ends short, every byte lost.
    assert.equal(client.done, 3, 'three client connections ended');
    assert.equal(client.shortBytes, 2000, 'the turned-away one counts its bytes as short');
    assert.equal(client.bytesVerified, 4000, 'the served two carried every byte');
    assert.equal(client.open, 0, 'nothing counted open');
  });

  it('gives up after connectTriesMax tries', () => {
    const w = world();
    w.b.start({ ...clientParams(2, 100, 100), connectTriesMax: 3 });
    w.run();
    const s = stats(w.b);
    assert.equal(s.failed, 2, 'both gave up');
    assert.equal(s.connectTries, 6, 'three tries each');
    assert.match(s.lastError, /gave up after 3 connect tries/, 'the error says why');
    assert.equal(s.finished, true, 'a failed swarm is finished');
  });
});

describe('conn-swarm parameters', () => {
  it('fills in the defaults', () => {
    const config: ConnSwarmConfig = resolveConnSwarmParams(clientParams(5, 100, 10), REGION);
    assert.deepEqual(
      config,
      {
        role: 'client',
        port: PORT,
        peerIp: SERVER_IP,
        connections: 5,
        bytesPerConnection: 100,
        bytesPerSecond: 10,
        tickMs: 100,
        seed: 1,
        connectTriesMax: 100,
      },
      'defaults',
    );
  });

  it('rejects bad parameters, naming them', () => {
    const cases: [ConnSwarmParams, RegExp][] = [
      [{ ...clientParams(1, 1, 1), role: 'peer' as 'client' }, /role/],
      [{ ...clientParams(1, 1, 1), port: 0 }, /port/],
      [{ ...clientParams(1, 1, 1), peerIp: '10.0.0' }, /peerIp/],
      [{ ...serverParams(1, 1, 1), peerIp: SERVER_IP }, /peerIp/],
      [{ ...serverParams(1, 1, 1), connectTriesMax: 3 }, /connectTriesMax/],
      [clientParams(0, 1, 1), /connections/],
      [clientParams(4097, 1, 1), /connections/],
      [clientParams(1, -1, 1), /bytesPerConnection/],
      [clientParams(1, 2 ** 41, 1), /bytesPerConnection/],
      [clientParams(1, 1, 0), /bytesPerSecond/],
      [clientParams(1, 1, 1.5), /bytesPerSecond/],
      [{ ...clientParams(1, 1, 1), tickMs: 0 }, /tickMs/],
      [{ ...clientParams(1, 1, 1), seed: -1 }, /seed/],
      [{ ...clientParams(1, 1, 1), connectTriesMax: 0 }, /connectTriesMax/],
      [
        { ...clientParams(1, 1, 1), rate: 3 } as ConnSwarmParams,
        /unknown conn-swarm parameter rate/,
      ],
    ];
    for (const [params, names] of cases) {
      assert.throws(
        () => resolveConnSwarmParams(params, REGION),
        (error: unknown) => error instanceof InputError && names.test(error.message),
        `${JSON.stringify(params)} is rejected naming ${names}`,
      );
    }
    const tiny: Region = { name: 'program', firstPage: 0, pageCount: 1 };
    assert.ok(CONN_SWARM_STAGING_BYTES > 4096, 'the staging area is more than one page');
    assert.throws(
      () => resolveConnSwarmParams(clientParams(1, 1, 1), tiny),
      /staging area/,
      'a data region too small for the staging area',
    );
  });
});
