/**
 * Goal: the ring behaves as a bounded FIFO of frames, wraps both its slots and its u32
 * indices, dirties exactly the pages Xen's would, and is safe between two threads.
 * Method: fast-check against a plain array model; log-dirty counts; a worker producer.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import fc from 'fast-check';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { GuestMemory, type SharedGuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout } from '../memory/layout.ts';
import { NetfrontRing } from './netfront-ring.ts';

const PAGES = 4096;

/** A frame whose bytes say which it is: byte i = (id + i) mod 251, first 4 bytes the id. */
function frameOf(id: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (id + i) % 251;
  if (length >= 4) new DataView(bytes.buffer).setUint32(0, id, true);
  return bytes;
}

/** Pushes `frames` the way `how` says; returns how many went in. */
function push(ring: NetfrontRing, frames: Uint8Array[], how: string): number {
  if (how === 'tryPush') {
    let count = 0;
    while (count < frames.length && ring.tryPush(frames[count]!) === 'ok') count++;
    return count;
  }
  if (how === 'pushMany') return ring.pushMany(frames);
  return ring.pushEach(frames, (frame, slot) => {
    slot.set(frame);
    return frame.byteLength;
  });
}

/** Pops up to `count` frames the way `how` says (popEach stops early by returning false). */
function pop(ring: NetfrontRing, count: number, how: string): Uint8Array[] {
  if (how === 'popMany') return ring.popMany(count);
  const frames: Uint8Array[] = [];
  if (how === 'tryPop') {
    while (frames.length < count) {
      const frame = ring.tryPop();
      if (frame === null) break;
      frames.push(frame);
    }
    return frames;
  }
  ring.popEach((view) => {
    if (frames.length >= count) return false;
    frames.push(view.slice());
    return true;
  });
  return frames;
}

function kernelRing(memory: GuestMemory, slotCount?: number, slotSizeBytes?: number) {
  return new NetfrontRing(memory, {
    address: memory.regionAddress('kernel'),
    ...(slotCount === undefined ? {} : { slotCount }),
    ...(slotSizeBytes === undefined ? {} : { slotSizeBytes }),
  });
}

if (!isMainThread && workerData?.role === 'producer') {
  produceInWorker(workerData);
} else {
  describe('NetfrontRing', () => {
    it('behaves as a bounded FIFO (model: a plain array)', () => {
      const memory = GuestMemory.create(defaultLayout(PAGES));
      const op = fc.oneof(
        fc.record({
          push: fc.integer({ min: 0, max: 6 }),
          length: fc.integer({ min: 0, max: 512 }),
          how: fc.constantFrom('tryPush', 'pushMany', 'pushEach'),
        }),
        fc.record({
          pop: fc.integer({ min: 0, max: 6 }),
          how: fc.constantFrom('tryPop', 'popMany', 'popEach'),
        }),
      );
      fc.assert(
        fc.property(fc.constantFrom(1, 2, 8), fc.array(op, { maxLength: 80 }), (slots, ops) => {
          const ring = kernelRing(memory, slots, 512);
          ring.reset();
          const model: Uint8Array[] = [];
          let nextId = 0;
          for (const step of ops) {
            if ('push' in step) {
              const frames = Array.from({ length: step.push }, () =>
                frameOf(nextId++, step.length),
              );
              const count = push(ring, frames, step.how);
              assert.equal(count, Math.min(step.push, slots - model.length), 'pushed');
              model.push(...frames.slice(0, count));
            } else {
              const frames = pop(ring, step.pop, step.how);
              assert.deepEqual(frames, model.splice(0, Math.min(step.pop, model.length)));
            }
            assert.equal(ring.pending, model.length);
            assert.equal(ring.free, slots - model.length);
          }
        }),
        { seed: 11, numRuns: 300 },
      );
    });

    it('wraps its free-running u32 indices', () => {
      const memory = GuestMemory.create(defaultLayout(PAGES));
      const ring = kernelRing(memory, 4, 64);
      // Start both indices just below 2^32 (words 0 and 16 of the control page).
      const words = new Int32Array(memory.bytes.buffer, ring.address, 32);
      Atomics.store(words, 0, 0xfffffffe | 0);
      Atomics.store(words, 16, 0xfffffffe | 0);
      assert.equal(ring.pending, 0);
      for (let id = 0; id < 20; id++) {
        assert.equal(ring.pushMany([frameOf(id, 10), frameOf(id + 100, 20)]), 2);
        assert.equal(ring.pending, 2);
        assert.deepEqual(ring.popMany(), [frameOf(id, 10), frameOf(id + 100, 20)]);
      }
      assert.equal(Atomics.load(words, 0), 38, 'the producer index wrapped past 2^32');
    });

    it('refuses a push when full and takes it again after a pop', () => {
      const memory = GuestMemory.create(defaultLayout(PAGES));
      const ring = kernelRing(memory);
      assert.equal(ring.slotCount, 256);
      assert.equal(ring.slotSizeBytes, 4096);
      const frames = Array.from({ length: 300 }, (_, id) => frameOf(id, 4096));
      assert.equal(ring.pushMany(frames), 256);
      assert.equal(ring.tryPush(frames[256]!), 'full');
      assert.equal(ring.free, 0);
      assert.deepEqual(ring.tryPop(), frames[0]);
      assert.equal(ring.tryPush(frames[256]!), 'ok');
      assert.equal(ring.pending, 256);
      assert.equal(ring.popMany(1000).length, 256);
      assert.equal(ring.tryPop(), null);
      assert.throws(() => ring.tryPush(new Uint8Array(4097)), /slot/);
    });

    it('dirties exactly the slot pages and the control page, in the kernel region', () => {
      const memory = GuestMemory.create(defaultLayout(PAGES));
      const ring = kernelRing(memory);
      const controlPage = ring.address / PAGE_SIZE_BYTES;
      const firstSlotPage = ring.slotsAddress / PAGE_SIZE_BYTES;
      memory.setLogDirty(true);
      ring.tryPush(frameOf(1, 4096));
      assert.deepEqual([...memory.peekAndClean()], [controlPage, firstSlotPage]);
      ring.pushMany([frameOf(2, 100), frameOf(3, 4000), frameOf(4, 1)]);
      const pages = memory.peekAndClean();
      assert.deepEqual([...pages], [controlPage, ...[1, 2, 3].map((s) => firstSlotPage + s)]);
      assert.deepEqual(memory.countByRegion(pages), {
        kernel: 4,
        sockbuf: 0,
        pagecache: 0,
        program: 0,
      });
      ring.popMany();
      assert.deepEqual([...memory.peekAndClean()], [controlPage], 'the consumer index dirties');
      ring.pushEach([3000], (length, slot) => {
        slot.fill(1, 0, length);
        return length;
      });
      const slotPage = firstSlotPage + 4;
      assert.deepEqual([...memory.peekAndClean()], [controlPage, slotPage], 'pushEach dirties');
      assert.equal(
        ring.popEach(() => true),
        1,
      );
      assert.deepEqual([...memory.peekAndClean()], [controlPage], 'popEach dirties the index');
      assert.equal(NetfrontRing.bytesNeeded({}), PAGE_SIZE_BYTES + 256 * 4096);
    });

    it('hands frames intact from a producer thread to a consumer thread', async () => {
      const memory = GuestMemory.create(defaultLayout(PAGES));
      const ring = kernelRing(memory, 16, 1024);
      const total = 5000;
      // Node 20 does not pass `--import tsx` to workers: register tsx inside the worker first.
      const tsx = JSON.stringify(import.meta.resolve('tsx/esm/api'));
      const self = JSON.stringify(import.meta.url);
      const boot = `import(${tsx}).then((api) => { api.register(); return import(${self}); })`;
      const worker = new Worker(boot, {
        eval: true,
        workerData: { role: 'producer', shared: memory.toShared(), total },
      });
      const exited = new Promise((resolve, reject) => {
        worker.once('exit', resolve);
        worker.once('error', reject);
      });
      let received = 0;
      const deadline = performance.now() + 10_000;
      while (received < total && performance.now() < deadline) {
        const frames = ring.popMany();
        // Yield when empty: this machine has two vCPUs shared with other work.
        if (frames.length === 0) await new Promise((resolve) => setImmediate(resolve));
        for (const frame of frames) {
          const id = new DataView(frame.buffer).getUint32(0, true);
          assert.deepEqual(frame, frameOf(id, 4 + (id % 1000)), `frame ${id} intact`);
          assert.equal(id, received, 'in order');
          received++;
        }
      }
      assert.equal(received, total);
      await exited;
    });
  });
}

/** Worker side of the two-thread test: produce `total` frames, spinning while full. */
function produceInWorker(data: { shared: SharedGuestMemory; total: number }): void {
  const memory = GuestMemory.attach(data.shared);
  const ring = kernelRing(memory, 16, 1024);
  let id = 0;
  while (id < data.total) {
    const count = Math.min(1 + (id % 5), ring.free, data.total - id);
    const batch = Array.from({ length: count }, (_, i) => frameOf(id + i, 4 + ((id + i) % 1000)));
    id += ring.pushMany(batch);
  }
  parentPort?.close();
}
