/**
 * Goal: the VM State Publisher tells every domain of the host the right thing on every
 * co-residency change (issue 4: "co-residency tables correct after create, destroy and
 * migrations in and out"). Method: `planNotices` on hand-made host states, and a
 * `StatePublisher` whose guests apply the notices to their own tables.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CoResidentsNotice, PeerRecord } from '../xenvmc/protocol.ts';
import { type Delivery, type PublishedDomain, planNotices, StatePublisher } from './publisher.ts';

const a: PublishedDomain = { domId: 1, ip: 0x0a000001, tenant: 't', migrating: false };
const b: PublishedDomain = { domId: 2, ip: 0x0a000002, tenant: 't', migrating: false };
const c: PublishedDomain = { domId: 3, ip: 0x0a000003, tenant: 'u', migrating: false };
const noIp: PublishedDomain = { domId: 4, ip: null, tenant: 't', migrating: false };

function summary(deliveries: Delivery[]): string[] {
  return deliveries.map(({ domId, message }) =>
    message.type === 'migration'
      ? `dom${domId} migration ${message.phase}`
      : `dom${domId} ${message.event} ${message.subject?.domId ?? '-'} ` +
        `[${message.peers.map((p) => p.domId).join(',')}]`,
  );
}

describe('planNotices', () => {
  it('gives a new domain a snapshot and tells the others it was created', () => {
    const plan = planNotices('xenvmc', [a, b, c], { event: 'created', subject: c });
    assert.deepEqual(
      summary(plan),
      ['dom1 created 3 [2,3]', 'dom2 created 3 [1,3]', 'dom3 snapshot - [1,2]'],
      'others hear created, the new one gets the list of the others',
    );
    const snapshot = plan[2]!.message as CoResidentsNotice;
    assert.equal(snapshot.mode, 'xenvmc', 'every notice names the host mode');
    assert.equal(snapshot.subject, null, 'a snapshot has no subject');
    assert.deepEqual(
      snapshot.peers[0],
      { domId: 1, ip: 0x0a000001, tenant: 't', migrating: false },
      'a peer record carries ip as u32, tenant and the migrating flag',
    );
  });

  it('tells the remaining domains that one was destroyed', () => {
    const plan = planNotices('advance', [a, b], { event: 'destroyed', subject: c });
    assert.deepEqual(
      summary(plan),
      ['dom1 destroyed 3 [2]', 'dom2 destroyed 3 [1]'],
      'the destroyed domain is the subject and in no list',
    );
  });

  it('marks a migrating domain in everyone’s list and tells it its migration started', () => {
    const moving = { ...b, migrating: true };
    const plan = planNotices('advance', [a, moving, c], { event: 'migrating', subject: moving });
    assert.deepEqual(
      summary(plan),
      ['dom1 migrating 2 [2,3]', 'dom3 migrating 2 [1,2]', 'dom2 migration started'],
      'others first, then the migrating domain itself',
    );
    const toA = plan[0]!.message as CoResidentsNotice;
    assert.equal(toA.subject?.migrating, true, 'the subject is flagged as migrating');
    const listed = toA.peers.find((p: PeerRecord) => p.domId === 2);
    assert.equal(listed?.migrating, true, 'and so is its entry in the list');
  });

  it('tells the remaining domains of a migration that completed on the source', () => {
    const gone = { ...b, migrating: true };
    const plan = planNotices('xenvmc', [a, c], { event: 'migratedOut', subject: gone });
    assert.deepEqual(
      summary(plan),
      ['dom1 migratedOut 2 [3]', 'dom3 migratedOut 2 [1]'],
      'the departed domain is in no list',
    );
  });

  it('tells everyone of an aborted migration, and the domain itself it was aborted', () => {
    const plan = planNotices('xenvmc-suspend', [a, b], { event: 'migrationAborted', subject: b });
    assert.deepEqual(
      summary(plan),
      ['dom1 migrationAborted 2 [2]', 'dom2 migration aborted'],
      'the peers see it back, not migrating',
    );
    const toA = plan[0]!.message as CoResidentsNotice;
    assert.equal(toA.peers[0]?.migrating, false, 'the aborted domain is not migrating any more');
  });

  it('gives an arriving domain a snapshot, then the end-of-migration notice', () => {
    const plan = planNotices('advance', [a, b], { event: 'migratedIn', subject: b });
    assert.deepEqual(
      summary(plan),
      ['dom1 migratedIn 2 [2]', 'dom2 snapshot - [1]', 'dom2 migration ended'],
      'the snapshot comes before the end notice, so finish_mig sees the new table',
    );
  });

  it('never lists a domain without IP, and tells only it about itself', () => {
    const plan = planNotices('xenvmc', [a, noIp], { event: 'created', subject: noIp });
    assert.deepEqual(summary(plan), ['dom4 snapshot - [1]'], 'the others hear nothing');
    const toA = planNotices('xenvmc', [a, b, noIp], { event: 'created', subject: b });
    assert.deepEqual(
      summary(toA),
      ['dom1 created 2 [2]', 'dom4 created 2 [1,2]', 'dom2 snapshot - [1]'],
      'a domain without IP still hears of others but is never a peer',
    );
  });

  it('publishes nothing in mode off', () => {
    const plan = planNotices('off', [a, b], { event: 'created', subject: b });
    assert.deepEqual(plan, [], 'netfront-only hosts run no publisher');
  });

  it('rejects a host state that contradicts the event (a caller bug)', () => {
    assert.throws(
      () => planNotices('xenvmc', [a, b], { event: 'destroyed', subject: b }),
      assert.AssertionError,
      'a destroyed domain must already be gone',
    );
    assert.throws(
      () => planNotices('xenvmc', [a], { event: 'created', subject: b }),
      assert.AssertionError,
      'a created domain must be on the host',
    );
  });
});

describe('StatePublisher', () => {
  it('keeps every guest’s co-resident table equal to the host’s other domains', () => {
    const residents = new Map<number, PublishedDomain>();
    const tables = new Map<number, number[]>();
    const publisher = new StatePublisher(
      {
        residents: () => [...residents.values()],
        deliver: ({ domId, message }) => {
          if (message.type === 'coResidents')
            tables.set(
              domId,
              message.peers.map((p) => p.domId).sort((x, y) => x - y),
            );
        },
      },
      { mode: 'advance' },
    );
    const expectTables = (label: string): void => {
      for (const domId of residents.keys()) {
        const others = [...residents.keys()].filter((id) => id !== domId).sort((x, y) => x - y);
        assert.deepEqual(tables.get(domId), others, `${label}: dom${domId}'s table`);
      }
    };
    for (const domain of [a, b, c]) {
      residents.set(domain.domId, domain);
      publisher.publish('created', domain);
    }
    expectTables('after three creations');
    residents.set(2, { ...b, migrating: true });
    publisher.publish('migrating', residents.get(2)!);
    residents.delete(2);
    publisher.publish('migratedOut', { ...b, migrating: true });
    expectTables('after dom2 migrated out');
    residents.set(5, { ...b, domId: 5 });
    publisher.publish('migratedIn', residents.get(5)!);
    expectTables('after dom5 migrated in');
    residents.delete(1);
    publisher.publish('destroyed', a);
    expectTables('after dom1 was destroyed');
    assert.ok(publisher.noticesPosted > 0, 'notices are counted');
  });
});
