/**
 * Goal: the netbench's four roles do what the benchmark relies on: a source delivers exactly
 * `bytes` to a sink in any message size and buffer size, and both finish and close; a ping
 * completes its rounds against an echo, records one round-trip time per measured round and
 * reports median and p99; the figures come from guest time; the programs survive a structured
 * clone of their state (a migration) mid-transfer; they retry a connect, record errors, and
 * reject bad parameters.
 * Method: two fake domains (real `GuestMemory`, a shared manual clock, timer lists fired by hand)
 * over the in-memory `FakeNet` pair; fast-check with fixed seeds picks the sizes. The clock can
 * tick by 1 ms on every reading, so that intervals are non-zero and countable.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout } from '../memory/layout.ts';
import { type FakeDomain, FakeWorld } from './fake-world.ts';
import {
  NETBENCH_CONNECT_RETRY_MS,
  NETBENCH_SEND_BYTES_PER_EVENT_MAX,
  type NetbenchParams,
  type NetbenchState,
  netbenchFactory,
} from './netbench.ts';

/** 4096 pages: the program region is pages 2560..4095 (1536 pages, 6 MiB). */
const DOMAIN_PAGES = 4096;
const LISTENER_IP = '10.0.0.1';
const CONNECTOR_IP = '10.0.0.2';
const PORT = 7000;

/** A listener domain (side a) and a connector domain (side b), and a driver. */
class World extends FakeWorld<NetbenchParams, NetbenchState> {
  /** `tickMs`: how far the clock moves on every reading (0: only timers move it). */
  constructor(bufferBytes?: number, tickMs = 0) {
    super(netbenchFactory, { ipA: LISTENER_IP, ipB: CONNECTOR_IP, bufferBytes, tickMs });
  }

  get listener(): FakeDomain<NetbenchParams, NetbenchState> {
    return this.a;
  }

  get connector(): FakeDomain<NetbenchParams, NetbenchState> {
    return this.b;
  }
}

function sourceParams(bytes: number, messageBytes: number): NetbenchParams {
  return { role: 'source', port: PORT, peerIp: LISTENER_IP, bytes, messageBytes };
}

function pingParams(rounds: number, messageBytes: number, warmupRounds = 0): NetbenchParams {
  return { role: 'ping', port: PORT, peerIp: LISTENER_IP, rounds, messageBytes, warmupRounds };
}

/** Both programs finished, closed, without error, and no socket is left open. */
function assertBothDone(world: World): void {
  for (const [name, domain] of [
    ['listener', world.listener],
    ['connector', world.connector],
  ] as const) {
    const stats = domain.stats();
    assert.equal(stats.phase, 'done', `${name} done (${stats.lastError})`);
    assert.equal(stats.errors, 0, `${name} has no error`);
    assert.equal(stats.finished, true, `${name} finished`);
  }
  assert.equal(world.pair.a.openSocketCount, 0, 'the listener side leaks no socket');
  assert.equal(world.pair.b.openSocketCount, 0, 'the connector side leaks no socket');
}

describe('netbench', () => {
  it('source delivers exactly its bytes to a sink, whatever the message and buffer sizes', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 300_000 }),
        fc.integer({ min: 1, max: 70_000 }),
        fc.integer({ min: 1, max: 100_000 }),
        (bytes, messageBytes, bufferBytes) => {
          // Tiny messages or buffers with many bytes only slow the run down.
          fc.pre(Math.min(messageBytes, bufferBytes) >= 256 || bytes < 20_000);
          const world = new World(bufferBytes);
          world.listener.start({ role: 'sink', port: PORT });
          world.connector.start(sourceParams(bytes, messageBytes));
          world.run();
          assertBothDone(world);
          const sink = world.listener.stats();
          const source = world.connector.stats();
          assert.equal(source.bytesSent, bytes, 'the source sent its bytes');
          assert.equal(sink.bytesReceived, bytes, 'the sink received them all');
          assert.equal(sink.bytesSent, 0, 'a sink sends nothing');
        },
      ),
      { seed: 0x5eed, numRuns: 40 },
    );
  });

  it('sink measures throughput from the first to the last arrival in guest time', () => {
    const world = new World(10_000, 1);
    world.listener.start({ role: 'sink', port: PORT });
    world.connector.start(sourceParams(100_000, 1000));
    world.run();
    assertBothDone(world);
    const sink = world.listener.stats();
    const elapsedMs = Number(sink.lastArrivalMs) - Number(sink.firstArrivalMs);
    assert.ok(elapsedMs > 0, `the ticking clock separates the arrivals: ${elapsedMs} ms`);
    assert.equal(sink.elapsedMs, elapsedMs, 'elapsedMs is last minus first arrival');
    const measuredBytes = 100_000 - Number(sink.firstArrivalBytes);
    assert.ok(Number(sink.firstArrivalBytes) > 0, 'the first arrival brought bytes');
    assert.equal(
      sink.throughputBytesPerSec,
      (measuredBytes * 1000) / elapsedMs,
      'throughput counts the bytes after the first arrival',
    );
  });

  it('sink reports zero throughput before two arrivals', () => {
    const world = new World();
    world.listener.start({ role: 'sink', port: PORT });
    const stats = world.listener.stats();
    assert.equal(stats.phase, 'listening', 'the sink listens');
    assert.equal(stats.throughputBytesPerSec, 0, 'no throughput yet');
    assert.equal(stats.finished, false, 'not finished');
    assert.equal(stats.firstArrivalMs, -1, 'no arrival yet');
  });

  it('ping completes its rounds against an echo, whatever the message and buffer sizes', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 0, max: 5 }),
        fc.integer({ min: 1, max: 300_000 }),
        fc.integer({ min: 64, max: 100_000 }),
        (rounds, warmupRounds, messageBytes, bufferBytes) => {
          // Larger than the echo's staging area (256 KiB) sometimes; few bytes in all, for speed.
          fc.pre(rounds * messageBytes < 1_500_000);
          fc.pre((rounds * messageBytes) / bufferBytes < 2000);
          const world = new World(bufferBytes);
          world.listener.start({ role: 'echo', port: PORT });
          world.connector.start(pingParams(rounds, messageBytes, warmupRounds));
          world.run();
          assertBothDone(world);
          const ping = world.connector.stats();
          const echo = world.listener.stats();
          const total = (rounds + warmupRounds) * messageBytes;
          assert.equal(ping.roundsDone, rounds + warmupRounds, 'every round done');
          assert.equal(ping.rttCount, rounds, 'one sample per measured round');
          assert.equal(ping.bytesSent, total, 'ping sent every message');
          assert.equal(ping.bytesReceived, total, 'and got every byte back');
          assert.equal(echo.bytesReceived, total, 'the echo read them');
          assert.equal(echo.bytesSent, total, 'and wrote them back');
        },
      ),
      { seed: 0xec40, numRuns: 40 },
    );
  });

  it('ping reports median and p99 of guest round-trip times, warm-up excluded', () => {
    const world = new World(100_000, 1);
    world.listener.start({ role: 'echo', port: PORT });
    world.connector.start(pingParams(200, 64, 10));
    world.run();
    assertBothDone(world);
    const state = world.connector.state;
    assert.equal(state.rttMs.length, 200, 'warm-up rounds are not stored');
    const sorted = [...state.rttMs].sort((a, b) => a - b);
    const stats = world.connector.stats();
    assert.ok(sorted[0]! > 0, `a ticking clock gives positive round trips: ${sorted[0]}`);
    assert.equal(stats.rttMedianMs, (sorted[99]! + sorted[100]!) / 2, 'median of 200 samples');
    assert.equal(stats.rttP99Ms, sorted[197], 'p99 is the 198th of 200 (nearest rank)');
    assert.equal(stats.rttMinMs, sorted[0], 'minimum');
    assert.equal(stats.rttMaxMs, sorted[199], 'maximum');
  });

  it('ping reports no round-trip figures before it finished', () => {
    const world = new World();
    world.listener.start({ role: 'echo', port: PORT });
    world.connector.start(pingParams(5, 64));
    for (let i = 0; i < 6; i++) world.pair.step();
    const stats = world.connector.stats();
    assert.equal(stats.finished, false, 'not finished yet');
    assert.equal(stats.rttMedianMs, -1, 'median only at the end');
    assert.equal(stats.rttP99Ms, -1, 'p99 only at the end');
  });

  it('continues exactly after a structured clone of its state at any moment', () => {
    fc.assert(
      fc.property(
        fc.constantFrom<'stream' | 'ping'>('stream', 'ping'),
        fc.constantFrom<'listener' | 'connector'>('listener', 'connector'),
        fc.integer({ min: 0, max: 999 }),
        (kind, migrating, cutPermille) => {
          const start = (): World => {
            const world = new World(3000);
            if (kind === 'stream') {
              world.listener.start({ role: 'sink', port: PORT });
              world.connector.start(sourceParams(50_000, 1500));
            } else {
              world.listener.start({ role: 'echo', port: PORT });
              world.connector.start(pingParams(20, 5000));
            }
            return world;
          };
          const dry = start();
          let roundCount = 0;
          while (dry.pair.step()) roundCount++;
          const world = start();
          const cut = Math.floor((cutPermille * roundCount) / 1000);
          for (let i = 0; i < cut; i++) world.pair.step();
          world[migrating].migrate(world.pair);
          world.run();
          assertBothDone(world);
          const received = kind === 'stream' ? world.listener.stats() : world.connector.stats();
          const expected = kind === 'stream' ? 50_000 : 100_000;
          assert.equal(received.bytesReceived, expected, `${kind}: every byte arrived`);
        },
      ),
      { seed: 0xc10e, numRuns: 40 },
    );
  });

  it('source yields with a send timer when the socket takes more than one event may write', () => {
    const bytes = 2 * NETBENCH_SEND_BYTES_PER_EVENT_MAX + 123;
    const world = new World(4 * NETBENCH_SEND_BYTES_PER_EVENT_MAX);
    world.listener.start({ role: 'sink', port: PORT });
    world.connector.start(sourceParams(bytes, 1 << 20));
    world.pair.pump();
    assert.equal(
      world.connector.state.bytesSent,
      NETBENCH_SEND_BYTES_PER_EVENT_MAX,
      'one budget per event',
    );
    assert.deepEqual(world.connector.timers, [{ dueMs: 0, tag: 'send' }], 'a 0 ms send timer');
    world.run();
    assertBothDone(world);
    assert.equal(world.listener.stats().bytesReceived, bytes, 'every byte arrived');
  });

  it('source writes its message from a staging area in its data region, through log-dirty', () => {
    const messageBytes = 3 * PAGE_SIZE_BYTES;
    const world = new World();
    world.connector.memory.setLogDirty(true);
    world.listener.start({ role: 'sink', port: PORT });
    world.connector.start(sourceParams(10 * messageBytes, messageBytes));
    world.run();
    assertBothDone(world);
    const first = world.connector.dataRegion.firstPage;
    const dirty = [...world.connector.memory.peekAndClean()];
    assert.deepEqual(dirty, [first, first + 1, first + 2], 'the three staging pages');
    const staged = world.connector.memory.bytes.subarray(
      first * PAGE_SIZE_BYTES,
      first * PAGE_SIZE_BYTES + messageBytes,
    );
    assert.ok(
      staged.every((byte, i) => byte === (i & 0xff)),
      'the staging area holds the message pattern',
    );
  });

  it('connector retries every 100 ms until the listener listens', () => {
    const world = new World();
    world.connector.start(sourceParams(10_000, 1000));
    world.run(250);
    assert.equal(world.connector.state.connectTries, 3, 'tries at 0, 100 and 200 ms');
    assert.equal(world.connector.state.phase, 'retryWait', 'waiting for the next try');
    world.listener.start({ role: 'sink', port: PORT });
    world.run();
    assertBothDone(world);
    assert.equal(world.connector.state.connectTries, 4, 'the fourth try connects');
    assert.equal(world.connector.state.connectedMs, 3 * NETBENCH_CONNECT_RETRY_MS, 'at 300 ms');
  });

  it('gives up after connectTriesMax and records the error', () => {
    const world = new World();
    world.connector.start({ ...pingParams(3, 64), connectTriesMax: 2 });
    world.run();
    const stats = world.connector.stats();
    assert.equal(stats.phase, 'failed', 'the ping failed');
    assert.equal(stats.errors, 1, 'one error');
    assert.equal(stats.finished, false, 'not finished');
    assert.match(String(stats.lastError), /gave up after 2 connect tries: ECONNREFUSED/);
    assert.equal(world.connector.logs.length, 1, 'the failure is logged');
  });

  it('records an error when the connection is reset mid-transfer', () => {
    const world = new World(4096);
    world.listener.start({ role: 'sink', port: PORT });
    world.connector.start(sourceParams(1_000_000, 8192));
    for (let i = 0; i < 20; i++) world.pair.step();
    world.pair.a.abort(world.listener.state.socket!);
    world.run();
    for (const domain of [world.listener, world.connector]) {
      const stats = domain.stats();
      assert.equal(stats.phase, 'failed', `${stats.role} failed`);
      assert.equal(stats.errors, 1, `${stats.role}: one error`);
      assert.match(String(stats.lastError), /^ECONNRESET: /, `${stats.role}: a reset`);
    }
    assert.equal(world.pair.a.openSocketCount + world.pair.b.openSocketCount, 0, 'no leak');
  });

  it('ping fails when more bytes come back than it sent', () => {
    const world = new World();
    const net = world.pair.a;
    net.listen(PORT);
    net.setHandler((event) => {
      if (event.type === 'accepted') net.write(event.socket, new Uint8Array(100));
    });
    world.connector.start(pingParams(3, 64));
    world.run();
    const stats = world.connector.stats();
    assert.equal(stats.phase, 'failed', 'the ping failed');
    assert.match(String(stats.lastError), /returned 100 B for a 64 B message/);
  });

  it('ping fails when the echo ends before the last round', () => {
    const world = new World();
    const net = world.pair.a;
    net.listen(PORT);
    net.setHandler((event) => {
      if (event.type === 'accepted') net.end(event.socket);
    });
    world.connector.start(pingParams(3, 64));
    world.run();
    const stats = world.connector.stats();
    assert.equal(stats.phase, 'failed', 'the ping failed');
    assert.match(String(stats.lastError), /the echo ended after 0 of 3 rounds/);
  });

  it('rejects bad parameters with an InputError that names them', () => {
    const source = sourceParams(100, 10);
    const ping = pingParams(10, 64);
    const cases: Array<[NetbenchParams, RegExp]> = [
      [{ role: 'peer' as 'sink', port: PORT }, /role must be 'sink', 'source', 'echo' or 'ping'/],
      [{ role: 'sink', port: 0 }, /port must be an integer in \[1, 65535\]; got 0/],
      [{ role: 'sink', port: PORT, bytes: 5 }, /role sink takes no parameter bytes; it takes/],
      [{ role: 'echo', port: PORT, peerIp: LISTENER_IP }, /role echo takes no parameter peerIp/],
      [{ ...source, rounds: 5 }, /role source takes no parameter rounds/],
      [{ ...ping, bytes: 5 }, /role ping takes no parameter bytes/],
      [{ ...source, peerIp: undefined }, /a source needs peerIp.*got undefined/],
      [{ ...ping, peerIp: '10.0.0.256' }, /a ping needs peerIp.*got 10\.0\.0\.256/],
      [{ ...source, bytes: -1 }, /bytes must be an integer in \[0, 1099511627776\]; got -1/],
      [{ ...source, bytes: undefined }, /bytes must be an integer .*got undefined/],
      [{ ...source, messageBytes: 0 }, /messageBytes must be an integer in \[1, 16777216\]/],
      [{ ...source, messageBytes: 8 << 20 }, /messageBytes 8388608 does not fit .* 6291456 B/],
      [{ ...ping, rounds: 0 }, /rounds must be an integer in \[1, 100000\]; got 0/],
      [{ ...ping, rounds: 1.5 }, /rounds .*got 1\.5/],
      [{ ...ping, warmupRounds: -1 }, /warmupRounds must be an integer .*got -1/],
      [{ ...ping, connectTriesMax: 0 }, /connectTriesMax .*\[1, 36000\]; got 0/],
    ];
    const world = new World();
    for (const [params, message] of cases) {
      assert.throws(
        () => netbenchFactory.create(world.listener.context(), params),
        (error: unknown) => {
          assert.ok(error instanceof InputError, `${JSON.stringify(params)} gives an InputError`);
          assert.match(error.message, message, `${JSON.stringify(params)}: the message`);
          return true;
        },
        `${JSON.stringify(params)} is refused`,
      );
    }
  });

  it('refuses to restore onto a data region too small for its message', () => {
    const world = new World();
    const program = world.connector.start(sourceParams(10, 4 << 20));
    const small = GuestMemory.create(defaultLayout(DOMAIN_PAGES, { kernel: 1536 + 512 }));
    const context = {
      ...world.connector.context(),
      memory: small,
      dataRegion: small.region('program'),
    };
    assert.throws(
      () => netbenchFactory.restore(context, structuredClone(program.state)),
      /messageBytes 4194304 does not fit/,
      'the message no longer fits',
    );
  });
});
