/**
 * Goal: `GuestSocketDuplex` behaves as Node libraries expect of a socket: bytes pipe through
 * it in order both ways, a write completes only once the guest socket took every byte, the
 * end of stream propagates, connect failures surface as errors with an errno-like `code`,
 * destroy closes the guest socket, and `setTimeout` emits `timeout` after inactivity.
 * Method: Duplexes over the in-memory fake net pair, with a driver that pumps the pair between
 * turns of the event loop (Node streams move on ticks); fast-check with a fixed seed picks the
 * payloads, write sizes and buffer sizes.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { pipeline } from 'node:stream/promises';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { createFakeNetPair, type FakeNetPair } from './fake-net.ts';
import { NetError } from './net-errors.ts';
import { connectDuplex, GuestSocketDuplex } from './socket-duplex.ts';

const SERVER_IP = '10.0.0.1';
const CLIENT_IP = '10.0.0.2';
const PORT = 25;

/** Pumps the pair on every turn of the event loop until `promise` settles. */
async function pumpUntil<T>(pair: FakeNetPair, promise: Promise<T>): Promise<T> {
  let settled = false;
  promise.then(
    () => {
      settled = true;
    },
    () => {
      settled = true;
    },
  );
  for (let turn = 0; !settled; turn++) {
    assert.ok(turn < 200_000, 'the exchange makes progress');
    pair.pump();
    await new Promise((resolve) => setImmediate(resolve));
  }
  return promise;
}

/**
 * A server on side `a` that wraps each accepted socket in a Duplex and hands it to `onConnection`;
 * side `b` routes its events to the client Duplexes in `clients`.
 */
function serve(
  bufferBytes: number | undefined,
  onConnection: (duplex: GuestSocketDuplex) => void,
): { pair: FakeNetPair; connect(): GuestSocketDuplex; servers: GuestSocketDuplex[] } {
  const pair = createFakeNetPair({ ipA: SERVER_IP, ipB: CLIENT_IP, bufferBytes });
  const servers: GuestSocketDuplex[] = [];
  const clients: GuestSocketDuplex[] = [];
  pair.a.listen(PORT);
  pair.a.setHandler((event) => {
    if (event.type === 'accepted') {
      const duplex = new GuestSocketDuplex(pair.a, event.socket);
      servers.push(duplex);
      onConnection(duplex);
      return;
    }
    for (const duplex of servers) if (duplex.handleEvent(event)) return;
  });
  pair.b.setHandler((event) => {
    for (const duplex of clients) if (duplex.handleEvent(event)) return;
  });
  const connect = (): GuestSocketDuplex => {
    const duplex = connectDuplex(pair.b, SERVER_IP, PORT);
    clients.push(duplex);
    return duplex;
  };
  return { pair, connect, servers };
}

/**
 * Everything a readable side yields until its end. Not `for await`: its iterator destroys the
 * stream at the end, which would close our half-open direction too.
 */
function collect(duplex: GuestSocketDuplex): Promise<Buffer> {
  const chunks: Buffer[] = [];
  return new Promise((resolve, reject) => {
    duplex.on('data', (chunk: Buffer) => chunks.push(chunk));
    duplex.once('end', () => resolve(Buffer.concat(chunks)));
    duplex.once('error', reject);
  });
}

/** `payload` cut into pieces of the given sizes (the last piece takes the rest). */
function split(payload: Uint8Array, sizes: number[]): Uint8Array[] {
  const pieces: Uint8Array[] = [];
  let offset = 0;
  for (const size of sizes) {
    if (offset >= payload.byteLength) break;
    pieces.push(payload.subarray(offset, offset + size));
    offset += size;
  }
  if (offset < payload.byteLength) pieces.push(payload.subarray(offset));
  return pieces;
}

describe('GuestSocketDuplex', () => {
  it('echoes a random payload through two Duplexes, in order and complete', async () => {
    let totalBytes = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 150_000, size: 'max' }),
        fc.array(fc.integer({ min: 1, max: 40_000 }), { maxLength: 20, size: 'max' }),
        fc.integer({ min: 64, max: 70_000 }),
        async (payload, sizes, bufferBytes) => {
          const { pair, connect } = serve(bufferBytes, (server) => {
            // The echo: the server Duplex piped into itself ends when the client ends.
            pipeline(server, server).catch(() => {});
          });
          const client = connect();
          const closed = once(client, 'close');
          const echoed = collect(client);
          const sent = pipeline(split(payload, sizes), client);
          const [received] = await pumpUntil(pair, Promise.all([echoed, sent]));
          assert.ok(Buffer.from(payload).equals(received), 'the echo equals the payload');
          totalBytes += payload.byteLength;
          await pumpUntil(pair, closed);
          assert.equal(pair.a.openSocketCount + pair.b.openSocketCount, 0, 'no socket leaks');
        },
      ),
      { seed: 0xd0b1e, numRuns: 25 },
    );
    assert.ok(totalBytes > 1_000_000, `${totalBytes} bytes echoed in all`);
  });

  it('emits connect once connected and knows its addresses', async () => {
    const { pair, connect } = serve(undefined, () => {});
    const client = connect();
    assert.equal(client.connecting, true);
    await pumpUntil(pair, once(client, 'connect'));
    assert.equal(client.connecting, false);
    assert.equal(client.remoteAddress, SERVER_IP);
    assert.equal(client.remotePort, PORT);
    assert.equal(client.localAddress, CLIENT_IP);
    assert.equal(typeof client.localPort, 'number');
    assert.equal(client.setKeepAlive(true), client);
    assert.equal(client.setNoDelay(true), client);
    client.destroy();
  });

  it('surfaces ECONNREFUSED and EHOSTUNREACH as errors with that code', async () => {
    for (const [ip, port, code] of [
      [SERVER_IP, PORT + 1, 'ECONNREFUSED'],
      ['10.9.9.9', PORT, 'EHOSTUNREACH'],
    ] as const) {
      const pair = createFakeNetPair({ ipA: SERVER_IP, ipB: CLIENT_IP });
      pair.a.listen(PORT);
      const client = connectDuplex(pair.b, ip, port);
      pair.b.setHandler((event) => client.handleEvent(event));
      // Not `once(client, 'close')`: it would reject on the error we expect.
      const closed = new Promise((resolve) => client.once('close', resolve));
      const [error] = (await pumpUntil(pair, once(client, 'error'))) as [NetError];
      assert.ok(error instanceof NetError);
      assert.equal(error.code, code);
      await pumpUntil(pair, closed);
      assert.equal(pair.b.openSocketCount, 0);
    }
  });

  it('propagates the end of stream both ways and closes', async () => {
    const { pair, connect, servers } = serve(undefined, () => {});
    const client = connect();
    const clientClosed = once(client, 'close');
    client.end('hello');
    await pumpUntil(pair, once(client, 'finish'));
    const server = servers[0]!;
    const serverClosed = once(server, 'close');
    const request = await pumpUntil(pair, collect(server));
    assert.equal(request.toString(), 'hello');
    assert.equal(server.writable, true, 'half-open: the server may still answer');
    server.end('bye');
    const response = await pumpUntil(pair, collect(client));
    assert.equal(response.toString(), 'bye');
    await pumpUntil(pair, Promise.all([clientClosed, serverClosed]));
    assert.equal(pair.a.openSocketCount + pair.b.openSocketCount, 0);
  });

  it('completes a write only once the guest socket took every byte', async () => {
    const { pair, connect, servers } = serve(1024, () => {});
    const client = connect();
    let written = false;
    client.write(new Uint8Array(10_000), () => {
      written = true;
    });
    for (let turn = 0; turn < 20; turn++) {
      pair.pump();
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.equal(written, false, 'the server reads nothing: 2 KiB of buffers are full');
    const server = servers[0]!;
    let receivedBytes = 0;
    server.on('data', (chunk: Buffer) => {
      receivedBytes += chunk.byteLength;
    });
    await pumpUntil(
      pair,
      new Promise<void>((resolve) => client.write(new Uint8Array(0), () => resolve())),
    );
    assert.equal(written, true);
    assert.ok(receivedBytes >= 10_000 - 2048);
    client.destroy();
    server.destroy();
  });

  it('fails a pending write when destroyed, without an error event', async () => {
    const { pair, connect, servers } = serve(1024, () => {});
    const client = connect();
    const closed = once(client, 'close');
    let errorEvents = 0;
    client.on('error', () => errorEvents++);
    const writeResult = new Promise<Error | null | undefined>((resolve) => {
      client.write(new Uint8Array(10_000), resolve);
    });
    for (let turn = 0; turn < 5; turn++) {
      pair.pump();
      await new Promise((resolve) => setImmediate(resolve));
    }
    client.destroy();
    const error = await pumpUntil(pair, writeResult);
    assert.ok(error instanceof Error, 'the write callback gets an error');
    await pumpUntil(pair, closed);
    assert.equal(errorEvents, 0);
    servers[0]!.destroy();
  });

  it('turns a reset into an error with code ECONNRESET', async () => {
    const { pair, connect, servers } = serve(undefined, () => {});
    const client = connect();
    await pumpUntil(pair, once(client, 'connect'));
    pair.pump();
    const server = servers[0]!;
    const serverError = new Promise<NetError>((resolve) => server.once('error', resolve));
    pair.a.abort(server.socket);
    const [error] = (await pumpUntil(pair, once(client, 'error'))) as [NetError];
    assert.equal(error.code, 'ECONNRESET');
    assert.equal((await pumpUntil(pair, serverError)).code, 'ECONNRESET');
  });

  it('destroy closes the guest socket', async () => {
    const { pair, connect, servers } = serve(undefined, () => {});
    const client = connect();
    await pumpUntil(pair, once(client, 'connect'));
    pair.pump();
    const server = servers[0]!;
    const serverEnded = collect(server);
    client.destroy();
    await pumpUntil(pair, serverEnded);
    server.end();
    await pumpUntil(pair, once(server, 'close'));
    pair.pump();
    assert.equal(pair.a.openSocketCount + pair.b.openSocketCount, 0);
  });

  it('setTimeout emits timeout after inactivity, and 0 disables it', async () => {
    const { pair, connect } = serve(undefined, () => {});
    const client = connect();
    await pumpUntil(pair, once(client, 'connect'));
    const startedMs = performance.now();
    let timeouts = 0;
    client.setTimeout(40, () => {
      timeouts++;
    });
    await once(client, 'timeout');
    assert.ok(performance.now() - startedMs >= 35, 'not before the inactivity period');
    assert.equal(timeouts, 1, 'the callback ran once');

    client.setTimeout(30);
    client.setTimeout(0);
    let late = false;
    client.on('timeout', () => {
      late = true;
    });
    await sleep(60);
    assert.equal(late, false, 'a disabled timeout does not fire');
    client.destroy();
  });

  it('setTimeout restarts on activity', async () => {
    const { pair, connect, servers } = serve(undefined, () => {});
    const client = connect();
    await pumpUntil(pair, once(client, 'connect'));
    pair.pump();
    servers[0]!.resume();
    let timedOut = false;
    client.setTimeout(60, () => {
      timedOut = true;
    });
    for (let i = 0; i < 6; i++) {
      await sleep(20);
      client.write('x');
      pair.pump();
    }
    assert.equal(timedOut, false, '120 ms of writes 20 ms apart keep a 60 ms timeout away');
    await once(client, 'timeout');
    client.destroy();
    servers[0]!.destroy();
  });
});
