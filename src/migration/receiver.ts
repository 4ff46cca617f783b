/**
 * The target side of a pre-copy migration. It validates every record (the codec), reserves
 * memory when the domain info arrives (the host may refuse), copies pages into the reserved
 * memory, checks each page's CRC-32 against what landed in memory, and on END boots the
 * domain from its GuestState and tells the source, with a digest of the per-page CRC table,
 * that the domain runs here.
 *
 * Any error or a closed link before END discards the partial copy; the source keeps its
 * domain running. The target never resumes a domain from an incomplete or invalid stream.
 */

import type net from 'node:net';
import { crc32 } from 'node:zlib';
import { describeError, isTestbedError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { encodeControlMessage } from '../hypervisor/peer-link.ts';
import type { GuestMemory } from '../memory/guest-memory.ts';
import { type DomainInfo, type MigrationRecord, StreamDecoder, ZERO_PAGE_CRC } from './codec.ts';
import { MigrationError } from './errors.ts';
import { digestCrcTable } from './page-digest.ts';

/** A source that sends nothing for this long is taken for dead and its copy discarded (default). */
export const STALL_TIMEOUT_MS = 30_000;

export interface IncomingMigrationHost {
  /** Reserves (and pre-touches) memory and starts the domain's thread; throws to refuse. */
  reserve(info: DomainInfo): Promise<GuestMemory>;
  /** Runs the reserved domain from its state; throws if it cannot run. */
  /** `pageCrcDigest` digests the pages as received: the host keeps it for `askOutcome`. */
  activate(info: DomainInfo, guestState: Uint8Array, pageCrcDigest: string): Promise<void>;
  /** Drops a partial copy. */
  discard(info: DomainInfo | null): void;
}

export interface ReceiveResult {
  info: DomainInfo;
  pagesReceived: number;
  guestStateBytes: number;
}

export async function receiveMigration(
  socket: net.Socket,
  leftover: Uint8Array,
  host: IncomingMigrationHost,
  options: { stallTimeoutMs?: number } = {},
): Promise<ReceiveResult> {
  const stallTimeoutMs = options.stallTimeoutMs ?? STALL_TIMEOUT_MS;
  // Page checksums are checked once, on the pages as they land in memory (below), not in the
  // decoder too; assembly buffers are reused (fresh multi-MiB buffers cost page faults).
  const decoder = new StreamDecoder({ verifyPageChecksums: false, reuseBuffers: true });
  let info: DomainInfo | null = null;
  let memory: GuestMemory | null = null;
  let crcTable: Uint32Array | null = null;
  let guestState: Uint8Array | null = null;
  let pagesReceived = 0;
  let channelPagesReceived = 0;
  let done = false;
  socket.setTimeout(stallTimeoutMs, () =>
    socket.destroy(
      new MigrationError('MIGRATION_TIMEOUT', `source sent nothing for ${stallTimeoutMs} ms`),
    ),
  );

  const applyBatch = (record: Extract<MigrationRecord, { type: 'pageBatch' }>): void => {
    const target = memory!;
    let dataOffset = 0;
    for (let i = 0; i < record.pageIndices.length; i++) {
      const page = record.pageIndices[i]!;
      if (record.zero[i]) {
        target.zeroPage(page);
        crcTable![page] = ZERO_PAGE_CRC;
        continue;
      }
      target.loadPage(page, record.data.subarray(dataOffset, dataOffset + PAGE_SIZE_BYTES));
      dataOffset += PAGE_SIZE_BYTES;
      // Check the page as it landed in memory: this is both the stream's checksum and the
      // target half of the memory verification.
      const landed = crc32(target.page(page));
      if (landed !== record.pageCrcs[i]) {
        throw new MigrationError(
          'STREAM_CHECKSUM',
          `page ${page} of round ${record.round} failed its CRC-32 check`,
        );
      }
      crcTable![page] = landed;
    }
    pagesReceived += record.pageIndices.length;
  };

  const handle = async (record: MigrationRecord): Promise<void> => {
    switch (record.type) {
      case 'header':
        return;
      case 'domainInfo':
        info = record.info;
        try {
          memory = await host.reserve(info);
        } catch (error) {
          socket.end(
            encodeControlMessage({
              type: 'refused',
              code: codeOf(error),
              message: describeError(error),
            }),
          );
          throw error;
        }
        crcTable = new Uint32Array(info.pageCount);
        socket.write(encodeControlMessage({ type: 'reserved', pageCount: info.pageCount }));
        return;
      case 'pageBatch':
        applyBatch(record);
        return;
      case 'guestState':
        guestState = record.state.slice();
        return;
      case 'channelPages':
        // Validated (CRC) and counted; a channel never survives onto another host.
        channelPagesReceived += record.pageCount;
        return;
      case 'end': {
        const digest = digestCrcTable(crcTable!);
        await host.activate(info!, guestState!, digest);
        done = true;
        // Wait until the notice is handed to the kernel: leaving the read loop destroys the socket.
        await new Promise<void>((resolve) =>
          socket.end(encodeControlMessage({ type: 'resumed', pageCrcDigest: digest }), () =>
            resolve(),
          ),
        );
        return;
      }
    }
  };

  try {
    if (leftover.byteLength > 0) for (const record of decoder.push(leftover)) await handle(record);
    // A manual loop, not for-await: leaving a for-await by a throw destroys the socket before
    // we could tell the source why we reject its stream.
    const chunks = socket[Symbol.asyncIterator]();
    while (!done) {
      const next = await chunks.next();
      if (next.done) break;
      for (const record of decoder.push(next.value as Uint8Array)) await handle(record);
    }
    if (done) socket.destroy();
    if (!done) decoder.finish();
    if (!done)
      throw new MigrationError(
        'STREAM_TRUNCATED',
        'the source closed the link before the end record',
      );
    socket.setTimeout(0);
    return {
      info: info!,
      pagesReceived: pagesReceived + channelPagesReceived,
      guestStateBytes: (guestState as Uint8Array | null)?.byteLength ?? 0,
    };
  } catch (error) {
    host.discard(info);
    if (!socket.destroyed && socket.writable) {
      socket.end(
        encodeControlMessage({
          type: 'failed',
          code: codeOf(error),
          message: describeError(error),
        }),
      );
    }
    setTimeout(() => socket.destroy(), 1000).unref();
    throw error;
  }
}

function codeOf(error: unknown): string {
  return isTestbedError(error) ? error.code : 'MIGRATION_ABORTED';
}
