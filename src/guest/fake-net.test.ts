/**
 * Goal: the fake net pair keeps the socket semantics that programs rely on: refusals and
 * unreachable hosts as `error` then `closed`, bounded buffers with partial writes and
 * `writable`, in-order delivery, `end` after the last byte, `closed` once both directions are
 * finished, and ids that are invalid after `closed`.
 * Method: drive the pair by hand and record every event of each side.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createFakeNetPair } from './fake-net.ts';
import { NetError } from './net-errors.ts';
import type { SocketEvent } from './socket-api.ts';

function recordedPair(bufferBytes?: number) {
  const pair = createFakeNetPair({ ipA: '10.0.0.1', ipB: '10.0.0.2', bufferBytes });
  const eventsA: SocketEvent[] = [];
  const eventsB: SocketEvent[] = [];
  pair.a.setHandler((event) => eventsA.push(event));
  pair.b.setHandler((event) => eventsB.push(event));
  return { ...pair, eventsA, eventsB };
}

describe('fake net pair', () => {
  it('refuses a closed port and an unknown IP with error then closed', () => {
    const pair = recordedPair();
    const refused = pair.a.connect('10.0.0.2', 80);
    const unreachable = pair.a.connect('10.9.9.9', 80);
    pair.pump();
    assert.deepEqual(
      pair.eventsA.map((event) => [event.socket, event.type, 'code' in event ? event.code : '']),
      [
        [refused, 'error', 'ECONNREFUSED'],
        [refused, 'closed', ''],
        [unreachable, 'error', 'EHOSTUNREACH'],
        [unreachable, 'closed', ''],
      ],
    );
    assert.throws(() => pair.a.write(refused, new Uint8Array(1)), NetError);
    assert.equal(pair.a.openSocketCount, 0);
  });

  it('moves bytes in order through bounded buffers, with partial writes and writable', () => {
    const pair = recordedPair(100);
    pair.b.listen(80);
    const client = pair.a.connect('10.0.0.2', 80);
    const payload = Uint8Array.from({ length: 1000 }, (_, i) => i & 0xff);
    assert.equal(pair.a.write(client, payload), 100, 'queued before connected, up to the buffer');
    pair.pump();
    const accepted = pair.eventsB.find((event) => event.type === 'accepted')!;
    assert.deepEqual(accepted, {
      type: 'accepted',
      socket: accepted.socket,
      localPort: 80,
      remoteIp: '10.0.0.1',
      remotePort: pair.a.info(client).localPort,
    });
    assert.ok(pair.eventsA.some((event) => event.type === 'writable'));
    const received: number[] = [];
    let offset = 100;
    for (let round = 0; received.length < payload.length; round++) {
      assert.ok(round < 100, 'progress');
      offset += pair.a.write(client, payload.subarray(offset));
      pair.pump();
      received.push(...pair.b.read(accepted.socket, 1000));
    }
    assert.deepEqual(Uint8Array.from(received), payload);
    assert.equal(pair.b.info(accepted.socket).bytesRead, 1000);
  });

  it('reports end after the last byte and closed once both directions are finished', () => {
    const pair = recordedPair();
    pair.b.listen(80);
    const client = pair.a.connect('10.0.0.2', 80);
    pair.a.write(client, new Uint8Array([1, 2, 3]));
    pair.a.end(client);
    pair.pump();
    const server = pair.eventsB[0]!.socket;
    assert.deepEqual(
      pair.eventsB.map((event) => event.type),
      ['accepted', 'readable'],
      'no end before the bytes are read',
    );
    assert.deepEqual([...pair.b.read(server, 10)], [1, 2, 3]);
    pair.pump();
    assert.equal(pair.eventsB.at(-1)!.type, 'end');
    assert.throws(() => pair.a.write(client, new Uint8Array(1)), /write after end/);
    pair.b.end(server);
    pair.pump();
    assert.deepEqual(
      pair.eventsA.map((event) => event.type),
      ['connected', 'end', 'closed'],
    );
    assert.equal(pair.eventsB.at(-1)!.type, 'closed');
    assert.equal(pair.a.openSocketCount + pair.b.openSocketCount, 0);
    assert.throws(() => pair.b.read(server, 1), /socket 1 is not open on 10\.0\.0\.2/);
  });

  it('close drops unread bytes and closes after the peer ends', () => {
    const pair = recordedPair();
    pair.b.listen(80);
    const client = pair.a.connect('10.0.0.2', 80);
    pair.pump();
    const server = pair.eventsB[0]!.socket;
    pair.a.write(client, new Uint8Array(10));
    pair.b.close(server);
    pair.pump();
    assert.deepEqual(
      pair.eventsA.map((event) => event.type),
      ['connected', 'end'],
    );
    pair.a.close(client);
    pair.pump();
    assert.deepEqual(
      pair.eventsB.map((event) => event.type),
      ['accepted', 'closed'],
    );
    assert.equal(pair.a.openSocketCount + pair.b.openSocketCount, 0);
  });

  it('abort resets both ends', () => {
    const pair = recordedPair();
    pair.b.listen(80);
    const client = pair.a.connect('10.0.0.2', 80);
    pair.pump();
    pair.a.abort(client);
    pair.pump();
    for (const events of [pair.eventsA, pair.eventsB]) {
      const last = events.slice(-2);
      assert.equal(last[0]!.type === 'error' && last[0]!.code, 'ECONNRESET');
      assert.equal(last[1]!.type, 'closed');
    }
  });
});
