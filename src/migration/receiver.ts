/**
 * The target side of a pre-copy migration. It validates every record (the codec), reserves
 * memory when the domain info arrives (the host may refuse), lands pages straight from the
 * socket's chunks in the reserved memory, checks each page's CRC-32C on its bytes there, and on
 * END boots the domain from its GuestState and tells the source, with a digest of the per-page
 * CRC table, that the domain runs here.
 *
 * Any error or a closed link before END discards the partial copy; the source keeps its
 * domain running. The target never resumes a domain from an incomplete or invalid stream.
 *
 * Method and why:
 * - Chunks are decoded in the socket's 'data' handler, synchronously: the async iterator cost
 *   two promises and a queue per 64 KiB chunk, which showed up at 1.4 GB/s.
 * - The two asynchronous steps (reserving memory, activating the domain) pause the socket, so
 *   nothing is read (or buffered) while they run and the kernel's window pushes back on the
 *   source; records of the same chunk after the step are applied when it is done.
 * - The stall timeout counts only time spent waiting for the source: it is suspended while the
 *   target itself works. Reserving pre-touches memory and boots the domain's thread, which on a
 *   loaded machine took seconds and used to close the link mid-reserve.
 */

import type net from 'node:net';
import { crc32c } from '../core/checksum.ts';
import { describeError, isTestbedError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { encodeControlMessage } from '../hypervisor/peer-link.ts';
import type { GuestMemory } from '../memory/guest-memory.ts';
import { readInto } from '../net/read-into.ts';
import { type DomainInfo, type MigrationRecord, StreamDecoder, ZERO_PAGE_CRC } from './codec.ts';
import { MigrationError } from './errors.ts';
import { digestCrcTable } from './page-digest.ts';

/** A source that sends nothing for this long is taken for dead and its copy discarded (default). */
export const STALL_TIMEOUT_MS = 30_000;

/** What one read of the link may bring: a quarter of a 1 MiB record, and it stays in cache. */
const READ_BUFFER_BYTES = 256 * 1024;

export interface IncomingMigrationHost {
  /** Reserves (and pre-touches) memory and starts the domain's thread; throws to refuse. */
  reserve(info: DomainInfo): Promise<GuestMemory>;
  /**
   * Runs the reserved domain from its state; throws if it cannot run. `pageCrcDigest` digests
   * the pages as received: the host keeps it for a source that asks what became of the domain.
   */
  activate(info: DomainInfo, guestState: Uint8Array, pageCrcDigest: string): Promise<void>;
  /** Drops a partial copy. */
  discard(info: DomainInfo | null): void;
}

export interface ReceiveResult {
  info: DomainInfo;
  pagesReceived: number;
  guestStateBytes: number;
}

export function receiveMigration(
  socket: net.Socket,
  leftover: Uint8Array,
  host: IncomingMigrationHost,
  options: { stallTimeoutMs?: number } = {},
): Promise<ReceiveResult> {
  const stallTimeoutMs = options.stallTimeoutMs ?? STALL_TIMEOUT_MS;
  // Assembly buffers (guest state, channel pages) are reused: fresh multi-MiB buffers cost
  // page faults. Page batches are not assembled at all once memory is reserved. Page CRCs are
  // checked once, where the pages land (`landAssembled` for a batch assembled before that).
  const decoder = new StreamDecoder({ reuseBuffers: true, verifyPageChecksums: false });
  let info: DomainInfo | null = null;
  let memory: GuestMemory | null = null;
  let crcTable: Uint32Array | null = null;
  let guestState: Uint8Array | null = null;
  let pagesReceived = 0;
  let channelPagesReceived = 0;

  return new Promise<ReceiveResult>((resolve, reject) => {
    /** An asynchronous step is running: chunks wait in `waiting`, the socket is paused. */
    let stepping = false;
    const waiting: Uint8Array[] = [];
    /** The link ended (or failed) while a step ran: dealt with once it is done. */
    let endedWhileStepping = false;
    let errorWhileStepping: unknown = null;
    let settled = false;

    const cleanUp = (): void => {
      settled = true;
      socket.setTimeout(0);
      socket.off('timeout', onTimeout);
      // Reads that still come (readInto's listener stays) find `settled` and are dropped.
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.off('close', onClose);
    };

    const fail = (error: unknown): void => {
      if (settled) return;
      if (stepping) {
        // Let the step finish first (a reservation half done cannot be discarded cleanly).
        errorWhileStepping ??= error;
        return;
      }
      cleanUp();
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
      reject(error);
    };

    /** Applies one record; returns a promise for the records that need an asynchronous step. */
    const apply = (record: MigrationRecord): Promise<void> | undefined => {
      switch (record.type) {
        case 'header':
          return undefined;
        case 'domainInfo':
          info = record.info;
          return reserve(record.info);
        case 'pagesLanded': {
          // Each crc was checked against the page's bytes as they landed in memory: this table
          // is the target half of the memory verification.
          const { pageIndices, pageCrcs } = record;
          for (let i = 0; i < pageIndices.length; i++) crcTable![pageIndices[i]!] = pageCrcs[i]!;
          pagesReceived += pageIndices.length;
          return undefined;
        }
        case 'pageBatch':
          // Decoded before there was memory to land it in (it came in the chunk that brought
          // the domain info): copy it from the decoder's buffer instead.
          landAssembled(record);
          return undefined;
        case 'guestState':
          guestState = record.state.slice();
          return undefined;
        case 'channelPages':
          // Validated (CRC) and counted; a channel never survives onto another host.
          channelPagesReceived += record.pageCount;
          return undefined;
        case 'end':
          return activate();
      }
    };

    const landAssembled = (record: Extract<MigrationRecord, { type: 'pageBatch' }>): void => {
      let dataOffset = 0;
      for (let i = 0; i < record.pageIndices.length; i++) {
        const page = record.pageIndices[i]!;
        if (record.zero[i]) {
          memory!.zeroPage(page);
          crcTable![page] = ZERO_PAGE_CRC;
          continue;
        }
        memory!.loadPage(page, record.data.subarray(dataOffset, dataOffset + PAGE_SIZE_BYTES));
        dataOffset += PAGE_SIZE_BYTES;
        const landed = crc32c(memory!.page(page));
        if (landed !== record.pageCrcs[i]) {
          throw new MigrationError(
            'STREAM_CHECKSUM',
            `page ${page} of round ${record.round} failed its CRC-32C check`,
          );
        }
        crcTable![page] = landed;
      }
      pagesReceived += record.pageIndices.length;
    };

    const reserve = async (domainInfo: DomainInfo): Promise<void> => {
      try {
        memory = await host.reserve(domainInfo);
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
      crcTable = new Uint32Array(domainInfo.pageCount);
      decoder.landPagesIn(memory!.bytes);
      socket.write(encodeControlMessage({ type: 'reserved', pageCount: domainInfo.pageCount }));
    };

    const activate = async (): Promise<void> => {
      const digest = digestCrcTable(crcTable!);
      await host.activate(info!, guestState!, digest);
      cleanUp();
      // Wait until the notice is handed to the kernel before closing the link.
      await new Promise<void>((done) =>
        socket.end(encodeControlMessage({ type: 'resumed', pageCrcDigest: digest }), () => done()),
      );
      socket.destroy();
      resolve({
        info: info!,
        pagesReceived: pagesReceived + channelPagesReceived,
        guestStateBytes: (guestState as Uint8Array | null)?.byteLength ?? 0,
      });
    };

    /** Applies `records[from..]`; stops at a step and carries on from its end. */
    const applyFrom = (records: MigrationRecord[], from: number): void => {
      for (let i = from; i < records.length; i++) {
        const step = apply(records[i]!);
        if (step === undefined) continue;
        stepping = true;
        socket.pause();
        socket.setTimeout(0); // the target's own work is not the source stalling
        step.then(
          () => {
            stepping = false;
            if (settled) return;
            if (errorWhileStepping !== null) return fail(errorWhileStepping);
            socket.setTimeout(stallTimeoutMs);
            try {
              applyFrom(records, i + 1);
              while (!stepping && !settled && waiting.length > 0) consume(waiting.shift()!);
            } catch (error) {
              return fail(error);
            }
            if (stepping || settled) return;
            if (endedWhileStepping) return onEnd();
            socket.resume();
          },
          (error: unknown) => {
            stepping = false;
            fail(error);
          },
        );
        return;
      }
    };

    /** Decodes a chunk and applies its records; throws what the decoder or a record throws. */
    const consume = (chunk: Uint8Array): void => {
      if (stepping) {
        // Read before the pause took effect; a copy, as the read buffer is reused.
        waiting.push(new Uint8Array(chunk));
        return;
      }
      applyFrom(decoder.push(chunk), 0);
    };

    function onData(chunk: Uint8Array): void {
      if (settled) return;
      try {
        consume(chunk);
      } catch (error) {
        fail(error);
      }
    }

    function onEnd(): void {
      if (settled) return;
      if (stepping) {
        endedWhileStepping = true;
        return;
      }
      try {
        decoder.finish(); // throws STREAM_TRUNCATED when it stopped inside a record
        fail(
          new MigrationError(
            'STREAM_TRUNCATED',
            'the source closed the link before the end record',
          ),
        );
      } catch (error) {
        fail(error);
      }
    }

    function onError(error: Error): void {
      fail(error);
    }

    function onClose(): void {
      fail(new MigrationError('STREAM_TRUNCATED', 'the link closed before the end record'));
    }

    function onTimeout(): void {
      socket.destroy(
        new MigrationError('MIGRATION_TIMEOUT', `source sent nothing for ${stallTimeoutMs} ms`),
      );
    }

    socket.on('timeout', onTimeout);
    socket.setTimeout(stallTimeoutMs);
    socket.on('end', onEnd);
    socket.on('error', onError);
    socket.on('close', onClose);
    try {
      if (leftover.byteLength > 0) consume(leftover);
    } catch (error) {
      fail(error);
    }
    // One reused read buffer, not a fresh 64 KiB Buffer per read (`net/read-into.ts`: that
    // allocation and its garbage collection were the receiver's largest cost).
    readInto(socket, new Uint8Array(READ_BUFFER_BYTES), (bytes) => {
      onData(bytes);
      return true;
    });
    // The peer link's reader handed the socket over paused.
    if (!stepping && !settled) socket.resume();
  });
}

function codeOf(error: unknown): string {
  return isTestbedError(error) ? error.code : 'MIGRATION_ABORTED';
}
