/**
 * Goal: the stream codec round-trips every record, whatever the chunking, and the decoder
 * rejects every malformed, corrupt, truncated or out-of-order stream with a `MigrationError`
 * (never a crash, never silent acceptance of a corrupt page batch).
 *
 * Method: streams built from seeded random guest memory (some pages zero), cut at random points
 * and fed to the decoder (undici's split-data fuzzer); invalid records forged by a small
 * reference encoder written here from the format in codec.ts's header, independent of the
 * encoder under test; fast-check with fixed seeds for the properties and the fuzzing.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { crc32c } from '../core/checksum.ts';
import { Random } from '../core/random.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { MAX_DOMAIN_PAGES, type MemoryLayout } from '../memory/layout.ts';
import {
  type DomainInfo,
  encodeDomainInfo,
  encodeEnd,
  encodeGuestState,
  encodeHeader,
  encodePageBatch,
  type MigrationRecord,
  pageBatchBodyBytes,
  RECORD_TYPE,
  recordBytes,
  StreamDecoder,
  tallyRecords,
  ZERO_PAGE_CRC,
} from './codec.ts';
import { MigrationError, type MigrationErrorCode } from './errors.ts';
import {
  MAX_BATCH_PAGES,
  MAX_DOMAIN_INFO_BYTES,
  MAX_GUEST_STATE_BYTES,
  MAX_RECORD_BODY_BYTES,
  STREAM_MAGIC,
  STREAM_VERSION,
} from './limits.ts';

const PAGES = 64;

function smallLayout(pageCount: number): MemoryLayout {
  const kernel = Math.max(1, Math.floor(pageCount / 8));
  return {
    pageCount,
    regions: [
      { name: 'kernel', firstPage: 0, pageCount: kernel },
      { name: 'program', firstPage: kernel, pageCount: pageCount - kernel },
    ],
  };
}

function domainInfo(pageCount = PAGES): DomainInfo {
  return {
    name: 'vm1',
    domId: 3,
    pageCount,
    layout: smallLayout(pageCount),
    ip: '10.0.0.11',
    tenant: 'blue',
    programs: [{ kind: 'smtp-server', port: 25 }],
  };
}

/** Guest memory in a SharedArrayBuffer, as GuestMemory has it; pages in `zeroPages` stay 0. */
function randomMemory(seed: number, pageCount: number, zeroPages: ReadonlySet<number>) {
  const memory = new Uint8Array(new SharedArrayBuffer(pageCount * PAGE_SIZE_BYTES));
  const words = new Uint32Array(memory.buffer);
  const random = new Random(seed);
  for (let page = 0; page < pageCount; page++) {
    if (zeroPages.has(page)) continue;
    const first = page * (PAGE_SIZE_BYTES / 4);
    for (let w = first; w < first + PAGE_SIZE_BYTES / 4; w++) words[w] = random.nextU32();
  }
  return memory;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    bytes.set(part, offset);
    offset += part.length;
  }
  return bytes;
}

function u32le(...values: number[]): Uint8Array {
  const bytes = new Uint8Array(4 * values.length);
  const view = new DataView(bytes.buffer);
  for (const [i, value] of values.entries()) view.setUint32(4 * i, value, true);
  return bytes;
}

/** Reference framing: u32 type, u32 bodyLength, body, zeros to a multiple of 8. */
function forgeRecord(type: number, body: Uint8Array, bodyLength = body.length): Uint8Array {
  const padded = Math.ceil(body.length / 8) * 8;
  const record = new Uint8Array(8 + padded);
  record.set(u32le(type, bodyLength), 0);
  record.set(body, 8);
  return record;
}

function forgeHeader(magic = STREAM_MAGIC, version = STREAM_VERSION): Uint8Array {
  return forgeRecord(RECORD_TYPE.header, u32le(magic, version));
}

/** A body of the types that carry one: u32 crc32c of `payload`, then `payload`. */
function withCrc(payload: Uint8Array): Uint8Array {
  return concat([u32le(crc32c(payload)), payload]);
}

function forgeDomainInfo(info: unknown): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(info));
  return forgeRecord(RECORD_TYPE.domainInfo, withCrc(json));
}

/** Reference PAGE_BATCH encoder; `pages[i]` null means a zero page. No validation. */
function forgeBatch(
  round: number,
  pageIndices: readonly number[],
  pages: readonly (Uint8Array | null)[],
  kinds: number[] = pages.map((page) => (page === null ? 1 : 0)),
): Uint8Array {
  const count = pageIndices.length;
  const crcs = pages.map((page) => (page === null ? ZERO_PAGE_CRC : crc32c(page)));
  const kindBytes = new Uint8Array(Math.ceil(count / 4) * 4);
  kindBytes.set(kinds);
  const meta = concat([u32le(...pageIndices), u32le(...crcs), kindBytes.subarray(0, count)]);
  const metaCrc = crc32c(meta, crc32c(u32le(round, count)));
  const data = pages.filter((page): page is Uint8Array => page !== null);
  return forgeRecord(
    RECORD_TYPE.pageBatch,
    concat([u32le(round, count, metaCrc, ...pageIndices, ...crcs), kindBytes, ...data]),
  );
}

function randomPage(seed: number): Uint8Array {
  const words = new Uint32Array(PAGE_SIZE_BYTES / 4);
  const random = new Random(seed);
  for (let i = 0; i < words.length; i++) words[i] = random.nextU32();
  return new Uint8Array(words.buffer);
}

const prefix = (): Uint8Array[] => [encodeHeader(), encodeDomainInfo(domainInfo())];
/** HEADER, DOMAIN_INFO, `middle`, GUEST_STATE, and an END that counts them all. */
const streamOf = (...middle: Uint8Array[]): Uint8Array[] => {
  const records = [...prefix(), ...middle, encodeGuestState(new Uint8Array([1, 2, 3]))];
  return [...records, encodeEnd(tallyRecords(records))];
};

/** A record in plain data, copied out of the decoder's views at once (their contract). */
function snapshot(record: MigrationRecord): unknown {
  switch (record.type) {
    case 'pageBatch':
      return {
        type: record.type,
        round: record.round,
        pageIndices: [...record.pageIndices],
        pageCrcs: [...record.pageCrcs],
        zero: [...record.zero],
        data: record.data.slice(),
      };
    case 'guestState':
      return { type: record.type, state: record.state.slice() };
    default:
      return structuredClone(record);
  }
}

/** Feeds `stream` cut at `cuts`; checks the buffered bytes stay within one record. */
function feed(
  decoder: StreamDecoder,
  stream: Uint8Array,
  cuts: readonly number[],
  maxRecordBytes = Number.POSITIVE_INFINITY,
): unknown[] {
  const points = [...new Set([0, ...cuts, stream.length])].sort((a, b) => a - b);
  const records: unknown[] = [];
  for (let i = 1; i < points.length; i++) {
    for (const record of decoder.push(stream.subarray(points[i - 1], points[i]))) {
      records.push(snapshot(record));
    }
    assert.ok(decoder.bufferedBytes <= maxRecordBytes, `buffered ${decoder.bufferedBytes}`);
  }
  return records;
}

/** Runs `action` and returns the MigrationError code it throws; fails on anything else. */
function codeOf(action: () => void): MigrationErrorCode {
  try {
    action();
  } catch (error) {
    assert.ok(error instanceof MigrationError, `not a MigrationError: ${String(error)}`);
    return error.code;
  }
  assert.fail('expected a MigrationError');
}

/** The code a complete stream is rejected with (decoding it whole, then finish). */
function rejectCode(parts: readonly Uint8Array[], options = {}): MigrationErrorCode {
  const decoder = new StreamDecoder(options);
  return codeOf(() => {
    decoder.push(concat(parts));
    decoder.finish();
  });
}

function isStreamError(error: unknown): boolean {
  return error instanceof MigrationError && error.code.startsWith('STREAM_');
}

describe('encodePageBatch', () => {
  it('matches the reference encoder byte for byte', () => {
    const memory = randomMemory(1, PAGES, new Set([2, 5]));
    const indices = [1, 2, 3, 5, 9];
    const pages = indices.map((page) =>
      page === 2 || page === 5
        ? null
        : memory.slice(page * PAGE_SIZE_BYTES, (page + 1) * PAGE_SIZE_BYTES),
    );
    const encoded = encodePageBatch(7, Uint32Array.from(indices), memory);
    assert.deepEqual(encoded.record, forgeBatch(7, indices, pages));
    assert.deepEqual(
      [...encoded.pageCrcs],
      [...pages.map((page) => (page === null ? ZERO_PAGE_CRC : crc32c(page)))],
    );
  });

  it('sends zero pages as flags when pages are all zero', () => {
    const memory = randomMemory(2, PAGES, new Set([10, 11, 12]));
    const mixed = encodePageBatch(1, Uint32Array.from([9, 10, 11, 12]), memory);
    assert.equal(mixed.zeroPages, 3);
    assert.equal(mixed.normalPages, 1);
    assert.equal(mixed.record.length, recordBytes(pageBatchBodyBytes(4, 1)));
    const full = encodePageBatch(1, Uint32Array.from([13, 14, 15, 16]), memory);
    assert.equal(full.record.length - mixed.record.length, 3 * PAGE_SIZE_BYTES);
    assert.equal(ZERO_PAGE_CRC, crc32c(new Uint8Array(PAGE_SIZE_BYTES)));
  });

  it('fits a full batch of normal pages in MAX_RECORD_BODY_BYTES exactly', () => {
    const memory = randomMemory(3, MAX_BATCH_PAGES, new Set());
    const indices = Uint32Array.from({ length: MAX_BATCH_PAGES }, (_, i) => i);
    const encoded = encodePageBatch(1, indices, memory);
    assert.equal(encoded.record.length, recordBytes(MAX_RECORD_BODY_BYTES));
    assert.equal(new DataView(encoded.record.buffer).getUint32(4, true), MAX_RECORD_BODY_BYTES);
  });

  it('builds the same record in a caller buffer when given `into`', () => {
    const memory = randomMemory(15, PAGES, new Set([4]));
    const indices = Uint32Array.from([3, 4, 5]);
    const into = new Uint8Array(recordBytes(MAX_RECORD_BODY_BYTES)).fill(0xee);
    const encoded = encodePageBatch(2, indices, memory, { into });
    assert.equal(encoded.record.buffer, into.buffer);
    assert.deepEqual(encoded.record, encodePageBatch(2, indices, memory).record);
  });

  it('asserts when page indices are not ascending', () => {
    const memory = randomMemory(4, PAGES, new Set());
    assert.throws(() => encodePageBatch(1, Uint32Array.from([3, 3]), memory), {
      name: 'AssertionError',
    });
  });
});

describe('StreamDecoder round trip', () => {
  const batch = fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), {
    minLength: 1,
    maxLength: PAGES,
  });
  const scenario = fc.record({
    memorySeed: fc.integer(),
    zeroPages: fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), { maxLength: PAGES }),
    precopy: fc.array(batch, { maxLength: 4 }),
    final: fc.array(batch, { maxLength: 2 }),
    state: fc.uint8Array({ maxLength: 200 }),
    cuts: fc.array(fc.nat(), { maxLength: 40 }),
    reuseBuffers: fc.boolean(),
  });

  it('decodes every record type intact when the stream is cut at random points', () => {
    fc.assert(
      fc.property(scenario, (input) => {
        const { memorySeed, zeroPages, precopy, final, state, cuts, reuseBuffers } = input;
        const memory = randomMemory(memorySeed, PAGES, new Set(zeroPages));
        const expected: unknown[] = [
          { type: 'header', version: STREAM_VERSION },
          { type: 'domainInfo', info: domainInfo() },
        ];
        const parts = prefix();
        const addBatch = (round: number, pages: number[]): void => {
          const indices = Uint32Array.from(pages.sort((a, b) => a - b));
          const encoded = encodePageBatch(round, indices, memory);
          parts.push(encoded.record);
          const normal = pages.filter((page) => !zeroPages.includes(page));
          expected.push({
            type: 'pageBatch',
            round,
            pageIndices: [...indices],
            pageCrcs: [...encoded.pageCrcs],
            zero: pages.map((page) => (zeroPages.includes(page) ? 1 : 0)),
            data: concat(
              normal.map((page) =>
                memory.slice(page * PAGE_SIZE_BYTES, (page + 1) * PAGE_SIZE_BYTES),
              ),
            ),
          });
        };
        for (const [i, pages] of precopy.entries()) addBatch(i + 1, pages);
        parts.push(encodeGuestState(state));
        expected.push({ type: 'guestState', state });
        // The final round's pages ascend across its batches, as a sender walks its dirty list.
        const finalPages = [...new Set(final.flat())].sort((a, b) => a - b);
        const perBatch = Math.ceil(finalPages.length / Math.max(1, final.length));
        for (let first = 0; first < finalPages.length; first += perBatch) {
          addBatch(precopy.length + 1, finalPages.slice(first, first + perBatch));
        }
        const tally = tallyRecords(parts);
        parts.push(encodeEnd(tally));
        expected.push({ type: 'end', ...tally });

        const stream = concat(parts);
        const decoder = new StreamDecoder({ reuseBuffers });
        const largest = Math.max(...parts.map((part) => part.length));
        const records = feed(
          decoder,
          stream,
          cuts.map((cut) => cut % stream.length),
          largest,
        );
        decoder.finish();
        assert.deepEqual(records, expected);
        assert.equal(decoder.pageCount, PAGES);
        assert.equal(decoder.bytesConsumed, stream.length);
      }),
      { seed: 20240611, numRuns: 60 },
    );
  });

  it('decodes a stream fed in 1-byte chunks', () => {
    const memory = randomMemory(5, 8, new Set([1, 4]));
    const parts = [
      encodeHeader(),
      encodeDomainInfo(domainInfo(8)),
      encodePageBatch(1, Uint32Array.from([0, 1, 2, 3, 4, 5, 6, 7]), memory).record,
      encodeGuestState(new Uint8Array([9, 8, 7, 6, 5])),
      encodePageBatch(2, Uint32Array.from([4, 6]), memory).record,
    ];
    parts.push(encodeEnd(tallyRecords(parts)));
    const stream = concat(parts);
    const decoder = new StreamDecoder();
    const records = feed(
      decoder,
      stream,
      Array.from({ length: stream.length }, (_, i) => i),
    );
    decoder.finish();
    assert.deepEqual(
      records.map((record) => (record as { type: string }).type),
      ['header', 'domainInfo', 'pageBatch', 'guestState', 'pageBatch', 'end'],
    );
    const first = records[2] as { data: Uint8Array; zero: number[] };
    assert.deepEqual(first.zero, [0, 1, 0, 0, 1, 0, 0, 0]);
    assert.deepEqual(first.data.subarray(0, PAGE_SIZE_BYTES), memory.slice(0, PAGE_SIZE_BYTES));
  });

  it('keeps a returned record intact when the same push starts assembling the next', () => {
    // Regression: with reuseBuffers, record A completing and record B starting in one chunk
    // once shared a buffer, so B's first bytes overwrote A before the caller saw it.
    const memory = randomMemory(16, PAGES, new Set());
    const first = encodePageBatch(1, Uint32Array.from([0]), memory).record;
    const second = encodePageBatch(1, Uint32Array.from([1]), memory).record;
    const head = concat(prefix()).length;
    const stream = concat(streamOf(first, second));
    const decoder = new StreamDecoder({ reuseBuffers: true });
    const cuts = [head + 100, head + first.length + 100, head + first.length + 200];
    const records = feed(decoder, stream, cuts) as { data?: Uint8Array }[];
    decoder.finish();
    assert.deepEqual(records[2]?.data, memory.slice(0, PAGE_SIZE_BYTES));
    assert.deepEqual(records[3]?.data, memory.slice(PAGE_SIZE_BYTES, 2 * PAGE_SIZE_BYTES));
  });

  it('assembles spanning full batches in two buffers used in turn when reuseBuffers is on', () => {
    const memory = randomMemory(17, MAX_BATCH_PAGES, new Set());
    const indices = Uint32Array.from({ length: MAX_BATCH_PAGES }, (_, i) => i);
    const decoder = new StreamDecoder({ reuseBuffers: true, verifyPageChecksums: false });
    decoder.push(concat([encodeHeader(), encodeDomainInfo(domainInfo(MAX_BATCH_PAGES))]));
    // Record boundaries fall inside 1 MiB chunks, so each push that completes a record also
    // starts the next: the buffers must alternate, and only two may exist. (Rounds 1 to 4:
    // a round never sends a page twice.)
    const stream = concat(
      [1, 2, 3, 4].map((round) => encodePageBatch(round, indices, memory).record),
    );
    const buffers: ArrayBufferLike[] = [];
    for (let offset = 0; offset < stream.length; offset += 1 << 20) {
      for (const record of decoder.push(stream.subarray(offset, offset + (1 << 20)))) {
        assert.ok(record.type === 'pageBatch');
        assert.deepEqual(record.data.subarray(0, 64), memory.subarray(0, 64));
        buffers.push(record.data.buffer);
      }
    }
    assert.equal(buffers.length, 4);
    assert.equal(new Set(buffers).size, 2);
    assert.equal(buffers[0], buffers[2]);
  });

  it('returns views of the chunk when a record arrives whole in one chunk', () => {
    const memory = randomMemory(6, PAGES, new Set());
    const batch = encodePageBatch(1, Uint32Array.from([0, 1]), memory).record;
    const stream = concat(streamOf(batch));
    const records = new StreamDecoder().push(stream);
    const pageBatch = records[2];
    assert.ok(pageBatch?.type === 'pageBatch');
    assert.equal(pageBatch.data.buffer, stream.buffer);
    assert.equal(pageBatch.pageIndices.buffer, stream.buffer);
  });

  it('decodes records whose words are unaligned in the chunk', () => {
    const memory = randomMemory(7, PAGES, new Set([3]));
    const stream = concat(streamOf(encodePageBatch(1, Uint32Array.from([2, 3, 4]), memory).record));
    for (const shift of [1, 2, 3]) {
      const shifted = new Uint8Array(stream.length + shift);
      shifted.set(stream, shift);
      const decoder = new StreamDecoder();
      const records = decoder.push(shifted.subarray(shift));
      decoder.finish();
      const pageBatch = records[2];
      assert.ok(pageBatch?.type === 'pageBatch');
      assert.deepEqual([...pageBatch.pageIndices], [2, 3, 4]);
      assert.deepEqual([...pageBatch.zero], [0, 1, 0]);
    }
  });

  it('accepts a corrupt page when page checksums are off, and only then', () => {
    const memory = randomMemory(8, PAGES, new Set());
    const batch = encodePageBatch(1, Uint32Array.from([0]), memory).record;
    batch[batch.length - 100]! ^= 0xff;
    const stream = concat(streamOf(batch));
    assert.equal(rejectCode([stream]), 'STREAM_CHECKSUM');
    const decoder = new StreamDecoder({ verifyPageChecksums: false });
    assert.equal(decoder.push(stream).length, 5);
    decoder.finish();
  });
});

describe('StreamDecoder rejects', () => {
  it('any corrupted byte of a page batch with a stream error', () => {
    // Every byte of header, arrays, kinds and padding; every 37th byte of page data (a prime
    // stride, so each page and offset class is hit); random non-zero flips.
    const memory = randomMemory(9, PAGES, new Set([1, 6]));
    const batch = encodePageBatch(4, Uint32Array.from([0, 1, 5, 6, 40]), memory).record;
    const dataStart = 8 + pageBatchBodyBytes(5, 0);
    const dataEnd = 8 + pageBatchBodyBytes(5, 3);
    const whole = streamOf(batch);
    const before = concat(prefix());
    const after = concat(whole.slice(prefix().length + 1));
    const random = new Random(7331);
    for (let position = 0; position < batch.length; position++) {
      if (position >= dataStart && position < dataEnd && (position - dataStart) % 37 !== 0) {
        continue;
      }
      const corrupt = batch.slice();
      corrupt[position]! ^= 1 + random.nextInt(255);
      const decoder = new StreamDecoder();
      assert.throws(
        () => {
          decoder.push(concat([before, corrupt, after]));
          decoder.finish();
        },
        isStreamError,
        `corrupting byte ${position} went unnoticed`,
      );
    }
  });

  it('a page whose data is corrupted with STREAM_CHECKSUM', () => {
    const memory = randomMemory(10, PAGES, new Set());
    const batch = encodePageBatch(1, Uint32Array.from([0, 1]), memory).record;
    batch[batch.length - PAGE_SIZE_BYTES]! ^= 1;
    assert.equal(rejectCode(streamOf(batch)), 'STREAM_CHECKSUM');
  });

  it('batch metadata corrupted with STREAM_CHECKSUM', () => {
    const memory = randomMemory(11, PAGES, new Set());
    const batch = encodePageBatch(1, Uint32Array.from([0, 1]), memory).record;
    batch[8]! ^= 1; // the round
    assert.equal(rejectCode(streamOf(batch)), 'STREAM_CHECKSUM');
  });

  it('a zero page with a crc other than ZERO_PAGE_CRC with STREAM_CHECKSUM', () => {
    const batch = forgeBatch(1, [0], [null]);
    // Recompute metaCrc over a wrong page crc so only the zero-page check can catch it.
    const view = new DataView(batch.buffer);
    view.setUint32(8 + 16, 1234, true);
    const meta = batch.subarray(8 + 12, 8 + 12 + 9);
    view.setUint32(8 + 8, crc32c(meta, crc32c(batch.subarray(8, 16))), true);
    assert.equal(rejectCode(streamOf(batch)), 'STREAM_CHECKSUM');
  });

  it('a stream cut anywhere with STREAM_TRUNCATED at finish', () => {
    const memory = randomMemory(12, PAGES, new Set([0]));
    const stream = concat(streamOf(encodePageBatch(1, Uint32Array.from([0, 1, 2]), memory).record));
    fc.assert(
      fc.property(fc.nat({ max: stream.length - 1 }), fc.nat(), (length, cut) => {
        const decoder = new StreamDecoder();
        feed(decoder, stream.subarray(0, length), [cut % (length + 1)]);
        assert.equal(
          codeOf(() => decoder.finish()),
          'STREAM_TRUNCATED',
        );
      }),
      { seed: 99, numRuns: 200 },
    );
  });

  it('an oversized body length with STREAM_RECORD_TOO_LARGE before buffering the body', () => {
    const afterState = concat([...prefix(), encodeGuestState(new Uint8Array(1))]);
    const cases: [Uint8Array, number, number][] = [
      [concat(prefix()), RECORD_TYPE.pageBatch, MAX_RECORD_BODY_BYTES + 1],
      [concat(prefix()), RECORD_TYPE.pageBatch, 0xffffffff],
      [concat(prefix()), RECORD_TYPE.guestState, MAX_GUEST_STATE_BYTES + 1],
      [afterState, RECORD_TYPE.pageBatch, MAX_RECORD_BODY_BYTES + 1],
      [afterState, RECORD_TYPE.end, 16],
    ];
    for (const [before, type, bodyLength] of cases) {
      const decoder = new StreamDecoder();
      decoder.push(before);
      assert.equal(
        codeOf(() => decoder.push(u32le(type, bodyLength))),
        'STREAM_RECORD_TOO_LARGE',
      );
      assert.equal(decoder.bufferedBytes, 0);
    }
    const first = new StreamDecoder();
    first.push(forgeHeader());
    assert.equal(
      codeOf(() => first.push(u32le(RECORD_TYPE.domainInfo, MAX_DOMAIN_INFO_BYTES + 1))),
      'STREAM_RECORD_TOO_LARGE',
    );
  });

  it('a page index beyond the domain with STREAM_PAGE_RANGE', () => {
    const memory = randomMemory(13, 2 * PAGES, new Set());
    const batch = encodePageBatch(1, Uint32Array.from([1, PAGES]), memory).record;
    assert.equal(rejectCode(streamOf(batch)), 'STREAM_PAGE_RANGE');
  });

  it('page indices that do not strictly ascend with STREAM_ORDER', () => {
    const page = randomPage(1);
    for (const indices of [
      [5, 3],
      [4, 4],
      [0, 2, 1],
    ]) {
      const batch = forgeBatch(
        1,
        indices,
        indices.map(() => page),
      );
      assert.equal(rejectCode(streamOf(batch)), 'STREAM_ORDER');
    }
  });

  it('records out of order with STREAM_ORDER', () => {
    const header = forgeHeader();
    const info = forgeDomainInfo(domainInfo());
    const batch = forgeBatch(1, [0], [null]);
    const state = forgeRecord(RECORD_TYPE.guestState, withCrc(new Uint8Array(3)));
    const end = forgeRecord(RECORD_TYPE.end, u32le(3, 0)); // after header, info, state
    const streams = [
      [info],
      [batch],
      [header, header],
      [header, batch],
      [header, info, info],
      [header, info, end],
      [header, info, state, state],
      [header, info, state, end, end],
      [header, info, state, end, new Uint8Array(1)],
    ];
    for (const parts of streams) assert.equal(rejectCode(parts), 'STREAM_ORDER');
  });

  it('page batches reordered or repeated on the way with STREAM_ORDER', () => {
    const memory = randomMemory(21, PAGES, new Set());
    const batch = (round: number, pages: number[]) =>
      encodePageBatch(round, Uint32Array.from(pages), memory).record;
    const [r1a, r1b, r2] = [batch(1, [0, 1, 2]), batch(1, [5, 9]), batch(2, [1])];
    assert.doesNotThrow(() => {
      const decoder = new StreamDecoder();
      decoder.push(concat(streamOf(r1a, r1b, r2)));
      decoder.finish();
    }, 'in order, the stream is valid');
    for (const [what, middle] of [
      ['a round goes back', [r1a, r2, r1b]],
      ['batches of a round swapped', [r1b, r1a, r2]],
      ['a batch repeated', [r1a, r1a, r1b, r2]],
      ['the stream replayed', [r1a, r1b, r2, r1a]],
    ] as const) {
      assert.equal(rejectCode(streamOf(...middle)), 'STREAM_ORDER', what);
    }
  });

  it('a record lost or added on the way with STREAM_TRUNCATED (END counts them)', () => {
    const memory = randomMemory(22, PAGES, new Set());
    const batches = [1, 2, 3].map(
      (round) => encodePageBatch(round, Uint32Array.from([round, 10 + round]), memory).record,
    );
    const whole = streamOf(...batches);
    const end = whole.at(-1)!;
    for (const dropped of [2, 3, 4]) {
      const parts = whole.filter((_, i) => i !== dropped);
      assert.equal(rejectCode(parts), 'STREAM_TRUNCATED', `batch ${dropped} dropped`);
    }
    const noState = whole.filter((record) => record !== whole.at(-2));
    assert.equal(rejectCode(noState), 'STREAM_ORDER', 'GUEST_STATE dropped: END too early');
    const state = encodeGuestState(new Uint8Array([1, 2, 3]));
    const extraState = [...whole.slice(0, -2), state, ...whole.slice(-2, -1), end];
    assert.equal(rejectCode(extraState), 'STREAM_ORDER', 'a second GUEST_STATE');
    const wrongCount = [...whole.slice(0, -1), encodeEnd({ records: 6, pages: 7 })];
    assert.equal(rejectCode(wrongCount), 'STREAM_TRUNCATED', 'END counts a page too many');
  });

  it('a corrupted GUEST_STATE or DOMAIN_INFO byte with STREAM_CHECKSUM', () => {
    const stateRecord = encodeGuestState(new Uint8Array([7, 7, 7, 7, 7]));
    const infoRecord = encodeDomainInfo(domainInfo());
    for (let position = 8; position < 8 + 4 + 5; position++) {
      const corrupt = stateRecord.slice();
      corrupt[position]! ^= 0x40;
      const parts = [...prefix(), corrupt];
      assert.equal(
        rejectCode([...parts, encodeEnd(tallyRecords(parts))]),
        'STREAM_CHECKSUM',
        `GUEST_STATE byte ${position}`,
      );
    }
    // A flip inside the JSON that keeps it valid JSON (a digit of the domain id).
    const digit = Buffer.from(infoRecord).indexOf('"domId":') + 8;
    const corrupt = infoRecord.slice();
    corrupt[digit]! ^= 0x01;
    assert.equal(rejectCode([encodeHeader(), corrupt]), 'STREAM_CHECKSUM', 'DOMAIN_INFO');
  });

  it('a bad magic or version with STREAM_BAD_MAGIC or STREAM_BAD_VERSION', () => {
    assert.equal(rejectCode([forgeHeader(0x51455649)]), 'STREAM_BAD_MAGIC');
    assert.equal(rejectCode([forgeHeader(STREAM_MAGIC, STREAM_VERSION + 1)]), 'STREAM_BAD_VERSION');
    assert.equal(rejectCode([forgeHeader(STREAM_MAGIC, 0)]), 'STREAM_BAD_VERSION');
  });

  it('an unknown record type with STREAM_UNKNOWN_RECORD', () => {
    assert.equal(rejectCode([forgeRecord(0, new Uint8Array(0))]), 'STREAM_UNKNOWN_RECORD');
    assert.equal(
      rejectCode([...prefix(), forgeRecord(7, new Uint8Array(8))]),
      'STREAM_UNKNOWN_RECORD',
    );
  });

  it('malformed page batches with STREAM_MALFORMED', () => {
    const page = randomPage(2);
    const good = forgeBatch(1, [0, 1], [page, null]);
    const badKind = forgeBatch(1, [0, 1], [page, null], [0, 2]);
    const lyingKind = forgeBatch(1, [0, 1], [page, null], [0, 0]);
    const empty = forgeRecord(RECORD_TYPE.pageBatch, u32le(1, 0, crc32c(u32le(1, 0))));
    const tooMany = forgeRecord(RECORD_TYPE.pageBatch, u32le(1, MAX_BATCH_PAGES + 1, 0));
    const short = forgeRecord(RECORD_TYPE.pageBatch, u32le(1, 2, 0, 0));
    const tiny = forgeRecord(RECORD_TYPE.pageBatch, new Uint8Array(4));
    const badPadding = good.slice();
    badPadding[8 + 12 + 16 + 2] = 7; // kind padding after 2 kinds
    const longer = concat([good, new Uint8Array(8)]);
    new DataView(longer.buffer).setUint32(4, good.length - 8 + 8, true);
    for (const batch of [badKind, lyingKind, empty, tooMany, short, tiny, longer]) {
      assert.equal(rejectCode(streamOf(batch)), 'STREAM_MALFORMED');
    }
    // Kind padding is outside metaCrc: only the padding check catches it.
    assert.equal(rejectCode(streamOf(badPadding)), 'STREAM_MALFORMED');
    const recordPadding = forgeRecord(RECORD_TYPE.guestState, new Uint8Array([1, 2, 3, 9]), 3);
    const padded = [...prefix(), recordPadding];
    assert.equal(rejectCode([...padded, encodeEnd(tallyRecords(padded))]), 'STREAM_MALFORMED');
  });

  it('bad headers and domain info with STREAM_MALFORMED', () => {
    const header = forgeHeader();
    const shortHeader = forgeRecord(RECORD_TYPE.header, u32le(STREAM_MAGIC));
    assert.equal(rejectCode([shortHeader]), 'STREAM_MALFORMED');
    const info = domainInfo();
    const badInfos: unknown[] = [
      null,
      [],
      { ...info, name: '' },
      { ...info, domId: -1 },
      { ...info, pageCount: 0 },
      { ...info, pageCount: 64.5 },
      { ...info, pageCount: MAX_DOMAIN_PAGES + 1 },
      { ...info, ip: 7 },
      { ...info, ip: '10.77.0.300' },
      { ...info, name: 'x'.repeat(65) },
      { ...info, tenant: '' },
      { ...info, routes: [{ ip: 'not-an-ip', link: '127.0.0.1:7001' }] },
      { ...info, tenant: undefined },
      { ...info, layout: undefined },
      { ...info, layout: { ...info.layout, pageCount: 63 } },
      { ...info, layout: { pageCount: PAGES, regions: [] } },
      { ...info, layout: smallLayout(63) },
      {
        ...info,
        layout: {
          pageCount: PAGES,
          regions: [{ name: 'heap', firstPage: 0, pageCount: PAGES }],
        },
      },
      {
        ...info,
        layout: {
          pageCount: PAGES,
          regions: [
            { name: 'kernel', firstPage: 0, pageCount: 8 },
            { name: 'program', firstPage: 9, pageCount: 56 },
          ],
        },
      },
    ];
    for (const bad of badInfos) {
      assert.equal(rejectCode([header, forgeDomainInfo(bad)]), 'STREAM_MALFORMED');
    }
    const notJson = forgeRecord(
      RECORD_TYPE.domainInfo,
      withCrc(new TextEncoder().encode('{"name":')),
    );
    const notUtf8 = forgeRecord(
      RECORD_TYPE.domainInfo,
      withCrc(new Uint8Array([0x7b, 0xff, 0x7d])),
    );
    const noCrc = forgeRecord(RECORD_TYPE.domainInfo, new Uint8Array(3));
    assert.equal(rejectCode([header, noCrc]), 'STREAM_MALFORMED', 'a body too short for its crc');
    assert.equal(rejectCode([header, notJson]), 'STREAM_MALFORMED');
    assert.equal(rejectCode([header, notUtf8]), 'STREAM_MALFORMED');
  });

  it('a domain above maxPageCount with MIGRATION_REFUSED', () => {
    const parts = [encodeHeader(), encodeDomainInfo(domainInfo(PAGES))];
    assert.equal(rejectCode(parts, { maxPageCount: PAGES - 1 }), 'MIGRATION_REFUSED');
    const decoder = new StreamDecoder({ maxPageCount: PAGES });
    decoder.push(concat(parts));
    assert.equal(decoder.pageCount, PAGES);
  });

  it('every later call with the same error after a throw', () => {
    const decoder = new StreamDecoder();
    let first: unknown;
    try {
      decoder.push(forgeHeader(1));
    } catch (error) {
      first = error;
    }
    assert.ok(first instanceof MigrationError);
    assert.throws(
      () => decoder.push(forgeHeader()),
      (error) => error === first,
    );
    assert.throws(
      () => decoder.finish(),
      (error) => error === first,
    );
  });
});

describe('StreamDecoder fuzzing', () => {
  /** Pushes `chunks`, then finishes; anything thrown must be a MigrationError. */
  function survives(chunks: readonly Uint8Array[]): void {
    const decoder = new StreamDecoder();
    try {
      for (const chunk of chunks) decoder.push(chunk);
      decoder.finish();
    } catch (error) {
      if (!(error instanceof MigrationError)) throw error;
    }
  }

  it('throws nothing but MigrationError when fed arbitrary bytes', () => {
    fc.assert(fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }), survives), {
      seed: 424242,
      numRuns: 500,
    });
  });

  it('throws nothing but MigrationError when records carry arbitrary types and bodies', () => {
    const record = fc
      .record({
        type: fc.integer({ min: 0, max: 6 }),
        body: fc.uint8Array({ maxLength: 96 }),
        lengthDelta: fc.integer({ min: -4, max: 4 }),
      })
      .map(({ type, body, lengthDelta }) =>
        forgeRecord(type, body, Math.max(0, body.length + lengthDelta)),
      );
    fc.assert(
      fc.property(fc.array(record, { maxLength: 6 }), (records) => {
        survives([concat(prefix()), ...records]);
      }),
      { seed: 5150, numRuns: 500 },
    );
  });

  it('throws nothing but MigrationError when a valid stream is mutated', () => {
    const memory = randomMemory(14, PAGES, new Set([2]));
    const stream = concat(
      streamOf(encodePageBatch(1, Uint32Array.from([0, 1, 2, 3]), memory).record),
    );
    const mutation = fc.record({ position: fc.nat(), value: fc.integer({ min: 0, max: 255 }) });
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (mutations) => {
        const mutated = stream.slice();
        for (const { position, value } of mutations) mutated[position % mutated.length] = value;
        survives([mutated]);
      }),
      { seed: 8086, numRuns: 300 },
    );
  });
});
