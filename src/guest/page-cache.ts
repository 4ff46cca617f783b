/**
 * The guest's page cache: file pages held in guest memory, written back to the shared disk.
 *
 * What it models. Linux keeps the pages of open files in RAM, in the guest's own memory; a
 * `write(2)` copies into a cached page and marks it dirty, and the bytes reach the disk later
 * (write-back). Here every cached file page occupies one guest page (a *slot*) of a region of
 * `GuestMemory`, normally 'pagecache', and every byte put into a slot goes through
 * `GuestMemory.write`/`fill`, or is marked with `markDirty` right after a disk read lands in it
 * (the DMA of a blkback read): so log-dirty sees each of them, and a live migration resends
 * the cache pages a mail server dirties, exactly as Xen's would. The disk is shared storage
 * (`BlockStore`) and is never migrated.
 *
 * Method. A page that is not cached is read in on a miss, or on a partial write to a page that
 * holds file bytes (read-modify-write); a page wholly beyond the end of file is zero-filled
 * instead. When no slot is free, a CLOCK hand (second chance) picks the victim, writing it
 * back first if dirty. `sync` writes back dirty pages, coalescing runs that are contiguous
 * both in the file and in guest memory into one disk write, then flushes the disk: the fsync an
 * MTA does before it answers 250.
 *
 * Sizes. The cache keeps the logical size of each file it holds pages of; the disk's size is
 * stale only while the page holding the last byte is dirty (writes extend the logical size,
 * write-back never goes past it, truncate applies to both at once). So when a file's last
 * cached page goes, its entry goes too and the disk is authoritative again; the state stays
 * O(slots) however many files pass through (a spool file per mail).
 *
 * State. Everything but the bytes is one plain-data `PageCacheState` (arrays of numbers and
 * strings), which the kernel saves in the `GuestState` at the pause; `restore` on the target
 * rebuilds the lookup indices from it, and the bytes arrive as migrated guest pages.
 *
 * Simplified away: readahead, the background flusher (write-back happens only at `sync` and
 * eviction; Linux would also write back after 30 s and under dirty-ratio pressure), active and
 * inactive lists, mmap, and concurrent access (the kernel calls in from one event at a time).
 */
import assert from 'node:assert/strict';
import { InputError, TestbedError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import type { GuestMemory } from '../memory/guest-memory.ts';
import type { Region } from '../memory/layout.ts';
import {
  type BlockStore,
  checkFileName,
  checkFileOffset,
  FILE_SIZE_BYTES_MAX,
} from './shared-disk.ts';

/** Counts since the cache was created (they travel with the state). Pages, except `syncs`. */
export interface PageCacheCounters {
  /** Pages that went from clean to dirty. */
  pagesDirtied: number;
  /** Pages written back to the disk (at sync or eviction). */
  writebacks: number;
  /** Pages read from the disk into a slot. */
  diskReads: number;
  /** Slots taken from one file page for another. */
  evictions: number;
  /** Page accesses found in the cache. */
  hits: number;
  /** Page accesses that needed a slot (read from disk or zero-filled). */
  misses: number;
  /** Calls to `sync`. */
  syncs: number;
}

/** A file the cache holds pages of. */
export interface PageCacheFile {
  name: string;
  /** Logical size in bytes, authoritative over the disk's while the file has dirty pages. */
  sizeBytes: number;
}

/**
 * The cache's plain-data state (structured-clone safe), O(slots) in size. Slot `i` is guest
 * page `regionFirstPage + i`:
 *
 * ```
 * slot        0      1      2      3   ...  slotCount-1
 * slotFile    0      0     -1      1        (index into files, -1: free)
 * slotPage    7      8      -      0        (page number within the file: offset >> 12)
 * slotFlags   D|R    R      -      D        (SLOT_DIRTY = 1, SLOT_REFERENCED = 2)
 *                           ^ hand: the CLOCK's next candidate
 * files       [{ name: 'mail/u1.mbox', sizeBytes: 36_864 }, { name: 'spool/17', ... }]
 * ```
 *
 * Parallel arrays of small integers rather than an object per slot: v8 serialises them at
 * about 2 bytes per number, an object per slot at about 40 (its property names each time).
 */
export interface PageCacheState {
  version: 1;
  /** The region's first page and page count, checked again at restore. */
  regionFirstPage: number;
  slotFile: number[];
  slotPage: number[];
  slotFlags: number[];
  /** Files with at least one cached page; `null` marks a reusable index. */
  files: (PageCacheFile | null)[];
  hand: number;
  counters: PageCacheCounters;
}

/** The slot's page differs from the disk's. */
export const SLOT_DIRTY = 1;
/** The slot was used since the CLOCK hand last passed it (its second chance). */
export const SLOT_REFERENCED = 2;

/**
 * - `PAGE_CACHE_STATE_INVALID`: `restore` was given a state that does not fit the region or is
 *   inconsistent (another layout, a corrupted GuestState).
 */
export type PageCacheErrorCode = 'PAGE_CACHE_STATE_INVALID';

const NO_FILE = -1;

export class PageCache {
  private readonly memory: GuestMemory;
  private readonly disk: BlockStore;
  private readonly regionAddress: number;
  private readonly slotCount: number;
  private readonly live: PageCacheState;
  // ---- Derived from `live`, rebuilt by `restore` ----
  /** File index by name. */
  private readonly fileIndexByName = new Map<string, number>();
  /** Per file index: slot by page number within the file. */
  private readonly slotsOfFile: (Map<number, number> | undefined)[] = [];
  private freeSlotCount = 0;
  /** No slot below this one is free. */
  private freeSlotHint = 0;
  private dirtySlotCount = 0;
  /** The file the current call works on: eviction must not drop its entry. */
  private pinnedFile = NO_FILE;
  /** One page for `appendFrom`, which copies a page at a time. */
  private readonly bounce = new Uint8Array(PAGE_SIZE_BYTES);

  private constructor(
    memory: GuestMemory,
    region: Region,
    disk: BlockStore,
    state: PageCacheState,
  ) {
    assert(region.pageCount >= 1, 'a page cache needs at least one slot');
    assert(
      region.firstPage >= 0 && region.firstPage + region.pageCount <= memory.pageCount,
      'page cache region beyond guest memory',
    );
    this.memory = memory;
    this.disk = disk;
    this.regionAddress = region.firstPage * PAGE_SIZE_BYTES;
    this.slotCount = region.pageCount;
    this.live = state;
  }

  /** An empty cache over `region` (normally `memory.region('pagecache')`). */
  static create(memory: GuestMemory, region: Region, disk: BlockStore): PageCache {
    const slotCount = region.pageCount;
    const state: PageCacheState = {
      version: 1,
      regionFirstPage: region.firstPage,
      slotFile: packedArray(slotCount, () => NO_FILE),
      slotPage: packedArray(slotCount, () => 0),
      slotFlags: packedArray(slotCount, () => 0),
      files: [],
      hand: 0,
      counters: {
        pagesDirtied: 0,
        writebacks: 0,
        diskReads: 0,
        evictions: 0,
        hits: 0,
        misses: 0,
        syncs: 0,
      },
    };
    const cache = new PageCache(memory, region, disk, state);
    cache.freeSlotCount = slotCount;
    return cache;
  }

  /**
   * The cache a migrated domain continues with: `state` as saved at the pause (by this or
   * another host), `memory` holding the migrated pages, `disk` the same shared files. The
   * cache works on a copy of `state`.
   * Throws `PAGE_CACHE_STATE_INVALID` if the state does not fit `region` or contradicts itself.
   */
  static restore(
    memory: GuestMemory,
    region: Region,
    disk: BlockStore,
    state: PageCacheState,
  ): PageCache {
    checkStateShape(state, region);
    const cache = new PageCache(memory, region, disk, copyState(state));
    cache.rebuildIndex();
    return cache;
  }

  /** The live state (no copy): save it between two events, never mutate it. */
  get state(): PageCacheState {
    return this.live;
  }

  get counters(): PageCacheCounters {
    return this.live.counters;
  }

  /** Dirty pages now (not yet written back). */
  dirtyPages(): number {
    return this.dirtySlotCount;
  }

  /** Slots holding a file page now. */
  cachedPages(): number {
    return this.slotCount - this.freeSlotCount;
  }

  /** The file's size in bytes (0 if it does not exist). */
  size(file: string): number {
    const index = this.fileIndexByName.get(file);
    if (index !== undefined) return this.live.files[index]!.sizeBytes;
    return this.disk.size(checkFileName(file));
  }

  /** Writes `bytes` at `offset` through the cache, extending the file if needed. */
  write(file: string, offset: number, bytes: Uint8Array): void {
    checkFileOffset(offset, 'write offset');
    const end = offset + bytes.byteLength;
    if (end > FILE_SIZE_BYTES_MAX) {
      throw new InputError(
        `write of ${bytes.byteLength} B at ${offset} ends past the largest file size (2^40 B)`,
      );
    }
    if (bytes.byteLength === 0) {
      checkFileName(file);
      return;
    }
    const fileIndex = this.pin(file);
    const entry = this.live.files[fileIndex]!;
    const oldSizeBytes = entry.sizeBytes;
    let done = 0;
    try {
      // Extend first: a page of this write evicted before the write ends is written back
      // up to the new size, not cut at the old one.
      entry.sizeBytes = Math.max(oldSizeBytes, end);
      while (done < bytes.byteLength) {
        const position = offset + done;
        const filePage = Math.floor(position / PAGE_SIZE_BYTES);
        const pageOffset = position - filePage * PAGE_SIZE_BYTES;
        const count = Math.min(PAGE_SIZE_BYTES - pageOffset, bytes.byteLength - done);
        const slot = this.slotForWrite(fileIndex, filePage, pageOffset, count, oldSizeBytes);
        this.memory.write(this.slotAddress(slot) + pageOffset, bytes.subarray(done, done + count));
        this.markSlotDirty(slot);
        done += count;
      }
    } catch (error) {
      // A disk error (evicting, or reading a page in) ends the write short, as write(2) would.
      entry.sizeBytes = Math.max(oldSizeBytes, offset + done);
      throw error;
    } finally {
      this.unpin();
    }
  }

  /** Appends `bytes` at the end of the file; returns the offset they were written at. */
  append(file: string, bytes: Uint8Array): number {
    const offset = this.size(file);
    this.write(file, offset, bytes);
    return offset;
  }

  /**
   * Copies up to `length` bytes at `offset` into `target` (default: a new array) and returns
   * the bytes read: a view of `target` that is short at the end of the file.
   */
  read(file: string, offset: number, length: number, target?: Uint8Array): Uint8Array {
    checkFileOffset(offset, 'read offset');
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new InputError(`read length must be a non-negative integer; got ${length}`);
    }
    if (target !== undefined && target.byteLength < length) {
      throw new InputError(`read of ${length} B into a ${target.byteLength} B buffer`);
    }
    const sizeBytes = this.size(file);
    const count = Math.max(0, Math.min(length, sizeBytes - offset));
    const out = target === undefined ? new Uint8Array(count) : target.subarray(0, count);
    if (count === 0) return out;
    const fileIndex = this.pin(file, sizeBytes);
    try {
      let done = 0;
      while (done < count) {
        const position = offset + done;
        const filePage = Math.floor(position / PAGE_SIZE_BYTES);
        const pageOffset = position - filePage * PAGE_SIZE_BYTES;
        const chunk = Math.min(PAGE_SIZE_BYTES - pageOffset, count - done);
        const slot = this.slotForRead(fileIndex, filePage);
        this.memory.read(
          this.slotAddress(slot) + pageOffset,
          chunk,
          out.subarray(done, done + chunk),
        );
        done += chunk;
      }
    } finally {
      this.unpin();
    }
    return out;
  }

  /**
   * Appends `length` bytes of `source` from `sourceOffset` to the end of `file`, a page at a
   * time through the cache (a mail delivered from the spool to a mailbox), and returns the
   * offset they were written at. `file` may be `source`. The range must lie within `source`.
   */
  appendFrom(file: string, source: string, sourceOffset: number, length: number): number {
    checkFileOffset(sourceOffset, 'source offset');
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new InputError(`copy length must be a non-negative integer; got ${length}`);
    }
    const sourceSizeBytes = this.size(source);
    if (sourceOffset + length > sourceSizeBytes) {
      throw new InputError(
        `cannot copy ${length} B at ${sourceOffset} of ${source}: it has ${sourceSizeBytes} B`,
      );
    }
    const offset = this.size(file);
    // Page-aligned chunks of the destination, so each chunk fills at most one of its pages.
    let done = 0;
    while (done < length) {
      const count = Math.min(PAGE_SIZE_BYTES - ((offset + done) % PAGE_SIZE_BYTES), length - done);
      const chunk = this.read(source, sourceOffset + done, count, this.bounce);
      assert.equal(chunk.byteLength, count, 'source range shrank during the copy');
      this.write(file, offset + done, chunk);
      done += count;
    }
    return offset;
  }

  /**
   * Sets the file's size: cached pages past the new end are dropped (not written back), the
   * rest of a partial last page is zeroed (as Linux's truncate_pagecache), and the disk file is
   * truncated at once.
   */
  truncate(file: string, size: number): void {
    checkFileOffset(size, 'truncate size');
    checkFileName(file);
    const fileIndex = this.fileIndexByName.get(file);
    if (fileIndex !== undefined) {
      const entry = this.live.files[fileIndex]!;
      const pages = this.slotsOfFile[fileIndex]!;
      const keptPages = Math.ceil(size / PAGE_SIZE_BYTES);
      for (const [filePage, slot] of pages) {
        if (filePage >= keptPages) this.freeSlot(slot);
      }
      const tailOffset = size % PAGE_SIZE_BYTES;
      const tailSlot = pages.get(keptPages - 1);
      if (tailOffset !== 0 && tailSlot !== undefined && size < entry.sizeBytes) {
        // Bytes past the end must read as zeros if the file grows again.
        // The disk is cut at `size` too, so the page stays as clean or dirty as it was.
        this.memory.fill(this.slotAddress(tailSlot) + tailOffset, PAGE_SIZE_BYTES - tailOffset, 0);
      }
      entry.sizeBytes = size;
    }
    this.disk.truncate(file, size);
    if (fileIndex !== undefined) this.dropFileIfEmpty(fileIndex);
  }

  /** Deletes the file: its cached pages are dropped (dirty ones too) and the disk file removed. */
  remove(file: string): void {
    checkFileName(file);
    const fileIndex = this.fileIndexByName.get(file);
    if (fileIndex !== undefined) {
      for (const slot of this.slotsOfFile[fileIndex]!.values()) this.freeSlot(slot);
      this.dropFileIfEmpty(fileIndex);
    }
    this.disk.remove(file);
  }

  /**
   * Writes back every dirty page of `file` (or of every file), then flushes the disk: the
   * fsync an MTA does before it answers 250. Returns the pages written back.
   */
  sync(file?: string): number {
    let written = 0;
    if (file === undefined) {
      this.live.files.forEach((entry, fileIndex) => {
        if (entry !== null) written += this.writeBackFile(fileIndex);
      });
    } else {
      const fileIndex = this.fileIndexByName.get(checkFileName(file));
      if (fileIndex !== undefined) written += this.writeBackFile(fileIndex);
    }
    this.disk.flush();
    this.live.counters.syncs++;
    return written;
  }

  // ---- Slots --------------------------------------------------------------------------------

  private slotAddress(slot: number): number {
    return this.regionAddress + slot * PAGE_SIZE_BYTES;
  }

  /** The slot of a page about to receive `count` bytes at `pageOffset`. */
  private slotForWrite(
    fileIndex: number,
    filePage: number,
    pageOffset: number,
    count: number,
    oldSizeBytes: number,
  ): number {
    const cached = this.slotsOfFile[fileIndex]!.get(filePage);
    if (cached !== undefined) {
      this.live.counters.hits++;
      this.live.slotFlags[cached]! |= SLOT_REFERENCED;
      return cached;
    }
    this.live.counters.misses++;
    const slot = this.claimSlot();
    const pageStart = filePage * PAGE_SIZE_BYTES;
    // File bytes the write leaves in place: [pageStart, min(pageEnd, oldSize)) minus the write.
    const existingEnd = Math.min(PAGE_SIZE_BYTES, oldSizeBytes - pageStart);
    if (existingEnd > 0 && (pageOffset > 0 || pageOffset + count < existingEnd)) {
      this.fillFromDisk(slot, fileIndex, pageStart);
    } else {
      // Nothing on disk to keep: zero what the write does not cover.
      const address = this.slotAddress(slot);
      if (pageOffset > 0) this.memory.fill(address, pageOffset, 0);
      const writeEnd = pageOffset + count;
      if (writeEnd < PAGE_SIZE_BYTES) {
        this.memory.fill(address + writeEnd, PAGE_SIZE_BYTES - writeEnd, 0);
      }
    }
    this.assignSlot(slot, fileIndex, filePage);
    return slot;
  }

  private slotForRead(fileIndex: number, filePage: number): number {
    const cached = this.slotsOfFile[fileIndex]!.get(filePage);
    if (cached !== undefined) {
      this.live.counters.hits++;
      this.live.slotFlags[cached]! |= SLOT_REFERENCED;
      return cached;
    }
    this.live.counters.misses++;
    const slot = this.claimSlot();
    this.fillFromDisk(slot, fileIndex, filePage * PAGE_SIZE_BYTES);
    this.assignSlot(slot, fileIndex, filePage);
    return slot;
  }

  /**
   * Reads the page from the disk straight into the slot (blkback's DMA into a guest page),
   * zero-fills past what the disk had, and marks the slot's guest page dirty for log-dirty:
   * its bytes changed even though it is clean with respect to the disk.
   */
  private fillFromDisk(slot: number, fileIndex: number, pageStart: number): void {
    const address = this.slotAddress(slot);
    const view = this.memory.bytes.subarray(address, address + PAGE_SIZE_BYTES);
    const count = this.disk.read(this.live.files[fileIndex]!.name, pageStart, view);
    if (count < PAGE_SIZE_BYTES) view.fill(0, count);
    this.memory.markDirty(address, PAGE_SIZE_BYTES);
    this.live.counters.diskReads++;
  }

  /**
   * A free slot: the lowest free one (so a migrated cache allocates exactly as the original
   * would have, from its state alone), else the CLOCK's victim. It stays free until
   * `assignSlot`, so a disk error while filling it leaves the cache consistent.
   */
  private claimSlot(): number {
    return this.freeSlotCount > 0 ? this.lowestFreeSlot() : this.evictVictim();
  }

  /** Registers the filled slot as holding (file, page), referenced and clean. */
  private assignSlot(slot: number, fileIndex: number, filePage: number): void {
    const state = this.live;
    assert.equal(state.slotFile[slot], NO_FILE, `slot ${slot} is taken`);
    state.slotFile[slot] = fileIndex;
    state.slotPage[slot] = filePage;
    state.slotFlags[slot] = SLOT_REFERENCED;
    this.slotsOfFile[fileIndex]!.set(filePage, slot);
    this.freeSlotCount--;
  }

  private lowestFreeSlot(): number {
    const slotFile = this.live.slotFile;
    for (let slot = this.freeSlotHint; slot < this.slotCount; slot++) {
      if (slotFile[slot] === NO_FILE) {
        this.freeSlotHint = slot;
        return slot;
      }
    }
    assert.fail(`free slot count ${this.freeSlotCount} but no free slot from ${this.freeSlotHint}`);
  }

  /**
   * CLOCK: the hand clears referenced bits until it meets a slot without one, at most one turn
   * plus one slot. The victim is written back if dirty, then freed.
   */
  private evictVictim(): number {
    const state = this.live;
    for (;;) {
      const slot = state.hand;
      state.hand = slot + 1 === this.slotCount ? 0 : slot + 1;
      const flags = state.slotFlags[slot]!;
      if ((flags & SLOT_REFERENCED) !== 0) {
        state.slotFlags[slot] = flags & ~SLOT_REFERENCED;
        continue;
      }
      const fileIndex = state.slotFile[slot]!;
      if ((flags & SLOT_DIRTY) !== 0) this.writeBack(slot, 1);
      this.freeSlot(slot);
      if (fileIndex !== this.pinnedFile) this.dropFileIfEmpty(fileIndex);
      state.counters.evictions++;
      return slot;
    }
  }

  /** Forgets the slot's page (without writing it back). */
  private freeSlot(slot: number): void {
    const state = this.live;
    const fileIndex = state.slotFile[slot]!;
    assert(fileIndex !== NO_FILE, `slot ${slot} is already free`);
    this.slotsOfFile[fileIndex]!.delete(state.slotPage[slot]!);
    if ((state.slotFlags[slot]! & SLOT_DIRTY) !== 0) this.dirtySlotCount--;
    state.slotFile[slot] = NO_FILE;
    state.slotPage[slot] = 0;
    state.slotFlags[slot] = 0;
    this.freeSlotCount++;
    if (slot < this.freeSlotHint) this.freeSlotHint = slot;
  }

  private markSlotDirty(slot: number): void {
    const flags = this.live.slotFlags[slot]!;
    if ((flags & SLOT_DIRTY) !== 0) return;
    this.live.slotFlags[slot] = flags | SLOT_DIRTY;
    this.dirtySlotCount++;
    this.live.counters.pagesDirtied++;
  }

  // ---- Write-back ---------------------------------------------------------------------------

  /**
   * Writes `pageCount` slots from `slot` on, holding consecutive pages of one file, to the disk
   * in one request (a view of guest memory, no copy), up to the file's size; marks them clean.
   */
  private writeBack(slot: number, pageCount: number): void {
    const state = this.live;
    const entry = state.files[state.slotFile[slot]!]!;
    const fileStart = state.slotPage[slot]! * PAGE_SIZE_BYTES;
    const byteCount = Math.min(pageCount * PAGE_SIZE_BYTES, entry.sizeBytes - fileStart);
    assert(byteCount > 0, `cached page at ${fileStart} of ${entry.name} is past its end`);
    const address = this.slotAddress(slot);
    this.disk.write(
      entry.name,
      fileStart,
      this.memory.bytes.subarray(address, address + byteCount),
    );
    for (let page = slot; page < slot + pageCount; page++) {
      state.slotFlags[page]! &= ~SLOT_DIRTY;
    }
    this.dirtySlotCount -= pageCount;
    state.counters.writebacks += pageCount;
  }

  /** Writes back the file's dirty pages in file order, coalescing runs; returns the count. */
  private writeBackFile(fileIndex: number): number {
    const state = this.live;
    const dirtyPages: number[] = [];
    for (const [filePage, slot] of this.slotsOfFile[fileIndex]!) {
      if ((state.slotFlags[slot]! & SLOT_DIRTY) !== 0) dirtyPages.push(filePage);
    }
    dirtyPages.sort((a, b) => a - b);
    const pages = this.slotsOfFile[fileIndex]!;
    let index = 0;
    while (index < dirtyPages.length) {
      const firstSlot = pages.get(dirtyPages[index]!)!;
      let runLength = 1;
      // A run: the next dirty file page sits in the next slot (sequential appends do).
      while (
        index + runLength < dirtyPages.length &&
        dirtyPages[index + runLength] === dirtyPages[index]! + runLength &&
        pages.get(dirtyPages[index + runLength]!) === firstSlot + runLength
      ) {
        runLength++;
      }
      this.writeBack(firstSlot, runLength);
      index += runLength;
    }
    return dirtyPages.length;
  }

  // ---- Files --------------------------------------------------------------------------------

  /**
   * The file's entry index, created if needed (with its size from the disk, or `sizeBytes`
   * when the caller just asked), and pinned for the current call.
   */
  private pin(file: string, sizeBytes?: number): number {
    assert.equal(this.pinnedFile, NO_FILE, 'page cache calls do not nest');
    let fileIndex = this.fileIndexByName.get(file);
    if (fileIndex === undefined) {
      checkFileName(file);
      const entry = { name: file, sizeBytes: sizeBytes ?? this.disk.size(file) };
      const files = this.live.files;
      fileIndex = files.indexOf(null);
      if (fileIndex === -1) fileIndex = files.push(entry) - 1;
      else files[fileIndex] = entry;
      this.fileIndexByName.set(file, fileIndex);
      this.slotsOfFile[fileIndex] = new Map();
    }
    this.pinnedFile = fileIndex;
    return fileIndex;
  }

  private unpin(): void {
    const fileIndex = this.pinnedFile;
    this.pinnedFile = NO_FILE;
    if (fileIndex !== NO_FILE) this.dropFileIfEmpty(fileIndex);
  }

  /**
   * Drops a file's entry once it has no cached page: it has no dirty page then, so the disk's
   * size equals the logical size (see the header) and the disk answers from now on.
   */
  private dropFileIfEmpty(fileIndex: number): void {
    if (this.slotsOfFile[fileIndex]!.size > 0) return;
    const files = this.live.files;
    this.fileIndexByName.delete(files[fileIndex]!.name);
    this.slotsOfFile[fileIndex] = undefined;
    files[fileIndex] = null;
    while (files.length > 0 && files[files.length - 1] === null) files.pop();
  }

  /** Rebuilds the derived indices from `live` (after `restore`), checking consistency. */
  private rebuildIndex(): void {
    const state = this.live;
    state.files.forEach((entry, fileIndex) => {
      if (entry === null) return;
      if (this.fileIndexByName.has(entry.name)) invalidState(`file ${entry.name} listed twice`);
      this.fileIndexByName.set(entry.name, fileIndex);
      this.slotsOfFile[fileIndex] = new Map();
    });
    this.freeSlotHint = this.slotCount;
    for (let slot = 0; slot < this.slotCount; slot++) {
      const fileIndex = state.slotFile[slot]!;
      if (fileIndex === NO_FILE) {
        this.freeSlotCount++;
        this.freeSlotHint = Math.min(this.freeSlotHint, slot);
        continue;
      }
      const pages = this.slotsOfFile[fileIndex];
      const filePage = state.slotPage[slot]!;
      const entry = state.files[fileIndex];
      if (pages === undefined || entry == null) invalidState(`slot ${slot} names no file`);
      if (pages.has(filePage)) invalidState(`page ${filePage} of ${entry.name} cached twice`);
      if (filePage * PAGE_SIZE_BYTES >= entry.sizeBytes) {
        invalidState(`slot ${slot} holds page ${filePage} past the end of ${entry.name}`);
      }
      pages.set(filePage, slot);
      if ((state.slotFlags[slot]! & SLOT_DIRTY) !== 0) this.dirtySlotCount++;
    }
    state.files.forEach((entry, fileIndex) => {
      if (entry !== null && this.slotsOfFile[fileIndex]!.size === 0) {
        invalidState(`file ${entry.name} has no cached page`);
      }
    });
  }
}

/**
 * An array of `length` numbers that v8 keeps packed. `new Array(n).fill(x)` and a
 * deserialised array are holey, and v8 serialises holey arrays as sparse index/value pairs:
 * 5.5 bytes per entry instead of 2 (measured: 90 KB against 33 KB for 16,384 entries).
 */
function packedArray(length: number, valueAt: (index: number) => number): number[] {
  const array: number[] = [];
  for (let index = 0; index < length; index++) array.push(valueAt(index));
  return array;
}

/** A copy of a checked state with packed arrays and nothing but the known fields. */
function copyState(state: PageCacheState): PageCacheState {
  const { slotFile, slotPage, slotFlags, counters } = state;
  return {
    version: 1,
    regionFirstPage: state.regionFirstPage,
    slotFile: packedArray(slotFile.length, (slot) => slotFile[slot]!),
    slotPage: packedArray(slotPage.length, (slot) => slotPage[slot]!),
    slotFlags: packedArray(slotFlags.length, (slot) => slotFlags[slot]!),
    files: state.files.map((entry) =>
      entry === null ? null : { name: entry.name, sizeBytes: entry.sizeBytes },
    ),
    hand: state.hand,
    counters: {
      pagesDirtied: counters.pagesDirtied,
      writebacks: counters.writebacks,
      diskReads: counters.diskReads,
      evictions: counters.evictions,
      hits: counters.hits,
      misses: counters.misses,
      syncs: counters.syncs,
    },
  };
}

function invalidState(reason: string): never {
  throw new TestbedError<PageCacheErrorCode>(
    'PAGE_CACHE_STATE_INVALID',
    `page cache state cannot be restored: ${reason}`,
  );
}

function isCount(value: unknown, below = Number.MAX_SAFE_INTEGER + 1): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) < below;
}

/** Checks types and bounds of a state from another host before anything trusts it. */
function checkStateShape(state: PageCacheState, region: Region): void {
  if (state === null || typeof state !== 'object' || state.version !== 1) {
    invalidState('not a version 1 PageCacheState');
  }
  const slotCount = region.pageCount;
  if (state.regionFirstPage !== region.firstPage) {
    invalidState(`saved for a region at page ${state.regionFirstPage}, not ${region.firstPage}`);
  }
  for (const name of ['slotFile', 'slotPage', 'slotFlags'] as const) {
    if (!Array.isArray(state[name]) || state[name].length !== slotCount) {
      invalidState(`${name} must have one entry per slot (${slotCount})`);
    }
  }
  if (!Array.isArray(state.files) || state.files.length > slotCount) {
    invalidState('files must be an array of at most one entry per slot');
  }
  for (const entry of state.files) {
    if (entry === null) continue;
    if (typeof entry !== 'object' || !isCount(entry.sizeBytes, FILE_SIZE_BYTES_MAX + 1)) {
      invalidState('a file entry is not { name, sizeBytes }');
    }
    try {
      checkFileName(entry.name);
    } catch (error) {
      invalidState(`bad file name: ${(error as Error).message}`);
    }
  }
  const maxPage = FILE_SIZE_BYTES_MAX / PAGE_SIZE_BYTES;
  for (let slot = 0; slot < slotCount; slot++) {
    const fileIndex = state.slotFile[slot];
    const ok =
      (fileIndex === NO_FILE || isCount(fileIndex, state.files.length)) &&
      isCount(state.slotPage[slot], maxPage) &&
      isCount(state.slotFlags[slot], 4);
    if (!ok) invalidState(`slot ${slot} is malformed`);
  }
  if (!isCount(state.hand, slotCount)) invalidState(`hand ${state.hand} is not a slot`);
  const counters = state.counters as unknown as Record<string, unknown> | null;
  const names = ['pagesDirtied', 'writebacks', 'diskReads', 'evictions', 'hits', 'misses', 'syncs'];
  if (
    counters === null ||
    typeof counters !== 'object' ||
    !names.every((n) => isCount(counters[n]))
  ) {
    invalidState('counters are malformed');
  }
}
