/**
 * Messages between Dom0 (the host's main thread) and a domain's worker thread. Every request
 * carries an id; the worker answers each with a reply of the same id, between two guest
 * events, never in the middle of one.
 */
import type { ProgramSpec } from '../guest/kernel.ts';
import type { SharedGuestMemory } from '../memory/guest-memory.ts';
import type {
  CoResidentsNotice,
  MigrationNotice,
  XenvmcCall,
  XenvmcMessageNotice,
  XenvmcReply,
} from '../xenvmc/protocol.ts';

export interface DomainIdentity {
  domId: number;
  name: string;
  ip: string | null;
  tenant: string;
}

/**
 * `boot`: a new domain runs its programs. `incoming`: the target of a migration starts the
 * thread at reservation time, so that at the end only the GuestState has to be handed over
 * (loading the guest kernel's code would otherwise add about a second to the downtime).
 */
export type DomainStart =
  | { kind: 'boot'; programs: ProgramSpec[]; socketBufferBytes?: number }
  | { kind: 'incoming' };

/** `workerData` of a domain thread. */
export interface DomainThreadData {
  identity: DomainIdentity;
  memory: SharedGuestMemory;
  start: DomainStart;
  /** The netfront event channel's pending bits (see event-channel.ts). */
  eventChannel: SharedArrayBuffer;
  /** The domain's disk: a directory on shared storage, the same from every host; or none. */
  diskDir: string | null;
}

/**
 * Notifications from Dom0 (no reply): frames on the RX ring, a peer that moved, and the
 * XENVMC module's notices and hypercall replies (src/xenvmc/protocol.ts).
 */
export type DomainNotification =
  | { type: 'netRx' }
  | { type: 'peerMoved'; ip: number }
  | CoResidentsNotice
  | XenvmcMessageNotice
  | MigrationNotice
  | XenvmcReply;

export type DomainRequest =
  | { id: number; type: 'pause' }
  | { id: number; type: 'resume' }
  /** Answered between events: every write made before it was marked if log-dirty was on. */
  | { id: number; type: 'sync' }
  | { id: number; type: 'stats' }
  /** The domain is being destroyed: release host resources (its disk's open files). */
  | { id: number; type: 'release' }
  /** Incoming domains only: rebuild from the migrated state and run. */
  | { id: number; type: 'restore'; guestState: Uint8Array }
  /**
   * xenvmc-suspend mode: cancel every shared-memory channel (falling back to netfront) before
   * the final pause, as the released XenVMC and XenLoop code do on "suspend". Answered with
   * `suspendReady` once every channel is torn down (or after a bounded wait).
   */
  | { id: number; type: 'prepareSuspend' };

export type DomainReply =
  | { id: number; type: 'paused'; guestState: Uint8Array; guestStateBytes: number }
  | { id: number; type: 'resumed' }
  | { id: number; type: 'synced' }
  | { id: number; type: 'released' }
  | { id: number; type: 'suspendReady'; channelsCancelled: number }
  | {
      id: number;
      type: 'stats';
      guestTimeMs: number;
      programs: ProgramStatsRow[];
      net: Record<string, number> | null;
      /** The guest page cache's counters (null: the domain has no disk). */
      pageCache: Record<string, number> | null;
      /** The XENVMC module: mode, counters, the CoResidents table, recent events. */
      xenvmc: unknown;
    }
  | { id: number; type: 'failed'; code: string; message: string };

export interface ProgramStatsRow {
  programId: number;
  kind: string;
  stats: Record<string, unknown>;
}

/** Unsolicited messages from the guest. */
export type DomainEvent =
  | { type: 'ready' }
  /** A XENVMC hypercall (grant, map, event channel, message relay); Dom0 answers it. */
  | XenvmcCall
  /** The guest put frames on its TX ring or freed RX slots (the event channel). */
  | { type: 'netTx' }
  | { type: 'log'; message: string }
  | { type: 'crashed'; code: string; message: string };
