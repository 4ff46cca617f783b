/**
 * Messages between a guest's XENVMC module and Dom0 (over the domain's worker port), the
 * hypercall-like calls of the paper's modules:
 *
 * - grant table: a domain grants a shared region to one peer domain, which maps it;
 * - event channels: a pair of connected ports (a MessageChannel) for notifications between the
 *   two ends of a channel, bound by both;
 * - message manager: small control messages relayed by Dom0 to a co-resident domain;
 * - VM State Publisher: Dom0 tells every domain of the host who is co-resident with it, on
 *   every change (created, destroyed, migrating, migrated in or out).
 *
 * The shared regions are SharedArrayBuffers that belong to no guest's memory, so they are
 * never sent by a migration (unless the host is told to, see issue 5's option).
 */
import type { MessagePort } from 'node:worker_threads';

/** The four modes, chosen per host and reported in every statistic. */
export const XENVMC_MODES = ['off', 'xenvmc', 'xenvmc-suspend', 'advance'] as const;
export type XenvmcMode = (typeof XENVMC_MODES)[number];

/** A co-resident domain, as the VM State Publisher announces it. */
export interface PeerRecord {
  domId: number;
  /** IPv4 as u32 (see net/frame.ts `ipToU32`). */
  ip: number;
  tenant: string;
  /** True while this peer is being migrated away (announced at the migration's start). */
  migrating: boolean;
}

export type PublisherEventKind =
  | 'snapshot'
  | 'created'
  | 'destroyed'
  | 'migrating'
  | 'migratedIn'
  | 'migratedOut'
  | 'migrationAborted';

/** Dom0 -> guest: the whole co-residency list plus what changed (idempotent to apply). */
export interface CoResidentsNotice {
  type: 'coResidents';
  mode: XenvmcMode;
  event: PublisherEventKind;
  /** The domain the event is about (absent for a snapshot). */
  subject: PeerRecord | null;
  /** Every other domain on this host, now. */
  peers: PeerRecord[];
}

/** Dom0 -> guest: a control message from a co-resident domain (the message manager). */
export interface XenvmcMessageNotice {
  type: 'xenvmcMessage';
  fromDomId: number;
  message: ChannelMessage;
}

/**
 * Dom0 -> the migrating guest: where its own migration is. `started` when pre-copy begins,
 * `ended` on the target once it runs there (the end-of-migration notice of the paper),
 * `aborted` on the source when the migration failed.
 */
export interface MigrationNotice {
  type: 'migration';
  phase: 'started' | 'ended' | 'aborted';
}

/** Guest -> Dom0 hypercalls; each is answered by a `XenvmcReply` with the same id. */
export type XenvmcCall =
  | { type: 'xenvmc'; id: number; op: 'grant'; peerDomId: number; bytes: number }
  | { type: 'xenvmc'; id: number; op: 'map'; granterDomId: number; grantRef: number }
  | { type: 'xenvmc'; id: number; op: 'release'; grantRef: number }
  | { type: 'xenvmc'; id: number; op: 'evtchnAlloc'; peerDomId: number }
  | { type: 'xenvmc'; id: number; op: 'evtchnBind'; peerDomId: number; port: number }
  | { type: 'xenvmc'; id: number; op: 'evtchnClose'; port: number }
  | { type: 'xenvmc'; id: number; op: 'send'; peerDomId: number; message: ChannelMessage };

export type XenvmcReply =
  | {
      type: 'xenvmcReply';
      id: number;
      ok: true;
      /** grant: the new ref; evtchnAlloc: the new port. */
      grantRef?: number;
      port?: number;
      /** grant and map: the shared region. */
      region?: SharedArrayBuffer;
      /** evtchnAlloc and evtchnBind: this end of the channel (transferred). */
      endpoint?: MessagePort;
    }
  | { type: 'xenvmcReply'; id: number; ok: false; code: XenvmcDenial; message: string };

/**
 * XENVMC_DENIED: the tenant policy forbids a channel between these domains;
 * XENVMC_NO_PEER: no such domain on this host; XENVMC_NOT_GRANTED: the ref is not granted to
 * the caller (a domain can only map regions granted to it); XENVMC_LIMIT: too many grants.
 */
export type XenvmcDenial =
  | 'XENVMC_DENIED'
  | 'XENVMC_NO_PEER'
  | 'XENVMC_NOT_GRANTED'
  | 'XENVMC_LIMIT';

/** A stream's identity between two domains: the connector's and the acceptor's ends. */
export interface ChannelKey {
  /** The side that sends `connect` (lower IP first is not needed: the offer says who). */
  offererIp: number;
  offererPort: number;
  accepterIp: number;
  accepterPort: number;
  /** The stream's nonce (frames carry it too), so a channel never attaches to an old stream. */
  nonce: number;
}

/** Control messages between the two ends of a channel, relayed by Dom0 (message manager). */
export type ChannelMessage =
  /** Set-up, step 1: the offerer granted a region and allocated an event channel. */
  | {
      kind: 'offer';
      key: ChannelKey;
      granterDomId: number;
      grantRef: number;
      port: number;
      fifoBytes: number;
    }
  /**
   * Set-up, step 2: the accepter mapped and bound; the channel is ready both ways. `port` is
   * the offer's event channel: it names which offer of the stream is answered (a stream can
   * be offered again after a tear-down, and ports are never reused on a host).
   */
  | { kind: 'ready'; key: ChannelKey; port: number }
  /** Set-up refused (no such stream any more, policy): the offerer releases what it made. */
  | { kind: 'refuse'; key: ChannelKey; port: number; reason: string }
  /** Tear-down: stop using the channel (both sides then drain and fall back to netfront). */
  | { kind: 'cancel'; key: ChannelKey; reason: string };
