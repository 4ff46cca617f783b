/**
 * A single-producer single-consumer ring of frames laid out in guest memory, like Xen's
 * netfront TX and RX rings: the guest kernel produces on its TX ring and consumes its RX ring;
 * Dom0 (netback) does the opposite, from another thread.
 *
 * Method: the whole ring state lives in guest pages, the object holds none, so a ring survives
 * a migration as the pages it is made of and can be attached from any thread. The producer
 * copies a frame into its slot with `memory.write` (dirtying the slot's page), writes the
 * slot's length word, and only then publishes the producer index with `Atomics.store`, then
 * marks the control page dirty. The consumer reads with `Atomics.load`, copies the frames out,
 * and publishes its index the same way, which also dirties the control page, as netback's
 * response writes dirty the shared ring page in Xen. Indices are free-running u32 counters, so
 * a full ring and an empty one differ without a spare slot.
 *
 * Publish once per batch (`pushMany`/`popMany`): a publish per message halves throughput on
 * this machine (reference/machine-limits.md §2). `pushEach`/`popEach` work on views of the
 * slots, so a frame can be encoded straight into its slot and Dom0 can copy slot to slot:
 * with them, a stream moves about twice the bytes per second of the copying calls.
 *
 * Non-goals: notifications (the caller decides when to kick the event channel), scatter-gather
 * of frames across slots, and defending the producer from a consumer that corrupts its index.
 *
 * ```
 * address (page aligned)
 * +0      producer index (u32, free-running)      own 64-byte line
 * +64     consumer index (u32, free-running)      own 64-byte line
 * +128    length of slot 0, 1, ... slotCount-1 (u32 each)
 *         ... padding to a whole page ...
 * +C      slot 0   (slotSizeBytes)                 C = control bytes rounded up to pages
 * +C+S    slot 1
 *         ...
 *         slot slotCount-1
 * ```
 */
import assert from 'node:assert/strict';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import type { GuestMemory } from '../memory/guest-memory.ts';
import { NETFRONT_SLOT_COUNT, NETFRONT_SLOT_SIZE_BYTES } from './limits.ts';

const PRODUCER_WORD = 0;
const CONSUMER_WORD = 16;
const LENGTH_WORDS_FIRST = 32;

/** Where a ring lives and how it is shaped. */
export interface NetfrontRingInit {
  /** Byte address in guest memory of the control page; a multiple of 4096. */
  address: number;
  /** Number of slots, a power of two. @default 256 (NETFRONT_SLOT_COUNT) */
  slotCount?: number;
  /** Bytes per slot, the largest frame the ring carries. @default 4096 */
  slotSizeBytes?: number;
}

export class NetfrontRing {
  readonly address: number;
  readonly slotCount: number;
  readonly slotSizeBytes: number;
  /** Byte address of slot 0. */
  readonly slotsAddress: number;
  private readonly memory: GuestMemory;
  private readonly words: Int32Array;
  private readonly slotMask: number;

  constructor(memory: GuestMemory, init: NetfrontRingInit) {
    const slotCount = init.slotCount ?? NETFRONT_SLOT_COUNT;
    const slotSizeBytes = init.slotSizeBytes ?? NETFRONT_SLOT_SIZE_BYTES;
    assert(Number.isInteger(init.address) && init.address >= 0, 'ring address');
    assert(init.address % PAGE_SIZE_BYTES === 0, `ring address ${init.address} not page aligned`);
    assert(slotCount >= 1 && slotCount <= 1 << 20, `slot count ${slotCount}`);
    assert((slotCount & (slotCount - 1)) === 0, `slot count ${slotCount} is not a power of two`);
    assert(Number.isInteger(slotSizeBytes) && slotSizeBytes >= 1, `slot size ${slotSizeBytes}`);
    const end = init.address + NetfrontRing.bytesNeeded(init);
    assert(end <= memory.sizeBytes, `ring ends at ${end}, beyond ${memory.sizeBytes} B`);
    this.memory = memory;
    this.address = init.address;
    this.slotCount = slotCount;
    this.slotSizeBytes = slotSizeBytes;
    this.slotMask = slotCount - 1;
    this.slotsAddress = init.address + controlBytes(slotCount);
    this.words = new Int32Array(memory.bytes.buffer, init.address, LENGTH_WORDS_FIRST + slotCount);
  }

  /** Guest memory a ring of this shape occupies, in bytes (control pages plus slots). */
  static bytesNeeded(init: Omit<NetfrontRingInit, 'address'>): number {
    const slotCount = init.slotCount ?? NETFRONT_SLOT_COUNT;
    return controlBytes(slotCount) + slotCount * (init.slotSizeBytes ?? NETFRONT_SLOT_SIZE_BYTES);
  }

  /** Frames produced and not yet consumed (clamped to `slotCount` if an index is corrupt). */
  get pending(): number {
    const produced = Atomics.load(this.words, PRODUCER_WORD);
    const consumed = Atomics.load(this.words, CONSUMER_WORD);
    return Math.min((produced - consumed) >>> 0, this.slotCount);
  }

  /** Slots the producer may fill now. */
  get free(): number {
    return this.slotCount - this.pending;
  }

  /** Pushes one frame and publishes it. */
  tryPush(frame: Uint8Array): 'ok' | 'full' {
    return this.pushMany([frame]) === 1 ? 'ok' : 'full';
  }

  /**
   * Pushes `frames[start..]` while slots are free, then publishes the producer index once.
   * Returns how many were pushed. A frame longer than a slot is a programmer error.
   */
  pushMany(frames: readonly Uint8Array[], start = 0): number {
    const words = this.words;
    const produced = Atomics.load(words, PRODUCER_WORD);
    const consumed = Atomics.load(words, CONSUMER_WORD);
    const free = this.slotCount - Math.min((produced - consumed) >>> 0, this.slotCount);
    const count = Math.min(free, frames.length - start);
    for (let i = 0; i < count; i++) {
      const frame = frames[start + i]!;
      assert(frame.byteLength <= this.slotSizeBytes, `frame of ${frame.byteLength} B > slot`);
      const slot = (produced + i) & this.slotMask;
      this.memory.write(this.slotsAddress + slot * this.slotSizeBytes, frame);
      words[LENGTH_WORDS_FIRST + slot] = frame.byteLength;
      this.memory.markDirty(this.address + (LENGTH_WORDS_FIRST + slot) * 4, 4);
    }
    if (count > 0) this.publish(PRODUCER_WORD, produced + count);
    return count;
  }

  /**
   * Zero-copy push: `encode(item, slot)` writes each item straight into its slot (a view of
   * guest memory, `slotSizeBytes` long) and returns the bytes written; the ring marks them
   * dirty. Publishes once; returns how many items were pushed.
   */
  pushEach<T>(
    items: readonly T[],
    encode: (item: T, slot: Uint8Array) => number,
    start = 0,
  ): number {
    const words = this.words;
    const produced = Atomics.load(words, PRODUCER_WORD);
    const consumed = Atomics.load(words, CONSUMER_WORD);
    const free = this.slotCount - Math.min((produced - consumed) >>> 0, this.slotCount);
    const count = Math.min(free, items.length - start);
    for (let i = 0; i < count; i++) {
      const slot = (produced + i) & this.slotMask;
      const address = this.slotsAddress + slot * this.slotSizeBytes;
      const view = this.memory.bytes.subarray(address, address + this.slotSizeBytes);
      const length = encode(items[start + i]!, view);
      assert(length >= 0 && length <= this.slotSizeBytes, `encoded ${length} B into a slot`);
      this.memory.markDirty(address, length);
      words[LENGTH_WORDS_FIRST + slot] = length;
      this.memory.markDirty(this.address + (LENGTH_WORDS_FIRST + slot) * 4, 4);
    }
    if (count > 0) this.publish(PRODUCER_WORD, produced + count);
    return count;
  }

  /** Pops one frame (a copy), or null when the ring is empty. */
  tryPop(): Uint8Array | null {
    return this.popMany(1)[0] ?? null;
  }

  /**
   * Pops up to `maxFrames` frames (copies), then publishes the consumer index once. A length
   * word beyond the slot size (a guest scribbling on its ring) is clamped, so the frame comes
   * out truncated and fails to decode instead of reading another slot.
   */
  popMany(maxFrames: number = this.slotCount): Uint8Array[] {
    const words = this.words;
    const produced = Atomics.load(words, PRODUCER_WORD);
    const consumed = Atomics.load(words, CONSUMER_WORD);
    const count = Math.min((produced - consumed) >>> 0, this.slotCount, maxFrames);
    const frames: Uint8Array[] = [];
    for (let i = 0; i < count; i++) {
      const slot = (consumed + i) & this.slotMask;
      const length = Math.min(words[LENGTH_WORDS_FIRST + slot]! >>> 0, this.slotSizeBytes);
      frames.push(this.memory.read(this.slotsAddress + slot * this.slotSizeBytes, length));
    }
    if (count > 0) this.publish(CONSUMER_WORD, consumed + count);
    return frames;
  }

  /**
   * Zero-copy pop: calls `visit` with a view of each pending frame in guest memory, valid only
   * during the call. `visit` returns false to stop before consuming that frame (e.g. Dom0
   * finds the target's RX ring full); it stays for the next call. Publishes the consumer index
   * once; returns how many frames were consumed. Length words are clamped as in `popMany`.
   */
  popEach(visit: (frame: Uint8Array) => boolean, maxFrames: number = this.slotCount): number {
    const words = this.words;
    const produced = Atomics.load(words, PRODUCER_WORD);
    const consumed = Atomics.load(words, CONSUMER_WORD);
    const available = Math.min((produced - consumed) >>> 0, this.slotCount, maxFrames);
    let count = 0;
    while (count < available) {
      const slot = (consumed + count) & this.slotMask;
      const length = Math.min(words[LENGTH_WORDS_FIRST + slot]! >>> 0, this.slotSizeBytes);
      const address = this.slotsAddress + slot * this.slotSizeBytes;
      if (!visit(this.memory.bytes.subarray(address, address + length))) break;
      count++;
    }
    if (count > 0) this.publish(CONSUMER_WORD, consumed + count);
    return count;
  }

  /**
   * Empties the ring (both indices to 0), as netfront does when it reconnects. Only while
   * neither side runs, e.g. when the kernel builds its rings or resumes on a new host.
   */
  reset(): void {
    Atomics.store(this.words, PRODUCER_WORD, 0);
    Atomics.store(this.words, CONSUMER_WORD, 0);
    this.memory.markDirty(this.address, LENGTH_WORDS_FIRST * 4);
  }

  /** Stores a free-running index (wrapping at 2^32), then logs the control page as dirty. */
  private publish(word: number, value: number): void {
    Atomics.store(this.words, word, value | 0);
    this.memory.markDirty(this.address + word * 4, 4);
  }
}

/** Control area: two 64-byte index lines plus a length word per slot, in whole pages. */
function controlBytes(slotCount: number): number {
  const bytes = LENGTH_WORDS_FIRST * 4 + slotCount * 4;
  return Math.ceil(bytes / PAGE_SIZE_BYTES) * PAGE_SIZE_BYTES;
}
