/**
 * The Data Transfer Manager's circular FIFO: one direction of one XENVMC channel, a byte stream
 * from a sender domain to a receiver domain (paper §9, "Send/receive").
 *
 * Goal: the region lives in a SharedArrayBuffer of its own, not in either guest's memory, so
 * channel traffic dirties no guest page; that is what lets Advance-XENVMC keep the channel up
 * during pre-copy (§10). The object holds only caches, so both sides, in different worker
 * threads, attach the same region, and a FIFO outlives the objects that use it.
 *
 * Method: a single-producer single-consumer byte ring with free-running counters, tuned the
 * way reference/machine-limits.md §2 measured: counters on separate 64-byte lines, each side
 * caches the other's counter and reloads it only when the cached one says "no room" or
 * "nothing pending", one `Atomics.store` per call (a SeqCst store costs about 40 ns here, as
 * much as copying 64 B), and `Atomics.wait`/`notify` only behind a waiting flag, after a short
 * spin (a futex wake costs 10-16 us on this VM).
 *
 * Stream offsets: bytes carry them. The byte at stream offset `o`
 * (baseOffset <= o < baseOffset + written) sits at `data[(o - baseOffset) mod capacity]`.
 * The sender copies the bytes in with `TypedArray.set` and only then publishes `written`; the
 * receiver loads `written` before it reads the data, and publishes `consumed` after copying.
 *
 * Counters beyond 2^32 bytes: `written` and `consumed` are each stored as their value modulo
 * 2^32 in one Int32 word (the publication word; `| 0` wraps it). Because the capacity is a
 * power of two no larger than 2^30, everything on the fast path needs only these words:
 * `written - consumed` (at most the capacity) is exact modulo 2^32, and so is a byte's index,
 * `counter mod capacity`. Full values (for the offsets) come from a checkpoint: a 64-bit
 * copy of the counter (`BigInt64Array`, whose `Atomics` accesses are single-copy atomic by the
 * ECMAScript memory model), which the counter's writer refreshes, before it publishes, to the
 * value already published whenever the counter has moved `checkpointIntervalBytes` past it
 * (once per GiB by default). So `0 <= counter - checkpoint <= max(interval, capacity) <= 2^30`
 * at every instant, and `full = checkpoint + ((low - checkpoint) mod 2^32)`. A reader
 * loads the checkpoint, the low word, and the checkpoint again, and retries if it moved.
 * Rejected (per publish, load and store, measured here): a 64-bit counter in a BigInt64Array
 * on every call (~130 ns, against ~45 ns for the Int32 word), a seqlock over hi/lo words
 * (four stores, ~175 ns), and a hi/lo pair read hi-lo-hi (it can tear by 2^32 whichever
 * order the writer stores in).
 *
 * Non-goals: several writers or readers per direction (the connection serialises its users,
 * as `sender_t`'s wait list does), notification of the peer domain (the caller kicks its
 * event channel when `takeReceiverWaiting`/`takeSenderWaiting` say so; only the blocking calls
 * use the region's own event word), and defending a side from a peer that scribbles on the
 * header (a corrupt counter is clamped, so it garbles the stream, never an index).
 *
 * ```
 * placement.byteOffset (a multiple of 64)
 * +0    magic 'XVF1' (i32)   capacityBytes (i32)   checkpointIntervalBytes (i32)
 * +12   state (i32: 1 open, 2 closing, 3 closed)
 * +16   baseOffset (i64)                                       written once, by create()
 * +64   written mod 2^32 (i32)      checkpoint low (i32)       sender's line
 * +72   written checkpoint (i64)
 * +128  consumed mod 2^32 (i32)     checkpoint low (i32)       receiver's line
 * +136  consumed checkpoint (i64)
 * +192  receiverWaiting (i32)   senderWaiting (i32)   event (i32, Atomics.wait/notify)
 * +204  takenBack (i32: 1 once the sender took back the unread bytes after a close)
 * +256  data[0 .. capacityBytes-1]       the ring; capacityBytes is a power of two
 *
 *          consumed          written               (counters, mod capacity)
 *              v                v
 * data: [......#################.............]     # = pending, . = free
 * ```
 */
import assert from 'node:assert/strict';
import { TestbedError } from '../core/errors.ts';

/**
 * Bytes of data per direction. XenLoop used 64 KiB per direction and XenVMC's release
 * 512 KiB; a quarter MiB matches our socket buffers (STREAM_SEND_BUFFER_BYTES).
 */
export const FIFO_CAPACITY_BYTES_DEFAULT = 256 * 1024;

/** Smallest capacity: a cache line's worth keeps the wrap-around arithmetic honest in tests. */
export const FIFO_CAPACITY_BYTES_MIN = 16;

/**
 * Largest capacity, 1 GiB: keeps `written - consumed` and a counter's distance from its
 * checkpoint below 2^31, so both are exact as differences of Int32 words.
 */
export const FIFO_CAPACITY_BYTES_MAX = 2 ** 30;

/** Header bytes before the data: four 64-byte lines (see the layout above). */
export const FIFO_HEADER_BYTES = 256;

/**
 * How far a counter may move past its 64-bit checkpoint before the writer refreshes it, 1 GiB:
 * one extra BigInt store per GiB is free, and the bound keeps the distance below 2^31.
 */
export const FIFO_CHECKPOINT_INTERVAL_BYTES_DEFAULT = 2 ** 30;

/**
 * How long the blocking calls poll before they sleep, in microseconds. Spinning buys latency
 * (a futex wake costs 10-16 us on this VM, machine-limits §2) with throughput: 64 KiB writes
 * through a 256 KiB FIFO between two workers moved 4.4 GB/s with no spin, 3.8 with 5 us and
 * 2.7 with 20 us (medians of 5, interleaved, other tenants busy), because the spinner competes
 * for the two vCPUs and the counters' cache lines. 5 us keeps most of both; bulk transfers may
 * pass 0.
 */
export const FIFO_SPIN_MICROS_DEFAULT = 5;

/** Where a FIFO lives: header plus data, `fifoBytesNeeded(capacityBytes)` bytes from byteOffset. */
export interface FifoPlacement {
  /** The channel's shared region (never a guest's memory). */
  buffer: SharedArrayBuffer;
  /** Byte offset of the header in `buffer`; a multiple of 64 (one cache line). */
  byteOffset: number;
  /** Data bytes; a power of two in [16, 2^30]. Usually FIFO_CAPACITY_BYTES_DEFAULT. */
  capacityBytes: number;
}

/** Options of one side's object (not stored in the region). */
export interface FifoOptions {
  /** Polling time of the blocking calls before `Atomics.wait`, in us. @default 5 */
  spinMicros?: number;
}

/** How `SharedFifo.create` initialises the header. */
export interface FifoInit extends FifoOptions {
  /** Stream offset of the FIFO's first byte ever, in bytes. */
  baseOffset: number;
  /**
   * Value both counters start at, in bytes, as if the FIFO had already carried (and the
   * receiver consumed) that much: the first byte written is at `baseOffset + countStartBytes`.
   * Lets tests take the counters past 2^32 without moving 4 GiB. @default 0
   */
  countStartBytes?: number;
  /**
   * Checkpoint refresh distance, in bytes, in [1, 2^30]; small values let tests refresh often.
   * @default 2^30 (FIFO_CHECKPOINT_INTERVAL_BYTES_DEFAULT)
   */
  checkpointIntervalBytes?: number;
}

/** A FIFO's teardown state (see `beginClose` and `acknowledgeClose`). */
export type FifoState = 'open' | 'closing' | 'closed';

/** Stable codes of FIFO operating errors. */
export type FifoErrorCode = 'FIFO_CLOSED';

/**
 * A write to a FIFO that is closing or closed, or a read after the receiver acknowledged the
 * close. Expected during teardown: the sender then takes back the unread bytes with
 * `peekRange(acknowledged read offset, ...)`.
 */
export class FifoClosedError extends TestbedError<FifoErrorCode> {
  constructor(operation: string, state: FifoState, writeOffset: number, readOffset: number) {
    super(
      'FIFO_CLOSED',
      `${operation} on a ${state} FIFO (write offset ${writeOffset}, read offset ${readOffset})`,
    );
    this.name = 'FifoClosedError';
  }
}

const MAGIC = 0x31465658; // 'XVF1' little-endian
const STATE_OPEN = 1;
const STATE_CLOSING = 2;
const STATE_CLOSED = 3;
const STATE_NAMES: Record<number, FifoState> = {
  [STATE_OPEN]: 'open',
  [STATE_CLOSING]: 'closing',
  [STATE_CLOSED]: 'closed',
};

// Int32 word indices (byte offset / 4) and BigInt64 indices (byte offset / 8) in the header.
const MAGIC_WORD = 0;
const CAPACITY_WORD = 1;
const CHECKPOINT_INTERVAL_WORD = 2;
const STATE_WORD = 3;
const BASE_OFFSET_WIDE = 2;
const WRITTEN_WORD = 16;
const WRITTEN_CHECKPOINT_LOW_WORD = 17;
const WRITTEN_CHECKPOINT_WIDE = 9;
const CONSUMED_WORD = 32;
const CONSUMED_CHECKPOINT_LOW_WORD = 33;
const CONSUMED_CHECKPOINT_WIDE = 17;
const RECEIVER_WAITING_WORD = 48;
const SENDER_WAITING_WORD = 49;
const EVENT_WORD = 50;
const TAKEN_BACK_WORD = 51;

const TWO_POW_32 = 2 ** 32;

/** Bytes a FIFO of `capacityBytes` occupies in its region: the header plus the data. */
export function fifoBytesNeeded(capacityBytes: number): number {
  assertCapacity(capacityBytes);
  return FIFO_HEADER_BYTES + capacityBytes;
}

/**
 * One side's handle on a FIFO region. The sender calls `tryWrite`/`writeBlocking`, the
 * receiver `tryRead`/`readInto`/`readBlocking`; getters work on either side. Each counter must
 * have one writer at a time; a side may hand over to a new object (its caches revalidate).
 */
export class SharedFifo {
  /** Data bytes of the ring. */
  readonly capacityBytes: number;
  /** Stream offset of the FIFO's first byte ever. */
  readonly baseOffset: number;
  private readonly words: Int32Array;
  private readonly wides: BigInt64Array;
  private readonly data: Uint8Array;
  private readonly mask: number;
  private readonly checkpointIntervalBytes: number;
  private readonly spinMicros: number;
  // Caches (machine-limits §2): the peer's counter as last loaded, trusted only while our own
  // counter still has the value we last saw, i.e. no other object wrote it meanwhile.
  private consumedSeen: number;
  private writtenKnown: number;
  private writtenSeen: number;
  private consumedKnown: number;
  // Spin predicates, made once so the blocking calls' slow path allocates nothing.
  private readonly writable = (): boolean => this.freeBytes > 0 || !this.isOpen();
  private readonly readable = (): boolean => this.pendingBytes > 0 || !this.isOpen();

  private constructor(placement: FifoPlacement, options: FifoOptions) {
    assertPlacement(placement);
    const { buffer, byteOffset, capacityBytes } = placement;
    const spinMicros = options.spinMicros ?? FIFO_SPIN_MICROS_DEFAULT;
    assert(spinMicros >= 0 && Number.isFinite(spinMicros), `spin of ${spinMicros} us`);
    this.words = new Int32Array(buffer, byteOffset, FIFO_HEADER_BYTES / 4);
    this.wides = new BigInt64Array(buffer, byteOffset, FIFO_HEADER_BYTES / 8);
    this.data = new Uint8Array(buffer, byteOffset + FIFO_HEADER_BYTES, capacityBytes);
    this.capacityBytes = capacityBytes;
    this.mask = capacityBytes - 1;
    this.spinMicros = spinMicros;
    // Read by create() after it has written them; by attach() after the creator handed the
    // placement over (postMessage orders those writes before these reads).
    this.baseOffset = Number(Atomics.load(this.wides, BASE_OFFSET_WIDE));
    this.checkpointIntervalBytes = this.words[CHECKPOINT_INTERVAL_WORD]!;
    this.writtenKnown = Atomics.load(this.words, WRITTEN_WORD);
    this.consumedSeen = Atomics.load(this.words, CONSUMED_WORD);
    this.consumedKnown = this.consumedSeen;
    this.writtenSeen = this.writtenKnown;
  }

  /** Initialises the header of a new FIFO (open, empty) and returns the creator's handle. */
  static create(placement: FifoPlacement, init: FifoInit): SharedFifo {
    const countStartBytes = init.countStartBytes ?? 0;
    const interval = init.checkpointIntervalBytes ?? FIFO_CHECKPOINT_INTERVAL_BYTES_DEFAULT;
    assert(Number.isSafeInteger(init.baseOffset), `base offset ${init.baseOffset}`);
    assert(init.baseOffset >= 0, `base offset ${init.baseOffset}`);
    assert(Number.isSafeInteger(countStartBytes), `count start ${countStartBytes}`);
    assert(countStartBytes >= 0, `count start ${countStartBytes}`);
    assert(
      Number.isSafeInteger(init.baseOffset + countStartBytes + TWO_POW_32),
      `base offset ${init.baseOffset} + count start ${countStartBytes} leaves no room`,
    );
    assert(
      Number.isInteger(interval) && interval >= 1 && interval <= 2 ** 30,
      `checkpoint interval ${interval} B`,
    );
    assertPlacement(placement);
    const words = new Int32Array(placement.buffer, placement.byteOffset, FIFO_HEADER_BYTES / 4);
    const wides = new BigInt64Array(placement.buffer, placement.byteOffset, FIFO_HEADER_BYTES / 8);
    words.fill(0);
    Atomics.store(words, CAPACITY_WORD, placement.capacityBytes);
    Atomics.store(words, CHECKPOINT_INTERVAL_WORD, interval);
    Atomics.store(words, STATE_WORD, STATE_OPEN);
    Atomics.store(wides, BASE_OFFSET_WIDE, BigInt(init.baseOffset));
    const startLow = lowWord(countStartBytes);
    for (const [low, checkpointLow, wide] of [
      [WRITTEN_WORD, WRITTEN_CHECKPOINT_LOW_WORD, WRITTEN_CHECKPOINT_WIDE],
      [CONSUMED_WORD, CONSUMED_CHECKPOINT_LOW_WORD, CONSUMED_CHECKPOINT_WIDE],
    ] as const) {
      Atomics.store(wides, wide, BigInt(countStartBytes));
      Atomics.store(words, checkpointLow, startLow);
      Atomics.store(words, low, startLow);
    }
    Atomics.store(words, MAGIC_WORD, MAGIC); // last: an attacher that sees it sees the rest
    return new SharedFifo(placement, init);
  }

  /** True once `create` has initialised this placement (it sets the magic word last). */
  static isCreated(placement: FifoPlacement): boolean {
    const words = new Int32Array(placement.buffer, placement.byteOffset, 4);
    return Atomics.load(words, MAGIC_WORD) === MAGIC;
  }

  /** Attaches to a FIFO that `create` initialised (the other side, or another observer). */
  static attach(placement: FifoPlacement, options: FifoOptions = {}): SharedFifo {
    assertPlacement(placement);
    const words = new Int32Array(placement.buffer, placement.byteOffset, 4);
    assert.equal(Atomics.load(words, MAGIC_WORD), MAGIC, 'no FIFO was created at this placement');
    const capacityBytes = Atomics.load(words, CAPACITY_WORD);
    assert.equal(capacityBytes, placement.capacityBytes, 'FIFO capacity differs from placement');
    return new SharedFifo(placement, options);
  }

  /** Stream offset of the next byte to write: baseOffset + written. */
  get writeOffset(): number {
    return this.baseOffset + this.fullCount(WRITTEN_WORD, WRITTEN_CHECKPOINT_WIDE);
  }

  /** Stream offset of the next byte to read: baseOffset + consumed. */
  get readOffset(): number {
    return this.baseOffset + this.fullCount(CONSUMED_WORD, CONSUMED_CHECKPOINT_WIDE);
  }

  /** Bytes the sender may write now (fresh loads of both counters). */
  get freeBytes(): number {
    return this.capacityBytes - this.pendingBytes;
  }

  /** Bytes the receiver may read now (fresh loads; clamped to the capacity if corrupt). */
  get pendingBytes(): number {
    const written = Atomics.load(this.words, WRITTEN_WORD);
    const consumed = Atomics.load(this.words, CONSUMED_WORD);
    return Math.min((written - consumed) >>> 0, this.capacityBytes);
  }

  /** True once the receiver acknowledged the close (reads throw). */
  get closed(): boolean {
    return Atomics.load(this.words, STATE_WORD) === STATE_CLOSED;
  }

  /** The teardown state. */
  get state(): FifoState {
    return STATE_NAMES[Atomics.load(this.words, STATE_WORD)] ?? 'closed';
  }

  /**
   * Sender: copies as much of `bytes` as fits and publishes `written` once. Returns the count;
   * 0 when the FIFO is full, and then `senderWaiting` is set, so the receiver's next read
   * reports it. Throws FifoClosedError unless the FIFO is open.
   */
  tryWrite(bytes: Uint8Array): number {
    return this.writeFrom(bytes, 0, true);
  }

  /**
   * Receiver: copies up to `maxBytes` pending bytes into a new (unshared) array and publishes
   * `consumed` once. When nothing is pending (and `maxBytes` > 0), sets `receiverWaiting` and
   * returns an empty array. Throws FifoClosedError once the receiver acknowledged the close.
   */
  tryRead(maxBytes: number): Uint8Array {
    return this.readOut(maxBytes, true);
  }

  /** Receiver: like `tryRead(target.length)`, into `target`; returns the count. */
  readInto(target: Uint8Array): number {
    return this.copyOut(target, true);
  }

  /**
   * Copies the `length` bytes from stream offset `fromOffset` without consuming them; the range
   * must lie in [readOffset, writeOffset]. At teardown the sender takes back what the receiver
   * never read: `peekRange(acknowledgeClose(), writeOffset - that)`.
   */
  peekRange(fromOffset: number, length: number): Uint8Array {
    const readOffset = this.readOffset;
    const writeOffset = this.writeOffset;
    assert(Number.isSafeInteger(fromOffset) && Number.isSafeInteger(length), 'peek range');
    assert(
      fromOffset >= readOffset && length >= 0 && fromOffset + length <= writeOffset,
      `peek [${fromOffset}, +${length}) outside unread [${readOffset}, ${writeOffset})`,
    );
    const out = new Uint8Array(length);
    const index = (fromOffset - this.baseOffset) % this.capacityBytes;
    const first = Math.min(length, this.capacityBytes - index);
    out.set(this.data.subarray(index, index + first), 0);
    if (first < length) out.set(this.data.subarray(0, length - first), first);
    return out;
  }

  /** Receiver: asks to be woken (Dekker re-check); returns the bytes pending now. */
  armReceiverWaiting(): number {
    Atomics.store(this.words, RECEIVER_WAITING_WORD, 1);
    const pending = this.pendingBytes;
    if (pending > 0) Atomics.store(this.words, RECEIVER_WAITING_WORD, 0);
    return pending;
  }

  /** Sender: asks to be woken (Dekker re-check); returns the free bytes now. */
  armSenderWaiting(): number {
    Atomics.store(this.words, SENDER_WAITING_WORD, 1);
    const free = this.freeBytes;
    if (free > 0) Atomics.store(this.words, SENDER_WAITING_WORD, 0);
    return free;
  }

  /** Sender, after a write: true if the receiver asked to be woken; clears the request. */
  takeReceiverWaiting(): boolean {
    return takeFlag(this.words, RECEIVER_WAITING_WORD);
  }

  /** Receiver, after a read: true if the sender asked to be woken; clears the request. */
  takeSenderWaiting(): boolean {
    return takeFlag(this.words, SENDER_WAITING_WORD);
  }

  /** Either side: open -> closing (no more writes), and wakes a blocked peer. Idempotent. */
  beginClose(): void {
    Atomics.compareExchange(this.words, STATE_WORD, STATE_OPEN, STATE_CLOSING);
    this.notify();
  }

  /**
   * Sender, after a close: records that it took back `[readOffset, writeOffset)` (to resend it
   * by other means). Until then, a receiver whose sender vanished must deliver those bytes.
   */
  markTakenBack(): void {
    Atomics.store(this.words, TAKEN_BACK_WORD, 1);
  }

  /** Whether the sender took back the unread bytes (`markTakenBack`). */
  get takenBack(): boolean {
    return Atomics.load(this.words, TAKEN_BACK_WORD) !== 0;
  }

  /**
   * Receiver, when the sender is gone for good without taking back what was never read:
   * closed -> closing, so that the receiver can read the rest after all. No-op unless closed.
   */
  resumeDrain(): void {
    Atomics.compareExchange(this.words, STATE_WORD, STATE_CLOSED, STATE_CLOSING);
  }

  /**
   * Receiver: -> closed (from open or closing) and returns the final read offset; every read
   * published `consumed` before this, so the sender that sees 'closed' sees the final count.
   * Idempotent; afterwards reads throw.
   */
  acknowledgeClose(): number {
    Atomics.store(this.words, STATE_WORD, STATE_CLOSED);
    this.notify();
    return this.readOffset;
  }

  /**
   * Sender: writes all of `bytes`, spinning and then blocking (`Atomics.wait`) while the FIFO
   * is full, and wakes a waiting receiver after each chunk. Returns the bytes written: all of
   * them, or fewer if `timeoutMs` (ms, may be Infinity; counted from the first time the call
   * finds the FIFO full) passed first. Throws FifoClosedError if the FIFO stops being open;
   * the bytes written so far are then in [.., writeOffset).
   */
  writeBlocking(bytes: Uint8Array, timeoutMs: number): number {
    let deadline = Number.NaN; // read the clock only once we must wait (~30 ns a reading)
    let done = 0;
    while (done < bytes.length) {
      let count = this.writeFrom(bytes, done, false);
      if (count === 0) {
        if (Number.isNaN(deadline)) deadline = performance.now() + timeoutMs;
        if (this.spinUntil(this.writable)) continue;
        // Observe the event word before raising the flag: a notify after this point changes
        // it, so the wait below cannot sleep through the wake-up.
        const event = Atomics.load(this.words, EVENT_WORD);
        count = this.writeFrom(bytes, done, true);
        if (count === 0) {
          const remainingMs = deadline - performance.now();
          if (remainingMs <= 0) break;
          Atomics.wait(this.words, EVENT_WORD, event, remainingMs);
          continue;
        }
      }
      done += count;
      if (this.takeReceiverWaiting()) this.notify();
    }
    return done;
  }

  /**
   * Receiver: waits (spin, then `Atomics.wait`) until something is pending, reads up to
   * `maxBytes` into a new array, and wakes a waiting sender. Returns an empty array on timeout
   * (`timeoutMs` in ms, may be Infinity; counted from the first time the call finds the FIFO
   * empty), or at once when the FIFO is closing and empty.
   */
  readBlocking(maxBytes: number, timeoutMs: number): Uint8Array {
    let bytes: Uint8Array = new Uint8Array(0);
    this.readWhenPending(timeoutMs, (flagWhenEmpty) => {
      bytes = this.readOut(maxBytes, flagWhenEmpty);
      return bytes.length;
    });
    return bytes;
  }

  /** Receiver: `readBlocking` into `target` (no allocation); returns the count. */
  readIntoBlocking(target: Uint8Array, timeoutMs: number): number {
    return this.readWhenPending(timeoutMs, (flagWhenEmpty) => this.copyOut(target, flagWhenEmpty));
  }

  /** Wakes every thread blocked on this FIFO's event word (`Atomics.notify`). */
  notify(): void {
    Atomics.add(this.words, EVENT_WORD, 1);
    Atomics.notify(this.words, EVENT_WORD);
  }

  /** Writes `bytes[start..]` as far as it fits; publishes once. See `tryWrite`. */
  private writeFrom(bytes: Uint8Array, start: number, flagWhenFull: boolean): number {
    const words = this.words;
    if (Atomics.load(words, STATE_WORD) !== STATE_OPEN) this.throwClosed('write');
    const written = Atomics.load(words, WRITTEN_WORD);
    const wanted = bytes.length - start;
    if (written !== this.writtenKnown) {
      this.writtenKnown = written;
      this.consumedSeen = Atomics.load(words, CONSUMED_WORD);
    }
    let free = this.freeCached(written);
    if (free < wanted) {
      this.consumedSeen = Atomics.load(words, CONSUMED_WORD);
      free = this.freeCached(written);
      if (free === 0 && wanted > 0 && flagWhenFull) {
        // Dekker with the receiver's publish-then-check: one of us sees the other's store.
        Atomics.store(words, SENDER_WAITING_WORD, 1);
        this.consumedSeen = Atomics.load(words, CONSUMED_WORD);
        free = this.freeCached(written);
        if (free > 0) Atomics.store(words, SENDER_WAITING_WORD, 0);
      }
    }
    const count = Math.min(free, wanted);
    if (count <= 0) return 0;
    const index = written & this.mask;
    const first = Math.min(count, this.capacityBytes - index);
    // A whole-array set skips a subarray: about 45 ns, a third of a 64 B write here.
    if (start === 0 && count === bytes.length && first === count) this.data.set(bytes, index);
    else {
      this.data.set(bytes.subarray(start, start + first), index);
      if (first < count) this.data.set(bytes.subarray(start + first, start + count), 0);
    }
    this.writtenKnown = this.publish(
      WRITTEN_WORD,
      WRITTEN_CHECKPOINT_LOW_WORD,
      WRITTEN_CHECKPOINT_WIDE,
      written,
      count,
    );
    return count;
  }

  /** Free bytes by the cached consumed counter; 0 if the pair looks corrupt. */
  private freeCached(written: number): number {
    const used = (written - this.consumedSeen) >>> 0;
    return used > this.capacityBytes ? 0 : this.capacityBytes - used;
  }

  /**
   * Receiver's common start: checks the state, revalidates the cache, and returns `consumed`
   * (mod 2^32). With `flagWhenEmpty`, a read that finds nothing raises `receiverWaiting`,
   * re-checks (Dekker, as in `writeFrom`), and lowers the flag again if bytes arrived.
   */
  private readStart(maxBytes: number, flagWhenEmpty: boolean): number {
    const words = this.words;
    // A template literal in `assert` is built on every call: ~50 ns, a 64 B read's copy.
    if (!(Number.isInteger(maxBytes) && maxBytes >= 0)) assert.fail(`read of ${maxBytes} B`);
    if (Atomics.load(words, STATE_WORD) === STATE_CLOSED) this.throwClosed('read');
    const consumed = Atomics.load(words, CONSUMED_WORD);
    if (consumed !== this.consumedKnown) {
      this.consumedKnown = consumed;
      this.writtenSeen = Atomics.load(words, WRITTEN_WORD);
    }
    if (this.pendingCached(consumed) < maxBytes) {
      this.writtenSeen = Atomics.load(words, WRITTEN_WORD);
      if (this.pendingCached(consumed) === 0 && maxBytes > 0 && flagWhenEmpty) {
        Atomics.store(words, RECEIVER_WAITING_WORD, 1);
        this.writtenSeen = Atomics.load(words, WRITTEN_WORD);
        if (this.pendingCached(consumed) > 0) Atomics.store(words, RECEIVER_WAITING_WORD, 0);
      }
    }
    return consumed;
  }

  /** Pending bytes by the cached written counter; 0 if the pair looks corrupt. */
  private pendingCached(consumed: number): number {
    const pending = (this.writtenSeen - consumed) >>> 0;
    return pending > this.capacityBytes ? 0 : pending;
  }

  /** Copies up to `maxBytes` out into a new array; see `tryRead` and `readStart`. */
  private readOut(maxBytes: number, flagWhenEmpty: boolean): Uint8Array {
    const start = this.readStart(maxBytes, flagWhenEmpty);
    const count = Math.min(this.pendingCached(start), maxBytes);
    if (count === 0) return new Uint8Array(0);
    const index = start & this.mask;
    const first = Math.min(count, this.capacityBytes - index);
    const out = unfilledBytes(count);
    out.set(this.data.subarray(index, index + first), 0);
    if (first < count) out.set(this.data.subarray(0, count - first), first);
    this.publishConsumed(start, count);
    return out;
  }

  /** Copies up to `target.length` bytes out into `target`; see `readInto`. */
  private copyOut(target: Uint8Array, flagWhenEmpty: boolean): number {
    const start = this.readStart(target.length, flagWhenEmpty);
    const count = Math.min(this.pendingCached(start), target.length);
    if (count === 0) return 0;
    const index = start & this.mask;
    const first = Math.min(count, this.capacityBytes - index);
    target.set(this.data.subarray(index, index + first), 0);
    if (first < count) target.set(this.data.subarray(0, count - first), first);
    this.publishConsumed(start, count);
    return count;
  }

  /** The blocking reads' loop around `read`, which returns the bytes it read. */
  private readWhenPending(timeoutMs: number, read: (flagWhenEmpty: boolean) => number): number {
    let deadline = Number.NaN; // as in writeBlocking
    for (;;) {
      // State first: a sender that wrote and then closed published its bytes before 'closing'.
      const open = this.isOpen();
      let count = read(false);
      if (count === 0 && open) {
        if (Number.isNaN(deadline)) deadline = performance.now() + timeoutMs;
        if (this.spinUntil(this.readable)) continue;
        const event = Atomics.load(this.words, EVENT_WORD); // before the flag, as in writing
        count = read(true);
        if (count === 0) {
          const remainingMs = deadline - performance.now();
          if (remainingMs <= 0) return 0;
          Atomics.wait(this.words, EVENT_WORD, event, remainingMs);
          continue;
        }
      }
      if (count > 0 && this.takeSenderWaiting()) this.notify();
      return count;
    }
  }

  private publishConsumed(consumed: number, count: number): void {
    this.consumedKnown = this.publish(
      CONSUMED_WORD,
      CONSUMED_CHECKPOINT_LOW_WORD,
      CONSUMED_CHECKPOINT_WIDE,
      consumed,
      count,
    );
  }

  /**
   * Advances a counter by `count` with one Int32 store (after the data copy). First, if the
   * counter would move `checkpointIntervalBytes` past its checkpoint, moves the checkpoint to
   * the value already published, which keeps `checkpoint <= counter` for every reader.
   */
  private publish(
    word: number,
    checkpointLow: number,
    wide: number,
    low: number,
    count: number,
  ): number {
    const next = (low + count) | 0;
    const words = this.words;
    if ((next - words[checkpointLow]!) >>> 0 >= this.checkpointIntervalBytes) {
      const full = this.fullCount(word, wide);
      assert(Number.isSafeInteger(this.baseOffset + full + TWO_POW_32), 'stream offset overflow');
      Atomics.store(this.wides, wide, BigInt(full));
      words[checkpointLow] = low; // read only by this counter's writer
    }
    Atomics.store(words, word, next);
    return next;
  }

  /** A counter's full value: checkpoint + (low - checkpoint) mod 2^32, retried if it moved. */
  private fullCount(word: number, wide: number): number {
    for (;;) {
      const before = Atomics.load(this.wides, wide);
      const low = Atomics.load(this.words, word);
      if (Atomics.load(this.wides, wide) !== before) continue;
      const checkpoint = Number(before);
      return checkpoint + ((low - (checkpoint % TWO_POW_32)) >>> 0);
    }
  }

  private isOpen(): boolean {
    return Atomics.load(this.words, STATE_WORD) === STATE_OPEN;
  }

  /** Polls `ready` for up to `spinMicros`; true as soon as it holds. */
  private spinUntil(ready: () => boolean): boolean {
    if (this.spinMicros === 0) return false;
    const until = performance.now() + this.spinMicros / 1000;
    do {
      if (ready()) return true;
    } while (performance.now() < until);
    return false;
  }

  private throwClosed(operation: string): never {
    throw new FifoClosedError(operation, this.state, this.writeOffset, this.readOffset);
  }
}

function assertPlacement(placement: FifoPlacement): void {
  const { buffer, byteOffset, capacityBytes } = placement;
  assert(buffer instanceof SharedArrayBuffer, 'a FIFO lives in a SharedArrayBuffer');
  assert(
    Number.isInteger(byteOffset) && byteOffset >= 0 && byteOffset % 64 === 0,
    `FIFO byte offset ${byteOffset} is not a multiple of 64`,
  );
  const end = byteOffset + fifoBytesNeeded(capacityBytes);
  assert(end <= buffer.byteLength, `FIFO ends at ${end}, beyond ${buffer.byteLength} B`);
}

function assertCapacity(capacityBytes: number): void {
  assert(
    Number.isInteger(capacityBytes) &&
      capacityBytes >= FIFO_CAPACITY_BYTES_MIN &&
      capacityBytes <= FIFO_CAPACITY_BYTES_MAX &&
      (capacityBytes & (capacityBytes - 1)) === 0,
    `FIFO capacity ${capacityBytes} B is not a power of two in [16, 2^30]`,
  );
}

/**
 * Below this size a read's array comes from `new Uint8Array` (V8's small-object path is the
 * cheapest there); from it on, from uninitialised memory (see `unfilledBytes`).
 */
const UNFILLED_BYTES_MIN = 4096;

/**
 * A new, unshared array of `count` bytes that the caller overwrites entirely before anyone sees
 * it. A zero-filled allocation writes every byte twice: `slice` spent as much of a channel
 * reader's CPU in memset as in the copy (29 % each, perf, 64 KiB messages).
 * `Buffer.allocUnsafeSlow` skips the zeroing (as Node's own sockets do for the chunks they
 * hand out). Wrapped in a plain Uint8Array: a Buffer's `slice` is a view, not a copy, and a
 * reader may rely on that.
 */
function unfilledBytes(count: number): Uint8Array {
  if (count < UNFILLED_BYTES_MIN) return new Uint8Array(count);
  return new Uint8Array(Buffer.allocUnsafeSlow(count).buffer, 0, count);
}

/** A count's publication word: its value modulo 2^32, as an Int32. */
function lowWord(count: number): number {
  return (count % TWO_POW_32) | 0;
}

/** Clears a waiting flag; true if it was set. A plain load first keeps the common case cheap. */
function takeFlag(words: Int32Array, word: number): boolean {
  return Atomics.load(words, word) !== 0 && Atomics.exchange(words, word, 0) !== 0;
}
