/**
 * XENVMC's VM State Publisher (paper §9, "`VMs[]` is updated when a VM is created on the
 * host, or migrates in or out, and the update is sent to every VM on the host").
 *
 * Method: a pure core, `planNotices`, decides who gets what from the host's domains after an
 * event; `StatePublisher` is the thin driver that reads the domains and posts the notices.
 * Every `CoResidentsNotice` carries the whole list of the receiver's co-residents, so a guest
 * can apply notices idempotently and never needs a diff.
 *
 * Who gets what (M the subject, "others" every other domain on the host now):
 *
 * | event            | M                               | others                       |
 * |------------------|---------------------------------|------------------------------|
 * | created          | snapshot                        | created                      |
 * | destroyed        | (gone)                          | destroyed                    |
 * | migrating        | migration started               | migrating (M.migrating true) |
 * | migratedOut      | (gone)                          | migratedOut                  |
 * | migrationAborted | migration aborted               | migrationAborted             |
 * | migratedIn       | snapshot, then migration ended  | migratedIn                   |
 *
 * Domains without an IP cannot be reached by a stream, so they are never listed as peers and
 * an event about one is told only to the domain itself. In mode `off` nothing is published:
 * the guests run netfront only, exactly as before XENVMC existed.
 */
import assert from 'node:assert/strict';
import type {
  CoResidentsNotice,
  MigrationNotice,
  PeerRecord,
  PublisherEventKind,
  XenvmcMode,
} from '../xenvmc/protocol.ts';

/** A domain as the publisher sees it: `ip` as u32 (null: no network, never a peer). */
export interface PublishedDomain {
  domId: number;
  ip: number | null;
  tenant: string;
  migrating: boolean;
}

/** A change of co-residency (a snapshot is never an event: it answers `created`/`migratedIn`). */
export type PublisherEvent = Exclude<PublisherEventKind, 'snapshot'>;

/** One notice for one domain, in the order to post them. */
export interface Delivery {
  domId: number;
  message: CoResidentsNotice | MigrationNotice;
}

/** Whether the subject is still on the host after the event (and so in `residents`). */
const SUBJECT_STAYS: Record<PublisherEvent, boolean> = {
  created: true,
  destroyed: false,
  migrating: true,
  migratedOut: false,
  migrationAborted: true,
  migratedIn: true,
};

/** What a guest should do about its own migration, per event about it. */
const OWN_MIGRATION_PHASE: Partial<Record<PublisherEvent, MigrationNotice['phase']>> = {
  migrating: 'started',
  migrationAborted: 'aborted',
  migratedIn: 'ended',
};

/**
 * Decides the notices for `event` about `subject`, given `residents`, every domain on the
 * host after the event (including the subject unless it was destroyed or migrated out).
 */
export function planNotices(
  mode: XenvmcMode,
  residents: readonly PublishedDomain[],
  change: { event: PublisherEvent; subject: PublishedDomain },
): Delivery[] {
  const { event, subject } = change;
  const subjectListed = residents.some((domain) => domain.domId === subject.domId);
  assert.equal(
    subjectListed,
    SUBJECT_STAYS[event],
    `dom${subject.domId} ${SUBJECT_STAYS[event] ? 'is' : 'is not'} on the host after '${event}'`,
  );
  if (mode === 'off') return [];
  const deliveries: Delivery[] = [];
  const notice = (
    to: PublishedDomain,
    kind: PublisherEventKind,
    about: PeerRecord | null,
  ): Delivery => ({
    domId: to.domId,
    message: { type: 'coResidents', mode, event: kind, subject: about, peers: peersOf(to) },
  });
  const peersOf = (to: PublishedDomain): PeerRecord[] =>
    residents.filter((d) => d.domId !== to.domId && d.ip !== null).map(peerRecord);
  const about = subject.ip === null ? null : peerRecord(subject);
  // The others first: a migrating domain's peers learn it moves before it can act on it.
  if (about !== null) {
    for (const domain of residents) {
      if (domain.domId !== subject.domId) deliveries.push(notice(domain, event, about));
    }
  }
  if (event === 'created' || event === 'migratedIn') {
    deliveries.push(notice(subject, 'snapshot', null));
  }
  const phase = OWN_MIGRATION_PHASE[event];
  if (phase !== undefined) {
    deliveries.push({ domId: subject.domId, message: { type: 'migration', phase } });
  }
  return deliveries;
}

function peerRecord(domain: PublishedDomain): PeerRecord {
  assert.ok(domain.ip !== null, `dom${domain.domId} has an IP to be listed as a peer`);
  return { domId: domain.domId, ip: domain.ip, tenant: domain.tenant, migrating: domain.migrating };
}

export interface StatePublisherComponents {
  /** Every domain on the host now (running, paused or migrating; not incoming ones). */
  residents: () => PublishedDomain[];
  /** Posts one notice to one domain of this host. */
  deliver: (delivery: Delivery) => void;
}

export interface StatePublisherInit {
  mode: XenvmcMode;
}

/** The driver: reads the host's domains, plans, and posts; counts what it posted. */
export class StatePublisher {
  readonly mode: XenvmcMode;
  /** Notices posted so far (coResidents and migration notices). */
  noticesPosted = 0;
  private readonly components: StatePublisherComponents;

  constructor(components: StatePublisherComponents, init: StatePublisherInit) {
    this.components = components;
    this.mode = init.mode;
  }

  /** Publishes `event` about `subject`; call it once the host's domain list shows the event. */
  publish(event: PublisherEvent, subject: PublishedDomain): number {
    const deliveries = planNotices(this.mode, this.components.residents(), { event, subject });
    for (const delivery of deliveries) this.components.deliver(delivery);
    this.noticesPosted += deliveries.length;
    return deliveries.length;
  }
}
