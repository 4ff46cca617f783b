/**
 * Goal: two streamers exchange their bytes both ways, once and in order (each side's send
 * digest equals the other's receive digest and the replayed `streamCrc`), whatever the sizes,
 * chunking and buffer sizes; they survive a structured clone of their state (a migration) at
 * any moment; they handle partial writes, retry a connect until the server listens, record
 * errors, dirty their staging pages, and reject bad parameters.
 * Method: two fake domains (real `GuestMemory`, a shared manual clock, timer lists fired by
 * hand) over the in-memory `FakeNet` pair; fast-check with fixed seeds picks the sizes and the
 * moment of the migration.
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
  CONNECT_RETRY_MS,
  SEND_BYTES_PER_EVENT_MAX,
  type StreamerParams,
  type StreamerState,
  streamCrc,
  streamerFactory,
} from './streamer.ts';

/** 4096 pages: the program region is pages 2560..4095 (1536 pages, 6 MiB). */
const DOMAIN_PAGES = 4096;
const SERVER_IP = '10.0.0.1';
const CLIENT_IP = '10.0.0.2';
const PORT = 7000;

/** The server (side a) and the client (side b), driven by the shared fake world. */
class World extends FakeWorld<StreamerParams, StreamerState> {
  constructor(bufferBytes?: number) {
    super(streamerFactory, { ipA: SERVER_IP, ipB: CLIENT_IP, bufferBytes });
  }

  get server(): FakeDomain<StreamerParams, StreamerState> {
    return this.a;
  }

  get client(): FakeDomain<StreamerParams, StreamerState> {
    return this.b;
  }
}

interface Exchange {
  serverBytes: number;
  clientBytes: number;
  chunkBytes: number;
  stagingSlots?: number;
}

function serverParams(exchange: Exchange): StreamerParams {
  const { chunkBytes, stagingSlots = 1 } = exchange;
  const staging = { chunkBytes, stagingBytes: chunkBytes * stagingSlots };
  return { role: 'server', port: PORT, bytes: exchange.serverBytes, seed: 11, ...staging };
}

function clientParams(exchange: Exchange): StreamerParams {
  const { chunkBytes, stagingSlots = 1 } = exchange;
  const staging = { chunkBytes, stagingBytes: chunkBytes * stagingSlots };
  const target = { port: PORT, peerIp: SERVER_IP };
  return { role: 'client', ...target, bytes: exchange.clientBytes, seed: 22, ...staging };
}

/** Both sides finished cleanly, with every byte delivered once and in order both ways. */
function assertExchanged(world: World, exchange: Exchange): void {
  const server = world.server.state;
  const client = world.client.state;
  for (const [name, state] of [
    ['server', server],
    ['client', client],
  ] as const) {
    assert.equal(state.phase, 'done', `${name} done (${state.lastError})`);
    assert.equal(state.errors, 0, `${name} has no error`);
  }
  assert.equal(client.bytesSent, exchange.clientBytes);
  assert.equal(server.bytesReceived, exchange.clientBytes);
  assert.equal(server.bytesSent, exchange.serverBytes);
  assert.equal(client.bytesReceived, exchange.serverBytes);
  assert.equal(server.receiveCrc, client.sendCrc, 'client -> server digests');
  assert.equal(client.receiveCrc, server.sendCrc, 'server -> client digests');
  assert.equal(client.sendCrc, streamCrc(22, exchange.clientBytes, exchange.chunkBytes));
  assert.equal(server.sendCrc, streamCrc(11, exchange.serverBytes, exchange.chunkBytes));
  assert.equal(world.pair.a.openSocketCount, 0, 'server side leaks no socket');
  assert.equal(world.pair.b.openSocketCount, 0, 'client side leaks no socket');
}

const exchangeArbitrary = fc.record({
  serverBytes: fc.integer({ min: 0, max: 200_000 }),
  clientBytes: fc.integer({ min: 0, max: 200_000 }),
  chunkBytes: fc.integer({ min: 1, max: 70_000 }),
  stagingSlots: fc.integer({ min: 1, max: 3 }),
});

describe('streamer', () => {
  it('exchanges bytes both ways with matching digests, whatever the sizes', () => {
    fc.assert(
      fc.property(
        exchangeArbitrary,
        fc.integer({ min: 64, max: 100_000 }),
        (exchange, bufferBytes) => {
          // Tiny chunks with many bytes only slow the run down; they are covered below.
          fc.pre(
            exchange.chunkBytes >= 512 || exchange.serverBytes + exchange.clientBytes < 20_000,
          );
          const world = new World(bufferBytes);
          world.server.start(serverParams(exchange));
          world.client.start(clientParams(exchange));
          world.run();
          assertExchanged(world, exchange);
          const stats = world.client.program!.stats();
          assert.equal(stats.finished, true);
          assert.equal(stats.bytesToSend, exchange.clientBytes);
        },
      ),
      { seed: 0x5eed, numRuns: 40 },
    );
  });

  it('exchanges bytes with 1-byte chunks and 1-byte socket buffers', () => {
    const exchange = { serverBytes: 3000, clientBytes: 2000, chunkBytes: 1 };
    const world = new World(1);
    world.server.start(serverParams(exchange));
    world.client.start(clientParams(exchange));
    world.run();
    assertExchanged(world, exchange);
  });

  it('continues exactly after a structured clone of its state at any moment', () => {
    let midTransfer = 0;
    let midChunk = 0;
    fc.assert(
      fc.property(
        exchangeArbitrary,
        fc.integer({ min: 256, max: 40_000 }),
        fc.integer({ min: 0, max: 999 }),
        fc.constantFrom('server', 'client'),
        (exchange, bufferBytes, cutPermille, migrating) => {
          fc.pre(exchange.chunkBytes >= 256);
          const start = (): World => {
            const world = new World(bufferBytes);
            world.server.start(serverParams(exchange));
            world.client.start(clientParams(exchange));
            return world;
          };
          // A dry run counts the rounds of an unbroken transfer; the cut falls among them.
          const dry = start();
          let roundCount = 0;
          while (dry.pair.step()) roundCount++;
          const world = start();
          const cut = Math.floor((cutPermille * roundCount) / 1000);
          for (let i = 0; i < cut; i++) world.pair.step();
          const before = world[migrating].state;
          if (before.phase === 'streaming') midTransfer++;
          if (before.chunkSentBytes > 0 && before.chunkSentBytes < before.chunkSizeBytes) {
            midChunk++;
          }
          world[migrating].migrate(world.pair, 300);
          world.run();
          assertExchanged(world, exchange);
        },
      ),
      { seed: 0xc10e, numRuns: 40 },
    );
    // The cut points must really fall inside transfers, and some inside a partly sent chunk.
    assert.ok(midTransfer >= 20, `${midTransfer} of 40 migrations in mid-transfer`);
    assert.ok(midChunk >= 3, `${midChunk} of 40 migrations in mid-chunk`);
  });

  it('records the stall a paused peer causes as the longest gap', () => {
    const exchange = { serverBytes: 2_000_000, clientBytes: 2_000_000, chunkBytes: 65_536 };
    const world = new World(16_384);
    world.server.start(serverParams(exchange));
    world.client.start(clientParams(exchange));
    for (let i = 0; i < 100; i++) world.pair.step();
    world.server.migrate(world.pair, 750);
    world.run();
    assertExchanged(world, exchange);
    const stats = world.client.program!.stats();
    assert.equal(stats.longestGapMs, 750);
    assert.equal(stats.longestGapEndMs, 750);
    // Bucket 10 holds [512, 1024) ms; every other arrival came at once (bucket 0).
    const counts = String(stats.gapCounts).split(',').map(Number);
    assert.equal(counts[10], 1);
    assert.equal(
      counts.reduce((sum, count) => sum + count, 0),
      counts[0]! + 1,
    );
  });

  it('handles partial writes: continues a chunk on writable', () => {
    const exchange = { serverBytes: 50_000, clientBytes: 30_000, chunkBytes: 4096 };
    const world = new World(1000);
    let partialWrites = 0;
    const real = world.client.net;
    world.client.net = {
      ip: real.ip,
      listen: (port) => real.listen(port),
      unlisten: (port) => real.unlisten(port),
      connect: (ip, port) => real.connect(ip, port),
      write: (socket, bytes) => {
        const taken = real.write(socket, bytes);
        if (taken < bytes.byteLength) partialWrites++;
        return taken;
      },
      read: (socket, maxBytes) => real.read(socket, maxBytes),
      end: (socket) => real.end(socket),
      close: (socket) => real.close(socket),
      info: (socket) => real.info(socket),
    };
    world.server.start(serverParams(exchange));
    world.client.start(clientParams(exchange));
    world.run();
    assertExchanged(world, exchange);
    assert.ok(partialWrites >= 20, `${partialWrites} partial writes`);
  });

  it('yields with a send timer when the socket takes more than one event may write', () => {
    const bytes = 2 * SEND_BYTES_PER_EVENT_MAX + 123;
    const exchange = { serverBytes: bytes, clientBytes: 0, chunkBytes: 1 << 20 };
    const world = new World(4 * SEND_BYTES_PER_EVENT_MAX);
    world.server.start(serverParams(exchange));
    world.client.start(clientParams(exchange));
    world.pair.pump();
    assert.equal(world.server.state.bytesSent, SEND_BYTES_PER_EVENT_MAX, 'one budget per event');
    assert.deepEqual(world.server.timers, [{ dueMs: 0, tag: 'send' }]);
    world.run();
    assertExchanged(world, exchange);
  });

  it('client retries every 100 ms until the server listens', () => {
    const exchange = { serverBytes: 10_000, clientBytes: 10_000, chunkBytes: 1000 };
    const world = new World();
    world.client.start(clientParams(exchange));
    world.run(250);
    assert.equal(world.client.state.connectTries, 3, 'tries at 0, 100 and 200 ms');
    assert.equal(world.client.state.phase, 'retryWait');
    world.server.start(serverParams(exchange));
    world.run();
    assertExchanged(world, exchange);
    assert.equal(world.client.state.connectTries, 4);
    assert.equal(world.client.state.connectedMs, 3 * CONNECT_RETRY_MS);
  });

  it('gives up after connectTriesMax and records the error', () => {
    for (const [peerIp, code] of [
      [SERVER_IP, 'ECONNREFUSED'],
      ['10.9.9.9', 'EHOSTUNREACH'],
    ] as const) {
      const world = new World();
      const params = { ...clientParams({ serverBytes: 0, clientBytes: 10, chunkBytes: 10 }) };
      world.client.start({ ...params, peerIp, connectTriesMax: 3 });
      world.run();
      const stats = world.client.program!.stats();
      assert.equal(stats.phase, 'failed');
      assert.equal(stats.errors, 1);
      assert.equal(stats.finished, false);
      assert.match(String(stats.lastError), new RegExp(`gave up after 3 connect tries: ${code}`));
      assert.equal(world.nowMs, 2 * CONNECT_RETRY_MS);
      assert.equal(world.pair.b.openSocketCount, 0);
      assert.equal(world.client.logs.length, 1, 'the failure is logged');
    }
  });

  it('records an error when the connection is reset mid-transfer', () => {
    const exchange = { serverBytes: 1_000_000, clientBytes: 1_000_000, chunkBytes: 8192 };
    const world = new World(4096);
    world.server.start(serverParams(exchange));
    world.client.start(clientParams(exchange));
    for (let i = 0; i < 50; i++) world.pair.step();
    world.pair.a.abort(world.server.state.socket!);
    world.run();
    for (const domain of [world.server, world.client]) {
      const stats = domain.program!.stats();
      assert.equal(stats.phase, 'failed');
      assert.equal(stats.errors, 1);
      assert.equal(stats.finished, false);
      assert.match(String(stats.lastError), /^ECONNRESET: /);
      assert.ok(Number(stats.bytesReceived) < 1_000_000);
    }
    assert.equal(world.pair.a.openSocketCount + world.pair.b.openSocketCount, 0);
  });

  it('server accepts exactly one connection and turns away a second one', () => {
    const exchange = { serverBytes: 20_000, clientBytes: 20_000, chunkBytes: 4096 };
    const world = new World();
    world.server.start(serverParams(exchange));
    world.client.start(clientParams(exchange));
    // A second connection from the client's domain, opened in the same round as the first.
    const extraEvents: string[] = [];
    const extra = world.pair.b.connect(SERVER_IP, PORT);
    world.pair.b.setHandler((event) => {
      if (event.socket === extra) extraEvents.push(event.type);
      else world.client.program!.onSocket!(event);
    });
    world.pair.pump();
    assert.deepEqual(extraEvents, ['connected', 'end']);
    world.pair.b.close(extra);
    world.run();
    assertExchanged(world, exchange);
    assert.deepEqual(extraEvents, ['connected', 'end', 'closed']);
    assert.equal(world.pair.a.listening.size, 0, 'the server stopped listening');
  });

  it('generates chunks into its staging slots through log-dirty', () => {
    const chunkBytes = 3 * PAGE_SIZE_BYTES;
    const exchange = { serverBytes: 0, clientBytes: 5 * chunkBytes, chunkBytes, stagingSlots: 2 };
    const world = new World();
    world.client.memory.setLogDirty(true);
    world.server.start(serverParams(exchange));
    world.client.start(clientParams(exchange));
    world.run();
    assertExchanged(world, exchange);
    const first = world.client.dataRegion.firstPage;
    const dirty = [...world.client.memory.peekAndClean()];
    assert.deepEqual(
      dirty,
      Array.from({ length: 6 }, (_, i) => first + i),
      'two slots of three pages, nothing else',
    );
    assert.equal(world.client.memory.countByRegion(dirty).program, 6);
  });

  it('rejects bad parameters with an InputError that names them', () => {
    const server: StreamerParams = { role: 'server', port: PORT, bytes: 100 };
    const client: StreamerParams = { role: 'client', port: PORT, bytes: 100, peerIp: SERVER_IP };
    const cases: Array<[StreamerParams, RegExp]> = [
      [{ ...server, role: 'peer' as 'server' }, /role must be 'server' or 'client'; got peer/],
      [{ ...server, port: 0 }, /port must be an integer in \[1, 65535\]; got 0/],
      [{ ...server, port: 70000 }, /port .*got 70000/],
      [{ ...server, peerIp: SERVER_IP }, /peerIp is for a client only/],
      [{ ...client, peerIp: undefined }, /a client needs peerIp.*got undefined/],
      [{ ...client, peerIp: '10.0.0.256' }, /a client needs peerIp.*got 10\.0\.0\.256/],
      [{ ...server, bytes: -1 }, /bytes must be an integer in \[0, 1099511627776\]; got -1/],
      [{ ...server, bytes: 1.5 }, /bytes .*got 1\.5/],
      [{ ...server, bytes: '5' as unknown as number }, /bytes .*got 5/],
      [{ ...server, seed: 2 ** 32 }, /seed must be an integer in \[0, 4294967295\]/],
      [{ ...server, chunkBytes: 0 }, /chunkBytes must be an integer in \[1, 16777216\]; got 0/],
      [{ ...server, chunkBytes: 8 << 20 }, /chunkBytes 8388608 does not fit .* 6291456 B/],
      [{ ...server, chunkBytes: 100, stagingBytes: 99 }, /stagingBytes .*\[100, 6291456\]; got 99/],
      [{ ...client, connectTriesMax: 0 }, /connectTriesMax .*\[1, 36000\]; got 0/],
      [{ ...server, rate: 5 } as StreamerParams, /unknown streamer parameter rate; known: role/],
    ];
    const world = new World();
    for (const [params, message] of cases) {
      assert.throws(
        () => streamerFactory.create(world.server.context(), params),
        (error: unknown) => {
          assert.ok(error instanceof InputError, `${JSON.stringify(params)} gives an InputError`);
          assert.match(error.message, message);
          return true;
        },
      );
    }
  });

  it('refuses to restore onto a data region too small for its staging area', () => {
    const world = new World();
    const program = world.server.start({
      role: 'server',
      port: PORT,
      bytes: 10,
      chunkBytes: 1 << 20,
      stagingBytes: 4 << 20,
    });
    const small = GuestMemory.create(defaultLayout(DOMAIN_PAGES, { kernel: 1536 + 512 }));
    const context = {
      ...world.server.context(),
      memory: small,
      dataRegion: small.region('program'),
    };
    assert.throws(
      () => streamerFactory.restore(context, structuredClone(program.state)),
      /stagingBytes .*got 4194304/,
    );
  });
});
