/**
 * Goal: the target lands pages straight from the stream's chunks in guest memory, correctly
 * wherever the chunks are cut, rejects a corrupted page on its bytes as they landed, and
 * `receiveMigration` completes, refuses and fails as the protocol says; its stall timeout does
 * not count the target's own reservation time.
 *
 * Method: the decoder's landing mode fed a stream cut at every offset of a page batch that
 * holds a run of consecutive pages, a lone page and a zero page, over target memory filled
 * with garbage; `receiveMigration` on a real loopback socket, the source played by the test
 * with the codec's encoders and a `ControlReader`, the host by a fake that records calls.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { ControlReader } from '../hypervisor/peer-link.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import type { MemoryLayout } from '../memory/layout.ts';
import {
  type DomainInfo,
  encodeDomainInfo,
  encodeEnd,
  encodeGuestState,
  encodeHeader,
  encodePageBatch,
  type MigrationRecord,
  StreamDecoder,
  tallyRecords,
} from './codec.ts';
import { MigrationError, type MigrationErrorCode } from './errors.ts';
import { digestCrcTable, pageCrcTable } from './page-digest.ts';
import { receiveMigration } from './receiver.ts';

const PAGES = 16;

function layout(pageCount: number): MemoryLayout {
  return {
    pageCount,
    regions: [
      { name: 'kernel', firstPage: 0, pageCount: 2 },
      { name: 'program', firstPage: 2, pageCount: pageCount - 2 },
    ],
  };
}

function domainInfo(pageCount = PAGES): DomainInfo {
  return {
    name: 'vm1',
    domId: 7,
    pageCount,
    layout: layout(pageCount),
    ip: null,
    tenant: 'blue',
    programs: [],
  };
}

/** Source memory: every page random but those in `zeroPages`. */
function sourceMemory(zeroPages: readonly number[]): GuestMemory {
  const memory = GuestMemory.create(layout(PAGES));
  let state = 0x9e3779b9;
  for (let i = 0; i < memory.bytes.length; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    memory.bytes[i] = state >>> 24;
  }
  for (const page of zeroPages) memory.zeroPage(page);
  return memory;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

/** Pages 1-3 (a run), 5 (alone), 6 (zero), 8 (after a gap); page 6 is zero at the source. */
const BATCH = [1, 2, 3, 5, 6, 8];
const ZERO = [6];

function pageOf(bytes: Uint8Array, page: number): Uint8Array {
  return bytes.subarray(page * PAGE_SIZE_BYTES, (page + 1) * PAGE_SIZE_BYTES);
}

function codeOf(action: () => void): MigrationErrorCode | null {
  try {
    action();
  } catch (error) {
    assert.ok(error instanceof MigrationError, `not a MigrationError: ${String(error)}`);
    return error.code;
  }
  return null;
}

describe('StreamDecoder landing pages in guest memory', () => {
  const source = sourceMemory(ZERO);
  const head = [encodeHeader(), encodeDomainInfo(domainInfo())];
  const prefix = concat(head);
  const batch = encodePageBatch(4, Uint32Array.from(BATCH), source.bytes).record;
  const state = encodeGuestState(new Uint8Array([9, 9]));
  const rest = concat([batch, state, encodeEnd(tallyRecords([...head, batch, state]))]);

  /** A decoder past DOMAIN_INFO landing in fresh target memory full of 0xee. */
  function landingDecoder(): { decoder: StreamDecoder; target: Uint8Array } {
    const decoder = new StreamDecoder();
    const target = new Uint8Array(new SharedArrayBuffer(PAGES * PAGE_SIZE_BYTES)).fill(0xee);
    const records = decoder.push(prefix);
    assert.deepEqual(
      records.map((record) => record.type),
      ['header', 'domainInfo'],
      'the prefix decodes to HEADER and DOMAIN_INFO',
    );
    decoder.landPagesIn(target);
    return { decoder, target };
  }

  function checkLanded(target: Uint8Array, records: MigrationRecord[], where: string): void {
    assert.deepEqual(
      records.map((record) => record.type),
      ['pagesLanded', 'guestState', 'end'],
      `record types (${where})`,
    );
    const landed = records[0]!;
    assert.ok(landed.type === 'pagesLanded', 'first record is pagesLanded');
    assert.equal(landed.round, 4, `round (${where})`);
    assert.deepEqual([...landed.pageIndices], BATCH, `page indices (${where})`);
    assert.deepEqual(
      [...landed.zero],
      BATCH.map((page) => (ZERO.includes(page) ? 1 : 0)),
      `zero flags (${where})`,
    );
    for (let page = 0; page < PAGES; page++) {
      const expected = BATCH.includes(page)
        ? pageOf(source.bytes, page)
        : new Uint8Array(PAGE_SIZE_BYTES).fill(0xee);
      assert.ok(
        Buffer.from(pageOf(target, page)).equals(expected),
        `page ${page} holds ${BATCH.includes(page) ? 'the source page' : 'what it held'} (${where})`,
      );
    }
  }

  it('lands a page batch cut into two chunks at every offset', () => {
    for (let cut = 0; cut <= rest.length; cut++) {
      const { decoder, target } = landingDecoder();
      const records = [...decoder.push(rest.subarray(0, cut)), ...decoder.push(rest.subarray(cut))];
      decoder.finish();
      checkLanded(target, records, `cut at ${cut}`);
    }
  });

  it('lands a page batch fed one byte at a time', () => {
    const { decoder, target } = landingDecoder();
    const records: MigrationRecord[] = [];
    for (let i = 0; i < rest.length; i++) records.push(...decoder.push(rest.subarray(i, i + 1)));
    decoder.finish();
    checkLanded(target, records, '1-byte chunks');
  });

  it('rejects a corrupted byte of any landed page with STREAM_CHECKSUM', () => {
    const dataStart = batch.length - (BATCH.length - ZERO.length) * PAGE_SIZE_BYTES;
    for (let position = dataStart; position < batch.length; position += 1021) {
      for (const cut of [0, position, position + 1, batch.length - 3]) {
        const corrupted = rest.slice();
        corrupted[position]! ^= 0x10;
        const { decoder } = landingDecoder();
        const code = codeOf(() => {
          decoder.push(corrupted.subarray(0, cut));
          decoder.push(corrupted.subarray(cut));
        });
        assert.equal(code, 'STREAM_CHECKSUM', `byte ${position} flipped, cut at ${cut}`);
      }
    }
  });

  it('writes nothing to memory when the batch metadata is corrupted', () => {
    const corrupted = rest.slice();
    corrupted[8 + 12]! ^= 0x01; // the first page index
    const { decoder, target } = landingDecoder();
    assert.equal(
      codeOf(() => decoder.push(corrupted)),
      'STREAM_CHECKSUM',
      'metadata crc',
    );
    assert.ok(
      target.every((byte) => byte === 0xee),
      'no byte of guest memory changed',
    );
  });
});

/** A connected pair of loopback sockets: `source` (the test) and `target` (the receiver). */
async function socketPair(): Promise<{ source: net.Socket; target: net.Socket }> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const source = net.connect(port, '127.0.0.1');
  const target = await accepted;
  server.close();
  source.on('error', () => {});
  target.on('error', () => {});
  return { source, target };
}

interface FakeHost {
  reserve(info: DomainInfo): Promise<GuestMemory>;
  activate(info: DomainInfo, guestState: Uint8Array, digest: string): Promise<void>;
  discard(info: DomainInfo | null): void;
  memory: GuestMemory | null;
  activated: { guestState: Uint8Array; digest: string } | null;
  discarded: number;
}

function fakeHost(options: { reserveDelayMs?: number; refuse?: boolean } = {}): FakeHost {
  const host: FakeHost = {
    memory: null,
    activated: null,
    discarded: 0,
    async reserve(info) {
      await new Promise((resolve) => setTimeout(resolve, options.reserveDelayMs ?? 0));
      if (options.refuse) throw new MigrationError('MIGRATION_REFUSED', 'no room here');
      host.memory = GuestMemory.create(info.layout);
      return host.memory;
    },
    async activate(_info, guestState, digest) {
      host.activated = { guestState: guestState.slice(), digest };
    },
    discard() {
      host.discarded++;
    },
  };
  return host;
}

/** What a source sends after the reservation: every page in two batches, state, END. */
function body(memory: GuestMemory, corruptPage?: number): Uint8Array {
  const first = encodePageBatch(
    1,
    Uint32Array.from({ length: 8 }, (_, i) => i),
    memory.bytes,
  );
  const second = encodePageBatch(
    1,
    Uint32Array.from({ length: PAGES - 8 }, (_, i) => i + 8),
    memory.bytes,
  );
  const records = [first.record, second.record, encodeGuestState(new Uint8Array([1, 2, 3]))];
  // HEADER and DOMAIN_INFO came before.
  const before = [encodeHeader(), encodeDomainInfo(domainInfo()), ...records];
  const stream = concat([...records, encodeEnd(tallyRecords(before))]);
  if (corruptPage !== undefined) {
    // Pages 8.. are in the second batch, all normal; flip a byte in the middle of the page.
    const secondData = first.record.length + second.record.length - (PAGES - 8) * PAGE_SIZE_BYTES;
    stream[secondData + (corruptPage - 8) * PAGE_SIZE_BYTES + 2000]! ^= 0x80;
  }
  return stream;
}

/** A connected pair: the source end with a reader of the target's answers, the target end. */
async function linkToTarget(): Promise<{
  link: net.Socket;
  target: net.Socket;
  reader: ControlReader;
}> {
  const { source: link, target } = await socketPair();
  return { link, target, reader: new ControlReader(link) };
}

/** The error `received` rejects with; `message` fails the test if it resolves instead. */
function failureOf(received: Promise<unknown>, message: string): Promise<unknown> {
  return received.then(
    () => assert.fail(message),
    (error: unknown) => error,
  );
}

/** Sends HEADER and DOMAIN_INFO, as a source does before it waits for the reservation. */
function sendDomainInfo(link: net.Socket): void {
  link.write(concat([encodeHeader(), encodeDomainInfo(domainInfo())]));
}

describe('receiveMigration', () => {
  it('lands every page, activates the domain and answers with the digest of its pages', async () => {
    const source = sourceMemory([3, 11]);
    const { link, target, reader } = await linkToTarget();
    const host = fakeHost();
    const received = receiveMigration(target, new Uint8Array(0), host);
    sendDomainInfo(link);
    const reserved = await reader.next(10_000, 'reserved');
    assert.equal(reserved.type, 'reserved', 'the target reserved memory');
    link.write(body(source));
    const resumed = await reader.next(10_000, 'resumed');
    const result = await received;
    const expectedDigest = digestCrcTable(pageCrcTable(source.bytes));
    assert.equal(resumed.type, 'resumed', 'the target resumed the domain');
    assert.equal(resumed.pageCrcDigest, expectedDigest, 'digest of the source pages');
    assert.equal(host.activated?.digest, expectedDigest, 'the host got the same digest');
    assert.deepEqual([...host.activated!.guestState], [1, 2, 3], 'guest state handed over');
    assert.ok(Buffer.from(host.memory!.bytes).equals(source.bytes), 'target memory = source');
    assert.equal(result.pagesReceived, PAGES, 'pages received');
    assert.equal(host.discarded, 0, 'nothing discarded');
    link.destroy();
  });

  it('lands pages that came in the same chunk as the domain info (leftover)', async () => {
    const source = sourceMemory([]);
    const { link, target, reader } = await linkToTarget();
    const host = fakeHost();
    // The handshake reader may hand over the start of the stream: here all of it.
    const stream = concat([encodeHeader(), encodeDomainInfo(domainInfo()), body(source)]);
    const received = receiveMigration(target, stream, host);
    assert.equal((await reader.next(10_000, 'reserved')).type, 'reserved', 'reserved');
    assert.equal((await reader.next(10_000, 'resumed')).type, 'resumed', 'resumed');
    await received;
    assert.ok(Buffer.from(host.memory!.bytes).equals(source.bytes), 'target memory = source');
    link.destroy();
  });

  it('rejects a corrupted page with STREAM_CHECKSUM, discards the copy and tells the source', async () => {
    const source = sourceMemory([]);
    const { link, target, reader } = await linkToTarget();
    const host = fakeHost();
    const received = receiveMigration(target, new Uint8Array(0), host);
    const outcome = failureOf(received, 'a corrupted stream was accepted');
    sendDomainInfo(link);
    assert.equal((await reader.next(10_000, 'reserved')).type, 'reserved', 'reserved');
    link.write(body(source, 12));
    const failed = await reader.next(10_000, 'failure');
    const error = await outcome;
    assert.ok(error instanceof MigrationError, 'a MigrationError');
    assert.equal(error.code, 'STREAM_CHECKSUM', 'the corrupted page is named a checksum error');
    assert.equal(failed.type, 'failed', 'the source is told');
    assert.equal(failed.code, 'STREAM_CHECKSUM', 'with the code');
    assert.equal(host.discarded, 1, 'the partial copy was discarded');
    assert.equal(host.activated, null, 'the domain was never activated');
    link.destroy();
  });

  it('tells the source when the host refuses the reservation', async () => {
    const { link, target, reader } = await linkToTarget();
    const host = fakeHost({ refuse: true });
    const received = failureOf(
      receiveMigration(target, new Uint8Array(0), host),
      'a refused reservation completed',
    );
    sendDomainInfo(link);
    const refused = await reader.next(10_000, 'refusal');
    assert.equal(refused.type, 'refused', 'the source is told');
    assert.equal(refused.code, 'MIGRATION_REFUSED', 'with the host code');
    const error = await received;
    assert.ok(error instanceof MigrationError && error.code === 'MIGRATION_REFUSED', 'rejects');
    assert.equal(host.discarded, 1, 'the reservation is dropped');
    link.destroy();
  });

  it('does not count a reservation slower than the stall timeout as a stalled source', async () => {
    const source = sourceMemory([]);
    const { link, target, reader } = await linkToTarget();
    // The reservation takes 2.5 times the stall timeout; the source is prompt.
    const host = fakeHost({ reserveDelayMs: 2500 });
    const received = receiveMigration(target, new Uint8Array(0), host, { stallTimeoutMs: 1000 });
    sendDomainInfo(link);
    assert.equal((await reader.next(30_000, 'reserved')).type, 'reserved', 'reserved');
    link.write(body(source));
    assert.equal((await reader.next(30_000, 'resumed')).type, 'resumed', 'resumed');
    await received;
    link.destroy();
  });

  it('still times out a source that stalls after the reservation', async () => {
    const { link, target, reader } = await linkToTarget();
    const host = fakeHost();
    const received = failureOf(
      receiveMigration(target, new Uint8Array(0), host, { stallTimeoutMs: 300 }),
      'a stalled stream completed',
    );
    sendDomainInfo(link);
    assert.equal((await reader.next(10_000, 'reserved')).type, 'reserved', 'reserved');
    const error = await received; // the source sends nothing more
    assert.ok(error instanceof MigrationError, 'a MigrationError');
    assert.equal(error.code, 'MIGRATION_TIMEOUT', 'a stalled source times out');
    assert.equal(host.discarded, 1, 'the partial copy was discarded');
    link.destroy();
  });

  it('rejects a stream cut before END with STREAM_TRUNCATED', async () => {
    const source = sourceMemory([]);
    const { link, target, reader } = await linkToTarget();
    const host = fakeHost();
    const received = failureOf(
      receiveMigration(target, new Uint8Array(0), host),
      'a truncated stream completed',
    );
    sendDomainInfo(link);
    assert.equal((await reader.next(10_000, 'reserved')).type, 'reserved', 'reserved');
    const stream = body(source);
    link.end(stream.subarray(0, stream.length - 4000)); // inside the second batch
    const error = await received;
    assert.ok(error instanceof MigrationError, 'a MigrationError');
    assert.equal(error.code, 'STREAM_TRUNCATED', 'cut inside a record');
    assert.equal(host.discarded, 1, 'the partial copy was discarded');
    link.destroy();
  });
});
