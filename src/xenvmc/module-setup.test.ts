/**
 * Goal: the XENVMC module's set-up and tear-down against Dom0's real grant table and
 * hypercalls when answers and notices arrive late and in any order, as they do between worker
 * threads: every grant and event channel is released exactly once (the host's live counters
 * return to 0), Dom0 is never asked to hand out an event-channel end whose owner already
 * closed its own (in a host that is a DataCloneError), a domain that just arrived by a
 * migration offers nothing before the end-of-migration notice, a set-up that keeps failing is
 * retried with a growing wait, and a domain keeps at most CHANNELS_PER_DOMAIN_MAX channels.
 * Method: two modules in one thread; each guest's hypercalls wait in an outbox and Dom0's
 * answers and relayed messages in an inbox until the test (or fast-check, fixed seed) serves
 * them; streams are plain records (no network stack: the channels carry no bytes here).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { MessagePort } from 'node:worker_threads';
import fc from 'fast-check';
import type { CarriedStream } from '../guest/carrier.ts';
import type { StreamConnection } from '../guest/stream.ts';
import { GrantTable, type GrantTableInit } from '../hypervisor/grant-table.ts';
import { answerHypercall } from '../hypervisor/hypercalls.ts';
import { ipToU32 } from '../net/frame.ts';
import { CHANNELS_PER_DOMAIN_MAX, XenvmcModule } from './module.ts';
import type { CoResidentsNotice, PeerRecord, XenvmcCall } from './protocol.ts';

const SERVER_PORT = 25;

interface Guest {
  name: string;
  domId: number;
  ip: number;
  module: XenvmcModule;
  /** Hypercalls on their way to Dom0. */
  outbox: XenvmcCall[];
  /** Dom0's answers and relayed messages on their way to the guest (one queue, as one port). */
  inbox: (() => void)[];
  streams: CarriedStream[];
  /** Gone from this host (migrated away): Dom0 and the peer no longer hear from it. */
  gone: boolean;
}

/** A stream as the carrier hook sees it: the fields the module reads, nothing carried. */
function stream(
  socket: number,
  role: 'connector' | 'acceptor',
  local: [number, number],
  remote: [number, number],
): CarriedStream {
  const state = {
    role,
    phase: 'established',
    localIp: local[0],
    localPort: local[1],
    remoteIp: remote[0],
    remotePort: remote[1],
    nonce: 7,
    sendWritten: 0,
    sendFinOffset: null,
    receiveNext: 0,
  };
  const connection = { state, sendQuiescent: true, receiveQuiescent: true };
  return { socket, stream: connection as unknown as StreamConnection };
}

class Host {
  readonly grants: GrantTable;
  readonly guests: Guest[] = [];
  nowMs = 0;
  /** Binds Dom0 answered with an end whose owner had closed its own: a host would throw. */
  deadEndsHandedOut = 0;
  /** Calls of each op posted (to see retries). */
  readonly posted = new Map<string, number>();
  private readonly ownerEnds = new Map<number, MessagePort>();
  private readonly closedEnds = new WeakSet<MessagePort>();
  /** Grant releases per domain and ref: each must come once. */
  readonly releases = new Map<string, number>();

  constructor(init: GrantTableInit = {}) {
    this.grants = new GrantTable(init);
  }

  add(name: string, domId: number, ip: string): Guest {
    const guest: Guest = {
      name,
      domId,
      ip: ipToU32(ip),
      module: null as unknown as XenvmcModule,
      outbox: [],
      inbox: [],
      streams: [],
      gone: false,
    };
    guest.module = new XenvmcModule({
      identity: { domId, ip: guest.ip, tenant: 't' },
      post: (call) => {
        this.posted.set(call.op, (this.posted.get(call.op) ?? 0) + 1);
        guest.outbox.push(call);
      },
      kick: () => {},
      wallNowMs: () => this.nowMs,
      log: () => {},
    });
    this.guests.push(guest);
    return guest;
  }

  /** The VM State Publisher's notice to `guest` (queued in its inbox like any notice). */
  publish(guest: Guest, event: CoResidentsNotice['event'], subject: Guest | null): void {
    const peers: PeerRecord[] = this.guests
      .filter((g) => g !== guest && !g.gone)
      .map((g) => ({ domId: g.domId, ip: g.ip, tenant: 't', migrating: false }));
    const record = subject && {
      domId: subject.domId,
      ip: subject.ip,
      tenant: 't',
      migrating: false,
    };
    const notice: CoResidentsNotice = {
      type: 'coResidents',
      mode: 'advance',
      event,
      subject: record,
      peers,
    };
    guest.inbox.push(() => guest.module.onNotice(notice));
  }

  /** Dom0 serves `guest`'s oldest hypercall; false if there is none. */
  serve(guest: Guest): boolean {
    const call = guest.outbox.shift();
    if (!call || guest.gone) return false;
    const components = {
      grants: this.grants,
      findPeer: (domId: number) => {
        const peer = this.guests.find((g) => g.domId === domId && !g.gone);
        if (!peer) return null;
        return {
          identity: { domId: peer.domId, tenant: 't' },
          post: (notice: Parameters<XenvmcModule['onNotice']>[0]) =>
            peer.inbox.push(() => peer.module.onNotice(notice)),
        };
      },
    };
    const { reply } = answerHypercall(components, { domId: guest.domId, tenant: 't' }, call);
    if (reply.ok && call.op === 'evtchnAlloc' && reply.endpoint && reply.port !== undefined) {
      const end = reply.endpoint;
      this.ownerEnds.set(reply.port, end);
      const close = end.close.bind(end);
      end.close = () => {
        this.closedEnds.add(end);
        close();
      };
    }
    if (reply.ok && call.op === 'evtchnBind') {
      const ownerEnd = this.ownerEnds.get(call.port);
      if (ownerEnd && this.closedEnds.has(ownerEnd)) this.deadEndsHandedOut++;
    }
    if (call.op === 'release') {
      const key = `dom${guest.domId} ref ${call.grantRef}`;
      this.releases.set(key, (this.releases.get(key) ?? 0) + 1);
    }
    guest.inbox.push(() => {
      guest.module.onNotice(reply);
      // The module listens on its ends; unreferenced, they do not keep the test running.
      if (reply.ok) reply.endpoint?.unref();
    });
    return true;
  }

  /** The guest takes its oldest notice; false if there is none. */
  deliver(guest: Guest): boolean {
    const next = guest.inbox.shift();
    if (!next || guest.gone) return false;
    next();
    return true;
  }

  poll(guest: Guest): void {
    this.nowMs += 1;
    if (!guest.gone) guest.module.poll(guest.streams, this.nowMs);
  }

  /** Serves, delivers and polls until nothing is left to do. */
  settle(): void {
    for (let round = 0; round < 10_000; round++) {
      let moved = false;
      for (const guest of this.guests) {
        while (this.serve(guest)) moved = true;
        while (this.deliver(guest)) moved = true;
        this.poll(guest);
      }
      if (
        !moved &&
        this.guests.every((g) => g.gone || (g.outbox.length === 0 && g.inbox.length === 0))
      )
        return;
    }
    assert.fail('the modules and Dom0 never settled');
  }

  /** Both ends' streams end; afterwards nothing may be held. */
  endAndCheck(label: string): void {
    for (const guest of this.guests) guest.streams = [];
    this.settle();
    const counters = this.grants.counters;
    assert.equal(
      counters.grantsLive,
      0,
      `${label}: every grant released (${JSON.stringify(counters)})`,
    );
    assert.equal(
      counters.evtchnsLive,
      0,
      `${label}: every event channel closed (${JSON.stringify(counters)})`,
    );
    assert.equal(
      this.deadEndsHandedOut,
      0,
      `${label}: no bind was handed an end whose owner closed its own`,
    );
    for (const [key, count] of this.releases)
      assert.equal(count, 1, `${label}: ${key} released ${count} times`);
  }
}

/** A client `c` with `count` streams to a server `s` on one host. */
function pair(host: Host, count = 1): { s: Guest; c: Guest } {
  const s = host.add('s', 1, '10.78.0.1');
  const c = host.add('c', 2, '10.78.0.2');
  for (let i = 0; i < count; i++) {
    c.streams.push(stream(i + 1, 'connector', [c.ip, 40000 + i], [s.ip, SERVER_PORT]));
    s.streams.push(stream(i + 1, 'acceptor', [s.ip, SERVER_PORT], [c.ip, 40000 + i]));
  }
  return { s, c };
}

function setUp(count = 1, init: GrantTableInit = {}): { host: Host; s: Guest; c: Guest } {
  const host = new Host(init);
  const { s, c } = pair(host, count);
  host.publish(s, 'snapshot', null);
  host.publish(c, 'snapshot', null);
  return { host, s, c };
}

describe('XENVMC module set-up against Dom0, answers late and out of order', () => {
  it('sets up a channel and releases everything when the streams end', () => {
    const { host, c, s } = setUp();
    host.settle();
    assert.equal(c.module.state.counters.channelsSetUp, 1, 'the offerer has its channel');
    assert.equal(s.module.state.counters.channelsSetUp, 1, 'the accepter has its channel');
    host.endAndCheck('after one channel');
  });

  it('closes the offerer’s event channel in Dom0 before its own end while a bind is on its way', () => {
    const { host, c, s } = setUp();
    // Up to the accepter's bind, which waits in its outbox.
    for (let step = 0; step < 100 && !s.outbox.some((call) => call.op === 'evtchnBind'); step++) {
      host.serve(s);
      host.serve(c);
      host.deliver(c);
      host.poll(c);
      host.deliver(s);
      host.poll(s);
    }
    assert.ok(
      s.outbox.some((call) => call.op === 'evtchnBind'),
      'the accepter is binding',
    );
    // The offerer's stream ends now: it releases the channel it offered.
    c.streams = [];
    host.poll(c);
    host.serve(s); // the bind reaches Dom0 before the offerer's close
    host.endAndCheck('bind racing the offerer’s release');
  });

  it('drops nothing half set up when a migrated domain hears that its migration ended', () => {
    // c arrives on the host where s runs (advance mode), its GuestState says "migrating".
    const host = new Host();
    const { s, c } = pair(host);
    const source = new XenvmcModule({
      identity: { domId: 9, ip: c.ip, tenant: 't' },
      post: () => {},
      kick: () => {},
      wallNowMs: () => 0,
      log: () => {},
    });
    source.state.mode = 'advance';
    source.state.migrating = true;
    c.module.loadState(structuredClone(source.saveState()));
    // The publisher's snapshot, then the end-of-migration notice, as the host sends them.
    host.publish(s, 'migratedIn', c);
    host.publish(c, 'snapshot', null);
    c.inbox.push(() => c.module.onNotice({ type: 'migration', phase: 'ended' }));
    host.deliver(c); // the snapshot
    host.poll(c); // the kernel polls between the two notices
    host.serve(c);
    host.deliver(c); // migration ended
    host.settle();
    assert.equal(c.module.state.counters.channelsSetUp, 1, 'a channel once the migration ended');
    assert.equal(host.grants.counters.grantsCreated, 1, 'one grant for one stream');
    host.endAndCheck('arrival');
  });

  it('releases every grant and event channel exactly once, whatever the order', () => {
    const action = fc.constantFrom(
      'serveC',
      'serveS',
      'deliverC',
      'deliverS',
      'pollC',
      'pollS',
      'endC',
      'endS',
      'cLeaves',
      'cancelNotice',
    );
    fc.assert(
      fc.property(
        fc.record({
          streams: fc.integer({ min: 1, max: 3 }),
          arrived: fc.boolean(),
          actions: fc.array(action, { minLength: 5, maxLength: 120 }),
        }),
        ({ streams, arrived, actions }) => {
          const host = new Host();
          const { s, c } = pair(host, streams);
          if (arrived) {
            const state = structuredClone(c.module.saveState());
            state.mode = 'advance';
            state.migrating = true;
            c.module.loadState(state);
          }
          host.publish(s, 'snapshot', null);
          host.publish(c, 'snapshot', null);
          if (arrived) c.inbox.push(() => c.module.onNotice({ type: 'migration', phase: 'ended' }));
          for (const step of actions) {
            if (step === 'serveC') host.serve(c);
            else if (step === 'serveS') host.serve(s);
            else if (step === 'deliverC') host.deliver(c);
            else if (step === 'deliverS') host.deliver(s);
            else if (step === 'pollC') host.poll(c);
            else if (step === 'pollS') host.poll(s);
            else if (step === 'endC') c.streams = c.streams.slice(1);
            else if (step === 'endS') s.streams = s.streams.slice(1);
            else if (step === 'cancelNotice' && !c.gone) {
              // c starts migrating in xenvmc mode: its channels are cancelled.
              c.inbox.push(() => {
                c.module.state.mode = 'xenvmc';
                c.module.onNotice({ type: 'migration', phase: 'started' });
              });
            } else if (step === 'cLeaves' && !c.gone) {
              // c migrates away: Dom0 drops its table entries, s finishes its half.
              c.gone = true;
              host.grants.releaseAll(c.domId);
              host.publish(s, 'migratedOut', c);
            }
          }
          host.endAndCheck(JSON.stringify({ streams, arrived, actions }));
        },
      ),
      { seed: 20260311, numRuns: 300 },
    );
  });

  it('waits longer after each refused set-up instead of asking again every poll', () => {
    // Dom0 refuses every grant (as at the per-domain cap).
    const { host, c } = setUp(1, { grantsPerDomainMax: 0 });
    for (let ms = 0; ms < 2000; ms++) {
      host.serve(c);
      host.deliver(c);
      host.poll(c);
    }
    const grants = host.posted.get('grant') ?? 0;
    // 100 ms, then 200, 400, 800: five tries in two seconds, not one every other poll.
    assert.ok(grants >= 2 && grants <= 6, `${grants} grant calls in 2 s of polls`);
    assert.equal(host.grants.counters.grantsLive, 0, 'nothing granted');
  });

  it(`keeps at most ${CHANNELS_PER_DOMAIN_MAX} channels per domain and says so in its counters`, () => {
    const extra = 5;
    const { host, c, s } = setUp(CHANNELS_PER_DOMAIN_MAX + extra);
    host.settle();
    const counters = c.module.state.counters;
    assert.equal(counters.channelsSetUp, CHANNELS_PER_DOMAIN_MAX, 'channels up to the limit');
    assert.equal(counters.channelsPerDomainMax, CHANNELS_PER_DOMAIN_MAX, 'the limit is shown');
    assert.equal(counters.streamsOverLimit, extra, 'the streams beyond it are counted');
    assert.equal(
      s.module.state.counters.channelsSetUp,
      CHANNELS_PER_DOMAIN_MAX,
      'accepted as many',
    );
    // One stream ends: another takes its place.
    c.streams = c.streams.slice(1);
    s.streams = s.streams.slice(1);
    host.settle();
    assert.equal(counters.channelsSetUp, CHANNELS_PER_DOMAIN_MAX + 1, 'a freed place is taken');
    host.endAndCheck('at the limit');
  });
});
