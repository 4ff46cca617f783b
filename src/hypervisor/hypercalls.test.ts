/**
 * Goal: Dom0 answers every XENVMC hypercall with a reply of the same id, transfers the event
 * channel ends it hands out, relays control messages only to a co-resident domain the policy
 * allows, and answers malformed calls instead of throwing. Method: `answerHypercall` on a real
 * `GrantTable` with fake peers (no worker threads).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import type {
  ChannelKey,
  XenvmcCall,
  XenvmcMessageNotice,
  XenvmcReply,
} from '../xenvmc/protocol.ts';
import { type DomainRef, GrantTable } from './grant-table.ts';
import { answerHypercall, type HypercallPeer, serveHypercall } from './hypercalls.ts';

const key: ChannelKey = {
  offererIp: 1,
  offererPort: 1000,
  accepterIp: 2,
  accepterPort: 80,
  nonce: 7,
};

function setUp(): {
  call: (self: DomainRef, call: XenvmcCall) => { reply: XenvmcReply; transfer: MessagePort[] };
  components: Parameters<typeof answerHypercall>[0];
  inbox: Map<number, XenvmcMessageNotice[]>;
  grants: GrantTable;
  doms: Record<'a' | 'b' | 'x', DomainRef>;
  logged: string[];
} {
  const doms = {
    a: { domId: 1, tenant: 't' },
    b: { domId: 2, tenant: 't' },
    x: { domId: 3, tenant: 'other' },
  };
  const inbox = new Map<number, XenvmcMessageNotice[]>();
  const peers = new Map<number, HypercallPeer>(
    Object.values(doms).map((identity) => [
      identity.domId,
      {
        identity,
        post: (message) =>
          inbox.set(identity.domId, [...(inbox.get(identity.domId) ?? []), message]),
      },
    ]),
  );
  const grants = new GrantTable();
  const logged: string[] = [];
  const components = {
    grants,
    findPeer: (domId: number) => peers.get(domId) ?? null,
    log: (line: string) => logged.push(line),
  };
  return {
    call: (self, call) => answerHypercall(components, self, call),
    components,
    inbox,
    grants,
    doms,
    logged,
  };
}

function okReply(reply: XenvmcReply, label: string): Extract<XenvmcReply, { ok: true }> {
  assert.ok(reply.ok, `${label}: expected ok, got ${JSON.stringify(reply)}`);
  return reply;
}

function denial(reply: XenvmcReply): string {
  return reply.ok ? 'ok' : reply.code;
}

describe('answerHypercall', () => {
  it('sets up a channel: grant, map, event channel alloc and bind, then tears it down', () => {
    const { call, grants, doms } = setUp();
    const granted = okReply(
      call(doms.a, { type: 'xenvmc', id: 1, op: 'grant', peerDomId: 2, bytes: 8192 }).reply,
      'grant',
    );
    assert.equal(granted.id, 1, 'the reply carries the call id');
    assert.ok(granted.region instanceof SharedArrayBuffer, 'the granter gets the region');
    const mapped = okReply(
      call(doms.b, {
        type: 'xenvmc',
        id: 2,
        op: 'map',
        granterDomId: 1,
        grantRef: granted.grantRef!,
      }).reply,
      'map',
    );
    assert.equal(mapped.region, granted.region, 'the grantee maps the same region');
    const alloc = call(doms.a, { type: 'xenvmc', id: 3, op: 'evtchnAlloc', peerDomId: 2 });
    const allocated = okReply(alloc.reply, 'evtchnAlloc');
    assert.deepEqual(alloc.transfer, [allocated.endpoint], 'the owner’s end is transferred');
    const bind = call(doms.b, {
      type: 'xenvmc',
      id: 4,
      op: 'evtchnBind',
      peerDomId: 1,
      port: allocated.port!,
    });
    const bound = okReply(bind.reply, 'evtchnBind');
    assert.deepEqual(bind.transfer, [bound.endpoint], 'the peer’s end is transferred');
    for (const [self, id, op] of [
      [doms.a, 5, 'release'],
      [doms.b, 6, 'release'],
    ] as const) {
      okReply(call(self, { type: 'xenvmc', id, op, grantRef: granted.grantRef! }).reply, op);
    }
    // The module closes the event channel from the offerer's side only: that frees it.
    const port = allocated.port!;
    okReply(call(doms.a, { type: 'xenvmc', id: 7, op: 'evtchnClose', port }).reply, 'close');
    const counters = grants.counters;
    assert.equal(counters.grantsLive, 0, 'the grant is freed');
    assert.equal(counters.evtchnsLive, 0, 'the event channel is freed');
    allocated.endpoint!.close();
    bound.endpoint!.close();
  });

  it('refuses another tenant, a missing peer and a map by the wrong domain', () => {
    const { call, doms } = setUp();
    const grantTo = (peerDomId: number) =>
      call(doms.a, { type: 'xenvmc', id: 9, op: 'grant', peerDomId, bytes: 8192 }).reply;
    assert.equal(denial(grantTo(3)), 'XENVMC_DENIED', 'another tenant is denied');
    assert.equal(denial(grantTo(42)), 'XENVMC_NO_PEER', 'a domain not on the host');
    const granted = okReply(grantTo(2), 'grant to b');
    const stolen = call(doms.x, {
      type: 'xenvmc',
      id: 10,
      op: 'map',
      granterDomId: 1,
      grantRef: granted.grantRef!,
    }).reply;
    assert.equal(denial(stolen), 'XENVMC_NOT_GRANTED', 'only the grantee maps');
    assert.equal(stolen.id, 10, 'a refusal carries the call id too');
    const alloc = call(doms.a, { type: 'xenvmc', id: 11, op: 'evtchnAlloc', peerDomId: 3 });
    assert.equal(denial(alloc.reply), 'XENVMC_DENIED', 'no event channel to another tenant');
    assert.deepEqual(alloc.transfer, [], 'a refusal transfers nothing');
  });

  it('relays control messages to a co-resident domain of the same tenant only', () => {
    const { call, inbox, doms } = setUp();
    const message = { kind: 'ready', key, port: 1 } as const;
    okReply(
      call(doms.a, { type: 'xenvmc', id: 12, op: 'send', peerDomId: 2, message }).reply,
      'send to b',
    );
    assert.deepEqual(
      inbox.get(2),
      [{ type: 'xenvmcMessage', fromDomId: 1, message }],
      'b receives the message with its sender',
    );
    const toOther = call(doms.a, { type: 'xenvmc', id: 13, op: 'send', peerDomId: 3, message });
    assert.equal(denial(toOther.reply), 'XENVMC_DENIED', 'no messages across tenants');
    assert.equal(inbox.get(3), undefined, 'the other tenant received nothing');
    const toNobody = call(doms.a, { type: 'xenvmc', id: 14, op: 'send', peerDomId: 9, message });
    assert.equal(denial(toNobody.reply), 'XENVMC_NO_PEER', 'no such domain');
  });

  it('denies a malformed call instead of throwing', () => {
    const { call, doms, logged } = setUp();
    const bogus = { type: 'xenvmc', id: 15, op: 'format-disk' } as unknown as XenvmcCall;
    assert.equal(denial(call(doms.a, bogus).reply), 'XENVMC_DENIED', 'an unknown op is denied');
    const broken = { type: 'xenvmc', id: 16, op: 'map', grantRef: 1 } as unknown as XenvmcCall;
    assert.equal(denial(call(doms.a, broken).reply), 'XENVMC_NOT_GRANTED', 'no such grant');
    assert.equal(logged.length, 0, 'refusals are answers, not failures to log');
  });
});

/**
 * Hands `end` to a guest thread, which closes it and then says so: from then on the end Dom0
 * keeps for the peer is detached (closing happens-before that message). The close reaches that
 * entangled end asynchronously (a message between threads): give it time, or on a loaded
 * machine it is not detached yet.
 */
async function closeInGuestThread(end: MessagePort): Promise<void> {
  const owner = new Worker(
    `const { parentPort } = require('node:worker_threads');
     parentPort.once('message', ({ end }) => { end.close(); parentPort.postMessage('closed'); });`,
    { eval: true },
  );
  owner.postMessage({ end }, [end]);
  await once(owner, 'message');
  await owner.terminate();
  for (let turn = 0; turn < 5; turn++) await new Promise((resolve) => setTimeout(resolve, 20));
}

describe('serveHypercall', () => {
  it('answers a bind whose owner closed its end with NOT_GRANTED instead of throwing', async () => {
    const { call, components, grants, doms, logged } = setUp();
    const allocated = okReply(
      call(doms.a, { type: 'xenvmc', id: 20, op: 'evtchnAlloc', peerDomId: 2 }).reply,
      'evtchnAlloc',
    );
    // The owner's end goes to a guest thread, which closes it.
    await closeInGuestThread(allocated.endpoint!);
    const guestPort = new MessageChannel();
    const post = (reply: XenvmcReply, transfer: MessagePort[]) =>
      guestPort.port1.postMessage(reply, transfer);
    const bind: XenvmcCall = {
      type: 'xenvmc',
      id: 21,
      op: 'evtchnBind',
      peerDomId: 1,
      port: allocated.port!,
    };
    // What the host did before: post the answer as it is. That throws, in the worker's
    // message listener, and ended the host process.
    const answer = answerHypercall(components, doms.b, bind);
    assert.throws(
      () => post(answer.reply, answer.transfer),
      /detached/,
      'the detached end cannot be posted',
    );
    const replies: XenvmcReply[] = [];
    guestPort.port2.on('message', (reply: XenvmcReply) => replies.push(reply));
    const again: XenvmcCall = { ...bind, id: 22 };
    // The entry is marked bound by the first try: a fresh channel shows serveHypercall alone.
    const second = okReply(
      call(doms.a, { type: 'xenvmc', id: 23, op: 'evtchnAlloc', peerDomId: 2 }).reply,
      'second evtchnAlloc',
    );
    await closeInGuestThread(second.endpoint!);
    assert.doesNotThrow(
      () => serveHypercall(components, doms.b, { ...again, port: second.port! }, post),
      'serveHypercall never throws',
    );
    await once(guestPort.port2, 'message');
    guestPort.port1.close();
    assert.equal(replies.length, 1, 'the binder got one answer');
    assert.equal(replies[0]!.id, 22, 'for its call');
    assert.equal(denial(replies[0]!), 'XENVMC_NOT_GRANTED', 'the refusal a guest already handles');
    assert.ok(
      logged.some((line) => line.includes('could not be posted')),
      `the failure is logged: ${JSON.stringify(logged)}`,
    );
    // The first channel's owner still closes it; the second was dropped with the failed bind.
    okReply(
      call(doms.a, { type: 'xenvmc', id: 24, op: 'evtchnClose', port: allocated.port! }).reply,
      'owner closes the first channel',
    );
    assert.equal(grants.counters.evtchnsLive, 0, 'no event channel left behind');
  });
});
