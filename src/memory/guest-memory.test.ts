/**
 * Goal: the log-dirty bitmap records exactly the pages written while it is on, and per-region
 * attribution follows the layout. Method: a model (a Set of pages) checked by fast-check.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import fc from 'fast-check';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { GuestMemory } from './guest-memory.ts';
import { defaultLayout } from './layout.ts';

const PAGES = 4096;

describe('GuestMemory', () => {
  it('loses no write while a guest thread and Dom0 write and Dom0 cleans, round after round', async () => {
    // Pre-copy in miniature: copy every page, then in rounds copy the pages the log names,
    // while a guest thread rewrites random pages and Dom0 writes some too (netback does);
    // after the guest stops, a last round. The copy must equal the memory byte for byte.
    const memory = GuestMemory.create(defaultLayout(PAGES));
    memory.setLogDirty(true);
    const copy = new Uint8Array(memory.bytes);
    const stop = new SharedArrayBuffer(4);
    const guest = new Worker(new URL('./testing/dirty-writer.mjs', import.meta.url), {
      workerData: { shared: memory.toShared(), stop, seed: 7 },
    });
    const failed = new Promise<never>((_, reject) => guest.once('error', reject));
    failed.catch(() => {}); // seen through the races below; never unhandled
    // Dom0's rounds start once the guest writes: its thread may take long to start under load.
    await Promise.race([once(guest, 'message'), failed]);
    const finished = Promise.race([
      once(guest, 'message').then(([message]) => message as { writes: number }),
      failed,
    ]);
    const copyPages = (pages: Uint32Array): void => {
      for (const page of pages) {
        const offset = page * PAGE_SIZE_BYTES;
        copy.set(memory.bytes.subarray(offset, offset + PAGE_SIZE_BYTES), offset);
      }
    };
    const dom0Page = new Uint8Array(PAGE_SIZE_BYTES);
    let rounds = 0;
    for (const started = performance.now(); performance.now() - started < 400; rounds++) {
      dom0Page.fill(rounds & 0xff);
      memory.write(((rounds * 37) % PAGES) * PAGE_SIZE_BYTES, dom0Page);
      copyPages(memory.peekAndClean());
      await new Promise((resolve) => setImmediate(resolve));
    }
    Atomics.store(new Int32Array(stop), 0, 1);
    const { writes } = await finished;
    copyPages(memory.peekAndClean());
    assert.ok(writes > 1000, `the guest wrote while Dom0 cleaned (${writes} writes)`);
    assert.ok(rounds > 10, `Dom0 ran rounds meanwhile (${rounds})`);
    assert.ok(Buffer.from(copy).equals(Buffer.from(memory.bytes)), 'the copy equals the memory');
  });

  it('marks exactly the pages touched by writes while log-dirty is on', () => {
    const memory = GuestMemory.create(defaultLayout(PAGES));
    const write = fc.record({
      address: fc.integer({ min: 0, max: PAGES * PAGE_SIZE_BYTES - 1 }),
      length: fc.integer({ min: 1, max: 3 * PAGE_SIZE_BYTES }),
    });
    fc.assert(
      fc.property(fc.array(write, { maxLength: 40 }), (writes) => {
        memory.setLogDirty(true);
        const model = new Set<number>();
        for (const { address, length } of writes) {
          const clipped = Math.min(length, PAGES * PAGE_SIZE_BYTES - address);
          memory.write(address, new Uint8Array(clipped).fill(7));
          for (
            let p = Math.floor(address / PAGE_SIZE_BYTES);
            p * PAGE_SIZE_BYTES < address + clipped;
            p++
          ) {
            model.add(p);
          }
        }
        assert.equal(memory.peekDirtyCount(), model.size);
        assert.deepEqual(
          [...memory.peekAndClean()],
          [...model].sort((a, b) => a - b),
        );
        assert.equal(memory.peekAndClean().length, 0, 'peek-and-clean leaves a clean bitmap');
      }),
      { seed: 42, numRuns: 200 },
    );
  });

  it('does not mark pages while log-dirty is off', () => {
    const memory = GuestMemory.create(defaultLayout(PAGES));
    memory.write(0, new Uint8Array(PAGE_SIZE_BYTES * 2).fill(1));
    memory.setLogDirty(true);
    assert.equal(memory.peekDirtyCount(), 0);
    memory.fill(PAGE_SIZE_BYTES * 10, 1, 9);
    assert.deepEqual([...memory.peekAndClean()], [10]);
    memory.setLogDirty(false);
    memory.fill(PAGE_SIZE_BYTES * 11, 1, 9);
    assert.equal(memory.peekDirtyCount(), 0);
  });

  it('attributes dirty pages to the region that holds them', () => {
    const layout = defaultLayout(PAGES);
    const memory = GuestMemory.create(layout);
    memory.setLogDirty(true);
    for (const region of layout.regions) {
      memory.fill(region.firstPage * PAGE_SIZE_BYTES, PAGE_SIZE_BYTES * 2, 1);
    }
    const counts = memory.countByRegion(memory.peekAndClean());
    assert.deepEqual(counts, { kernel: 2, sockbuf: 2, pagecache: 2, program: 2 });
  });

  it('shares its bytes and bitmap with an attached view', () => {
    const memory = GuestMemory.create(defaultLayout(PAGES));
    const other = GuestMemory.attach(memory.toShared());
    memory.setLogDirty(true);
    other.write(5 * PAGE_SIZE_BYTES, Uint8Array.of(1, 2, 3));
    assert.deepEqual([...memory.read(5 * PAGE_SIZE_BYTES, 3)], [1, 2, 3]);
    assert.deepEqual([...memory.peekAndClean()], [5]);
  });

  it('rejects layouts that are too small or do not add up', () => {
    assert.throws(() => defaultLayout(100), /at least 4096 pages/);
    assert.throws(() => defaultLayout(PAGES, { program: 1 }), /add up/);
  });
});
