/**
 * Goal: the grant table enforces issue 4's isolation (same tenant only, only the grantee maps,
 * bounded sizes and counts) and leaks nothing (counters balance after every tear-down).
 * Method: direct calls on a `GrantTable`; event-channel ports are closed at the end of each
 * test so none keeps the process alive.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { MessagePort } from 'node:worker_threads';
import { isTestbedError } from '../core/errors.ts';
import {
  type DomainRef,
  GRANT_BYTES_MAX,
  GRANT_BYTES_MIN,
  GrantTable,
  type GrantTableCounters,
} from './grant-table.ts';

const alice1: DomainRef = { domId: 1, tenant: 'alice' };
const alice2: DomainRef = { domId: 2, tenant: 'alice' };
const alice3: DomainRef = { domId: 3, tenant: 'alice' };
const bob4: DomainRef = { domId: 4, tenant: 'bob' };

const REGION_BYTES = 64 * 1024;

function refusedWith(code: string): (error: unknown) => boolean {
  return (error) => isTestbedError(error, code);
}

function assertBalanced(counters: GrantTableCounters, label: string): void {
  assert.equal(
    counters.grantsLive,
    counters.grantsCreated - counters.grantsReleased,
    `${label}: live grants equal created minus released`,
  );
  assert.equal(
    counters.evtchnsLive,
    counters.evtchnsCreated - counters.evtchnsReleased,
    `${label}: live event channels equal created minus released`,
  );
}

function closeAll(ports: MessagePort[]): void {
  for (const port of ports) port.close();
}

describe('GrantTable', () => {
  it('lets only the grantee map a region, and gives it the granter’s buffer', () => {
    const table = new GrantTable();
    const { grantRef, region } = table.grant(alice1, alice2, REGION_BYTES);
    assert.equal(region.byteLength, REGION_BYTES, 'the region has the size asked for');
    assert.throws(
      () => table.map(grantRef, alice3),
      refusedWith('XENVMC_NOT_GRANTED'),
      'a third domain of the same tenant cannot map',
    );
    assert.throws(
      () => table.map(grantRef, alice1),
      refusedWith('XENVMC_NOT_GRANTED'),
      'the granter cannot map its own grant as a grantee',
    );
    assert.throws(
      () => table.map(grantRef, alice2, { granterDomId: 3 }),
      refusedWith('XENVMC_NOT_GRANTED'),
      'a map naming the wrong granter is refused',
    );
    assert.throws(
      () => table.map(grantRef + 1000, alice2),
      refusedWith('XENVMC_NOT_GRANTED'),
      'an unknown ref is refused',
    );
    const mapped = table.map(grantRef, alice2, { granterDomId: 1 });
    assert.equal(mapped, region, 'the grantee maps the very buffer the granter holds');
    assert.equal(table.counters.mapsRefused, 4, 'each refused map is counted');
  });

  it('refuses a grant or event channel to another tenant or to the domain itself', () => {
    const table = new GrantTable();
    assert.throws(
      () => table.grant(alice1, bob4, REGION_BYTES),
      refusedWith('XENVMC_DENIED'),
      'alice cannot grant to bob',
    );
    assert.throws(
      () => table.grant(bob4, alice1, REGION_BYTES),
      refusedWith('XENVMC_DENIED'),
      'bob cannot grant to alice',
    );
    assert.throws(
      () => table.grant(alice1, alice1, REGION_BYTES),
      refusedWith('XENVMC_DENIED'),
      'a domain cannot grant to itself',
    );
    assert.throws(
      () => table.evtchnAlloc(alice1, bob4),
      refusedWith('XENVMC_DENIED'),
      'alice cannot open an event channel to bob',
    );
    const counters = table.counters;
    assert.equal(counters.grantsCreated, 0, 'nothing was granted');
    assert.equal(counters.evtchnsCreated, 0, 'no event channel was made');
    assert.equal(counters.grantsRefused, 4, 'every refusal is counted');
  });

  it('applies a custom policy instead of the tenant rule', () => {
    const table = new GrantTable({ policy: () => true });
    const { grantRef } = table.grant(alice1, bob4, REGION_BYTES);
    assert.ok(table.map(grantRef, bob4), 'an allow-all policy lets bob map alice’s grant');
    const strict = new GrantTable({ policy: () => false });
    assert.throws(
      () => strict.grant(alice1, alice2, REGION_BYTES),
      refusedWith('XENVMC_DENIED'),
      'a deny-all policy refuses even the same tenant',
    );
  });

  it('bounds region sizes and grants per domain', () => {
    const table = new GrantTable({ grantsPerDomainMax: 2 });
    assert.throws(
      () => table.grant(alice1, alice2, GRANT_BYTES_MIN - 1),
      refusedWith('XENVMC_LIMIT'),
      'below one page is refused',
    );
    assert.throws(
      () => table.grant(alice1, alice2, GRANT_BYTES_MAX + 1),
      refusedWith('XENVMC_LIMIT'),
      'above 64 MiB is refused',
    );
    assert.throws(
      () => table.grant(alice1, alice2, 4096.5),
      refusedWith('XENVMC_LIMIT'),
      'a fractional size is refused',
    );
    table.grant(alice1, alice2, GRANT_BYTES_MIN);
    table.grant(alice1, alice2, GRANT_BYTES_MIN);
    assert.throws(
      () => table.grant(alice1, alice2, GRANT_BYTES_MIN),
      refusedWith('XENVMC_LIMIT'),
      'a third grant beyond a cap of two is refused',
    );
    assert.ok(table.grant(alice2, alice1, GRANT_BYTES_MIN), 'the cap is per granter');
    const bytesCapped = new GrantTable({ grantBytesPerDomainMax: 3 * GRANT_BYTES_MIN });
    bytesCapped.grant(alice1, alice2, 2 * GRANT_BYTES_MIN);
    assert.throws(
      () => bytesCapped.grant(alice1, alice2, 2 * GRANT_BYTES_MIN),
      refusedWith('XENVMC_LIMIT'),
      'granting past the byte cap is refused',
    );
  });

  it('frees a grant only once both the granter and the mapped grantee released it', () => {
    const table = new GrantTable();
    const { grantRef } = table.grant(alice1, alice2, REGION_BYTES);
    table.map(grantRef, alice2);
    assert.throws(
      () => table.release(grantRef, alice3),
      refusedWith('XENVMC_NOT_GRANTED'),
      'a stranger cannot release the grant',
    );
    assert.equal(table.release(grantRef, alice1), 'pending', 'the grantee still maps it');
    assert.equal(table.release(grantRef, alice1), 'pending', 'releasing twice is harmless');
    assert.equal(table.counters.grantsLive, 1, 'the grant lives while mapped');
    assert.equal(table.release(grantRef, alice2), 'freed', 'the last release frees it');
    assert.equal(table.counters.grantsLive, 0, 'no grant is left');
    assert.equal(table.release(grantRef, alice2), 'unknown', 'a freed ref is unknown');
    assert.throws(
      () => table.map(grantRef, alice2),
      refusedWith('XENVMC_NOT_GRANTED'),
      'a freed ref cannot be mapped again',
    );
  });

  it('frees an unmapped grant when the granter alone releases it', () => {
    const table = new GrantTable();
    const { grantRef } = table.grant(alice1, alice2, REGION_BYTES);
    assert.equal(table.release(grantRef, alice1), 'freed', 'nobody maps it');
    const second = table.grant(alice1, alice2, REGION_BYTES);
    assert.notEqual(second.grantRef, grantRef, 'refs are never reused');
    assert.equal(table.release(second.grantRef, alice2), 'pending', 'the grantee declines');
    assert.throws(
      () => table.map(second.grantRef, alice2),
      refusedWith('XENVMC_NOT_GRANTED'),
      'a declined grant cannot be mapped',
    );
    assert.equal(table.release(second.grantRef, alice1), 'freed', 'then the granter frees it');
    assertBalanced(table.counters, 'after both grants');
    assert.equal(table.counters.grantsLive, 0, 'no grant is left');
  });

  it('hands the peer’s end of an event channel to the named peer only, once', () => {
    const table = new GrantTable();
    const { port, endpoint } = table.evtchnAlloc(alice1, alice2);
    assert.throws(
      () => table.evtchnBind(alice3, 1, port),
      refusedWith('XENVMC_NOT_GRANTED'),
      'a third domain cannot bind',
    );
    assert.throws(
      () => table.evtchnBind(alice2, 3, port),
      refusedWith('XENVMC_NOT_GRANTED'),
      'a bind naming the wrong allocator is refused',
    );
    const peerEnd = table.evtchnBind(alice2, 1, port);
    assert.notEqual(peerEnd, endpoint, 'the peer gets the other end');
    assert.throws(
      () => table.evtchnBind(alice2, 1, port),
      refusedWith('XENVMC_NOT_GRANTED'),
      'an end is bound only once',
    );
    assert.throws(
      () => table.evtchnClose(port, alice3),
      refusedWith('XENVMC_NOT_GRANTED'),
      'a stranger cannot close the channel',
    );
    assert.equal(table.evtchnClose(port, alice1), 'freed', 'one close ends the pair');
    assert.equal(table.evtchnClose(port, alice2), 'unknown', 'the other end’s close is moot');
    assert.equal(table.counters.evtchnsLive, 0, 'no event channel is left');
    closeAll([endpoint, peerEnd]);
  });

  it('refuses a bind once the owner closed the channel (what a late bind must get)', () => {
    // The guest module closes its own end only after this close is answered, so a bind still
    // on its way finds no channel instead of an end whose partner is gone.
    const table = new GrantTable();
    const { port, endpoint } = table.evtchnAlloc(alice1, alice2);
    assert.equal(table.evtchnClose(port, alice1), 'freed', 'the owner closes it');
    assert.throws(
      () => table.evtchnBind(alice2, 1, port),
      refusedWith('XENVMC_NOT_GRANTED'),
      'the late bind is refused with the error the guest handles',
    );
    assert.equal(table.counters.evtchnsLive, 0, 'no event channel is left');
    closeAll([endpoint]);
  });

  it('connects the two ends of an event channel', async () => {
    const table = new GrantTable();
    const { port, endpoint } = table.evtchnAlloc(alice1, alice2);
    const peerEnd = table.evtchnBind(alice2, 1, port);
    const received = new Promise<unknown>((resolve) => peerEnd.once('message', resolve));
    endpoint.postMessage('kick');
    assert.equal(await received, 'kick', 'a notification crosses the channel');
    closeAll([endpoint, peerEnd]);
  });

  it('drops every grant and event channel of a departing domain, and only those', () => {
    const table = new GrantTable();
    const fromOne = table.grant(alice1, alice2, REGION_BYTES);
    table.map(fromOne.grantRef, alice2);
    const toOne = table.grant(alice2, alice1, REGION_BYTES);
    const unrelated = table.grant(alice2, alice3, REGION_BYTES);
    const bound = table.evtchnAlloc(alice1, alice2);
    const peerEnd = table.evtchnBind(alice2, 1, bound.port);
    const unbound = table.evtchnAlloc(alice2, alice1);
    const other = table.evtchnAlloc(alice2, alice3);
    assert.deepEqual(table.releaseAll(1), { grants: 2, evtchns: 2 }, 'dom1 is in 2 + 2');
    assert.deepEqual(table.heldBy(1), { grants: 0, evtchns: 0 }, 'dom1 holds nothing now');
    assert.deepEqual(table.heldBy(2), { grants: 1, evtchns: 1 }, 'dom2 keeps its dom3 share');
    assert.equal(
      new Uint8Array(fromOne.region).length,
      REGION_BYTES,
      'the peer that stays behind keeps its buffer',
    );
    assert.equal(
      table.release(fromOne.grantRef, alice2),
      'unknown',
      'the stayer’s later release finds nothing and is not an error',
    );
    assert.equal(table.evtchnClose(bound.port, alice2), 'unknown', 'same for its port');
    assert.ok(table.map(unrelated.grantRef, alice3), 'an unrelated grant still maps');
    assert.equal(table.release(toOne.grantRef, alice2), 'unknown', 'dom2’s grant to dom1 went');
    assert.equal(table.release(unrelated.grantRef, alice2), 'pending', 'dom3 still maps');
    assert.equal(table.release(unrelated.grantRef, alice3), 'freed', 'both ends released');
    assert.equal(table.evtchnClose(other.port, alice2), 'freed', 'never bound: freed');
    const counters = table.counters;
    assertBalanced(counters, 'after releaseAll');
    assert.equal(counters.grantsLive, 0, 'no grant is left');
    assert.equal(counters.evtchnsLive, 0, 'no event channel is left');
    assert.equal(counters.grantsCreated, 3, 'three grants were made');
    assert.equal(counters.evtchnsCreated, 3, 'three event channels were made');
    closeAll([bound.endpoint, peerEnd, unbound.endpoint, other.endpoint]);
  });

  it('keeps the counters balanced through a random mix of operations', () => {
    // A small deterministic walk (a linear congruential sequence, no Math.random), so a
    // failure replays exactly.
    let state = 12345;
    const next = (n: number): number => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      return state % n;
    };
    const doms: DomainRef[] = [alice1, alice2, alice3, bob4];
    const table = new GrantTable();
    const refs: number[] = [];
    const ports: MessagePort[] = [];
    for (let step = 0; step < 500; step++) {
      const a = doms[next(doms.length)]!;
      const b = doms[next(doms.length)]!;
      const action = next(5);
      try {
        if (action === 0) refs.push(table.grant(a, b, GRANT_BYTES_MIN).grantRef);
        else if (action === 1 && refs.length > 0) table.map(refs[next(refs.length)]!, a);
        else if (action === 2 && refs.length > 0) table.release(refs[next(refs.length)]!, a);
        else if (action === 3) ports.push(table.evtchnAlloc(a, b).endpoint);
        else if (action === 4 && next(10) === 0) table.releaseAll(a.domId);
      } catch (error) {
        assert.ok(isTestbedError(error), `step ${step}: only typed refusals are thrown`);
      }
      assertBalanced(table.counters, `step ${step}`);
    }
    for (const dom of doms) table.releaseAll(dom.domId);
    assert.equal(table.counters.grantsLive, 0, 'no grant survives releaseAll of every domain');
    assert.equal(table.counters.evtchnsLive, 0, 'no event channel survives either');
    closeAll(ports);
  });
});
