/**
 * Goal: a domain's sockbuf region is cut into socket slots as before by default (16 slots of
 * 256 KiB buffers in a 64 MiB domain, 8 in a 16 MiB one), and a domain created with
 * `socketBufferBytes` gets buffers of that size and as many slots as fit; sizes that are not
 * whole pages, out of range, or leave fewer than `SOCKET_SLOTS_MIN` slots are refused naming
 * the field.
 * Method: `socketBufferPlan` on default layouts, fast-check (fixed seed) over sizes, and a
 * booted `Netstack` whose state shows the buffer size and its free slots.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout } from '../memory/layout.ts';
import { STREAM_BUFFER_BYTES_MAX } from '../net/limits.ts';
import { Netstack, SOCKET_SLOTS_MIN, socketBufferPlan } from './netstack.ts';

const MIB = 2 ** 20;
const pagesOf = (bytes: number) => bytes / PAGE_SIZE_BYTES;

describe('socket slots of the sockbuf region', () => {
  it('keeps the default cut', () => {
    assert.deepEqual(
      socketBufferPlan(defaultLayout(pagesOf(64 * MIB))),
      { bufferBytes: 256 * 1024, slotCount: 16 },
      '64 MiB: 8 MiB of sockbuf in 16 slots of 2 x 256 KiB',
    );
    assert.deepEqual(
      socketBufferPlan(defaultLayout(pagesOf(16 * MIB))),
      { bufferBytes: 128 * 1024, slotCount: 8 },
      '16 MiB: 2 MiB of sockbuf in 8 slots of 2 x 128 KiB',
    );
  });

  it('gives as many slots of the asked size as fit', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 4096, max: 65536 }),
        fc.integer({ min: 1, max: 64 }),
        (pageCount, bufferPages) => {
          const layout = defaultLayout(pageCount);
          const sockbufBytes = layout.regions[1]!.pageCount * PAGE_SIZE_BYTES;
          const bufferBytes = bufferPages * PAGE_SIZE_BYTES;
          const slots = Math.floor(sockbufBytes / (2 * bufferBytes));
          if (slots < SOCKET_SLOTS_MIN) {
            assert.throws(
              () => socketBufferPlan(layout, bufferBytes),
              (e: unknown) => e instanceof InputError && /socketBufferBytes/.test(e.message),
              `${bufferBytes} B leaves ${slots} slots: refused`,
            );
          } else {
            assert.deepEqual(
              socketBufferPlan(layout, bufferBytes),
              { bufferBytes, slotCount: slots },
              `${bufferBytes} B in ${sockbufBytes} B of sockbuf`,
            );
          }
        },
      ),
      { seed: 8201, numRuns: 200 },
    );
  });

  it('refuses sizes that are not whole pages or out of range, naming the field', () => {
    const layout = defaultLayout(pagesOf(64 * MIB));
    for (const bad of [0, 1, 4095, 6000, STREAM_BUFFER_BYTES_MAX + 4096, 1.5, Number.NaN]) {
      assert.throws(
        () => socketBufferPlan(layout, bad),
        (e: unknown) => e instanceof InputError && /socketBufferBytes/.test(e.message),
        `${bad} refused`,
      );
    }
  });

  it('boots a stack with the asked buffers', () => {
    const memory = GuestMemory.create(defaultLayout(pagesOf(32 * MIB)));
    const stack = Netstack.boot(
      {
        memory,
        nowMs: () => 0,
        notifyBackend: () => {},
        deliver: () => {},
        setTimer: () => {},
      },
      { ip: '10.0.0.1', seed: 1, socketBufferBytes: 16 * 1024 },
    );
    assert.equal(stack.state.bufferBytes, 16 * 1024, 'buffers of 16 KiB');
    assert.equal(stack.state.freeSlots.length, 128, '4 MiB of sockbuf: 128 slots');
  });
});
