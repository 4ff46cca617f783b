/**
 * Goal: the token bucket paces exactly (N bytes at rate R leave after (N - burst) / R, debt is
 * repaid, bursts are capped), and the egress shaper delivers every byte in order, counts per
 * traffic class, honours backpressure and fails with LINK_CLOSED instead of hanging.
 *
 * Method: the bucket runs on a manual clock, checked against its closed-form schedule with
 * fast-check. The shaper runs on real sockets over 127.0.0.1 (port 0, closed in `after()`):
 * overlapping sends of random sizes in every mode (unlimited, shaped, with latency), peers that
 * die mid-send. Timing is only ever checked loosely and from below.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { type Clock, realClock, sleepMs, type TimerHandle } from '../core/clock.ts';
import { isTestbedError } from '../core/errors.ts';
import { Random } from '../core/random.ts';
import { LinkSampler } from './sampler.ts';
import {
  BURST_BYTES_MIN,
  EgressShaper,
  type EgressShaperInit,
  emptyTrafficCounts,
  LATE_CREDIT_MS_MAX,
  SLICE_BYTES_MAX,
  shapedDurationMs,
  TokenBucket,
  TRAFFIC_CLASSES,
  type TrafficClass,
} from './shaper.ts';

/** A clock that only moves when told to; enough for pure pacing arithmetic. */
class ManualClock implements Clock {
  private currentMs = 0;

  nowMs(): number {
    return this.currentMs;
  }

  setTimer(): TimerHandle {
    throw new Error('the token bucket tests need no timers');
  }

  advance(deltaMs: number): void {
    assert(deltaMs >= 0);
    this.currentMs += deltaMs;
  }
}

/** Sends `sizes` through a bucket the way the shaper does: wait what `take` says, then go. */
function departureMs(bucket: TokenBucket, clock: ManualClock, sizes: number[]): number {
  for (const sizeBytes of sizes) clock.advance(bucket.take(sizeBytes, clock.nowMs()));
  return clock.nowMs();
}

describe('TokenBucket', () => {
  it('paces N bytes at rate R to leave after (N - burst) / R, whatever the slice sizes', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1_000, max: 1_000_000_000 }),
        fc.integer({ min: 1, max: 1_000_000 }),
        fc.array(fc.integer({ min: 0, max: 4 * 1024 * 1024 }), { minLength: 1, maxLength: 50 }),
        (bytesPerSec, burstBytes, sizes) => {
          const clock = new ManualClock();
          const bucket = new TokenBucket({ bytesPerSec, burstBytes });
          const totalBytes = sizes.reduce((sum, size) => sum + size, 0);
          const expectedMs = Math.max(0, ((totalBytes - burstBytes) / bytesPerSec) * 1000);
          const actualMs = departureMs(bucket, clock, sizes);
          assert.ok(
            Math.abs(actualMs - expectedMs) <= 1e-9 * Math.max(1, expectedMs),
            `expected ${expectedMs} ms, got ${actualMs} ms`,
          );
        },
      ),
      { seed: 20_240_601, numRuns: 200 },
    );
  });

  it('lets a full burst out at once after idling, and paces the next byte', () => {
    const bucket = new TokenBucket({ bytesPerSec: 1_000_000, burstBytes: 100_000 });
    assert.equal(bucket.take(100_000, 0), 0);
    assert.equal(bucket.take(1_000, 0), 1);
    // A long idle refills only up to the burst, never beyond.
    assert.equal(bucket.take(100_000, 60_000), 0);
    assert.equal(bucket.take(10_000, 60_000), 10);
  });

  it('goes into debt for a write larger than the burst and is repaid over time', () => {
    const bucket = new TokenBucket({ bytesPerSec: 1_000_000, burstBytes: 64 * 1024 });
    const waitMs = bucket.take(10_000_000, 0);
    assert.equal(waitMs, ((10_000_000 - 64 * 1024) / 1_000_000) * 1000);
    assert.ok(bucket.tokenBalanceBytes < 0);
    // Another taker behind the debt waits for it too: one NIC, one queue.
    assert.equal(bucket.take(1_000, 0), waitMs + 1);
    // Once the debt is repaid and the bucket refilled, bytes leave at once again.
    assert.equal(bucket.take(1_000, waitMs + 1 + 100), 0);
  });

  it('defaults the burst to the larger of 64 KiB and 2 ms of rate', () => {
    assert.equal(new TokenBucket({ bytesPerSec: 1_000_000 }).burstBytes, BURST_BYTES_MIN);
    assert.equal(new TokenBucket({ bytesPerSec: 125_000_000 }).burstBytes, 250_000);
  });

  it('credits a backlogged waker for its lateness, so the link keeps its rate', () => {
    const bucket = new TokenBucket({ bytesPerSec: 1_000_000, burstBytes: 1_000 });
    assert.equal(bucket.take(10_000, 0), 9);
    // The timer fired 10 ms late (at 19 ms instead of 9 ms): those 10 ms of link are kept.
    assert.equal(bucket.take(5_000, 19, { lateMs: 10 }), 0);
    assert.equal(bucket.take(5_000, 19), 0);
    assert.equal(bucket.take(1_000, 19), 1);
    // Without the credit, the burst caps them and the link falls behind.
    const plain = new TokenBucket({ bytesPerSec: 1_000_000, burstBytes: 1_000 });
    plain.take(10_000, 0);
    assert.equal(plain.take(5_000, 19), 4);
  });

  it("never sends faster than the rate, and lags by at most the last wait's lateness", () => {
    const late = fc.record({
      sizeBytes: fc.integer({ min: 0, max: 1024 * 1024 }),
      lateMs: fc.double({ min: 0, max: LATE_CREDIT_MS_MAX, noNaN: true }),
    });
    fc.assert(
      fc.property(
        fc.integer({ min: 1_000_000, max: 1_000_000_000 }),
        fc.array(late, { minLength: 1, maxLength: 50 }),
        (bytesPerSec, steps) => {
          const clock = new ManualClock();
          const bucket = new TokenBucket({ bytesPerSec });
          let lateMs = 0;
          let lastLateMs = 0;
          for (const step of steps) {
            const waitMs = bucket.take(step.sizeBytes, clock.nowMs(), { lateMs });
            // Only a wait can end late; the bytes leave when the late timer fires.
            lateMs = waitMs > 0 ? step.lateMs : 0;
            clock.advance(waitMs + lateMs);
            if (waitMs > 0) lastLateMs = lateMs;
          }
          const totalBytes = steps.reduce((sum, step) => sum + step.sizeBytes, 0);
          const idealMs = Math.max(0, ((totalBytes - bucket.burstBytes) / bytesPerSec) * 1000);
          const epsilonMs = 1e-6 * Math.max(1, idealMs);
          assert.ok(clock.nowMs() >= idealMs - epsilonMs, `${clock.nowMs()} < ${idealMs}`);
          assert.ok(clock.nowMs() <= idealMs + lastLateMs + epsilonMs);
        },
      ),
      { seed: 1_337, numRuns: 200 },
    );
  });

  it('earns nothing from a time earlier than the last one', () => {
    const bucket = new TokenBucket({ bytesPerSec: 1_000, burstBytes: 1_000 });
    bucket.take(1_000, 10_000);
    assert.equal(bucket.take(500, 5_000), 500);
  });
});

describe('shapedDurationMs', () => {
  it('is bytes over rate in ms, and 0 when unlimited', () => {
    assert.equal(shapedDurationMs(125_000_000, 125_000_000), 1000);
    assert.equal(shapedDurationMs(4 * 1024 * 1024, null), 0);
    assert.equal(shapedDurationMs(0, 1), 0);
  });
});

/** A loopback server whose connections are handed out in connect order. */
class Loopback {
  private readonly server = net.createServer();
  private readonly waiting: ((socket: net.Socket) => void)[] = [];
  private readonly sockets = new Set<net.Socket>();

  async listen(): Promise<void> {
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      this.waiting.shift()?.(socket);
    });
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
  }

  /** A connected client and the server's end of it. */
  async connect(highWaterMark?: number): Promise<{ client: net.Socket; peer: net.Socket }> {
    const peerReady = new Promise<net.Socket>((resolve) => this.waiting.push(resolve));
    const address = this.server.address() as net.AddressInfo;
    // Node 20 honours `highWaterMark` here (stream options); @types/node does not list it.
    const options = { port: address.port, host: '127.0.0.1', highWaterMark };
    const client = net.connect(options as net.NetConnectOpts);
    this.sockets.add(client);
    client.on('close', () => this.sockets.delete(client));
    await once(client, 'connect');
    return { client, peer: await peerReady };
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Everything `peer` receives until the client ends the stream. */
async function receiveAll(peer: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  peer.on('data', (chunk: Buffer) => chunks.push(chunk));
  await once(peer, 'end');
  return Buffer.concat(chunks);
}

function randomBytes(seed: number, sizeBytes: number): Uint8Array {
  const bytes = new Uint8Array(sizeBytes);
  new Random(seed).fill(bytes);
  return bytes;
}

async function expectLinkClosed(promise: Promise<unknown>): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isTestbedError(error, 'LINK_CLOSED'), `expected LINK_CLOSED, got ${error}`);
    return true;
  });
}

describe('EgressShaper', () => {
  const loopback = new Loopback();
  before(() => loopback.listen());
  after(() => loopback.close());

  const modes: { name: string; init: EgressShaperInit }[] = [
    { name: 'unlimited', init: { bytesPerSec: null } },
    { name: 'shaped', init: { bytesPerSec: 400_000_000 } },
    { name: 'unlimited with latency', init: { bytesPerSec: null, latencyMs: 2 } },
    { name: 'shaped with latency', init: { bytesPerSec: 400_000_000, latencyMs: 1 } },
  ];
  for (const mode of modes) {
    it(`delivers overlapping sends complete and in order (${mode.name})`, async () => {
      const send = fc.record({
        sizeBytes: fc.oneof(
          fc.integer({ min: 0, max: 100 }),
          fc.integer({ min: 0, max: 3 * SLICE_BYTES_MAX }),
          fc.integer({ min: 0, max: 3 * 1024 * 1024 }),
        ),
        awaitBefore: fc.boolean(),
      });
      await fc.assert(
        fc.asyncProperty(fc.array(send, { minLength: 1, maxLength: 8 }), async (plan) => {
          const shaper = new EgressShaper({ clock: realClock }, mode.init);
          const { client, peer } = await loopback.connect();
          const received = receiveAll(peer);
          const chunks = plan.map((step, index) => randomBytes(index + 1, step.sizeBytes));
          const sends: Promise<void>[] = [];
          for (const [index, chunk] of chunks.entries()) {
            // Sometimes let the earlier sends run a little before overlapping them.
            if (plan[index]!.awaitBefore) await new Promise((resolve) => setImmediate(resolve));
            sends.push(shaper.send(client, chunk, 'migration'));
          }
          await Promise.all(sends);
          const totalBytes = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
          assert.equal(shaper.counters.sentBytes, totalBytes);
          await shaper.flush(client);
          client.end();
          assert.ok(Buffer.from(Buffer.concat(chunks)).equals(await received));
          assert.equal(shaper.busySocketCount, 0);
        }),
        { seed: 7_031_977, numRuns: 4 },
      );
    });
  }

  for (const mode of modes) {
    it(`releases a chunk only once its bytes left Node, or the send failed (${mode.name})`, async () => {
      const shaper = new EgressShaper({ clock: realClock }, mode.init);
      // A high-water mark above the chunk: the send may resolve while Node still holds bytes
      // of it (as a small record does behind a full socket buffer with the default mark).
      const { client, peer } = await loopback.connect(64 * 1024 * 1024);
      // The peer reads nothing at first: 16 MiB cannot all fit in the kernel's buffers.
      peer.pause();
      const chunk = randomBytes(3, 16 * 1024 * 1024);
      let released = 0;
      let resolved = false;
      const sent = shaper.send(client, chunk, 'migration', () => released++);
      void sent.then(() => {
        resolved = true;
      });
      // Until Node holds bytes of the chunk (and, without latency, the send resolved): timers
      // run late on a busy machine, so poll rather than sleep a fixed time.
      const noLatency = mode.init.latencyMs === undefined;
      for (const until = performance.now() + 5000; performance.now() < until; ) {
        if (client.writableLength > 0 && (resolved || !noLatency)) break;
        await sleepMs(10);
      }
      assert.ok(client.writableLength > 0, 'Node still holds bytes of the chunk');
      if (noLatency) assert.ok(resolved, 'the send resolved already');
      assert.equal(released, 0, 'released while part of the chunk still waits to be written');
      const received = receiveAll(peer);
      peer.resume();
      await sent;
      await shaper.flush(client);
      for (const until = performance.now() + 5000; performance.now() < until; ) {
        if (released > 0) break;
        await sleepMs(10);
      }
      await sleepMs(20); // time for a second, wrong, release to show
      assert.equal(released, 1, 'released once, after every byte left');
      client.end();
      assert.ok(Buffer.from(chunk).equals(await received), 'the bytes arrived whole');

      // A send that fails releases its chunk too (nothing will read it any more).
      const second = await loopback.connect();
      second.peer.pause();
      let releasedOnFailure = 0;
      const failing = shaper.send(second.client, chunk, 'migration', () => releasedOnFailure++);
      await sleepMs(20);
      second.peer.destroy();
      second.client.destroy();
      await failing.catch(() => {});
      for (const until = performance.now() + 5000; performance.now() < until; ) {
        if (releasedOnFailure > 0) break;
        await sleepMs(10);
      }
      await sleepMs(20); // time for a second, wrong, release to show
      assert.equal(releasedOnFailure, 1, 'a failed send released its chunk once');
    });
  }

  it('counts bytes per class over sockets sharing one NIC, and samples them', async () => {
    const sampler = new LinkSampler({ clock: realClock }, { intervalMs: 5 });
    const shaper = new EgressShaper({ clock: realClock, sampler }, { bytesPerSec: 200_000_000 });
    const first = await loopback.connect();
    const second = await loopback.connect();
    const receivedFirst = receiveAll(first.peer);
    const receivedSecond = receiveAll(second.peer);
    sampler.start();
    const expected = emptyTrafficCounts();
    const sends: Promise<void>[] = [];
    const plan: [net.Socket, TrafficClass, number][] = [
      [first.client, 'migration', 1_000_000],
      [second.client, 'intervm', 3_000],
      [first.client, 'control', 17],
      [second.client, 'external', 200_000],
      [second.client, 'intervm', 70_000],
    ];
    for (const [socket, trafficClass, sizeBytes] of plan) {
      expected[trafficClass] += sizeBytes;
      sends.push(shaper.send(socket, new Uint8Array(sizeBytes), trafficClass));
    }
    await Promise.all(sends);
    sampler.stop();
    first.client.end();
    second.client.end();
    assert.equal((await receivedFirst).byteLength, 1_000_017);
    assert.equal((await receivedSecond).byteLength, 273_000);

    const counters = shaper.counters;
    assert.deepEqual(counters.sentBytesByClass, expected);
    assert.equal(counters.sentBytes, 1_273_017);
    const sampled = emptyTrafficCounts();
    for (const sample of sampler.series()) {
      for (const trafficClass of TRAFFIC_CLASSES) {
        sampled[trafficClass] += sample.bytes[trafficClass];
      }
    }
    assert.deepEqual(sampled, expected);
  });

  it('rejects with LINK_CLOSED when the peer destroys the socket mid-send (shaped)', async () => {
    const shaper = new EgressShaper({ clock: realClock }, { bytesPerSec: 1_000_000 });
    const { client, peer } = await loopback.connect();
    client.on('error', () => {}); // the owner's handler; the shaper reports through send()
    peer.once('data', () => peer.destroy());
    const first = shaper.send(client, new Uint8Array(2 * 1024 * 1024), 'migration');
    const queued = shaper.send(client, new Uint8Array(10), 'control');
    await expectLinkClosed(first);
    await expectLinkClosed(queued);
    assert.equal(shaper.busySocketCount, 0);
  });

  it('rejects with LINK_CLOSED when the peer dies while a send waits for drain', async () => {
    const shaper = new EgressShaper({ clock: realClock }, { bytesPerSec: null });
    const { client, peer } = await loopback.connect();
    client.on('error', () => {});
    peer.pause(); // the peer reads nothing, so the client's buffer fills up
    const sent = shaper.send(client, new Uint8Array(64 * 1024 * 1024), 'migration');
    const queued = shaper.send(client, new Uint8Array(10), 'migration');
    await sleepMs(50);
    assert.equal(shaper.busySocketCount, 1);
    peer.destroy();
    await expectLinkClosed(sent);
    await expectLinkClosed(queued);
    assert.equal(shaper.busySocketCount, 0);
  });

  it('rejects with LINK_CLOSED on a socket that is already closed, in every mode', async () => {
    for (const mode of modes) {
      const shaper = new EgressShaper({ clock: realClock }, mode.init);
      const { client } = await loopback.connect();
      client.destroy();
      await expectLinkClosed(shaper.send(client, new Uint8Array(10), 'control'));
      const ended = await loopback.connect();
      ended.client.end();
      await expectLinkClosed(shaper.send(ended.client, new Uint8Array(10), 'control'));
    }
  });

  it('paces 1 MiB at 8 MB/s over roughly (1 MiB - burst) / rate, never faster', async () => {
    const shaper = new EgressShaper({ clock: realClock }, { bytesPerSec: 8_000_000 });
    const { client, peer } = await loopback.connect();
    const received = receiveAll(peer);
    const startMs = performance.now();
    await shaper.send(client, new Uint8Array(1024 * 1024), 'migration');
    const elapsedMs = performance.now() - startMs;
    client.end();
    assert.equal((await received).byteLength, 1024 * 1024);
    // (1 MiB - 64 KiB) / 8 MB/s = 123 ms; only a loose lower bound is asserted.
    assert.ok(elapsedMs >= 100, `1 MiB at 8 MB/s took only ${elapsedMs.toFixed(1)} ms`);
  });

  it('delays delivery by the latency, without making the sender wait for it', async () => {
    const latencyMs = 60;
    const shaper = new EgressShaper({ clock: realClock }, { bytesPerSec: null, latencyMs });
    const { client, peer } = await loopback.connect();
    const startMs = performance.now();
    const arrived = once(peer, 'data').then(() => performance.now() - startMs);
    await shaper.send(client, new Uint8Array(100), 'intervm');
    const sendMs = performance.now() - startMs;
    const arrivalMs = await arrived;
    assert.ok(sendMs < arrivalMs, `send took ${sendMs} ms, arrival ${arrivalMs} ms`);
    // Timers may round the due time down by under a millisecond; assert loosely from below.
    assert.ok(arrivalMs >= latencyMs - 2, `arrived after ${arrivalMs.toFixed(1)} ms`);
    client.destroy();
  });
});
