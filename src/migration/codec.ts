/**
 * The migration stream: typed, length-prefixed, checksummed records, encoded from guest memory
 * and decoded (and validated) on receipt. Sans-I/O: the encoder returns bytes, the decoder is fed
 * bytes in chunks of any size and returns the records they complete; neither sees a socket.
 *
 * Record framing (all integers little-endian, like Xen's migration v2 stream):
 *
 * ```
 *  0        4             8                         8 + bodyLength       8 + pad8(bodyLength)
 *  +--------+-------------+-------------------------+--------------------+
 *  | u32    | u32         | body                    | zero padding       |
 *  | type   | bodyLength  | (bodyLength bytes)      | to a multiple of 8 |
 *  +--------+-------------+-------------------------+--------------------+
 * ```
 *
 * | type | name        | body                                                          |
 * |------|-------------|---------------------------------------------------------------|
 * | 1    | HEADER      | u32 magic 'XMIG' (0x584d4947), u32 version (3)                |
 * | 2    | DOMAIN_INFO | u32 crc32c of the rest, UTF-8 JSON of `DomainInfo`            |
 * | 3    | PAGE_BATCH  | see below                                                     |
 * | 4    | GUEST_STATE | u32 crc32c of the rest, opaque bytes (a v8.serialize'd state) |
 * | 5    | END         | u32 records before END, u32 pages in all PAGE_BATCHes (mod 2^32) |
 * | 6    | CHANNEL_PAGES | u32 pageCount, u32 crc32c of the data, pageCount x 4096 bytes |
 *
 * PAGE_BATCH body, for `count` pages of which `normal` are not all-zero:
 *
 * ```
 * body offset
 *  0            u32 round          pre-copy round the batch belongs to
 *  4            u32 count          1..1024
 *  8            u32 metaCrc        crc32c of bytes [0, 8) then [12, 12 + 9 x count)
 *  12           u32 pageIndex[count]   strictly ascending, < the domain's pageCount
 *  12 + 4c      u32 pageCrc[count]     crc32c of the page's 4096 bytes (zero page: ZERO_PAGE_CRC)
 *  12 + 8c      u8  kind[count]        0 normal, 1 zero; then zeros to a multiple of 4
 *  12 + 8c + pad4(c)  data             4096 bytes per NORMAL page, in list order
 *  bodyLength = 12 + 8c + pad4(c) + 4096 x normal
 * ```
 *
 * Legal record order: HEADER, DOMAIN_INFO, PAGE_BATCH*, GUEST_STATE, PAGE_BATCH*, END, nothing
 * more (CHANNEL_PAGES anywhere between DOMAIN_INFO and END). Pages may follow the state because
 * the final dirty pages of the paused guest are sent alongside it. Rounds never go back, and
 * within a round page indices ascend across batches too (the sender walks each round's dirty
 * list in order), so a reordered or repeated batch breaks the order; END's counts catch a
 * record that went missing. The target resumes a domain only after a valid END, so none of
 * these can leave it running on stale pages.
 *
 * Method and why:
 * - Zero pages travel as a flag, not 4 KiB (QEMU's `duplicate` pages, Xen's `XEN_DOMCTL_PFINFO`
 *   types): a fresh guest is mostly zero pages.
 * - Checksums go beyond Xen and QEMU (neither has one): a testbed whose job is to show that
 *   target memory equals source memory should detect corruption where it happens. metaCrc guards
 *   the arrays that say where bytes go; per-page crcs guard the bytes (when the decoder lands
 *   pages, checked on the bytes as they are in guest memory). The checksum is CRC-32C with the
 *   CPU's crc32 instruction (`src/core/checksum.ts`; version 3, up from zlib's CRC-32 in
 *   version 2: 14 % less sender CPU per GiB here). It is still the largest cost the engine
 *   adds on both sides; a cryptographic hash would be several times slower, and we defend
 *   against faults, not adversaries.
 * - Speed: the engine must keep up with loopback TCP (4-5 GB/s here), so no per-byte JS loops over
 *   page data: zero detection is `Buffer.compare` (memcmp) against a shared zero page, copies
 *   to and from guest memory are `copyBytes` (memcpy: `TypedArray.set` copies byte by byte
 *   between a SharedArrayBuffer and a buffer of another alignment), checksums are
 *   `crc32c` (native). Each record is one allocation at its final size (`Buffer.allocUnsafeSlow`,
 *   every byte then written; a zeroed allocation measured at half the speed). A record that
 *   arrives whole in one chunk is decoded in place and returned as views of that chunk; a
 *   record spanning chunks is assembled once into a buffer allocated at its known size. Fresh
 *   multi-MiB buffers are page-faulted in on every record (glibc serves them with mmap), as
 *   costly as the checksums, so both sides can opt into reusing buffers (`encodePageBatch`'s
 *   `into`, the decoder's `reuseBuffers`).
 * - The receiver does better than assembling: once it has reserved memory it calls
 *   `landPagesIn`, and the decoder copies each PAGE_BATCH's page data from the socket's chunks
 *   straight to the pages (after checking the batch's metadata, so bytes only go where a
 *   checked index says), then checks each page's crc on its bytes in guest memory. One copy
 *   per byte instead of two, and the crc table the target keeps is of what really landed.
 * - Every length from the wire is bounded (limits.ts) before anything is allocated or buffered.
 *
 * Non-goals: compression or delta encoding (XBZRLE), multiple streams, resuming a broken stream,
 * defence against a deliberate adversary (CRC-32C is not a MAC).
 */
import assert from 'node:assert/strict';
import { crc32c } from '../core/checksum.ts';
import { IPV4 } from '../core/ipv4.ts';
import { PAGE_SHIFT, PAGE_SIZE_BYTES } from '../core/units.ts';
import { copyBytes } from '../memory/guest-memory.ts';
import { MAX_DOMAIN_PAGES, type MemoryLayout, REGION_NAMES } from '../memory/layout.ts';
import { MigrationError, type MigrationErrorCode } from './errors.ts';
import {
  MAX_BATCH_PAGES,
  MAX_DOMAIN_INFO_BYTES,
  MAX_GUEST_STATE_BYTES,
  MAX_RECORD_BODY_BYTES,
  PAGE_BATCH_FIXED_BYTES,
  STREAM_MAGIC,
  STREAM_VERSION,
} from './limits.ts';

/** What the target needs to create the domain before any page arrives. */
export interface DomainInfo {
  name: string;
  domId: number;
  pageCount: number;
  layout: MemoryLayout;
  ip: string | null;
  tenant: string;
  /** Descriptors of the guest's programs; opaque to the stream (must be JSON-serialisable). */
  programs: unknown;
  /**
   * The source host's forwarding table (IP -> host link address): what the domain's peers'
   * locations were, so the target can reach them at once, as a migrating VM's ARP cache would.
   */
  routes?: { ip: string; link: string }[];
}

/** A forwarding table longer than this is refused (it would be larger than any testbed). */
const MAX_DOMAIN_INFO_ROUTES = 4096;

/**
 * One decoded record. Byte arrays are views into the decoder's input or into a buffer it
 * assembled; see `StreamDecoder.push` for how long they stay valid.
 */
export type MigrationRecord =
  | { type: 'header'; version: number }
  | { type: 'domainInfo'; info: DomainInfo }
  | {
      type: 'pageBatch';
      round: number;
      pageIndices: Uint32Array;
      pageCrcs: Uint32Array;
      /** 1 where the page is all zeros (no data sent), 0 where its bytes are in `data`. */
      zero: Uint8Array;
      /** The normal (non-zero) pages, 4096 bytes each, back to back in list order. */
      data: Uint8Array;
    }
  /**
   * A PAGE_BATCH whose pages the decoder copied straight into the memory given to
   * `landPagesIn`, each normal page checked against its CRC-32C on its bytes as they landed
   * there, each zero page zero-filled. The arrays are the batch's own (not views of input).
   */
  | {
      type: 'pagesLanded';
      round: number;
      pageIndices: Uint32Array;
      pageCrcs: Uint32Array;
      zero: Uint8Array;
    }
  | { type: 'guestState'; state: Uint8Array }
  /**
   * Pages of the XENVMC channel regions the domain holds, sent only when the source host
   * models real Xen's grant behaviour (`--migrate-channel-pages`). The target counts them and
   * drops them: a channel never survives onto another host.
   */
  | { type: 'channelPages'; pageCount: number; data: Uint8Array }
  | { type: 'end'; records: number; pages: number };

/** What END says was sent before it: records of every type, and pages in PAGE_BATCHes. */
export interface StreamTally {
  records: number;
  pages: number;
}

/** Record type codes on the wire. */
export const RECORD_TYPE = {
  header: 1,
  domainInfo: 2,
  pageBatch: 3,
  guestState: 4,
  end: 5,
  channelPages: 6,
} as const;

/** A record type's name as written in error messages and docs. */
const RECORD_TYPE_NAMES: Record<number, string> = {
  1: 'HEADER',
  2: 'DOMAIN_INFO',
  3: 'PAGE_BATCH',
  4: 'GUEST_STATE',
  5: 'END',
  6: 'CHANNEL_PAGES',
};

/** u32 type + u32 bodyLength. */
export const RECORD_HEADER_BYTES = 8;

const HEADER_BODY_BYTES = 8;
const END_BODY_BYTES = 8;
/** The u32 crc32c that leads a DOMAIN_INFO or GUEST_STATE body. */
const BODY_CRC_BYTES = 4;
const KIND_NORMAL = 0;
const KIND_ZERO = 1;

/** A shared all-zero page to compare against; never written. */
const ZERO_PAGE = new Uint8Array(PAGE_SIZE_BYTES);

/** crc32c of 4096 zero bytes (0x98f94189): the crc every zero page carries. */
export const ZERO_PAGE_CRC: number = crc32c(ZERO_PAGE);

/** Typed-array views of the wire's little-endian words are only valid on little-endian hosts. */
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function pad8(length: number): number {
  return Math.ceil(length / 8) * 8;
}

function pad4(length: number): number {
  return Math.ceil(length / 4) * 4;
}

/** Bytes of a PAGE_BATCH body with `pageCount` pages of which `normalPages` carry data. */
export function pageBatchBodyBytes(pageCount: number, normalPages: number): number {
  return PAGE_BATCH_FIXED_BYTES + 8 * pageCount + pad4(pageCount) + normalPages * PAGE_SIZE_BYTES;
}

/** Bytes a record with a body of `bodyLength` bytes occupies on the wire (header, padding). */
export function recordBytes(bodyLength: number): number {
  return RECORD_HEADER_BYTES + pad8(bodyLength);
}

function readU32(bytes: Uint8Array, offset: number): number {
  return (
    (bytes[offset]! |
      (bytes[offset + 1]! << 8) |
      (bytes[offset + 2]! << 16) |
      (bytes[offset + 3]! << 24)) >>>
    0
  );
}

function writeU32(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value & 0xff;
  bytes[offset + 1] = (value >>> 8) & 0xff;
  bytes[offset + 2] = (value >>> 16) & 0xff;
  bytes[offset + 3] = (value >>> 24) & 0xff;
}

/** `count` little-endian u32s at `offset`: a view when aligned on a little-endian host. */
function readU32Array(bytes: Uint8Array, offset: number, count: number): Uint32Array {
  const address = bytes.byteOffset + offset;
  if (HOST_IS_LITTLE_ENDIAN && address % 4 === 0) {
    return new Uint32Array(bytes.buffer, address, count);
  }
  // A chunk boundary left the record unaligned: copy the (at most 4 KiB of) words.
  const words = new Uint32Array(count);
  for (let i = 0; i < count; i++) words[i] = readU32(bytes, offset + 4 * i);
  return words;
}

function writeU32Array(bytes: Uint8Array, offset: number, values: Uint32Array): void {
  const address = bytes.byteOffset + offset;
  if (HOST_IS_LITTLE_ENDIAN && address % 4 === 0) {
    new Uint32Array(bytes.buffer, address, values.length).set(values);
    return;
  }
  for (let i = 0; i < values.length; i++) writeU32(bytes, offset + 4 * i, values[i]!);
}

/**
 * `length` uninitialised bytes as a plain Uint8Array (not a Buffer, whose `slice` does not
 * copy). Callers overwrite every byte.
 */
function allocateUninitialised(length: number): Uint8Array {
  const buffer = Buffer.allocUnsafeSlow(length);
  return new Uint8Array(buffer.buffer, buffer.byteOffset, length);
}

/**
 * One allocation (or the front of `into`) for a whole record, with the header and the tail
 * padding written; the caller writes every body byte.
 */
function allocateRecord(type: number, bodyLength: number, into?: Uint8Array): Uint8Array {
  const total = recordBytes(bodyLength);
  let record: Uint8Array;
  if (into === undefined) {
    record = allocateUninitialised(total);
  } else {
    assert(into.length >= total, `into holds ${into.length} bytes, the record needs ${total}`);
    record = into.subarray(0, total);
  }
  writeU32(record, 0, type);
  writeU32(record, 4, bodyLength);
  record.fill(0, RECORD_HEADER_BYTES + bodyLength);
  return record;
}

/** The HEADER record: magic and version. Always the first record. */
export function encodeHeader(): Uint8Array {
  const record = allocateRecord(RECORD_TYPE.header, HEADER_BODY_BYTES);
  writeU32(record, 8, STREAM_MAGIC);
  writeU32(record, 12, STREAM_VERSION);
  return record;
}

/**
 * The DOMAIN_INFO record. Throws `STREAM_RECORD_TOO_LARGE` when the JSON exceeds
 * `MAX_DOMAIN_INFO_BYTES`; asserts that `info` passes the receiver's validation.
 */
export function encodeDomainInfo(info: DomainInfo): Uint8Array {
  const problem = domainInfoProblem(info, MAX_DOMAIN_PAGES);
  assert.equal(problem, null, `encodeDomainInfo: invalid domain info: ${problem}`);
  const json = new TextEncoder().encode(JSON.stringify(info));
  if (BODY_CRC_BYTES + json.length > MAX_DOMAIN_INFO_BYTES) {
    throw new MigrationError(
      'STREAM_RECORD_TOO_LARGE',
      `domain info of '${info.name}' is ${json.length} bytes of JSON, above the limit of ` +
        `${MAX_DOMAIN_INFO_BYTES - BODY_CRC_BYTES}: shorten its program descriptors`,
    );
  }
  return checksummedRecord(RECORD_TYPE.domainInfo, json);
}

/** A record whose body is a u32 crc32c of `payload`, then `payload`. */
function checksummedRecord(type: number, payload: Uint8Array): Uint8Array {
  const record = allocateRecord(type, BODY_CRC_BYTES + payload.length);
  writeU32(record, RECORD_HEADER_BYTES, crc32c(payload));
  record.set(payload, RECORD_HEADER_BYTES + BODY_CRC_BYTES);
  return record;
}

/**
 * The GUEST_STATE record around already-serialised state (copied once). Throws
 * `STREAM_RECORD_TOO_LARGE` above `MAX_GUEST_STATE_BYTES`.
 */
export function encodeGuestState(state: Uint8Array): Uint8Array {
  if (BODY_CRC_BYTES + state.length > MAX_GUEST_STATE_BYTES) {
    throw new MigrationError(
      'STREAM_RECORD_TOO_LARGE',
      `guest state is ${state.length} bytes, above the limit of ` +
        `${MAX_GUEST_STATE_BYTES - BODY_CRC_BYTES}: bulk data belongs in guest pages, not in ` +
        'the state of guest programs',
    );
  }
  return checksummedRecord(RECORD_TYPE.guestState, state);
}

/** Builds a CHANNEL_PAGES record from whole pages (at most 1024). */
export function encodeChannelPages(pages: readonly Uint8Array[]): Uint8Array {
  assert(
    pages.length >= 1 && pages.length <= MAX_BATCH_PAGES,
    `channel batch of ${pages.length} pages`,
  );
  const record = allocateRecord(RECORD_TYPE.channelPages, 8 + pages.length * PAGE_SIZE_BYTES);
  const body = RECORD_HEADER_BYTES;
  pages.forEach((page, i) => {
    assert.equal(page.byteLength, PAGE_SIZE_BYTES, 'a channel page is 4 KiB');
    record.set(page, body + 8 + i * PAGE_SIZE_BYTES);
  });
  writeU32(record, body, pages.length);
  writeU32(
    record,
    body + 4,
    crc32c(record.subarray(body + 8, body + 8 + pages.length * PAGE_SIZE_BYTES)),
  );
  return record;
}

/**
 * The END record: the source has sent everything (`tally`: what it sent before END); the
 * target may resume the domain.
 */
export function encodeEnd(tally: StreamTally): Uint8Array {
  const record = allocateRecord(RECORD_TYPE.end, END_BODY_BYTES);
  writeU32(record, RECORD_HEADER_BYTES, tally.records);
  writeU32(record, RECORD_HEADER_BYTES + 4, tally.pages >>> 0);
  return record;
}

/**
 * Counts encoded records the way END does (records, and pages of PAGE_BATCHes), for a sender
 * or a test that holds its records: `encodeEnd(tallyRecords(records))`.
 */
export function tallyRecords(records: readonly Uint8Array[]): StreamTally {
  let pages = 0;
  for (const record of records) {
    if (readU32(record, 0) === RECORD_TYPE.pageBatch) pages += readU32(record, 8 + 4);
  }
  return { records: records.length, pages: pages >>> 0 };
}

/**
 * The most pages `encodePageBatch` copies at once before checksumming them: 64 KiB stays in
 * the core's cache between the copy and the crc (3 % less CPU than whole 4 MiB runs here).
 */
const COPY_RUN_PAGES = 16;

/** Per-batch zero flags, reused: encoding is synchronous, so one scratch array suffices. */
const zeroFlagsScratch = new Uint8Array(MAX_BATCH_PAGES);

function isZeroPage(memory: Uint8Array, offset: number): boolean {
  // Most non-zero pages differ at byte 0; skip creating a view for them.
  if (memory[offset] !== 0) return false;
  return Buffer.compare(memory.subarray(offset, offset + PAGE_SIZE_BYTES), ZERO_PAGE) === 0;
}

/** Options of `encodePageBatch`. */
export interface EncodePageBatchOptions {
  /**
   * Build the record in the front of this buffer instead of a fresh allocation; the returned
   * `record` is a view of it. Fresh 4 MiB allocations are page-faulted in on every record
   * (glibc serves them with mmap), which here costs as much as the checksums; a sender that
   * reuses two buffers, each only once the transport has finished writing it (the socket
   * `write` callback), avoids that. `recordBytes(MAX_RECORD_BODY_BYTES)` always suffices.
   * @default undefined (allocate)
   */
  into?: Uint8Array;
}

/** The result of `encodePageBatch`. */
export interface EncodedPageBatch {
  /** The whole PAGE_BATCH record, header to padding. */
  record: Uint8Array;
  /** Pages sent as a zero flag. */
  zeroPages: number;
  /** Pages sent with their 4096 bytes. */
  normalPages: number;
  /** The crc of each page as sent, in `pageIndices` order (its own array, not a view). */
  pageCrcs: Uint32Array;
}

/**
 * Builds one PAGE_BATCH record from guest memory, in ONE allocation: detects zero pages (send a
 * flag, not 4 KiB), computes per-page crcs, copies normal pages. `pageIndices` must be
 * ascending, length 1..1024, each below the memory's page count (asserted).
 *
 * Safe against a guest writing the memory meanwhile (live pre-copy): each crc is computed over
 * the bytes copied into the record, never over live memory, so crcs always match what is sent.
 * A page seen as zero and written just after goes as a zero page; that is correct pre-copy,
 * since the write set its dirty bit and the page is resent in a later round.
 *
 * @param round the pre-copy round (any u32; the sender numbers rounds from 1).
 * @param memory the whole guest memory, `pageCount x 4096` bytes (may be a SharedArrayBuffer).
 */
export function encodePageBatch(
  round: number,
  pageIndices: Uint32Array,
  memory: Uint8Array,
  options: EncodePageBatchOptions = {},
): EncodedPageBatch {
  const count = pageIndices.length;
  assert(Number.isInteger(round) && round >= 0 && round <= 0xffffffff, `round ${round}`);
  assert(count >= 1 && count <= MAX_BATCH_PAGES, `batch of ${count} pages`);
  assert.equal(memory.length % PAGE_SIZE_BYTES, 0, 'memory must be whole pages');
  const memoryPageCount = memory.length / PAGE_SIZE_BYTES;

  // Pass 1: validate indices and find zero pages, to size the one allocation.
  let zeroPages = 0;
  let previous = -1;
  for (let i = 0; i < count; i++) {
    const pageIndex = pageIndices[i]!;
    // Plain ifs, not assert(cond, `template`): the template would be built for every page.
    if (pageIndex <= previous)
      assert.fail(`page indices must ascend: ${previous} then ${pageIndex}`);
    if (pageIndex >= memoryPageCount)
      assert.fail(`page ${pageIndex} beyond ${memoryPageCount} pages`);
    previous = pageIndex;
    const zero = isZeroPage(memory, pageIndex * PAGE_SIZE_BYTES) ? KIND_ZERO : KIND_NORMAL;
    zeroFlagsScratch[i] = zero;
    zeroPages += zero;
  }
  const normalPages = count - zeroPages;

  const bodyLength = pageBatchBodyBytes(count, normalPages);
  const record = allocateRecord(RECORD_TYPE.pageBatch, bodyLength, options.into);
  const body = RECORD_HEADER_BYTES;
  const indicesOffset = body + PAGE_BATCH_FIXED_BYTES;
  const crcsOffset = indicesOffset + 4 * count;
  const kindsOffset = crcsOffset + 4 * count;
  const dataOffset = kindsOffset + pad4(count);
  writeU32(record, body, round);
  writeU32(record, body + 4, count);
  writeU32Array(record, indicesOffset, pageIndices);
  record.set(zeroFlagsScratch.subarray(0, count), kindsOffset);
  record.fill(0, kindsOffset + count, dataOffset);

  // Pass 2: copy normal pages, coalescing runs of consecutive pages into one copy of at most
  // COPY_RUN_PAGES, then checksum each page from the copy while it is still in cache.
  const pageCrcs = new Uint32Array(count);
  let target = dataOffset;
  let i = 0;
  while (i < count) {
    if (zeroFlagsScratch[i] === KIND_ZERO) {
      pageCrcs[i] = ZERO_PAGE_CRC;
      i++;
      continue;
    }
    let runEnd = i + 1;
    while (
      runEnd < count &&
      zeroFlagsScratch[runEnd] === KIND_NORMAL &&
      pageIndices[runEnd] === pageIndices[runEnd - 1]! + 1 &&
      runEnd - i < COPY_RUN_PAGES
    ) {
      runEnd++;
    }
    const source = pageIndices[i]! * PAGE_SIZE_BYTES;
    const runBytes = (runEnd - i) * PAGE_SIZE_BYTES;
    copyBytes(record, target, memory.subarray(source, source + runBytes));
    for (; i < runEnd; i++, target += PAGE_SIZE_BYTES) {
      pageCrcs[i] = crc32c(record.subarray(target, target + PAGE_SIZE_BYTES));
    }
  }
  assert.equal(target, body + bodyLength);
  writeU32Array(record, crcsOffset, pageCrcs);
  const metaCrc = crc32c(
    record.subarray(indicesOffset, kindsOffset + count),
    crc32c(record.subarray(body, body + 8)),
  );
  writeU32(record, body + 8, metaCrc);
  return { record, zeroPages, normalPages, pageCrcs };
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isCount(value: unknown, min: number, max: number): value is number {
  return Number.isSafeInteger(value) && (value as number) >= min && (value as number) <= max;
}

/** Why `layout` cannot describe `pageCount` pages, or null when it can. */
function layoutProblem(layout: unknown, pageCount: number): string | null {
  if (!isPlainObject(layout)) return 'layout is not an object';
  if (layout.pageCount !== pageCount) {
    return `layout.pageCount ${String(layout.pageCount)} differs from pageCount ${pageCount}`;
  }
  const regions = layout.regions;
  if (!Array.isArray(regions) || regions.length < 1 || regions.length > REGION_NAMES.length) {
    return `layout.regions must be an array of 1..${REGION_NAMES.length} regions`;
  }
  const seen = new Set<unknown>();
  let nextFirstPage = 0;
  for (const region of regions) {
    if (!isPlainObject(region)) return 'a layout region is not an object';
    const { name, firstPage, pageCount: regionPages } = region;
    if (!(REGION_NAMES as readonly unknown[]).includes(name) || seen.has(name)) {
      return `region name ${JSON.stringify(name)} is unknown or repeated (valid: ${REGION_NAMES.join(', ')})`;
    }
    seen.add(name);
    if (firstPage !== nextFirstPage || !isCount(regionPages, 1, pageCount)) {
      return (
        `region ${String(name)} (firstPage ${String(firstPage)}, pageCount ` +
        `${String(regionPages)}) must start at page ${nextFirstPage} and hold at least 1 page`
      );
    }
    nextFirstPage += regionPages;
  }
  if (nextFirstPage !== pageCount) {
    return `layout regions add up to ${nextFirstPage} pages, not the domain's ${pageCount}`;
  }
  return null;
}

/** Why `info` is not a valid `DomainInfo`, or null when it is. Shared by encoder and decoder. */
function domainInfoProblem(info: unknown, maxPageCount: number): string | null {
  if (!isPlainObject(info)) return 'domain info is not a JSON object';
  // The same rules as a domain created through the control API: a target applies them again.
  if (typeof info.name !== 'string' || info.name.length === 0 || info.name.length > 64) {
    return 'name must be a string of 1 to 64 characters';
  }
  if (!isCount(info.domId, 0, 0xffffffff)) {
    return `domId ${String(info.domId)} must be an integer >= 0`;
  }
  if (!isCount(info.pageCount, 1, maxPageCount)) {
    return `pageCount ${String(info.pageCount)} must be an integer in 1..${maxPageCount}`;
  }
  if (info.ip !== null && (typeof info.ip !== 'string' || !IPV4.test(info.ip))) {
    return 'ip must be an IPv4 address or null';
  }
  if (typeof info.tenant !== 'string' || info.tenant.length === 0 || info.tenant.length > 64) {
    return 'tenant must be a string of 1 to 64 characters';
  }
  if (info.routes !== undefined) {
    const routes = info.routes;
    if (!Array.isArray(routes) || routes.length > MAX_DOMAIN_INFO_ROUTES) {
      return `routes must be an array of at most ${MAX_DOMAIN_INFO_ROUTES} entries`;
    }
    for (const route of routes) {
      if (
        !isPlainObject(route) ||
        typeof route.ip !== 'string' ||
        !IPV4.test(route.ip) ||
        typeof route.link !== 'string' ||
        route.link.length > 300
      ) {
        return 'every route must be { ip: an IPv4 address, link: host:port }';
      }
    }
  }
  return layoutProblem(info.layout, info.pageCount);
}

/** Where the decoder is in the record order. */
type DecoderPhase = 'header' | 'domainInfo' | 'precopy' | 'afterState' | 'ended';

/** Record types legal in each phase, and a phrase for error messages. */
const LEGAL_NEXT: Record<DecoderPhase, { types: readonly number[]; expected: string }> = {
  header: { types: [RECORD_TYPE.header], expected: 'HEADER' },
  domainInfo: { types: [RECORD_TYPE.domainInfo], expected: 'DOMAIN_INFO' },
  precopy: {
    types: [RECORD_TYPE.pageBatch, RECORD_TYPE.channelPages, RECORD_TYPE.guestState],
    expected: 'PAGE_BATCH, CHANNEL_PAGES or GUEST_STATE',
  },
  afterState: {
    types: [RECORD_TYPE.pageBatch, RECORD_TYPE.channelPages, RECORD_TYPE.end],
    expected: 'PAGE_BATCH, CHANNEL_PAGES or END',
  },
  ended: { types: [], expected: 'nothing after END' },
};

/** Largest legal body per record type. */
const MAX_BODY_BYTES: Record<number, number> = {
  [RECORD_TYPE.header]: HEADER_BODY_BYTES,
  [RECORD_TYPE.domainInfo]: MAX_DOMAIN_INFO_BYTES,
  [RECORD_TYPE.pageBatch]: MAX_RECORD_BODY_BYTES,
  [RECORD_TYPE.guestState]: MAX_GUEST_STATE_BYTES,
  [RECORD_TYPE.end]: END_BODY_BYTES,
  [RECORD_TYPE.channelPages]: 8 + MAX_BATCH_PAGES * PAGE_SIZE_BYTES,
};

/** Body bytes of a PAGE_BATCH before its page data, at most (a full batch's arrays). */
const MAX_BATCH_ARRAYS_BYTES = pageBatchBodyBytes(MAX_BATCH_PAGES, 0);

/** A PAGE_BATCH being landed in guest memory (`StreamDecoder.landPagesIn`). */
interface LandingBatch {
  /** The body before the page data (fixed words, then arrays), assembled here. */
  readonly arrays: Uint8Array;
  arraysFilled: number;
  /** What to assemble: the fixed words until `count` is read, then all the arrays. */
  arraysWanted: number;
  /** Set once the arrays are in and checked: what `push` returns when the batch is done. */
  record: Extract<MigrationRecord, { type: 'pagesLanded' }> | null;
  /** Page index, and batch position, of each normal page in data order. */
  normalPages: Uint32Array;
  normalPositions: Uint32Array;
  dataFilled: number;
  paddingFilled: number;
  done: boolean;
}

/** Options of `StreamDecoder`. */
export interface StreamDecoderInit {
  /**
   * Check each normal page's crc32c against its bytes. The metadata crc and zero-page crcs are
   * always checked.
   * @default true
   */
  verifyPageChecksums?: boolean;
  /**
   * The largest domain (in 4 KiB pages) this receiver accepts in DOMAIN_INFO; a larger one is
   * refused with `MIGRATION_REFUSED`. Lower it to the memory the target host can give.
   * @default MAX_DOMAIN_PAGES (2^24 pages, 64 GiB)
   */
  maxPageCount?: number;
  /**
   * Assemble records that span chunks into one buffer kept across records (grown when a
   * larger record comes), instead of a fresh allocation per record. Fresh 4 MiB buffers are
   * page-faulted in every time, which measured here as the largest decoding cost after the
   * checksums. Only for callers that finish with every record before the next `push` (the
   * documented contract): the next record overwrites the previous one's bytes.
   * @default false
   */
  reuseBuffers?: boolean;
}

/**
 * Incremental decoder and validator of a migration stream (sans-I/O; js-libp2p mplex style).
 *
 * ```ts
 * const decoder = new StreamDecoder({ reuseBuffers: true });
 * for await (const chunk of socket) {
 *   for (const record of decoder.push(chunk)) apply(record); // copies what it keeps
 * }
 * decoder.finish();
 * ```
 */
export class StreamDecoder {
  private readonly verifyPageChecksums: boolean;
  private readonly maxPageCount: number;
  private readonly reuseBuffers: boolean;
  /**
   * With `reuseBuffers`, two assembly buffers used in turn: a push can return a record
   * assembled in one while it starts assembling the next record, which must then go to the
   * other. `lentBuffer` is the one whose record this push returned (-1 for none).
   */
  private readonly assemblyBuffers: (Uint8Array | null)[] = [null, null];
  private partialBuffer = -1;
  private lentBuffer = -1;
  private phase: DecoderPhase = 'header';
  private domainPageCount: number | null = null;
  /** The last PAGE_BATCH's round and its last page: the next batch must come after them. */
  private lastRound = -1;
  private lastPageOfRound = -1;
  /** Pages in the PAGE_BATCHes so far (mod 2^32), for END's count. */
  private pagesSeen = 0;
  /** The first error thrown; once set, the decoder is dead and rethrows it. */
  private failure: unknown = null;

  /** A record header split across chunks. */
  private readonly headerBytes = new Uint8Array(RECORD_HEADER_BYTES);
  private headerFilled = 0;
  /** The current record, once its header is read. */
  private recordType = 0;
  private bodyLength = 0;
  private paddedBodyLength = 0;
  /** A body split across chunks, allocated once at its padded length. */
  private partialBody: Uint8Array | null = null;
  private partialFilled = 0;
  /** Guest memory to land page batches in (`landPagesIn`), as a Buffer for `copyBytes`. */
  private landing: Buffer | null = null;
  /** The PAGE_BATCH being landed. */
  private batch: LandingBatch | null = null;

  /** For messages: records begun so far and the stream offset of the current one. */
  private recordCount = 0;
  private recordStartOffset = 0;
  private consumedBytes = 0;

  constructor(options: StreamDecoderInit = {}) {
    this.verifyPageChecksums = options.verifyPageChecksums ?? true;
    this.maxPageCount = options.maxPageCount ?? MAX_DOMAIN_PAGES;
    this.reuseBuffers = options.reuseBuffers ?? false;
    assert(
      isCount(this.maxPageCount, 1, MAX_DOMAIN_PAGES),
      `maxPageCount ${this.maxPageCount} must be an integer in 1..${MAX_DOMAIN_PAGES}`,
    );
  }

  /** The domain's page count, once DOMAIN_INFO has been decoded; null before. */
  get pageCount(): number | null {
    return this.domainPageCount;
  }

  /** True once the END record has been decoded. */
  get ended(): boolean {
    return this.phase === 'ended';
  }

  /**
   * Bytes held for an incomplete record (at most one record's header and padded body; for a
   * batch being landed, its arrays: the page data is in guest memory, not held).
   */
  get bufferedBytes(): number {
    return (
      this.headerFilled +
      (this.partialBody === null ? 0 : this.partialFilled) +
      (this.batch === null ? 0 : this.batch.arraysFilled)
    );
  }

  /**
   * From the next PAGE_BATCH on, copy page data from the input straight into `memory` (the
   * whole guest memory, `pageCount x 4096` bytes, e.g. `GuestMemory.bytes`) instead of
   * assembling batches, and return `pagesLanded` records instead of `pageBatch` ones. A
   * batch's arrays are assembled (at most 9 KiB) and checked before any of its data is
   * copied, so bytes only go to pages a checked index names; each zero page is zero-filled;
   * each normal page's crc is checked on its bytes in `memory` once they have all landed
   * (always, whatever `verifyPageChecksums` says).
   *
   * A batch that fails a check may have written some of its pages: after any error, the
   * caller must discard `memory` (the receiver discards the whole domain).
   */
  landPagesIn(memory: Uint8Array): void {
    assert(this.domainPageCount !== null, 'landPagesIn before DOMAIN_INFO was decoded');
    assert.equal(
      memory.byteLength,
      this.domainPageCount * PAGE_SIZE_BYTES,
      'landPagesIn: memory must hold exactly the domain pages',
    );
    this.landing = Buffer.from(memory.buffer, memory.byteOffset, memory.byteLength);
  }

  /** Bytes fed to `push` and consumed so far. */
  get bytesConsumed(): number {
    return this.consumedBytes;
  }

  /**
   * Feeds bytes as they arrive, in chunks of any size; returns the records completed by this
   * chunk, in order.
   *
   * Byte arrays in the records are views, not copies: of `chunk` when a record lies whole in
   * it, else of a buffer the decoder assembled for that record. Treat them as valid until the
   * next `push`: copy what you keep (pages into guest memory, state into `v8.deserialize`)
   * before pushing again. (Without `reuseBuffers` they stay valid as long as the caller does
   * not reuse its chunk buffers.)
   *
   * Throws `MigrationError` on any invalid input; the records this chunk completed before the
   * bad one are then dropped with it, and the decoder is dead: every later call throws the same
   * error.
   */
  push(chunk: Uint8Array): MigrationRecord[] {
    if (this.failure !== null) throw this.failure;
    this.lentBuffer = -1; // The caller is done with the records of the previous push.
    try {
      return this.pushChunk(chunk);
    } catch (error) {
      this.failure = error;
      throw error;
    }
  }

  /**
   * Call at end of input: throws `STREAM_TRUNCATED` if the stream stopped mid-record or before
   * END (the sender died or the link broke).
   */
  finish(): void {
    if (this.failure !== null) throw this.failure;
    let problem: string | null = null;
    if (this.headerFilled > 0) {
      problem = `inside a record header: got ${this.headerFilled} of ${RECORD_HEADER_BYTES} bytes`;
    } else if (this.partialBody !== null) {
      problem =
        `inside ${this.where()}: got ${this.partialFilled} of ${this.paddedBodyLength} ` +
        'body bytes';
    } else if (this.batch !== null) {
      const got = this.batch.arraysFilled + this.batch.dataFilled + this.batch.paddingFilled;
      problem = `inside ${this.where()}: got ${got} of ${this.paddedBodyLength} body bytes`;
    } else if (this.phase !== 'ended') {
      problem =
        `after ${this.recordCount} records (${this.consumedBytes} bytes), expecting ` +
        `${LEGAL_NEXT[this.phase].expected} before END`;
    }
    if (problem !== null) {
      this.failure = new MigrationError(
        'STREAM_TRUNCATED',
        `migration stream stopped ${problem}: the sender stopped or the link broke; ` +
          'discard the partial domain (the source keeps running it)',
      );
      throw this.failure;
    }
  }

  private pushChunk(chunk: Uint8Array): MigrationRecord[] {
    const records: MigrationRecord[] = [];
    const end = chunk.length;
    let offset = 0;
    while (offset < end) {
      if (this.batch !== null) {
        const taken = this.landBatch(chunk, offset, end);
        offset += taken;
        this.consumedBytes += taken;
        if (this.batch.done) {
          records.push(this.batch.record!);
          this.batch = null;
        }
        continue;
      }
      if (this.partialBody === null) {
        if (this.phase === 'ended') {
          throw this.error(
            'STREAM_ORDER',
            `${end - offset} bytes arrived after the END record at stream offset ` +
              `${this.consumedBytes}: the sender must close the stream after END`,
          );
        }
        // Read the record header, straight from the chunk when it lies there whole.
        this.recordStartOffset = this.consumedBytes;
        if (this.headerFilled === 0 && end - offset >= RECORD_HEADER_BYTES) {
          this.beginRecord(readU32(chunk, offset), readU32(chunk, offset + 4));
          offset += RECORD_HEADER_BYTES;
          this.consumedBytes += RECORD_HEADER_BYTES;
        } else {
          const take = Math.min(RECORD_HEADER_BYTES - this.headerFilled, end - offset);
          this.headerBytes.set(chunk.subarray(offset, offset + take), this.headerFilled);
          this.headerFilled += take;
          offset += take;
          this.consumedBytes += take;
          if (this.headerFilled < RECORD_HEADER_BYTES) break;
          this.headerFilled = 0;
          this.recordStartOffset = this.consumedBytes - RECORD_HEADER_BYTES;
          this.beginRecord(readU32(this.headerBytes, 0), readU32(this.headerBytes, 4));
        }
        if (this.recordType === RECORD_TYPE.pageBatch && this.landing !== null) {
          this.batch = this.beginLanding();
          continue;
        }
        // Decode the body in place when it lies whole in the chunk (zero copy).
        if (end - offset >= this.paddedBodyLength) {
          records.push(this.decodeBody(chunk, offset));
          offset += this.paddedBodyLength;
          this.consumedBytes += this.paddedBodyLength;
          continue;
        }
        this.partialBody = this.assemblyBufferFor(this.paddedBodyLength);
        this.partialFilled = 0;
      }
      const take = Math.min(this.paddedBodyLength - this.partialFilled, end - offset);
      this.partialBody.set(chunk.subarray(offset, offset + take), this.partialFilled);
      this.partialFilled += take;
      offset += take;
      this.consumedBytes += take;
      if (this.partialFilled === this.paddedBodyLength) {
        const body = this.partialBody;
        this.partialBody = null;
        this.lentBuffer = this.partialBuffer;
        records.push(this.decodeBody(body, 0));
      }
    }
    return records;
  }

  /** A buffer for a spanning body; its size was bounded by `beginRecord`. */
  private assemblyBufferFor(length: number): Uint8Array {
    this.partialBuffer = -1;
    // Keep buffers up to a full page batch; a rare larger GUEST_STATE gets its own.
    const keptLength = pad8(MAX_RECORD_BODY_BYTES);
    if (!this.reuseBuffers || length > keptLength) return allocateUninitialised(length);
    const index = this.lentBuffer === 0 ? 1 : 0;
    let buffer = this.assemblyBuffers[index];
    if (buffer === null || buffer === undefined || buffer.length < length) {
      buffer = allocateUninitialised(keptLength);
      this.assemblyBuffers[index] = buffer;
    }
    this.partialBuffer = index;
    return buffer.subarray(0, length);
  }

  /** Validates a record header against type, order and size, before any body byte is kept. */
  private beginRecord(type: number, bodyLength: number): void {
    this.recordCount++;
    this.recordType = type;
    this.bodyLength = bodyLength;
    const maxBodyBytes = MAX_BODY_BYTES[type];
    if (maxBodyBytes === undefined) {
      const hint =
        this.phase === 'header'
          ? ': the peer does not look like a xenvmc migration sender'
          : ': the sender may run a newer stream version, or the stream is corrupt';
      throw this.error(
        'STREAM_UNKNOWN_RECORD',
        `unknown record type ${type} (0x${type.toString(16)}), valid are 1..5${hint}`,
      );
    }
    const legal = LEGAL_NEXT[this.phase];
    if (!legal.types.includes(type)) {
      throw this.error(
        'STREAM_ORDER',
        `expected ${legal.expected}, got ${RECORD_TYPE_NAMES[type]}`,
      );
    }
    if (bodyLength > maxBodyBytes) {
      throw this.error(
        'STREAM_RECORD_TOO_LARGE',
        `body length ${bodyLength} exceeds the limit of ${maxBodyBytes} bytes for ` +
          `${RECORD_TYPE_NAMES[type]}; nothing was buffered`,
      );
    }
    this.paddedBodyLength = pad8(bodyLength);
  }

  /** Decodes the current record's body at `bytes[start..]` (padded length available). */
  private decodeBody(bytes: Uint8Array, start: number): MigrationRecord {
    const bodyEnd = start + this.bodyLength;
    for (let i = bodyEnd; i < start + this.paddedBodyLength; i++) {
      if (bytes[i] !== 0) {
        throw this.error('STREAM_MALFORMED', `padding byte ${i - start} is ${bytes[i]}, not 0`);
      }
    }
    switch (this.recordType) {
      case RECORD_TYPE.header:
        return this.decodeHeader(bytes, start);
      case RECORD_TYPE.domainInfo:
        return this.decodeDomainInfo(this.checkedPayload(bytes.subarray(start, bodyEnd)));
      case RECORD_TYPE.pageBatch:
        return this.decodePageBatch(bytes, start);
      case RECORD_TYPE.guestState: {
        const state = this.checkedPayload(bytes.subarray(start, bodyEnd));
        this.phase = 'afterState';
        return { type: 'guestState', state };
      }
      case RECORD_TYPE.channelPages:
        return this.decodeChannelPages(bytes, start);
      default:
        assert.equal(this.recordType, RECORD_TYPE.end);
        return this.decodeEnd(bytes, start);
    }
  }

  /** A DOMAIN_INFO or GUEST_STATE body: its leading crc32c checked, the payload after it. */
  private checkedPayload(body: Uint8Array): Uint8Array {
    const name = RECORD_TYPE_NAMES[this.recordType];
    if (body.length < BODY_CRC_BYTES) {
      throw this.error('STREAM_MALFORMED', `${name} body of ${body.length} bytes has no crc`);
    }
    const payload = body.subarray(BODY_CRC_BYTES);
    if (crc32c(payload) !== readU32(body, 0)) {
      throw this.error('STREAM_CHECKSUM', `${name} failed its CRC-32C check`);
    }
    return payload;
  }

  /** END: what the source says it sent must be what arrived. */
  private decodeEnd(bytes: Uint8Array, start: number): MigrationRecord {
    this.requireBodyLength('END', END_BODY_BYTES);
    const records = readU32(bytes, start);
    const pages = readU32(bytes, start + 4);
    const recordsSeen = this.recordCount - 1;
    if (records !== recordsSeen || pages !== this.pagesSeen) {
      throw this.error(
        'STREAM_TRUNCATED',
        `END says ${records} records with ${pages} pages were sent, ${recordsSeen} records ` +
          `with ${this.pagesSeen} pages arrived: records were lost or added in transit`,
      );
    }
    this.phase = 'ended';
    return { type: 'end', records, pages };
  }

  /** CHANNEL_PAGES body: u32 pageCount | u32 crc32c of the data | pageCount x 4096 bytes. */
  private decodeChannelPages(bytes: Uint8Array, start: number): MigrationRecord {
    const pageCount = this.bodyLength >= 8 ? readU32(bytes, start) : -1;
    if (
      pageCount < 1 ||
      pageCount > MAX_BATCH_PAGES ||
      this.bodyLength !== 8 + pageCount * PAGE_SIZE_BYTES
    ) {
      throw this.error(
        'STREAM_MALFORMED',
        `CHANNEL_PAGES body of ${this.bodyLength} bytes does not hold ${pageCount} pages (1..${MAX_BATCH_PAGES})`,
      );
    }
    const data = bytes.subarray(start + 8, start + this.bodyLength);
    if (crc32c(data) !== readU32(bytes, start + 4)) {
      throw this.error(
        'STREAM_CHECKSUM',
        `CHANNEL_PAGES of ${pageCount} pages failed its CRC-32C check`,
      );
    }
    return { type: 'channelPages', pageCount, data };
  }

  /** A record of fixed size (HEADER, END): any other body length is malformed. */
  private requireBodyLength(name: string, expected: number): void {
    if (this.bodyLength !== expected) {
      throw this.error(
        'STREAM_MALFORMED',
        `${name} body is ${this.bodyLength} bytes, expected ${expected}`,
      );
    }
  }

  private decodeHeader(bytes: Uint8Array, start: number): MigrationRecord {
    this.requireBodyLength('HEADER', HEADER_BODY_BYTES);
    const magic = readU32(bytes, start);
    if (magic !== STREAM_MAGIC) {
      throw this.error(
        'STREAM_BAD_MAGIC',
        `magic 0x${magic.toString(16)}, expected 0x${STREAM_MAGIC.toString(16)} ('XMIG'): ` +
          'the peer is not a xenvmc migration sender',
      );
    }
    const version = readU32(bytes, start + 4);
    if (version !== STREAM_VERSION) {
      throw this.error(
        'STREAM_BAD_VERSION',
        `stream version ${version}, this build reads version ${STREAM_VERSION}: ` +
          'run the same xenvmc version on both hosts',
      );
    }
    this.phase = 'domainInfo';
    return { type: 'header', version };
  }

  private decodeDomainInfo(body: Uint8Array): MigrationRecord {
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
    } catch (cause) {
      const reason = cause instanceof Error ? cause.message : String(cause);
      throw this.error('STREAM_MALFORMED', `DOMAIN_INFO is not UTF-8 JSON (${reason})`, cause);
    }
    if (
      isPlainObject(parsed) &&
      isCount(parsed.pageCount, this.maxPageCount + 1, MAX_DOMAIN_PAGES)
    ) {
      throw this.error(
        'MIGRATION_REFUSED',
        `domain ${JSON.stringify(parsed.name)} has ${parsed.pageCount} pages, this receiver ` +
          `accepts at most ${this.maxPageCount}: give the target more memory or migrate a ` +
          'smaller domain',
      );
    }
    const problem = domainInfoProblem(parsed, MAX_DOMAIN_PAGES);
    if (problem !== null) throw this.error('STREAM_MALFORMED', `bad DOMAIN_INFO: ${problem}`);
    const info = parsed as DomainInfo;
    this.domainPageCount = info.pageCount;
    this.phase = 'precopy';
    return {
      type: 'domainInfo',
      info: {
        name: info.name,
        domId: info.domId,
        pageCount: info.pageCount,
        layout: {
          pageCount: info.layout.pageCount,
          regions: info.layout.regions.map(({ name, firstPage, pageCount }) => ({
            name,
            firstPage,
            pageCount,
          })),
        },
        ip: info.ip,
        tenant: info.tenant,
        programs: info.programs,
        ...(Array.isArray(info.routes)
          ? {
              routes: (info.routes as { ip: string; link: string }[]).map(({ ip, link }) => ({
                ip,
                link,
              })),
            }
          : {}),
      },
    };
  }

  private decodePageBatch(bytes: Uint8Array, start: number): MigrationRecord {
    const { round, pageIndices, pageCrcs, zero, arraysBytes } = this.decodeBatchArrays(
      bytes,
      start,
    );
    const data = bytes.subarray(start + arraysBytes, start + this.bodyLength);
    if (this.verifyPageChecksums) this.checkPageCrcs(pageIndices, pageCrcs, zero, data);
    return { type: 'pageBatch', round, pageIndices, pageCrcs, zero, data };
  }

  /** Bytes of a PAGE_BATCH body before its data, once `count` is read; checks both. */
  private batchArraysBytes(count: number): number {
    if (count === 0 || count > MAX_BATCH_PAGES) {
      throw this.error(
        'STREAM_MALFORMED',
        `batch of ${count} pages, expected 1..${MAX_BATCH_PAGES}`,
      );
    }
    const arraysBytes = pageBatchBodyBytes(count, 0);
    if (this.bodyLength < arraysBytes) {
      throw this.error(
        'STREAM_MALFORMED',
        `PAGE_BATCH body of ${this.bodyLength} bytes cannot hold the arrays of ${count} pages ` +
          `(${arraysBytes} bytes)`,
      );
    }
    return arraysBytes;
  }

  /**
   * Decodes and checks everything of a PAGE_BATCH but its page data: counts, metadata crc,
   * kinds, the body length they imply, page indices, zero pages' crcs. `bytes[start..]` holds
   * at least the arrays.
   */
  private decodeBatchArrays(bytes: Uint8Array, start: number) {
    const bodyLength = this.bodyLength;
    if (bodyLength < PAGE_BATCH_FIXED_BYTES) {
      throw this.error('STREAM_MALFORMED', `PAGE_BATCH body of ${bodyLength} bytes is too short`);
    }
    const round = readU32(bytes, start);
    const count = readU32(bytes, start + 4);
    const metaCrc = readU32(bytes, start + 8);
    const arraysBytes = this.batchArraysBytes(count);
    const indicesOffset = start + PAGE_BATCH_FIXED_BYTES;
    const kindsOffset = indicesOffset + 8 * count;
    const computedMetaCrc = crc32c(
      bytes.subarray(indicesOffset, kindsOffset + count),
      crc32c(bytes.subarray(start, start + 8)),
    );
    if (computedMetaCrc !== metaCrc) {
      throw this.error(
        'STREAM_CHECKSUM',
        `batch metadata crc 0x${computedMetaCrc.toString(16)} differs from the sent ` +
          `0x${metaCrc.toString(16)}: the stream was corrupted in transit`,
      );
    }
    const zero = bytes.subarray(kindsOffset, kindsOffset + count);
    const normalPages = this.countNormalPages(
      zero,
      bytes,
      kindsOffset + count,
      start + arraysBytes,
    );
    if (bodyLength !== arraysBytes + normalPages * PAGE_SIZE_BYTES) {
      throw this.error(
        'STREAM_MALFORMED',
        `PAGE_BATCH body is ${bodyLength} bytes; ${count} pages with ${normalPages} normal ` +
          `need ${arraysBytes + normalPages * PAGE_SIZE_BYTES}`,
      );
    }
    const pageIndices = readU32Array(bytes, indicesOffset, count);
    const pageCrcs = readU32Array(bytes, indicesOffset + 4 * count, count);
    if (round < this.lastRound) {
      throw this.error(
        'STREAM_ORDER',
        `a PAGE_BATCH of round ${round} after one of round ${this.lastRound}: rounds never ` +
          'go back (records reordered in transit?)',
      );
    }
    this.checkPageIndices(pageIndices, round === this.lastRound ? this.lastPageOfRound : -1);
    this.lastRound = round;
    if (count > 0) this.lastPageOfRound = pageIndices[count - 1]!;
    this.pagesSeen = (this.pagesSeen + count) >>> 0;
    for (let i = 0; i < count; i++) {
      if (zero[i] === KIND_ZERO && pageCrcs[i] !== ZERO_PAGE_CRC) {
        this.throwPageCrc(pageIndices[i]!, i, ZERO_PAGE_CRC, pageCrcs[i]!);
      }
    }
    return { round, pageIndices, pageCrcs, zero, normalPages, arraysBytes };
  }

  /** A PAGE_BATCH header was read and pages land in memory: start assembling its arrays. */
  private beginLanding(): LandingBatch {
    if (this.bodyLength < PAGE_BATCH_FIXED_BYTES) {
      throw this.error(
        'STREAM_MALFORMED',
        `PAGE_BATCH body of ${this.bodyLength} bytes is too short`,
      );
    }
    return {
      // Its own buffer per batch (9 KiB): the record returned is made of views of it.
      arrays: new Uint8Array(MAX_BATCH_ARRAYS_BYTES),
      arraysFilled: 0,
      arraysWanted: PAGE_BATCH_FIXED_BYTES,
      record: null,
      normalPages: new Uint32Array(0),
      normalPositions: new Uint32Array(0),
      dataFilled: 0,
      paddingFilled: 0,
      done: false,
    };
  }

  /**
   * Takes what it can of the batch being landed from `chunk[offset..end)`: its arrays (checked
   * once whole), then page data copied straight to the pages, then padding. Returns the bytes
   * taken; sets `done` when the record is complete.
   */
  private landBatch(chunk: Uint8Array, start: number, end: number): number {
    const batch = this.batch!;
    let offset = start;
    while (batch.record === null) {
      const take = Math.min(batch.arraysWanted - batch.arraysFilled, end - offset);
      batch.arrays.set(chunk.subarray(offset, offset + take), batch.arraysFilled);
      batch.arraysFilled += take;
      offset += take;
      if (batch.arraysFilled < batch.arraysWanted) return offset - start;
      if (batch.arraysWanted === PAGE_BATCH_FIXED_BYTES) {
        // `count` is in: bound the arrays (and check they fit the body) before taking them.
        batch.arraysWanted = this.batchArraysBytes(readU32(batch.arrays, 4));
      } else {
        this.checkLandingArrays(batch);
      }
    }
    const landing = this.landing!;
    const dataLength = batch.normalPages.length * PAGE_SIZE_BYTES;
    while (batch.dataFilled < dataLength && offset < end) {
      const first = batch.dataFilled >>> PAGE_SHIFT;
      const inPage = batch.dataFilled & (PAGE_SIZE_BYTES - 1);
      const available = Math.min(end - offset, dataLength - batch.dataFilled);
      // One copy for a run of pages consecutive in memory, as far as the chunk reaches.
      let runPages = 1;
      while (
        runPages * PAGE_SIZE_BYTES - inPage < available &&
        batch.normalPages[first + runPages] === batch.normalPages[first + runPages - 1]! + 1
      ) {
        runPages++;
      }
      const take = Math.min(available, runPages * PAGE_SIZE_BYTES - inPage);
      copyBytes(
        landing,
        batch.normalPages[first]! * PAGE_SIZE_BYTES + inPage,
        chunk.subarray(offset, offset + take),
      );
      offset += take;
      batch.dataFilled += take;
      // Check each page this copy completed, on its bytes as they are in guest memory.
      const landed = batch.dataFilled >>> PAGE_SHIFT;
      for (let k = first; k < landed; k++) {
        const pageIndex = batch.normalPages[k]!;
        const position = batch.normalPositions[k]!;
        const address = pageIndex * PAGE_SIZE_BYTES;
        const actual = crc32c(landing.subarray(address, address + PAGE_SIZE_BYTES));
        const sent = batch.record.pageCrcs[position]!;
        if (actual !== sent) this.throwPageCrc(pageIndex, position, actual, sent);
      }
    }
    if (batch.dataFilled < dataLength) return offset - start;
    const paddingLength = this.paddedBodyLength - this.bodyLength;
    for (; batch.paddingFilled < paddingLength && offset < end; offset++) {
      if (chunk[offset] !== 0) {
        throw this.error(
          'STREAM_MALFORMED',
          `padding byte ${this.bodyLength + batch.paddingFilled} is ${chunk[offset]}, not 0`,
        );
      }
      batch.paddingFilled++;
    }
    batch.done = batch.paddingFilled === paddingLength;
    return offset - start;
  }

  /** The batch's arrays are in: check them, zero-fill its zero pages, list its normal ones. */
  private checkLandingArrays(batch: LandingBatch): void {
    const { round, pageIndices, pageCrcs, zero, normalPages } = this.decodeBatchArrays(
      batch.arrays,
      0,
    );
    batch.normalPages = new Uint32Array(normalPages);
    batch.normalPositions = new Uint32Array(normalPages);
    const landing = this.landing!;
    let normal = 0;
    for (let i = 0; i < pageIndices.length; i++) {
      const address = pageIndices[i]! * PAGE_SIZE_BYTES;
      if (zero[i] === KIND_ZERO) {
        // A zero page may replace a page that was not zero in an earlier round.
        landing.fill(0, address, address + PAGE_SIZE_BYTES);
        continue;
      }
      batch.normalPages[normal] = pageIndices[i]!;
      batch.normalPositions[normal++] = i;
    }
    batch.record = { type: 'pagesLanded', round, pageIndices, pageCrcs, zero };
  }

  /** Counts kind-0 pages; rejects kinds other than 0/1 and non-zero kind padding. */
  private countNormalPages(
    kinds: Uint8Array,
    bytes: Uint8Array,
    paddingStart: number,
    paddingEnd: number,
  ): number {
    let zeroPages = 0;
    for (let i = 0; i < kinds.length; i++) {
      const kind = kinds[i]!;
      if (kind > KIND_ZERO) {
        throw this.error('STREAM_MALFORMED', `page kind ${kind} at batch position ${i}, not 0/1`);
      }
      zeroPages += kind;
    }
    for (let i = paddingStart; i < paddingEnd; i++) {
      if (bytes[i] !== 0) throw this.error('STREAM_MALFORMED', 'non-zero kind-array padding');
    }
    return kinds.length - zeroPages;
  }

  /** Indices in range and ascending, after `previous` (the round's last page so far, or -1). */
  private checkPageIndices(pageIndices: Uint32Array, previous: number): void {
    const pageCount = this.domainPageCount!;
    for (let i = 0; i < pageIndices.length; i++) {
      const pageIndex = pageIndices[i]!;
      if (pageIndex >= pageCount) {
        throw this.error(
          'STREAM_PAGE_RANGE',
          `page index ${pageIndex} at batch position ${i} is beyond the domain's ` +
            `${pageCount} pages`,
        );
      }
      if (pageIndex <= previous) {
        throw this.error(
          'STREAM_ORDER',
          `page index ${pageIndex} at batch position ${i} follows ${previous}: indices ` +
            'within a round must be strictly ascending (records reordered or repeated?)',
        );
      }
      previous = pageIndex;
    }
  }

  /** Checks each normal page's crc against its bytes in `data` (zero pages: at decode). */
  private checkPageCrcs(
    pageIndices: Uint32Array,
    pageCrcs: Uint32Array,
    zero: Uint8Array,
    data: Uint8Array,
  ): void {
    let dataOffset = 0;
    for (let i = 0; i < pageIndices.length; i++) {
      if (zero[i] === KIND_ZERO) continue;
      const actual = crc32c(data.subarray(dataOffset, dataOffset + PAGE_SIZE_BYTES));
      dataOffset += PAGE_SIZE_BYTES;
      if (actual !== pageCrcs[i]) this.throwPageCrc(pageIndices[i]!, i, actual, pageCrcs[i]!);
    }
  }

  private throwPageCrc(pageIndex: number, position: number, actual: number, sent: number): never {
    throw this.error(
      'STREAM_CHECKSUM',
      `page ${pageIndex} (batch position ${position}) has crc 0x${actual.toString(16)}, ` +
        `the sender's was 0x${sent.toString(16)}: corrupted in transit`,
    );
  }

  /** "record 7 (PAGE_BATCH, 4203532-byte body at stream offset 123)". */
  private where(): string {
    const name = RECORD_TYPE_NAMES[this.recordType] ?? `type ${this.recordType}`;
    return (
      `record ${this.recordCount} (${name}, ${this.bodyLength}-byte body at stream offset ` +
      `${this.recordStartOffset})`
    );
  }

  private error(code: MigrationErrorCode, detail: string, cause?: unknown): MigrationError {
    const message = `migration stream ${this.where()}: ${detail}`;
    return new MigrationError(code, message, cause === undefined ? undefined : { cause });
  }
}
