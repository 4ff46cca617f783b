/**
 * Dom0's grant table and inter-domain event channels for XENVMC (paper §9: "grants the pages to
 * the receiver, creates an event channel"), one per host.
 *
 * Goal: the isolation the paper relies on and issue 4 asks to test. A region is shared only
 * between two domains of one tenant (the policy is an option), only the domain a region was
 * granted to can map it, every grant and event channel is counted, and every one is released
 * when both ends let go or when a domain leaves the host.
 *
 * Method: a region is a `SharedArrayBuffer` of its own, outside every guest's memory, so a
 * migration never sends it (issue 5). An event channel is a `MessageChannel`: the allocator
 * gets `port1` at once, Dom0 keeps `port2` until the named peer binds it. Table entries are
 * plain records; the table hands out buffers and ports but never touches their contents.
 *
 * Releasing: a grant is freed once its granter released it and its grantee does not hold a
 * mapping (as `gnttab_end_foreign_access` defers the end while the page is mapped); an event
 * channel is freed as soon as either end closes it, because closing one `MessagePort` of a
 * pair closes both (unlike Xen, where the other port stays allocated, unbound). `releaseAll`
 * drops a departing domain's entries at once: only the table entry goes, the other end keeps
 * its `SharedArrayBuffer` and port, which is how the peer that stays behind can still drain a
 * channel of a domain that migrated away (Advance-XENVMC's `finish_mig`).
 *
 * Non-goals: per-page grants and copy grants (one ref covers one whole region), and grant refs
 * that mean anything on another host (refs are per host, like Xen's are per domain).
 */
import assert from 'node:assert/strict';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { TestbedError } from '../core/errors.ts';
import type { XenvmcDenial } from '../xenvmc/protocol.ts';

/** Smallest region: one 4 KiB page, as the smallest thing Xen can grant. */
export const GRANT_BYTES_MIN = 4096;

/**
 * Largest region, 64 MiB: far beyond a FIFO's needs (XenVMC's release uses 512 KiB per
 * direction, ours 256 KiB by default), and small enough that one hypercall cannot make the
 * host allocate an unbounded buffer.
 */
export const GRANT_BYTES_MAX = 64 * 1024 * 1024;

/**
 * Live grants a domain may have made, 256: a channel needs one or two grants, and the paper's
 * workload (a mail server and a few clients) keeps a handful of channels per domain. Xen
 * bounds the same thing with the granter's grant-table frames; a runaway guest hits this long
 * before the host runs out of memory.
 */
export const GRANTS_PER_DOMAIN_MAX = 256;

/**
 * Bytes a domain may have granted and not released, 256 MiB: with `GRANTS_PER_DOMAIN_MAX`
 * alone a domain could pin 16 GiB of shared regions (256 x 64 MiB) in the host process.
 */
export const GRANT_BYTES_PER_DOMAIN_MAX = 256 * 1024 * 1024;

/** Live event channels a domain may have allocated, 256: one per channel, as grants. */
export const EVTCHNS_PER_DOMAIN_MAX = 256;

/** What the table needs to know of a domain: its per-host id and its tenant. */
export interface DomainRef {
  domId: number;
  tenant: string;
}

/**
 * Whether `granter` may share a region (or an event channel) with `grantee`.
 * The default allows domains of the same tenant only.
 */
export type ChannelPolicy = (granter: DomainRef, grantee: DomainRef) => boolean;

/** The default `ChannelPolicy`: same tenant only (issue 4's isolation rule). */
export const sameTenantPolicy: ChannelPolicy = (granter, grantee) =>
  granter.tenant === grantee.tenant;

/** A refused grant-table or event-channel operation; `code` is what the guest is answered. */
export class XenvmcError extends TestbedError<XenvmcDenial> {
  constructor(code: XenvmcDenial, message: string) {
    super(code, message);
    this.name = 'XenvmcError';
  }
}

/** Host statistics; `*Live` always equals `*Created - *Released` (checked by tests). */
export interface GrantTableCounters {
  grantsLive: number;
  grantsCreated: number;
  grantsReleased: number;
  /** Grants and event-channel allocations refused by the policy, size bounds or a cap. */
  grantsRefused: number;
  evtchnsLive: number;
  evtchnsCreated: number;
  evtchnsReleased: number;
  /** Maps (and event-channel binds) refused because the ref was not granted to the caller. */
  mapsRefused: number;
}

/**
 * What a release did: `freed` the entry is gone; `pending` the caller's part is released and
 * the other end still holds it; `unknown` there is no such entry (already dropped by
 * `releaseAll` when the other domain left, or never made), which is not an error because the
 * caller's goal, holding nothing, is reached.
 */
export type ReleaseOutcome = 'freed' | 'pending' | 'unknown';

export interface GrantTableInit {
  /** Who may share with whom. @default sameTenantPolicy */
  policy?: ChannelPolicy;
  /** @default GRANTS_PER_DOMAIN_MAX */
  grantsPerDomainMax?: number;
  /** Bytes. @default GRANT_BYTES_PER_DOMAIN_MAX */
  grantBytesPerDomainMax?: number;
  /** @default EVTCHNS_PER_DOMAIN_MAX */
  evtchnsPerDomainMax?: number;
}

interface GrantEntry {
  granterDomId: number;
  granteeDomId: number;
  region: SharedArrayBuffer;
  granterHolds: boolean;
  granteeState: 'unmapped' | 'mapped' | 'released';
}

interface EvtchnEntry {
  ownerDomId: number;
  peerDomId: number;
  peerState: 'unbound' | 'bound';
  /** Dom0's end until the peer binds it (then it is transferred and this is null). */
  peerEndpoint: MessagePort | null;
}

export class GrantTable {
  private readonly policy: ChannelPolicy;
  private readonly grantsPerDomainMax: number;
  private readonly grantBytesPerDomainMax: number;
  private readonly evtchnsPerDomainMax: number;
  private readonly grants = new Map<number, GrantEntry>();
  private readonly evtchns = new Map<number, EvtchnEntry>();
  /**
   * Refs and ports are never reused on a host, so a stale ref held by a slow guest can never
   * map a region granted later to someone else (the ABA problem of a recycled ref).
   */
  private nextGrantRef = 1;
  private nextPort = 1;
  private readonly count: GrantTableCounters = {
    grantsLive: 0,
    grantsCreated: 0,
    grantsReleased: 0,
    grantsRefused: 0,
    evtchnsLive: 0,
    evtchnsCreated: 0,
    evtchnsReleased: 0,
    mapsRefused: 0,
  };

  constructor(init: GrantTableInit = {}) {
    this.policy = init.policy ?? sameTenantPolicy;
    this.grantsPerDomainMax = init.grantsPerDomainMax ?? GRANTS_PER_DOMAIN_MAX;
    this.grantBytesPerDomainMax = init.grantBytesPerDomainMax ?? GRANT_BYTES_PER_DOMAIN_MAX;
    this.evtchnsPerDomainMax = init.evtchnsPerDomainMax ?? EVTCHNS_PER_DOMAIN_MAX;
  }

  /** A copy of the counters. */
  get counters(): GrantTableCounters {
    return { ...this.count };
  }

  // ---- grants --------------------------------------------------------------------------------

  /**
   * Allocates a region of `bytes` and grants it to `grantee`; the granter can use it at once.
   * @throws XenvmcError XENVMC_DENIED (policy, or a grant to itself), XENVMC_LIMIT (size out of
   * 4 KiB..64 MiB, or the granter's grant or byte cap reached).
   */
  grant(
    granter: DomainRef,
    grantee: DomainRef,
    bytes: number,
  ): { grantRef: number; region: SharedArrayBuffer } {
    this.checkShare(granter, grantee, 'grant a region to');
    if (!Number.isSafeInteger(bytes) || bytes < GRANT_BYTES_MIN || bytes > GRANT_BYTES_MAX) {
      this.count.grantsRefused++;
      throw new XenvmcError(
        'XENVMC_LIMIT',
        `a grant is ${GRANT_BYTES_MIN} B to ${GRANT_BYTES_MAX} B; ` +
          `dom${granter.domId} asked for ${bytes}`,
      );
    }
    let held = 0;
    let heldBytes = 0;
    for (const entry of this.grants.values()) {
      if (entry.granterDomId !== granter.domId) continue;
      held++;
      heldBytes += entry.region.byteLength;
    }
    if (held >= this.grantsPerDomainMax || heldBytes + bytes > this.grantBytesPerDomainMax) {
      this.count.grantsRefused++;
      throw new XenvmcError(
        'XENVMC_LIMIT',
        `dom${granter.domId} holds ${held} grants of ${heldBytes} B ` +
          `(caps ${this.grantsPerDomainMax} grants, ${this.grantBytesPerDomainMax} B); ` +
          `cannot grant ${bytes} B more`,
      );
    }
    const grantRef = this.nextGrantRef++;
    const region = new SharedArrayBuffer(bytes);
    this.grants.set(grantRef, {
      granterDomId: granter.domId,
      granteeDomId: grantee.domId,
      region,
      granterHolds: true,
      granteeState: 'unmapped',
    });
    this.count.grantsCreated++;
    this.count.grantsLive++;
    return { grantRef, region };
  }

  /**
   * Maps a granted region into `mapper`. Only the grantee may (mapping twice returns the same
   * region); `options.granterDomId`, when given, must name the granter.
   * @throws XenvmcError XENVMC_NOT_GRANTED
   */
  map(
    grantRef: number,
    mapper: DomainRef,
    options: { granterDomId?: number } = {},
  ): SharedArrayBuffer {
    const entry = this.grants.get(grantRef);
    const granted =
      entry !== undefined &&
      entry.granteeDomId === mapper.domId &&
      entry.granteeState !== 'released' &&
      (options.granterDomId === undefined || options.granterDomId === entry.granterDomId);
    if (!granted) {
      this.count.mapsRefused++;
      const of = options.granterDomId === undefined ? '' : ` of dom${options.granterDomId}`;
      throw new XenvmcError(
        'XENVMC_NOT_GRANTED',
        `grant ref ${grantRef}${of} is not granted to dom${mapper.domId}`,
      );
    }
    entry.granteeState = 'mapped';
    return entry.region;
  }

  /**
   * Releases `who`'s part of a grant: the granter ends access, the grantee unmaps (or declines
   * a grant it never mapped). Releasing twice is harmless.
   * @throws XenvmcError XENVMC_NOT_GRANTED when `who` is neither end of a live grant.
   */
  release(grantRef: number, who: DomainRef): ReleaseOutcome {
    const entry = this.grants.get(grantRef);
    if (!entry) return 'unknown';
    if (who.domId === entry.granterDomId) entry.granterHolds = false;
    else if (who.domId === entry.granteeDomId) entry.granteeState = 'released';
    else {
      throw new XenvmcError(
        'XENVMC_NOT_GRANTED',
        `dom${who.domId} cannot release grant ref ${grantRef} ` +
          `(dom${entry.granterDomId} to dom${entry.granteeDomId})`,
      );
    }
    if (entry.granterHolds || entry.granteeState === 'mapped') return 'pending';
    this.dropGrant(grantRef);
    return 'freed';
  }

  // ---- event channels ------------------------------------------------------------------------

  /**
   * Allocates an event channel from `owner` to `peer`: the owner's end now, the peer's end
   * kept until the peer binds `port`.
   * @throws XenvmcError XENVMC_DENIED (policy, or a channel to itself), XENVMC_LIMIT
   */
  evtchnAlloc(owner: DomainRef, peer: DomainRef): { port: number; endpoint: MessagePort } {
    this.checkShare(owner, peer, 'open an event channel to');
    let held = 0;
    for (const entry of this.evtchns.values()) if (entry.ownerDomId === owner.domId) held++;
    if (held >= this.evtchnsPerDomainMax) {
      this.count.grantsRefused++;
      throw new XenvmcError(
        'XENVMC_LIMIT',
        `dom${owner.domId} holds ${held} event channels (cap ${this.evtchnsPerDomainMax})`,
      );
    }
    const port = this.nextPort++;
    const channel = new MessageChannel();
    this.evtchns.set(port, {
      ownerDomId: owner.domId,
      peerDomId: peer.domId,
      peerState: 'unbound',
      peerEndpoint: channel.port2,
    });
    this.count.evtchnsCreated++;
    this.count.evtchnsLive++;
    return { port, endpoint: channel.port1 };
  }

  /**
   * Binds `binder` to the channel `port` that `peerDomId` allocated for it; returns the
   * binder's end (the caller transfers it, so it can be bound only once).
   * @throws XenvmcError XENVMC_NOT_GRANTED
   */
  evtchnBind(binder: DomainRef, peerDomId: number, port: number): MessagePort {
    const entry = this.evtchns.get(port);
    if (
      !entry ||
      entry.peerDomId !== binder.domId ||
      entry.ownerDomId !== peerDomId ||
      entry.peerState !== 'unbound' ||
      entry.peerEndpoint === null
    ) {
      this.count.mapsRefused++;
      throw new XenvmcError(
        'XENVMC_NOT_GRANTED',
        `event channel port ${port} of dom${peerDomId} is not open for dom${binder.domId} to bind`,
      );
    }
    const endpoint = entry.peerEndpoint;
    entry.peerEndpoint = null;
    entry.peerState = 'bound';
    return endpoint;
  }

  /**
   * Closes the event channel `port`; either end may (the guest closes its MessagePort
   * itself, which closes the pair). The other end's later close answers `unknown`.
   * @throws XenvmcError XENVMC_NOT_GRANTED when `who` is neither end of a live channel.
   */
  evtchnClose(port: number, who: DomainRef): ReleaseOutcome {
    const entry = this.evtchns.get(port);
    if (!entry) return 'unknown';
    if (who.domId !== entry.ownerDomId && who.domId !== entry.peerDomId) {
      throw new XenvmcError(
        'XENVMC_NOT_GRANTED',
        `dom${who.domId} cannot close event channel port ${port} ` +
          `(dom${entry.ownerDomId} to dom${entry.peerDomId})`,
      );
    }
    this.dropEvtchn(port);
    return 'freed';
  }

  // ---- tear-down -----------------------------------------------------------------------------

  /**
   * Drops every grant and event channel `domId` is an end of (domain destroyed or migrated
   * out). The other ends keep their buffers and ports until they release them; their later
   * releases answer `unknown`.
   */
  releaseAll(domId: number): { grants: number; evtchns: number } {
    let grants = 0;
    let evtchns = 0;
    for (const [grantRef, entry] of this.grants) {
      if (entry.granterDomId !== domId && entry.granteeDomId !== domId) continue;
      this.dropGrant(grantRef);
      grants++;
    }
    for (const [port, entry] of this.evtchns) {
      if (entry.ownerDomId !== domId && entry.peerDomId !== domId) continue;
      this.dropEvtchn(port);
      evtchns++;
    }
    return { grants, evtchns };
  }

  /** Live grants and event channels `domId` is an end of (for statistics and tests). */
  /** The regions `domId` granted: in Xen these are pages of the granter's own memory. */
  regionsGrantedBy(domId: number): SharedArrayBuffer[] {
    const regions: SharedArrayBuffer[] = [];
    for (const entry of this.grants.values())
      if (entry.granterDomId === domId) regions.push(entry.region);
    return regions;
  }

  heldBy(domId: number): { grants: number; evtchns: number } {
    let grants = 0;
    let evtchns = 0;
    for (const entry of this.grants.values())
      if (entry.granterDomId === domId || entry.granteeDomId === domId) grants++;
    for (const entry of this.evtchns.values())
      if (entry.ownerDomId === domId || entry.peerDomId === domId) evtchns++;
    return { grants, evtchns };
  }

  /** Whether `from` may share a region, an event channel or a message with `to`. */
  mayShare(from: DomainRef, to: DomainRef): boolean {
    return from.domId !== to.domId && this.policy(from, to);
  }

  private checkShare(from: DomainRef, to: DomainRef, what: string): void {
    if (this.mayShare(from, to)) return;
    this.count.grantsRefused++;
    throw new XenvmcError(
      'XENVMC_DENIED',
      from.domId === to.domId
        ? `dom${from.domId} cannot ${what} itself`
        : `policy forbids dom${from.domId} (tenant ${from.tenant}) to ${what} ` +
            `dom${to.domId} (tenant ${to.tenant})`,
    );
  }

  private dropGrant(grantRef: number): void {
    assert.ok(this.grants.delete(grantRef), `grant ref ${grantRef} is live before it is dropped`);
    this.count.grantsReleased++;
    this.count.grantsLive--;
    assert.equal(
      this.count.grantsLive,
      this.count.grantsCreated - this.count.grantsReleased,
      'live grants balance created minus released',
    );
  }

  private dropEvtchn(port: number): void {
    const entry = this.evtchns.get(port);
    assert.ok(entry, `event channel port ${port} is live before it is dropped`);
    // Dom0 still holds the peer's end only if it was never bound: closing it tells the owner's
    // end (a 'close' event there) that nobody will ever listen.
    entry.peerEndpoint?.close();
    this.evtchns.delete(port);
    this.count.evtchnsReleased++;
    this.count.evtchnsLive--;
    assert.equal(
      this.count.evtchnsLive,
      this.count.evtchnsCreated - this.count.evtchnsReleased,
      'live event channels balance created minus released',
    );
  }
}
