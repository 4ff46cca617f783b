/**
 * The source side of a pre-copy migration: log-dirty on, round 1 sends every page, each later
 * round sends the pages dirtied during the previous one, the stop policy decides when to
 * pause, the final dirty pages and the GuestState follow, and the target's resumed notice ends
 * it. A thin driver: the decisions are the policy's (pure), the bytes the codec's (pure).
 *
 * Failure before the resumed notice (target dead, link cut, refused reservation, a stream
 * error reported by the target) leaves the domain running on the source: log-dirty off, the
 * guest resumed if it was paused, the link closed so the target discards its partial copy.
 */

import type { Clock } from '../core/clock.ts';
import { TestbedError } from '../core/errors.ts';
import type { ControlReader } from '../hypervisor/peer-link.ts';
import type { GuestMemory } from '../memory/guest-memory.ts';
import { emptyRegionCounts, type RegionCounts } from '../memory/layout.ts';
import type { ChannelPagesSource } from './channel-pages.ts';
import {
  type DomainInfo,
  encodeChannelPages,
  encodeDomainInfo,
  encodeEnd,
  encodeGuestState,
  encodeHeader,
  encodePageBatch,
  pageBatchBodyBytes,
  recordBytes,
  type StreamTally,
} from './codec.ts';
import { MigrationError } from './errors.ts';
import { MAX_BATCH_PAGES } from './limits.ts';
import { digestCrcTable, pageCrcTable } from './page-digest.ts';
import type { StopPolicy } from './policy.ts';
import type { MigrationProgress, MigrationStats, RoundPhase, RoundStats } from './stats.ts';

/** The target pre-touches the whole memory before it answers: 3.6 s/GiB here, so be generous. */
const RESERVE_TIMEOUT_MS = 120_000;

/**
 * Pages per PAGE_BATCH record the sender builds (the stream allows up to MAX_BATCH_PAGES).
 * Why 256 (1 MiB) and not 1024: a record is written into a buffer, checksummed, then copied by
 * the kernel; at 1 MiB it is still in the core's cache when the kernel copies it, at 4 MiB it
 * went back to memory first. The copies are bounded by memory bandwidth on this shared
 * machine: in paired trials (load 1-7) round 1 reached a median 1.02 of raw TCP with 256
 * against 0.84 with 1024. The per-record work (header, arrays, a write) stays well under 1 %.
 */
const PAGES_PER_RECORD = 256;

/**
 * From END sent to the resumed notice (the target restores the GuestState), at most; the stall
 * timeout shortens it. Past it the source asks the target what became of the domain, so a short
 * wait costs nothing but a question.
 */
const RESUME_TIMEOUT_MS = 30_000;

/** What the sender needs of the domain being migrated. */
export interface MigratingDomain {
  readonly info: DomainInfo;
  readonly memory: GuestMemory;
  pause(): Promise<{ guestState: Uint8Array; guestStateBytes: number }>;
  resume(): Promise<void>;
  sync(): Promise<void>;
}

export interface SenderComponents {
  clock: Clock;
  /**
   * Writes to the link through the host's egress shaper, honouring backpressure: resolves when
   * more may be sent. `onReleased` is called once nothing reads `chunk` any more (its last byte
   * handed to the kernel, or the send failed); only then may the caller write to it again.
   */
  send: (chunk: Uint8Array, onReleased?: () => void) => Promise<void>;
  /** A write that does not complete in this time means the link stalled: abort. */
  stallTimeoutMs: number;
  reader: ControlReader;
  /** Closes the link (on failure, so the target discards its copy). */
  close: () => void;
  /**
   * Asks the target, over a new link, what became of the domain once the GuestState may have
   * reached it: 'resumed' (it runs there: the migration completed, its notice was lost),
   * 'discarded' or 'unknown' (it never will run there), or 'unreachable' (nothing listens at its
   * address: its copy died with its process). Resolves only with an answer that settles where
   * the domain runs, however long that takes; rejects only on an unexpected error.
   */
  askOutcome?: () => Promise<IncomingOutcome>;
}

/** What became of an incoming domain, as the target says or its silence proves (`askOutcome`). */
export type IncomingOutcome =
  | { state: 'resumed'; pageCrcDigest: string }
  | { state: 'discarded' | 'unknown' | 'unreachable' };

export interface SenderInit {
  domain: MigratingDomain;
  policy: StopPolicy;
  /** Reported in the statistics. @default 'off' */
  xenvmcMode?: string;
  sourceHost: string;
  targetHost: string;
  linkBytesPerSec: number | null;
  onProgress?: (progress: MigrationProgress) => void;
  /** Time already spent before the sender ran (connect, authenticate). */
  setupStartedMs: number;
  startedAt: string;
  /** The channel regions to send with the domain (`--migrate-channel-pages`), if any. */
  channelPages?: ChannelPagesSource;
}

interface RoundResult {
  pagesSent: number;
  zeroPages: number;
  bytesOnWire: number;
  sentByRegion: RegionCounts;
  channelPagesSent: number;
}

export async function sendMigration(
  components: SenderComponents,
  init: SenderInit,
): Promise<MigrationStats> {
  const { clock, reader } = components;
  // What END will say was sent before it: every record (one per `send`), and batch pages.
  const tally: StreamTally = { records: 0, pages: 0 };
  const send = (record: Uint8Array, onReleased?: () => void): Promise<void> => {
    tally.records++;
    return withStallTimeout(components.send(record, onReleased), components.stallTimeoutMs);
  };
  const { domain, policy } = init;
  const memory = domain.memory;
  const vmemPages = memory.pageCount;
  let paused = false;
  // Set once the target may run the domain and nobody can say: the source copy must stay paused.
  let inDoubt = false;
  let pagesSentTotal = 0;
  let bytesOnWire = 0;
  const rounds: RoundStats[] = [];
  // Records are built in two buffers used in turn, allocated (and page-faulted) once: a fresh
  // 4 MiB buffer per batch costs as much as checksumming it (first touch is 13.7 us/page
  // here). A buffer is written again only once the transport released the record it held
  // (`onReleased`), not when its send resolved: a small record (a batch of zero pages) can
  // still sit in Node's write queue behind a full socket buffer then. Reusing on resolve
  // corrupted one record in 2,338 migrations of a 20-minute soak (the target refused it).
  const recordBuffers = [0, 1].map(() => ({
    bytes: new Uint8Array(recordBytes(pageBatchBodyBytes(PAGES_PER_RECORD, PAGES_PER_RECORD))),
    released: Promise.resolve(),
  }));
  let nextRecordBuffer = 0;
  const progress = (p: Omit<MigrationProgress, 'elapsedMs' | 'pagesSentTotal' | 'bytesOnWire'>) =>
    init.onProgress?.({
      ...p,
      pagesSentTotal,
      bytesOnWire,
      elapsedMs: clock.nowMs() - init.setupStartedMs,
    });

  const sendRound = async (
    round: number,
    phase: RoundPhase,
    pages: Uint32Array,
    channelPages: Uint8Array[],
  ): Promise<RoundResult> => {
    const result: RoundResult = {
      pagesSent: 0,
      zeroPages: 0,
      bytesOnWire: 0,
      sentByRegion: emptyRegionCounts(),
      channelPagesSent: 0,
    };
    for (let first = 0; first < channelPages.length; first += MAX_BATCH_PAGES) {
      const record = encodeChannelPages(channelPages.slice(first, first + MAX_BATCH_PAGES));
      await send(record);
      const count = Math.min(MAX_BATCH_PAGES, channelPages.length - first);
      result.pagesSent += count;
      result.channelPagesSent += count;
      result.bytesOnWire += record.byteLength;
      pagesSentTotal += count;
      bytesOnWire += record.byteLength;
    }
    // One record in flight while the next is encoded (into the other buffer): checksumming
    // overlaps the kernel's copy. The previous write is awaited before the next is issued, so
    // a buffer is reused only once its record was handed to the kernel.
    let inFlight: Promise<void> | null = null;
    for (let first = 0; first < pages.length; first += PAGES_PER_RECORD) {
      const batch = pages.subarray(first, first + PAGES_PER_RECORD);
      const buffer = recordBuffers[nextRecordBuffer]!;
      nextRecordBuffer = 1 - nextRecordBuffer;
      await withStallTimeout(buffer.released, components.stallTimeoutMs);
      const encoded = encodePageBatch(round, batch, memory.bytes, { into: buffer.bytes });
      if (inFlight) await inFlight;
      let release = () => {};
      buffer.released = new Promise<void>((resolve) => {
        release = resolve;
      });
      inFlight = send(encoded.record, release);
      tally.pages += batch.length;
      result.pagesSent += batch.length;
      result.zeroPages += encoded.zeroPages;
      result.bytesOnWire += encoded.record.byteLength;
      pagesSentTotal += batch.length;
      bytesOnWire += encoded.record.byteLength;
      progress({ phase, round, pagesInRound: pages.length, pagesSentInRound: result.pagesSent });
    }
    if (inFlight) await inFlight;
    const byRegion = memory.countByRegion(pages);
    result.sentByRegion = byRegion;
    return result;
  };

  try {
    // Setup: the target validates the domain info and reserves (and pre-touches) memory.
    await send(encodeHeader());
    await send(encodeDomainInfo(domain.info));
    progress({ phase: 'setup', round: 0, pagesInRound: 0, pagesSentInRound: 0 });
    const reservation = await reader.next(RESERVE_TIMEOUT_MS, 'reservation answer');
    if (reservation.type !== 'reserved') throw fromTargetMessage(reservation, init.targetHost);
    const setupTimeMs = clock.nowMs() - init.setupStartedMs;

    // Log-dirty on, then a round trip with the guest so no write can slip past round 1.
    memory.setLogDirty(true);
    await domain.sync();
    const migrationStartMs = clock.nowMs();

    let round = 1;
    let pages = allPages(vmemPages);
    // Channel pages (only with --migrate-channel-pages): all of them in round 1, then those
    // that changed during a round are dirty pages like any other, sent by the next round.
    let channelPages = init.channelPages?.take(false) ?? [];
    let stopReason = '';
    for (;;) {
      const roundStartMs = clock.nowMs();
      const sent = await sendRound(round, 'precopy', pages, channelPages);
      const dirty = memory.peekAndClean();
      channelPages = init.channelPages?.take(false) ?? [];
      const durationMs = clock.nowMs() - roundStartMs;
      rounds.push(
        roundRow(
          round,
          'precopy',
          sent,
          dirty.length + channelPages.length,
          memory.countByRegion(dirty),
          durationMs,
        ),
      );
      const decision = policy.decide({
        round,
        pagesSentTotal,
        dirtyPageCount: dirty.length + channelPages.length,
        vmemPages,
        lastRoundPagesSent: sent.pagesSent,
        lastRoundDurationMs: durationMs,
      });
      if (decision.kind === 'abort') {
        throw new MigrationError(
          'MIGRATION_ABORTED',
          `policy ${policy.name} aborted the migration: ${decision.reason}`,
        );
      }
      pages = dirty;
      if (decision.kind === 'stopAndCopy') {
        stopReason = decision.reason;
        break;
      }
      round++;
    }

    // Stop-and-copy: pause between two guest events, send what is left and the GuestState.
    const pauseStartMs = clock.nowMs();
    const { guestState, guestStateBytes } = await domain.pause();
    paused = true;
    const finalPages = mergeSorted(pages, memory.peekAndClean());
    const finalStartMs = clock.nowMs();
    // The pause removes the channel mappings, which marks every channel page dirty.
    const sent = await sendRound(
      round + 1,
      'stopCopy',
      finalPages,
      init.channelPages?.take(true) ?? [],
    );
    let resumed: Record<string, unknown>;
    try {
      await send(encodeGuestState(guestState));
      await send(encodeEnd(tally));
      resumed = await reader.next(
        Math.min(RESUME_TIMEOUT_MS, components.stallTimeoutMs),
        'resumed notice',
      );
    } catch (error) {
      // In doubt: the target may have the whole domain and have resumed it, with only its
      // notice lost. Resuming here too would run the domain twice: ask the target first, and
      // keep this copy paused until it answers (through a partition, that is until it heals).
      if (!components.askOutcome) throw error;
      progress({ phase: 'inDoubt', round: round + 1, pagesInRound: 0, pagesSentInRound: 0 });
      inDoubt = true;
      const outcome = await components.askOutcome().catch((askError: unknown) => {
        throw new MigrationError(
          'MIGRATION_IN_DOUBT',
          `${error instanceof Error ? error.message : String(error)}, and asking ${init.targetHost} whether it resumed the domain failed: ${askError instanceof Error ? askError.message : String(askError)}`,
        );
      });
      if (outcome.state !== 'resumed') {
        inDoubt = false;
        throw error;
      }
      resumed = { type: 'resumed', pageCrcDigest: outcome.pageCrcDigest };
    }
    bytesOnWire += guestStateBytes;
    if (resumed.type !== 'resumed') throw fromTargetMessage(resumed, init.targetHost);
    const endMs = clock.nowMs();
    rounds.push(
      roundRow(round + 1, 'stopCopy', sent, 0, emptyRegionCounts(), endMs - finalStartMs),
    );
    memory.setLogDirty(false);

    // The source copy is still paused and unchanged: compare it page by page with the target's.
    progress({ phase: 'verify', round: round + 1, pagesInRound: 0, pagesSentInRound: 0 });
    const memoryVerified = digestCrcTable(pageCrcTable(memory.bytes)) === resumed.pageCrcDigest;

    const sentByRegion = emptyRegionCounts();
    for (const row of rounds) {
      for (const name of Object.keys(sentByRegion) as (keyof RegionCounts)[]) {
        sentByRegion[name] += row.sentByRegion[name];
      }
    }
    return {
      domain: domain.info.name,
      sourceHost: init.sourceHost,
      targetHost: init.targetHost,
      policy: policy.name,
      xenvmcMode: init.xenvmcMode ?? 'off',
      stopReason,
      linkBytesPerSec: init.linkBytesPerSec,
      totalMigrationTimeMs: endMs - migrationStartMs,
      setupTimeMs,
      downtimeMs: endMs - pauseStartMs,
      pagesSent: pagesSentTotal,
      vmemPages,
      overheadRatio: pagesSentTotal / vmemPages,
      zeroPages: rounds.reduce((sum, row) => sum + row.zeroPages, 0),
      bytesOnWire,
      roundCount: rounds.length,
      rounds,
      sentByRegion,
      migrateChannelPages: init.channelPages !== undefined,
      channelPagesSent: rounds.reduce((sum, row) => sum + row.channelPagesSent, 0),
      guestStateBytes,
      memoryVerified,
      startedAt: init.startedAt,
    };
  } catch (error) {
    // Roll back: the domain keeps running on the source, unharmed; unless the target may run
    // it (in doubt): then it stays paused here for the operator, never running twice.
    const reason = await explainFailure(error, reader, init.targetHost);
    components.close();
    memory.setLogDirty(false);
    if (paused && !inDoubt) await domain.resume();
    throw reason;
  }
}

/**
 * A target that rejects the stream says why in a control message, then closes the link; the
 * sender usually notices the closed link first. Prefer the target's reason when it sent one.
 */
async function explainFailure(
  error: unknown,
  reader: ControlReader,
  targetHost: string,
): Promise<Error> {
  const told = await reader.next(100, 'failure reason').catch(() => null);
  if (told && (told.type === 'failed' || told.type === 'refused')) {
    return fromTargetMessage(told, targetHost);
  }
  if (error instanceof TestbedError) return error;
  return new MigrationError(
    'MIGRATION_LINK',
    `migration to ${targetHost} failed: ${(error as Error).message}`,
    {
      cause: error,
    },
  );
}

function withStallTimeout(write: Promise<void>, stallTimeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new MigrationError(
            'MIGRATION_TIMEOUT',
            `the link to the target accepted no data for ${stallTimeoutMs} ms`,
          ),
        ),
      stallTimeoutMs,
    );
  });
  return Promise.race([write, stalled]).finally(() => clearTimeout(timer));
}

function roundRow(
  round: number,
  phase: RoundPhase,
  sent: RoundResult,
  pagesDirtied: number,
  dirtiedByRegion: RegionCounts,
  durationMs: number,
): RoundStats {
  return {
    round,
    phase,
    pagesSent: sent.pagesSent,
    zeroPages: sent.zeroPages,
    bytesOnWire: sent.bytesOnWire,
    pagesDirtied,
    durationMs,
    rateBytesPerSec: durationMs > 0 ? (sent.bytesOnWire * 1000) / durationMs : 0,
    sentByRegion: sent.sentByRegion,
    dirtiedByRegion,
    channelPagesSent: sent.channelPagesSent,
  };
}

function allPages(pageCount: number): Uint32Array {
  const pages = new Uint32Array(pageCount);
  for (let i = 0; i < pageCount; i++) pages[i] = i;
  return pages;
}

/** Union of two ascending page lists, ascending, without duplicates. */
export function mergeSorted(a: Uint32Array, b: Uint32Array): Uint32Array {
  const out = new Uint32Array(a.length + b.length);
  let i = 0;
  let j = 0;
  let n = 0;
  while (i < a.length || j < b.length) {
    const x = i < a.length ? a[i]! : Number.POSITIVE_INFINITY;
    const y = j < b.length ? b[j]! : Number.POSITIVE_INFINITY;
    const next = Math.min(x, y);
    if (x === next) i++;
    if (y === next) j++;
    out[n++] = next;
  }
  return out.subarray(0, n);
}

function fromTargetMessage(message: Record<string, unknown>, targetHost: string): MigrationError {
  const reason = String(message.message ?? JSON.stringify(message));
  const code = message.type === 'refused' ? 'MIGRATION_REFUSED' : 'MIGRATION_ABORTED';
  return new MigrationError(
    code,
    `target host ${targetHost} ${message.type === 'refused' ? 'refused' : 'failed'} the migration: ${reason}`,
  );
}
