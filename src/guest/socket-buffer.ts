/**
 * A socket's send or receive buffer: a circular byte buffer in the 'sockbuf' region of guest
 * memory, addressed by absolute stream offsets (the byte at offset `o` lives at
 * `address + o mod capacityBytes`).
 *
 * Method: the object holds no offsets, only where the bytes are; the stream's plain-data state
 * says which offsets are live, so a migrated stream finds its bytes in the migrated pages.
 * Every write goes through `GuestMemory.write`, so log-dirty sees it and attributes it to
 * 'sockbuf'.
 *
 * Non-goals: bounds of live data (the stream's job) and allocation of the region (the kernel's).
 */
import assert from 'node:assert/strict';
import type { GuestMemory } from '../memory/guest-memory.ts';

/** Where a socket buffer lives (plain data, part of a stream's state). */
export interface SocketBufferPlace {
  /** Byte address of the buffer in guest memory. */
  address: number;
  /** Size of the buffer in bytes. */
  capacityBytes: number;
}

export class SocketBuffer {
  readonly address: number;
  readonly capacityBytes: number;
  private readonly memory: GuestMemory;

  constructor(memory: GuestMemory, place: SocketBufferPlace) {
    assert(Number.isInteger(place.address) && place.address >= 0, 'socket buffer address');
    assert(Number.isInteger(place.capacityBytes) && place.capacityBytes > 0, 'capacity');
    assert(place.address + place.capacityBytes <= memory.sizeBytes, 'socket buffer beyond memory');
    this.memory = memory;
    this.address = place.address;
    this.capacityBytes = place.capacityBytes;
  }

  /** Stores `bytes` as the stream bytes from `offset` on (wrapping), dirtying their pages. */
  writeAt(offset: number, bytes: Uint8Array): void {
    assert(bytes.byteLength <= this.capacityBytes, 'write larger than the buffer');
    const start = offset % this.capacityBytes;
    const first = Math.min(bytes.byteLength, this.capacityBytes - start);
    this.memory.write(this.address + start, bytes.subarray(0, first));
    if (first < bytes.byteLength) this.memory.write(this.address, bytes.subarray(first));
  }

  /**
   * The stream bytes `[offset, offset + length)`: a view of guest memory when they do not
   * wrap (valid until those offsets are overwritten), else a copy. Saves a copy on the send
   * path, where the frame encoder copies the bytes into a ring slot right away.
   */
  peekAt(offset: number, length: number): Uint8Array {
    const start = offset % this.capacityBytes;
    if (start + length > this.capacityBytes) return this.readAt(offset, length);
    const address = this.address + start;
    return this.memory.bytes.subarray(address, address + length);
  }

  /** Copies the stream bytes `[offset, offset + length)` into `target` (default: new array). */
  readAt(offset: number, length: number, target?: Uint8Array): Uint8Array {
    assert(length <= this.capacityBytes, 'read larger than the buffer');
    const out = target ?? new Uint8Array(length);
    const start = offset % this.capacityBytes;
    const first = Math.min(length, this.capacityBytes - start);
    const bytes = this.memory.bytes;
    out.set(bytes.subarray(this.address + start, this.address + start + first));
    if (first < length) out.set(bytes.subarray(this.address, this.address + length - first), first);
    return out;
  }
}
