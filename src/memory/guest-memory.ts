/**
 * A guest's pseudo-physical memory: `pageCount x 4 KiB` in a SharedArrayBuffer, shared by the
 * guest's worker thread (which writes it) and Dom0 on the host's main thread (which copies it
 * out during migration and copies netback frames into it).
 *
 * Log-dirty, as Xen's shadow paging does it: while the control word LOG_DIRTY is set, every
 * write through this class marks each touched page dirty, *after* the bytes are written. The
 * dirty log is a byte per page (Xen's is a bit per page), so that marking is a plain store,
 * never a read-modify-write: the guest and Dom0 (netback filling the RX ring) both mark, and
 * neither can undo the other's mark. Dom0 peeks and cleans the log once per pre-copy round: a
 * plain read of each 4-page word, `Atomics.exchange` only of non-zero words.
 *
 * Why a plain store is enough on x86-64: the data stores and then the mark store leave the core
 * in program order (TSO), and Dom0 cleans with a locked exchange, so a clean that saw no mark
 * came before the data was visible, and the mark then survives for the next round. A locked
 * `Atomics.or` per page cost 17 % of 4 KiB random page writes here (it waits for the whole
 * page's stores to drain; `bench/memory/log-dirty.bench.ts`), the plain store nothing
 * measurable. Elsewhere (arm64 reorders stores) the mark is an `Atomics.store`, a release
 * there. We never skip a mark after a read that saw it set: a clean between that read and our
 * write would make the write vanish from every later round.
 *
 * Non-goals: protection between guests (a domain only ever sees its own memory object), and
 * pages larger than 4 KiB (Node cannot madvise huge pages).
 */
import { PAGE_SHIFT, PAGE_SIZE_BYTES } from '../core/units.ts';
import {
  emptyRegionCounts,
  type MemoryLayout,
  type Region,
  type RegionCounts,
  type RegionName,
  regionByName,
} from './layout.ts';

/** Whether a plain store may mark a page dirty (see the header): x86-64's store order. */
const PLAIN_DIRTY_MARK = process.arch === 'x64';

/** Index of the log-dirty switch in the control words. */
const CONTROL_LOG_DIRTY = 0;
const CONTROL_WORDS = 16;

/**
 * Copies `source` into `target` at `offset` as one memcpy, whatever the alignment of either.
 *
 * Why not `target.set(source, offset)`: V8 copies to or from a SharedArrayBuffer with relaxed
 * atomic accesses, word by word only when both ends share their alignment and byte by byte
 * otherwise. A migration stream puts page data at offsets that are not 8-aligned (and socket
 * chunks start anywhere), so `set` ran at 2.3 GB/s where this runs at 6.5-7 GB/s (Node 20,
 * pieces of 4-64 KiB, either direction). `Buffer#fill` with a byte-array value exactly as long
 * as the range is a plain memcpy in Node's C++. Pass a Buffer over the whole memory as
 * `target` on hot paths to skip wrapping it on every call. `source` must not overlap `target`.
 * A guest thread writing the source meanwhile may tear the copy, as with `set`: the migration
 * sender checksums its copy, never the live page.
 */
export function copyBytes(target: Uint8Array, offset: number, source: Uint8Array): void {
  if (source.byteLength === 0) return; // `fill` refuses an empty value
  const view = Buffer.isBuffer(target)
    ? target
    : Buffer.from(target.buffer, target.byteOffset, target.byteLength);
  view.fill(source, offset, offset + source.byteLength);
}

/** Everything a worker needs to attach to the same memory (structured-clone safe). */
export interface SharedGuestMemory {
  data: SharedArrayBuffer;
  dirty: SharedArrayBuffer;
  control: SharedArrayBuffer;
  layout: MemoryLayout;
}

export class GuestMemory {
  readonly layout: MemoryLayout;
  readonly pageCount: number;
  readonly sizeBytes: number;
  /** The raw bytes. Reading is free; writing must go through `write`/`markDirty`. */
  readonly bytes: Uint8Array;
  /** The dirty log, a byte per page; `dirtyWords` is the same bytes, four pages a word. */
  private readonly dirtyBytes: Uint8Array;
  private readonly dirtyWords: Int32Array;
  /** Scratch to split an exchanged word into its four page bytes, whatever the endianness. */
  private readonly exchangedWord = new Int32Array(1);
  private readonly exchangedBytes = new Uint8Array(this.exchangedWord.buffer);
  private readonly controlWords: Int32Array;
  private readonly regionIndexOfPage: Uint8Array;
  private readonly shared: SharedGuestMemory;

  private constructor(shared: SharedGuestMemory) {
    this.shared = shared;
    this.layout = shared.layout;
    this.pageCount = shared.layout.pageCount;
    this.sizeBytes = this.pageCount * PAGE_SIZE_BYTES;
    this.bytes = new Uint8Array(shared.data);
    this.dirtyBytes = new Uint8Array(shared.dirty);
    this.dirtyWords = new Int32Array(shared.dirty);
    this.controlWords = new Int32Array(shared.control);
    this.regionIndexOfPage = new Uint8Array(this.pageCount);
    shared.layout.regions.forEach((region, index) => {
      this.regionIndexOfPage.fill(index, region.firstPage, region.firstPage + region.pageCount);
    });
  }

  /** Allocates fresh, zeroed memory. Pages are not faulted in until touched (`pretouch`). */
  static create(layout: MemoryLayout): GuestMemory {
    return new GuestMemory({
      data: new SharedArrayBuffer(layout.pageCount * PAGE_SIZE_BYTES),
      dirty: new SharedArrayBuffer(Math.ceil(layout.pageCount / 4) * 4),
      control: new SharedArrayBuffer(CONTROL_WORDS * 4),
      layout,
    });
  }

  /** Attaches to memory created elsewhere (in a domain's worker thread). */
  static attach(shared: SharedGuestMemory): GuestMemory {
    return new GuestMemory(shared);
  }

  /** What to post to a worker so it can `attach`. */
  toShared(): SharedGuestMemory {
    return this.shared;
  }

  /**
   * Faults every page in. The first touch of fresh memory costs about 3.6 s per GiB on this
   * machine, so hosts pre-touch outside every timed phase and say so.
   */
  pretouch(): void {
    const bytes = this.bytes;
    for (let offset = 0; offset < bytes.byteLength; offset += PAGE_SIZE_BYTES) {
      bytes[offset] = bytes[offset]!;
    }
  }

  region(name: RegionName): Region {
    return regionByName(this.layout, name);
  }

  /** Byte address of the first byte of `name`. */
  regionAddress(name: RegionName): number {
    return this.region(name).firstPage * PAGE_SIZE_BYTES;
  }

  /** A view of one page (no copy). */
  page(pageIndex: number): Uint8Array {
    const offset = pageIndex * PAGE_SIZE_BYTES;
    return this.bytes.subarray(offset, offset + PAGE_SIZE_BYTES);
  }

  /** Copies `source` to `address` and marks the touched pages dirty (if log-dirty is on). */
  write(address: number, source: Uint8Array): void {
    if (address < 0 || address + source.byteLength > this.sizeBytes) {
      throw new RangeError(
        `guest write of ${source.byteLength} B at ${address} is outside ${this.sizeBytes} B of memory`,
      );
    }
    this.bytes.set(source, address);
    this.markDirty(address, source.byteLength);
  }

  /** Fills `length` bytes at `address` with `value` and marks them dirty. */
  fill(address: number, length: number, value: number): void {
    this.bytes.fill(value, address, address + length);
    this.markDirty(address, length);
  }

  /** Copies `length` bytes at `address` into `target` (default: a new array). */
  read(address: number, length: number, target?: Uint8Array): Uint8Array {
    const out = target ?? new Uint8Array(length);
    out.set(this.bytes.subarray(address, address + length));
    return out;
  }

  /**
   * Marks pages dirty after a caller wrote them through another view (a DataView, Atomics on
   * ring indices). Must come after the write, never before.
   */
  markDirty(address: number, length: number): void {
    if (length <= 0 || Atomics.load(this.controlWords, CONTROL_LOG_DIRTY) === 0) return;
    const firstPage = address >>> PAGE_SHIFT;
    const lastPage = (address + length - 1) >>> PAGE_SHIFT;
    const log = this.dirtyBytes;
    for (let page = firstPage; page <= lastPage; page++) {
      if (PLAIN_DIRTY_MARK) log[page] = 1;
      else Atomics.store(log, page, 1);
    }
  }

  // ---- Dom0 side ----------------------------------------------------------------------------

  get logDirty(): boolean {
    return Atomics.load(this.controlWords, CONTROL_LOG_DIRTY) !== 0;
  }

  /**
   * Turns log-dirty on or off. Turning it on also clears the bitmap. A guest write that read
   * the switch as off just before it turned on is not lost only if the caller then waits for
   * the guest to acknowledge (between two events) before copying pages: that is what the
   * hypervisor's `enableLogDirty` does.
   */
  setLogDirty(on: boolean): void {
    if (on) this.dirtyBytes.fill(0);
    Atomics.store(this.controlWords, CONTROL_LOG_DIRTY, on ? 1 : 0);
  }

  /**
   * Peek-and-clean: returns the dirty page indices in ascending order and clears their bits.
   */
  peekAndClean(): Uint32Array {
    const words = this.dirtyWords;
    const marks = this.exchangedBytes;
    const found: number[] = [];
    for (let w = 0; w < words.length; w++) {
      if (words[w] === 0) continue;
      this.exchangedWord[0] = Atomics.exchange(words, w, 0);
      for (let k = 0; k < 4; k++) if (marks[k] !== 0) found.push(w * 4 + k);
    }
    return Uint32Array.from(found);
  }

  /** Counts dirty pages without cleaning. */
  peekDirtyCount(): number {
    let count = 0;
    const log = this.dirtyBytes;
    for (let page = 0; page < log.length; page++) if (log[page] !== 0) count++;
    return count;
  }

  regionOfPage(pageIndex: number): RegionName {
    return this.layout.regions[this.regionIndexOfPage[pageIndex]!]!.name;
  }

  /** How many of `pages` fall in each region. */
  countByRegion(pages: ArrayLike<number>): RegionCounts {
    const counts = emptyRegionCounts();
    const regions = this.layout.regions;
    for (let i = 0; i < pages.length; i++) {
      counts[regions[this.regionIndexOfPage[pages[i]!]!]!.name]++;
    }
    return counts;
  }

  /** Dom0 restoring a page on the target: a plain copy, never logged. */
  loadPage(pageIndex: number, source: Uint8Array): void {
    if (source.byteLength !== PAGE_SIZE_BYTES) {
      throw new RangeError(`a page is ${PAGE_SIZE_BYTES} B, got ${source.byteLength} B`);
    }
    copyBytes(this.bytes, pageIndex * PAGE_SIZE_BYTES, source);
  }

  /** Dom0 restoring a zero page on the target. */
  zeroPage(pageIndex: number): void {
    const offset = pageIndex * PAGE_SIZE_BYTES;
    this.bytes.fill(0, offset, offset + PAGE_SIZE_BYTES);
  }
}
