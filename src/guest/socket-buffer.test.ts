/**
 * Goal: a socket buffer stores stream bytes by absolute offset, wrapping, and every write
 * dirties exactly its 'sockbuf' pages. Method: fast-check against a model of the last
 * `capacity` bytes written; log-dirty counts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout } from '../memory/layout.ts';
import { SocketBuffer } from './socket-buffer.ts';

describe('SocketBuffer', () => {
  it('returns the bytes written at each live offset, across wraps', () => {
    const memory = GuestMemory.create(defaultLayout(4096));
    const address = memory.regionAddress('sockbuf');
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 10_000 }),
        fc.array(fc.integer({ min: 0, max: 12_000 }), { maxLength: 20 }),
        fc.nat({ max: 2 ** 40 }),
        (capacityBytes, writes, start) => {
          const buffer = new SocketBuffer(memory, { address: address + 3, capacityBytes });
          const stream: number[] = [];
          let offset = start;
          for (const length of writes) {
            const bytes = Uint8Array.from(
              { length: Math.min(length, capacityBytes) },
              (_, i) => (offset + i) % 253,
            );
            buffer.writeAt(offset, bytes);
            stream.push(...bytes);
            offset += bytes.byteLength;
            // Every byte of the last `capacity` written is still readable at its offset.
            const live = Math.min(stream.length, capacityBytes);
            const from = offset - live;
            const expected = Uint8Array.from(stream.slice(stream.length - live));
            assert.deepEqual(buffer.readAt(from, live), expected);
            const target = new Uint8Array(live);
            assert.equal(buffer.readAt(from, live, target), target);
            assert.deepEqual(buffer.peekAt(from, live), expected, 'a view or a copy');
          }
        },
      ),
      { seed: 21, numRuns: 200 },
    );
  });

  it('dirties only the sockbuf pages it writes, wrapping to the first page', () => {
    const memory = GuestMemory.create(defaultLayout(4096));
    const address = memory.regionAddress('sockbuf');
    const firstPage = address / PAGE_SIZE_BYTES;
    const buffer = new SocketBuffer(memory, { address, capacityBytes: 4 * PAGE_SIZE_BYTES });
    memory.setLogDirty(true);
    buffer.writeAt(3 * PAGE_SIZE_BYTES + 100, new Uint8Array(PAGE_SIZE_BYTES));
    const pages = memory.peekAndClean();
    assert.deepEqual([...pages], [firstPage, firstPage + 3]);
    assert.deepEqual(memory.countByRegion(pages), {
      kernel: 0,
      sockbuf: 2,
      pagecache: 0,
      program: 0,
    });
    buffer.readAt(0, 4 * PAGE_SIZE_BYTES);
    assert.equal(memory.peekDirtyCount(), 0, 'reading dirties nothing');
  });
});
