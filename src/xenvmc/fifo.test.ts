/**
 * Goal: the FIFO delivers exactly the bytes written, in order, at the right stream offsets,
 * across wrap-around, full and empty, and past 2^32 bytes; its waiting flags never lose a
 * wake-up; the close protocol hands the sender the exact unread range; and it is safe
 * between two threads.
 * Method: fast-check against a plain byte-queue model (counters started near 2^32 through
 * `countStartBytes`, tiny checkpoint intervals, fresh observers attached mid-run); directed
 * tests for flags, close and timeouts; two worker threads streaming 32 MiB through 64 KiB
 * with the blocking calls, compared by CRC-32.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { isTestbedError } from '../core/errors.ts';
import { Random } from '../core/random.ts';
import { type FifoInit, type FifoPlacement, fifoBytesNeeded, SharedFifo } from './fifo.ts';

const CANARY = 0xa5;
/** Where the tests put the header: not at 0, so a byteOffset mistake shows. */
const OFFSET_BYTES = 128;

/** A region with the FIFO at OFFSET_BYTES and canary bytes on both sides of it. */
function placementOf(capacityBytes: number): FifoPlacement {
  const buffer = new SharedArrayBuffer(OFFSET_BYTES + fifoBytesNeeded(capacityBytes) + 64);
  new Uint8Array(buffer).fill(CANARY);
  return { buffer, byteOffset: OFFSET_BYTES, capacityBytes };
}

/** True if nothing outside the FIFO's bytes changed. */
function canariesIntact(placement: FifoPlacement): boolean {
  const bytes = new Uint8Array(placement.buffer);
  const end = placement.byteOffset + fifoBytesNeeded(placement.capacityBytes);
  return (
    bytes.subarray(0, placement.byteOffset).every((b) => b === CANARY) &&
    bytes.subarray(end).every((b) => b === CANARY)
  );
}

function bytesOf(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (seed + i * 7) & 0xff;
  return bytes;
}

/** Starts this file in a worker with `data`; resolves with the worker's one message. */
function runWorker<T>(data: Record<string, unknown>, onReady?: () => void): Promise<T> {
  // Node 20 does not pass `--import tsx` to workers: register tsx inside the worker first.
  const tsx = JSON.stringify(import.meta.resolve('tsx/esm/api'));
  const self = JSON.stringify(import.meta.url);
  const boot = `import(${tsx}).then((api) => { api.register(); return import(${self}); })`;
  const worker = new Worker(boot, { eval: true, workerData: data });
  return new Promise((resolve, reject) => {
    let result: T | undefined;
    worker.on('message', (message: { ready?: true; result?: T }) => {
      if (message.ready) onReady?.();
      else result = message.result;
    });
    worker.once('error', reject);
    worker.once('exit', (code) => {
      if (code === 0 && result !== undefined) resolve(result);
      else reject(new Error(`worker ${String(data.role)} exited ${code} without a result`));
    });
  });
}

const STREAM_BYTES = 32 * 1024 * 1024;
const STREAM_CAPACITY_BYTES = 64 * 1024;
const STREAM_SEED = 0x5eed;

interface StreamResult {
  crc: number;
  byteCount: number;
}

if (!isMainThread && workerData?.role !== undefined) {
  const result = runRole(workerData);
  parentPort?.postMessage({ result });
} else {
  describe('SharedFifo', () => {
    it('delivers the written bytes in order at the right offsets (model: a byte queue)', () => {
      const config = fc.record({
        capacityLog2: fc.integer({ min: 4, max: 9 }),
        baseOffset: fc.oneof(fc.constant(0), fc.bigInt({ min: 0n, max: 2n ** 52n }).map(Number)),
        countStartBytes: fc.oneof(
          fc.constant(0),
          fc.integer({ min: 1, max: 4096 }).map((k) => 2 ** 32 - k),
          fc.integer({ min: 0, max: 4096 }).map((k) => 3 * 2 ** 32 - k),
          fc.bigInt({ min: 0n, max: 2n ** 44n }).map(Number),
        ),
        checkpointIntervalBytes: fc.oneof(
          fc.constant(undefined),
          fc.integer({ min: 1, max: 2048 }),
        ),
      });
      const op = fc.oneof(
        { arbitrary: fc.record({ write: fc.uint8Array({ maxLength: 1100 }) }), weight: 3 },
        {
          arbitrary: fc.record({ read: fc.nat({ max: 1100 }), into: fc.boolean() }),
          weight: 3,
        },
        { arbitrary: fc.record({ peekFrom: fc.nat(), peekLength: fc.nat() }), weight: 1 },
        { arbitrary: fc.record({ observe: fc.constant(true) }), weight: 1 },
      );
      fc.assert(
        fc.property(config, fc.array(op, { maxLength: 80 }), (cfg, ops) => {
          const capacityBytes = 2 ** cfg.capacityLog2;
          const placement = placementOf(capacityBytes);
          const init: FifoInit = {
            baseOffset: cfg.baseOffset,
            countStartBytes: cfg.countStartBytes,
          };
          if (cfg.checkpointIntervalBytes !== undefined) {
            init.checkpointIntervalBytes = cfg.checkpointIntervalBytes;
          }
          const sender = SharedFifo.create(placement, init);
          const receiver = SharedFifo.attach(placement);
          const start = cfg.baseOffset + cfg.countStartBytes;
          const queue: number[] = [];
          let written = 0;
          let consumed = 0;
          let receiverFlag = false;
          let senderFlag = false;
          for (const [step, o] of ops.entries()) {
            const at = `step ${step}`;
            if ('write' in o) {
              const expected = Math.min(o.write.length, capacityBytes - queue.length);
              const count = sender.tryWrite(o.write);
              assert.equal(count, expected, `${at}: write count`);
              queue.push(...o.write.subarray(0, count));
              written += count;
              if (o.write.length > 0 && count === 0) senderFlag = true;
              if (count > 0) {
                assert.equal(sender.takeReceiverWaiting(), receiverFlag, `${at}: receiver flag`);
                receiverFlag = false;
              }
            } else if ('read' in o) {
              const expected = queue.splice(0, Math.min(o.read, queue.length));
              let got: Uint8Array;
              if (o.into) {
                const target = new Uint8Array(o.read);
                got = target.subarray(0, receiver.readInto(target));
              } else {
                got = receiver.tryRead(o.read);
              }
              assert.deepEqual(got, Uint8Array.from(expected), `${at}: bytes read`);
              consumed += got.length;
              if (o.read > 0 && expected.length === 0) receiverFlag = true;
              if (got.length > 0) {
                assert.equal(receiver.takeSenderWaiting(), senderFlag, `${at}: sender flag`);
                senderFlag = false;
              }
            } else if ('peekFrom' in o) {
              const skip = o.peekFrom % (queue.length + 1);
              const length = o.peekLength % (queue.length - skip + 1);
              const from = start + consumed + skip;
              const side = skip % 2 === 0 ? sender : receiver;
              assert.deepEqual(
                side.peekRange(from, length),
                Uint8Array.from(queue.slice(skip, skip + length)),
                `${at}: peek`,
              );
            } else {
              const observer = SharedFifo.attach(placement);
              assert.equal(observer.baseOffset, cfg.baseOffset, `${at}: observer base`);
              assert.equal(observer.writeOffset, start + written, `${at}: observer write`);
              assert.equal(observer.readOffset, start + consumed, `${at}: observer read`);
            }
            for (const side of [sender, receiver]) {
              assert.equal(side.writeOffset, start + written, `${at}: write offset`);
              assert.equal(side.readOffset, start + consumed, `${at}: read offset`);
              assert.equal(side.pendingBytes, queue.length, `${at}: pending`);
              assert.equal(side.freeBytes, capacityBytes - queue.length, `${at}: free`);
              assert.equal(side.state, 'open', `${at}: state`);
            }
          }
          assert.ok(canariesIntact(placement), 'nothing written outside the FIFO');
        }),
        { seed: 0x7f1f0, numRuns: 300 },
      );
    });

    it('keeps offsets exact across 2^32 and many checkpoint refreshes', () => {
      const placement = placementOf(64);
      const baseOffset = 2 ** 40;
      const countStartBytes = 2 ** 32 - 1000;
      const fifo = SharedFifo.create(placement, {
        baseOffset,
        countStartBytes,
        checkpointIntervalBytes: 100,
      });
      const late = SharedFifo.attach(placement);
      const checkpoints = new BigInt64Array(placement.buffer, placement.byteOffset, 32);
      let total = 0;
      for (let round = 0; round < 100; round++) {
        const bytes = bytesOf(1 + (round % 64), round);
        const count = fifo.tryWrite(bytes);
        assert.equal(count, bytes.length, `round ${round}: fits`);
        assert.deepEqual(fifo.tryRead(64), bytes, `round ${round}: bytes`);
        total += count;
        // White box: the invariant the reconstruction needs, checkpoint <= counter <
        // checkpoint + max(interval, capacity), read from the header (layout in fifo.ts).
        const counter = countStartBytes + total;
        for (const [name, byteOffset] of [
          ['written', 72],
          ['consumed', 136],
        ] as const) {
          const checkpoint = Number(checkpoints[byteOffset / 8]);
          assert.ok(
            checkpoint <= counter && counter - checkpoint <= 100,
            `round ${round}: ${name} checkpoint ${checkpoint} vs counter ${counter}`,
          );
        }
      }
      assert.ok(total > 1000, 'the counters crossed 2^32');
      assert.equal(fifo.readOffset, baseOffset + countStartBytes + total, 'read offset');
      assert.equal(late.writeOffset, baseOffset + countStartBytes + total, 'late observer');
      assert.equal(SharedFifo.attach(placement).readOffset, fifo.readOffset, 'fresh observer');
    });

    it('reports a reader that found it empty to the next writer, once', () => {
      const placement = placementOf(16);
      const sender = SharedFifo.create(placement, { baseOffset: 0 });
      const receiver = SharedFifo.attach(placement);
      assert.equal(sender.takeReceiverWaiting(), false, 'nobody waits at first');
      assert.equal(receiver.tryRead(8).length, 0, 'empty read');
      assert.equal(sender.tryWrite(bytesOf(20, 1)), 16, 'write fills the FIFO');
      assert.equal(sender.takeReceiverWaiting(), true, 'the write reports the waiting reader');
      assert.equal(sender.takeReceiverWaiting(), false, 'and only once');
      assert.equal(sender.tryWrite(bytesOf(1, 2)), 0, 'full');
      assert.equal(receiver.tryRead(4).length, 4, 'read makes room');
      assert.equal(receiver.takeSenderWaiting(), true, 'the read reports the waiting writer');
      assert.equal(receiver.takeSenderWaiting(), false, 'and only once');
      assert.equal(receiver.tryRead(0).length, 0, 'a zero-byte read');
      assert.equal(sender.takeReceiverWaiting(), false, 'a zero-byte read does not wait');
    });

    it('hands the sender the exact unread range when the receiver acknowledges a close', () => {
      const placement = placementOf(32);
      const sender = SharedFifo.create(placement, { baseOffset: 5000 });
      const receiver = SharedFifo.attach(placement);
      const stream = bytesOf(40, 9);
      assert.equal(sender.tryWrite(stream.subarray(0, 30)), 30, 'first write');
      assert.equal(receiver.tryRead(20).length, 20, 'receiver reads 20');
      assert.equal(sender.tryWrite(stream.subarray(30)), 10, 'second write wraps');
      sender.beginClose();
      assert.equal(receiver.state, 'closing', 'the receiver sees closing');
      const thrown = (() => {
        try {
          sender.tryWrite(bytesOf(1, 0));
        } catch (error) {
          return error;
        }
        return undefined;
      })();
      assert.ok(isTestbedError(thrown, 'FIFO_CLOSED'), 'a write while closing throws');
      assert.deepEqual(receiver.tryRead(5), stream.subarray(20, 25), 'draining still works');
      assert.equal(receiver.readBlocking(3, 1000).length, 3, 'blocking read drains too');
      const finalReadOffset = receiver.acknowledgeClose();
      assert.equal(finalReadOffset, 5028, 'final read offset');
      assert.equal(sender.state, 'closed', 'the sender sees closed');
      assert.equal(sender.readOffset, finalReadOffset, 'the sender sees the final count');
      const unread = sender.peekRange(finalReadOffset, sender.writeOffset - finalReadOffset);
      assert.deepEqual(unread, stream.subarray(28), 'peekRange returns the unread bytes');
      assert.throws(() => receiver.tryRead(1), /FIFO_CLOSED|closed FIFO/, 'read after ack');
      assert.throws(() => sender.writeBlocking(bytesOf(1, 0), 10), /closed/, 'write after ack');
      assert.equal(receiver.acknowledgeClose(), finalReadOffset, 'acknowledge is idempotent');
      assert.throws(() => sender.peekRange(5027, 2), /outside unread/, 'peek before reads');
    });

    it('lets the receiver drain what a departed sender never took back, and only that', () => {
      const placement = placementOf(64);
      const sender = SharedFifo.create(placement, { baseOffset: 100 });
      const receiver = SharedFifo.attach(placement);
      const stream = bytesOf(50, 3);
      assert.equal(sender.tryWrite(stream), 50, 'written');
      assert.equal(receiver.tryRead(20).length, 20, 'receiver reads 20');
      sender.beginClose();
      assert.equal(receiver.acknowledgeClose(), 120, 'final read offset');
      assert.ok(receiver.closed && !receiver.takenBack, 'closed, nothing taken back yet');
      // The sender left without taking back: the receiver reads the rest after all.
      receiver.resumeDrain();
      assert.equal(receiver.state, 'closing', 'closed -> closing');
      assert.deepEqual(receiver.tryRead(64), stream.subarray(20), 'the 30 unread bytes');
      assert.equal(receiver.pendingBytes, 0, 'drained');
      // A sender that took back: the receiver sees it (the module then never drains); and
      // resumeDrain changes only a closed FIFO.
      const other = placementOf(64);
      const sender2 = SharedFifo.create(other, { baseOffset: 0 });
      const receiver2 = SharedFifo.attach(other);
      assert.equal(sender2.tryWrite(stream), 50, 'written');
      sender2.beginClose();
      receiver2.acknowledgeClose();
      sender2.markTakenBack();
      assert.ok(receiver2.takenBack, 'the receiver sees the take-back');
      receiver2.resumeDrain();
      assert.equal(receiver2.state, 'closing', 'resumeDrain reopens a closed FIFO');
      const open = SharedFifo.create(placementOf(16), { baseOffset: 0 });
      open.resumeDrain();
      assert.equal(open.state, 'open', 'resumeDrain leaves an open FIFO alone');
    });

    it('returns from blocking calls when the timeout passes', () => {
      const placement = placementOf(16);
      const fifo = SharedFifo.create(placement, { baseOffset: 0, spinMicros: 0 });
      let started = performance.now();
      assert.equal(fifo.readBlocking(8, 20).length, 0, 'nothing to read');
      assert.ok(performance.now() - started >= 15, 'the read waited about 20 ms');
      started = performance.now();
      assert.equal(fifo.writeBlocking(bytesOf(24, 0), 20), 16, 'only 16 B fit');
      assert.ok(performance.now() - started >= 15, 'the write waited about 20 ms');
    });

    it('rejects bad placements and a region nobody created', () => {
      const placement = placementOf(64);
      assert.throws(() => fifoBytesNeeded(48), /power of two/, 'capacity 48');
      assert.throws(() => fifoBytesNeeded(8), /power of two/, 'capacity 8');
      assert.throws(
        () => SharedFifo.create({ ...placement, byteOffset: 8 }, { baseOffset: 0 }),
        /multiple of 64/,
        'misaligned header',
      );
      assert.throws(
        () => SharedFifo.create({ ...placement, capacityBytes: 256 }, { baseOffset: 0 }),
        /beyond/,
        'region too small',
      );
      assert.throws(() => SharedFifo.attach(placement), /no FIFO/, 'attach before create');
      SharedFifo.create(placement, { baseOffset: 0 });
      assert.throws(
        () => SharedFifo.attach({ ...placement, capacityBytes: 32 }),
        /capacity differs/,
        'attach with another capacity',
      );
    });

    it('streams 32 MiB between two worker threads intact (blocking calls, CRC-32)', {
      timeout: 30_000,
    }, async () => {
      const placement = placementOf(STREAM_CAPACITY_BYTES);
      // A 1-byte checkpoint interval refreshes both checkpoints on every publish, so a third
      // thread reading the offsets races every refresh; a torn offset is off by 2^32.
      SharedFifo.create(placement, { baseOffset: 0, checkpointIntervalBytes: 1 });
      const [sent, received, observed] = await Promise.all([
        runWorker<StreamResult>({ role: 'sender', placement }),
        runWorker<StreamResult>({ role: 'receiver', placement }),
        runWorker<{ observationCount: number }>({ role: 'observer', placement }),
      ]);
      assert.ok(observed.observationCount > 100, `${observed.observationCount} observations`);
      assert.equal(sent.byteCount, STREAM_BYTES, 'sender wrote the whole stream');
      assert.equal(received.byteCount, STREAM_BYTES, 'receiver read the whole stream');
      assert.equal(received.crc, sent.crc, 'CRC-32 of the received bytes');
      assert.equal(SharedFifo.attach(placement).readOffset, STREAM_BYTES, 'final read offset');
      assert.ok(canariesIntact(placement), 'nothing written outside the FIFO');
    });

    it('wakes a reader blocked in another thread when the sender begins to close', {
      timeout: 30_000,
    }, async () => {
      const placement = placementOf(64);
      const sender = SharedFifo.create(placement, { baseOffset: 0 });
      const result = await runWorker<{ length: number; elapsedMs: number }>(
        { role: 'blockedReader', placement },
        () => setTimeout(() => sender.beginClose(), 50),
      );
      assert.equal(result.length, 0, 'nothing was read');
      assert.ok(result.elapsedMs < 5_000, `woke after ${result.elapsedMs} ms, not at timeout`);
    });
  });
}

/** Worker side: the role named in `workerData`. */
function runRole(data: { role: string; placement: FifoPlacement }): unknown {
  // Stream roles never spin: every full or empty FIFO goes through the flag-and-wait path.
  const fifo = SharedFifo.attach(data.placement, { spinMicros: 0 });
  if (data.role === 'sender') return sendStream(fifo);
  if (data.role === 'receiver') return receiveStream(fifo);
  if (data.role === 'observer') return observeStream(fifo);
  assert.equal(data.role, 'blockedReader', 'known role');
  parentPort?.postMessage({ ready: true });
  const started = performance.now();
  const bytes = fifo.readBlocking(16, 10_000);
  return { length: bytes.length, elapsedMs: performance.now() - started };
}

/** Writes STREAM_BYTES seeded bytes in seeded chunk sizes of 1 B to 16 KiB. */
function sendStream(fifo: SharedFifo): StreamResult {
  const random = new Random(STREAM_SEED);
  const stream = new Uint8Array(STREAM_BYTES);
  const words = new Uint32Array(stream.buffer);
  for (let i = 0; i < words.length; i++) words[i] = random.nextU32();
  let offset = 0;
  while (offset < STREAM_BYTES) {
    const length = Math.min(1 + random.nextInt(16 * 1024), STREAM_BYTES - offset);
    const count = fifo.writeBlocking(stream.subarray(offset, offset + length), 10_000);
    assert.equal(count, length, `write at ${offset} completed before the timeout`);
    offset += count;
  }
  return { crc: crc32(stream), byteCount: offset };
}

/** Reads until STREAM_BYTES arrived, in seeded sizes, with both blocking reads. */
function receiveStream(fifo: SharedFifo): StreamResult {
  const random = new Random(STREAM_SEED + 1);
  const target = new Uint8Array(32 * 1024);
  let crc = 0;
  let byteCount = 0;
  while (byteCount < STREAM_BYTES) {
    const maxBytes = 1 + random.nextInt(target.length);
    const bytes =
      random.nextU32() % 2 === 0
        ? fifo.readBlocking(maxBytes, 10_000)
        : target.subarray(0, fifo.readIntoBlocking(target.subarray(0, maxBytes), 10_000));
    assert.ok(bytes.length > 0, `read at ${byteCount} got bytes before the timeout`);
    crc = crc32(bytes, crc);
    byteCount += bytes.length;
  }
  return { crc, byteCount };
}

/** Polls both offsets until the stream is through: never torn, never going backwards. */
function observeStream(fifo: SharedFifo): { observationCount: number } {
  const deadline = performance.now() + 20_000;
  let observationCount = 0;
  let readOffset = 0;
  let writeOffset = 0;
  while (readOffset < STREAM_BYTES && performance.now() < deadline) {
    const nextRead = fifo.readOffset;
    const nextWrite = fifo.writeOffset;
    assert.ok(nextRead >= readOffset && nextWrite >= writeOffset, 'offsets never go back');
    assert.ok(nextRead <= nextWrite, `read offset ${nextRead} <= write offset ${nextWrite}`);
    assert.ok(nextWrite <= STREAM_BYTES, `write offset ${nextWrite} within the stream`);
    readOffset = nextRead;
    writeOffset = nextWrite;
    observationCount++;
  }
  return { observationCount };
}
