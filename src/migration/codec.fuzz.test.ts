/**
 * Goal (issue 8): the migration stream decoder, fed anything in any chunking, throws nothing
 * but its typed error (a `MigrationError` with a known code), always returns (every byte of a
 * push consumed or an error), never allocates or holds more than one bounded record whatever
 * length the wire claims, and decodes a valid stream to the same records however it is cut,
 * both when it assembles page batches and when it lands them in guest memory.
 *
 * Method: fast-check with fixed seeds (printed in each test name). Inputs: arbitrary bytes after
 * a valid prefix; valid streams (seeded random memory, some zero pages, page batches before
 * and after the guest state, channel pages) mutated by bit flips, truncation anywhere or at a
 * record boundary, byte insertion and deletion, records dropped, repeated or swapped, and
 * huge length or count fields; each fed in a random
 * chunking to a decoder that assembles and to one that lands pages (`landPagesIn` once the
 * domain info is out, as the receiver does). Allocations are watched by wrapping
 * `Buffer.allocUnsafeSlow` (the decoder's only large allocation) for the test's duration.
 *
 * `XENVMC_FUZZ_RUNS=N` raises every fuzz test to at least N runs; `XENVMC_FUZZ_SEED=S`
 * replaces the fixed seeds.
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { fuzzRuns, fuzzSeed } from '../core/fuzz.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import type { MemoryLayout } from '../memory/layout.ts';
import {
  type DomainInfo,
  encodeChannelPages,
  encodeDomainInfo,
  encodeEnd,
  encodeGuestState,
  encodeHeader,
  encodePageBatch,
  type MigrationRecord,
  RECORD_HEADER_BYTES,
  recordBytes,
  StreamDecoder,
  tallyRecords,
} from './codec.ts';
import { MigrationError, type MigrationErrorCode } from './errors.ts';
import { MAX_ANY_RECORD_BODY_BYTES } from './limits.ts';

const PAGES = 48;
/** The decoder's bound on a domain: a fuzzed DOMAIN_INFO may claim up to 2^24 pages. */
const MAX_PAGE_COUNT = 256;
/** What any decoder may hold or allocate at once: one record of the largest type. */
const MAX_HELD_BYTES = recordBytes(MAX_ANY_RECORD_BODY_BYTES);

/** Every code the decoder may throw: the stream codes and a refused (too large) domain. */
const DECODER_CODES: ReadonlySet<MigrationErrorCode> = new Set<MigrationErrorCode>([
  'STREAM_BAD_MAGIC',
  'STREAM_BAD_VERSION',
  'STREAM_UNKNOWN_RECORD',
  'STREAM_RECORD_TOO_LARGE',
  'STREAM_MALFORMED',
  'STREAM_CHECKSUM',
  'STREAM_PAGE_RANGE',
  'STREAM_ORDER',
  'STREAM_TRUNCATED',
  'MIGRATION_REFUSED',
]);

function layout(pageCount: number): MemoryLayout {
  return {
    pageCount,
    regions: [
      { name: 'kernel', firstPage: 0, pageCount: 4 },
      { name: 'program', firstPage: 4, pageCount: pageCount - 4 },
    ],
  };
}

const INFO: DomainInfo = {
  name: 'vm1',
  domId: 3,
  pageCount: PAGES,
  layout: layout(PAGES),
  ip: '10.0.0.11',
  tenant: 'blue',
  programs: [{ kind: 'dirtier' }],
};

// ---- the largest allocation, watched ----------------------------------------------------------

let largestAllocation = 0;
const allocUnsafeSlow = Buffer.allocUnsafeSlow;
before(() => {
  Buffer.allocUnsafeSlow = (size: number): Buffer<ArrayBuffer> => {
    largestAllocation = Math.max(largestAllocation, size);
    return allocUnsafeSlow(size);
  };
});
after(() => {
  Buffer.allocUnsafeSlow = allocUnsafeSlow;
});

// ---- valid streams ----------------------------------------------------------------------------

interface Scenario {
  memorySeed: number;
  zeroPages: number[];
  precopy: number[][];
  final: number[][];
  state: Uint8Array;
  channelPages: number;
}

const pageList = fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), {
  minLength: 1,
  maxLength: PAGES,
});

const scenarioArbitrary: fc.Arbitrary<Scenario> = fc.record({
  memorySeed: fc.integer(),
  zeroPages: fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), { maxLength: PAGES }),
  precopy: fc.array(pageList, { maxLength: 3 }),
  final: fc.array(pageList, { maxLength: 2 }),
  state: fc.uint8Array({ maxLength: 100 }),
  channelPages: fc.integer({ min: 0, max: 2 }),
});

/** Guest memory in a SharedArrayBuffer, as GuestMemory has it; `zeroPages` stay 0. */
function sourceMemory(memorySeed: number, zeroPages: readonly number[]): Uint8Array {
  const memory = new Uint8Array(new SharedArrayBuffer(PAGES * PAGE_SIZE_BYTES));
  let state = memorySeed >>> 0 || 1;
  for (let i = 0; i < memory.length; i += 4) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    memory[i] = state & 0xff;
    memory[i + 1] = (state >>> 8) & 0xff;
    memory[i + 2] = (state >>> 16) & 0xff;
    memory[i + 3] = state >>> 24;
  }
  for (const page of zeroPages)
    memory.fill(0, page * PAGE_SIZE_BYTES, (page + 1) * PAGE_SIZE_BYTES);
  return memory;
}

/** A valid stream as its records, and the memory a receiver ends with. */
function validStream(scenario: Scenario): { records: Uint8Array[]; landed: Uint8Array } {
  const memory = sourceMemory(scenario.memorySeed, scenario.zeroPages);
  const landed = new Uint8Array(PAGES * PAGE_SIZE_BYTES);
  const records = [encodeHeader(), encodeDomainInfo(INFO)];
  const batch = (round: number, pages: number[]): void => {
    const indices = Uint32Array.from([...pages].sort((a, b) => a - b));
    records.push(encodePageBatch(round, indices, memory).record);
    for (const page of indices) {
      const offset = page * PAGE_SIZE_BYTES;
      landed.set(memory.subarray(offset, offset + PAGE_SIZE_BYTES), offset);
    }
  };
  const channel = Array.from({ length: scenario.channelPages }, (_, i) =>
    memory.slice(i * PAGE_SIZE_BYTES, (i + 1) * PAGE_SIZE_BYTES),
  );
  if (channel.length > 0) records.push(encodeChannelPages(channel));
  for (const [i, pages] of scenario.precopy.entries()) batch(i + 1, pages);
  records.push(encodeGuestState(scenario.state));
  // The final round's pages ascend across its batches, as a sender walks its dirty list.
  const finalPages = [...new Set(scenario.final.flat())].sort((a, b) => a - b);
  const finalBatchPages = Math.ceil(finalPages.length / Math.max(1, scenario.final.length));
  for (let first = 0; first < finalPages.length; first += finalBatchPages) {
    batch(scenario.precopy.length + 1, finalPages.slice(first, first + finalBatchPages));
  }
  records.push(encodeEnd(tallyRecords(records)));
  return { records, landed };
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

// ---- feeding ----------------------------------------------------------------------------------

/** A record as plain data, with page batches and landed pages alike reduced to metadata. */
function snapshot(record: MigrationRecord): unknown {
  switch (record.type) {
    case 'pageBatch':
    case 'pagesLanded':
      return {
        type: 'pages',
        round: record.round,
        pageIndices: [...record.pageIndices],
        pageCrcs: [...record.pageCrcs],
        zero: [...record.zero],
      };
    case 'guestState':
      return { type: record.type, state: [...record.state] };
    case 'channelPages':
      return { type: record.type, pageCount: record.pageCount, data: record.data.slice() };
    default:
      return structuredClone(record);
  }
}

interface Outcome {
  records: unknown[];
  /** Page data of assembled batches, applied to memory as the receiver would. */
  memory: Uint8Array;
  error: MigrationError | null;
}

/**
 * Feeds `stream` cut at `cuts` (then finish) to a decoder that assembles or lands pages, and
 * checks on the way what must hold whatever the input: every push consumes all its bytes or
 * throws a decoder error, the bytes held stay within one record.
 */
function decode(stream: Uint8Array, cuts: readonly number[], land: boolean): Outcome {
  const decoder = new StreamDecoder({ maxPageCount: MAX_PAGE_COUNT, reuseBuffers: land });
  const points = [...new Set([0, ...cuts.map((cut) => cut % (stream.length + 1)), stream.length])];
  points.sort((a, b) => a - b);
  const records: unknown[] = [];
  let memory: Uint8Array = new Uint8Array(0);
  try {
    for (let i = 1; i < points.length; i++) {
      const before = decoder.bytesConsumed;
      const chunk = stream.subarray(points[i - 1], points[i]);
      for (const record of decoder.push(chunk)) {
        records.push(snapshot(record));
        if (record.type === 'domainInfo') {
          memory = new Uint8Array(new SharedArrayBuffer(record.info.pageCount * PAGE_SIZE_BYTES));
          if (land) decoder.landPagesIn(memory);
        }
        if (record.type === 'pageBatch') {
          let data = 0;
          record.pageIndices.forEach((page, k) => {
            if (record.zero[k]) return;
            memory.set(record.data.subarray(data, data + PAGE_SIZE_BYTES), page * PAGE_SIZE_BYTES);
            data += PAGE_SIZE_BYTES;
          });
        }
      }
      assert.equal(decoder.bytesConsumed - before, chunk.length, 'a push consumes its chunk');
      assert.ok(decoder.bufferedBytes <= MAX_HELD_BYTES, `holds ${decoder.bufferedBytes} bytes`);
    }
    decoder.finish();
    return { records, memory, error: null };
  } catch (error) {
    assert.ok(error instanceof MigrationError, `not a MigrationError: ${String(error)}`);
    assert.ok(DECODER_CODES.has(error.code), `unexpected code ${error.code}`);
    assert.ok(decoder.bufferedBytes <= MAX_HELD_BYTES, `holds ${decoder.bufferedBytes} bytes`);
    // A dead decoder stays dead, with the same error.
    assert.throws(
      () => decoder.push(new Uint8Array(1)),
      (again) => again === error,
      'rethrows',
    );
    return { records, memory, error };
  }
}

/** Decodes with both decoders; nothing may allocate above one record. */
function decodeBoth(stream: Uint8Array, cuts: readonly number[]): [Outcome, Outcome] {
  largestAllocation = 0;
  const outcomes: [Outcome, Outcome] = [decode(stream, cuts, false), decode(stream, cuts, true)];
  assert.ok(largestAllocation <= MAX_HELD_BYTES, `allocated ${largestAllocation} bytes at once`);
  return outcomes;
}

const cutsArbitrary = fc.array(fc.nat(), { maxLength: 24 });

// ---- mutations --------------------------------------------------------------------------------

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'swap'; a: number; b: number }
  | { kind: 'drop'; record: number }
  | { kind: 'repeat'; record: number }
  | { kind: 'cutAfter'; record: number }
  | { kind: 'length'; record: number; value: number }
  | { kind: 'count'; record: number; value: number };

const hugeU32 = fc.oneof(
  fc.constantFrom(0xffffffff, 0x80000000, 0x7fffffff, MAX_ANY_RECORD_BODY_BYTES + 1, 0),
  fc.nat({ max: 0xffffffff }),
);

const mutationArbitrary: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat({ max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant('insert' as const),
    at: fc.nat(),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
  fc.record({
    kind: fc.constant('delete' as const),
    at: fc.nat(),
    length: fc.integer({ min: 1, max: 16 }),
  }),
  fc.record({ kind: fc.constant('swap' as const), a: fc.nat(), b: fc.nat() }),
  fc.record({
    kind: fc.constantFrom('drop' as const, 'repeat' as const, 'cutAfter' as const),
    record: fc.nat(),
  }),
  fc.record({ kind: fc.constant('length' as const), record: fc.nat(), value: hugeU32 }),
  fc.record({ kind: fc.constant('count' as const), record: fc.nat(), value: hugeU32 }),
);

/** Applies mutations to a stream given as records (swaps and field edits need boundaries). */
function mutate(records: readonly Uint8Array[], mutations: readonly Mutation[]): Uint8Array {
  const parts = records.map((record) => record.slice());
  let stream: Uint8Array | null = null;
  const whole = (): Uint8Array => {
    stream ??= concat(parts);
    return stream;
  };
  for (const mutation of mutations) {
    if (!('at' in mutation)) {
      if (stream !== null) continue; // record boundaries are lost after a byte-level edit
      if (mutation.kind === 'drop' || mutation.kind === 'repeat' || mutation.kind === 'cutAfter') {
        const index = mutation.record % parts.length;
        if (mutation.kind === 'drop') parts.splice(index, 1);
        else if (mutation.kind === 'repeat') parts.splice(index, 0, parts[index]!.slice());
        else parts.splice(index + 1);
        if (parts.length === 0) parts.push(new Uint8Array(0));
      } else if (mutation.kind === 'swap') {
        const a = mutation.a % parts.length;
        const b = mutation.b % parts.length;
        [parts[a], parts[b]] = [parts[b]!, parts[a]!];
      } else if (mutation.kind === 'length' || mutation.kind === 'count') {
        const part = parts[mutation.record % parts.length]!;
        // The body length (offset 4), or a PAGE_BATCH's count (body offset 4).
        const at = mutation.kind === 'length' ? 4 : RECORD_HEADER_BYTES + 4;
        if (part.length >= at + 4) Buffer.from(part.buffer).writeUInt32LE(mutation.value, at);
      }
      continue;
    }
    const bytes = whole();
    const at = mutation.at % (bytes.length + 1);
    switch (mutation.kind) {
      case 'flip':
        if (at < bytes.length) bytes[at]! ^= 1 << mutation.bit;
        break;
      case 'truncate':
        stream = bytes.subarray(0, at);
        break;
      case 'insert':
        stream = concat([bytes.subarray(0, at), mutation.bytes, bytes.subarray(at)]);
        break;
      case 'delete':
        stream = concat([bytes.subarray(0, at), bytes.subarray(at + mutation.length)]);
        break;
    }
  }
  return whole();
}

// ---- properties -------------------------------------------------------------------------------

describe('StreamDecoder fuzzing (issue 8)', { timeout: 10 * 60_000 }, () => {
  it(`decodes valid streams to the same records and memory in any chunking (seed ${fuzzSeed(81)})`, () => {
    fc.assert(
      fc.property(scenarioArbitrary, cutsArbitrary, (scenario, cuts) => {
        const { records, landed } = validStream(scenario);
        const stream = concat(records);
        const whole = decode(stream, [], false);
        assert.equal(whole.error, null, `the valid stream decodes whole: ${whole.error?.message}`);
        const [assembled, landing] = decodeBoth(stream, cuts);
        assert.equal(assembled.error, null, `assembling decoder: ${assembled.error?.message}`);
        assert.equal(landing.error, null, `landing decoder: ${landing.error?.message}`);
        assert.deepEqual(assembled.records, whole.records, 'same records in any chunking');
        assert.deepEqual(landing.records, whole.records, 'same records when landing pages');
        assert.ok(Buffer.from(assembled.memory).equals(landed), 'assembled pages = source');
        assert.ok(Buffer.from(landing.memory).equals(landed), 'landed pages = source');
      }),
      { seed: fuzzSeed(81), numRuns: fuzzRuns(150) },
    );
  });

  it(`throws only its typed error on arbitrary bytes (seed ${fuzzSeed(82)})`, () => {
    const prefix = concat([encodeHeader(), encodeDomainInfo(INFO)]);
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.uint8Array({ maxLength: 2048 }),
        cutsArbitrary,
        (withPrefix, bytes, cuts) => {
          decodeBoth(withPrefix ? concat([prefix, bytes]) : bytes, cuts);
        },
      ),
      { seed: fuzzSeed(82), numRuns: fuzzRuns(400) },
    );
  });

  it(`throws only its typed error on mutated valid streams (seed ${fuzzSeed(83)})`, () => {
    let rejected = 0;
    let total = 0;
    fc.assert(
      fc.property(
        scenarioArbitrary,
        fc.array(mutationArbitrary, { minLength: 1, maxLength: 4 }),
        cutsArbitrary,
        (scenario, mutations, cuts) => {
          const stream = mutate(validStream(scenario).records, mutations);
          const [assembled, landing] = decodeBoth(stream, cuts);
          total++;
          if (assembled.error !== null) rejected++;
          // Landing pages changes where bytes go and how early a bad page is seen (a shifted
          // page fails its crc before the stream runs short), not what is accepted.
          assert.equal(
            landing.error === null,
            assembled.error === null,
            `same verdict (assembling: ${assembled.error?.code}, landing: ${landing.error?.code})`,
          );
          if (assembled.error === null) {
            assert.deepEqual(landing.records, assembled.records, 'accepted: same records');
            assert.ok(Buffer.from(landing.memory).equals(assembled.memory), 'and same memory');
          }
        },
      ),
      { seed: fuzzSeed(83), numRuns: fuzzRuns(400) },
    );
    assert.ok(rejected > total / 2, `most mutated streams are rejected (${rejected}/${total})`);
  });

  it(`bounds a huge length field before buffering anything (seed ${fuzzSeed(84)})`, () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: MAX_ANY_RECORD_BODY_BYTES + 1, max: 0xffffffff }),
        cutsArbitrary,
        (type, length, cuts) => {
          const header = new Uint8Array(8);
          Buffer.from(header.buffer).writeUInt32LE(type, 0);
          Buffer.from(header.buffer).writeUInt32LE(length, 4);
          const stream = concat([
            encodeHeader(),
            encodeDomainInfo(INFO),
            header,
            new Uint8Array(64),
          ]);
          const [assembled, landing] = decodeBoth(stream, cuts);
          for (const outcome of [assembled, landing]) {
            assert.ok(outcome.error !== null, 'a record longer than any bound is rejected');
          }
        },
      ),
      { seed: fuzzSeed(84), numRuns: fuzzRuns(100) },
    );
  });
});
