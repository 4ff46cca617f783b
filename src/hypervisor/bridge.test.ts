/**
 * Goal: Dom0's bridge switches frames between co-resident domains by IP, sends frames for
 * remote IPs to their host, answers unknown IPs with UNREACHABLE, drops and counts malformed
 * or spoofed frames without failing, and never touches a paused domain's rings.
 * Method: fake endpoints (GuestMemory + rings, no worker threads), frames built with the codec.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { netfrontPlacement } from '../guest/netstack.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout } from '../memory/layout.ts';
import {
  decodeFrame,
  EMPTY_PAYLOAD,
  encodeFrame,
  type Frame,
  ipToU32,
  isFrameDecodeError,
} from '../net/frame.ts';
import { NetfrontRing } from '../net/netfront-ring.ts';
import { Bridge, type BridgeEndpoint } from './bridge.ts';

class FakeEndpoint implements BridgeEndpoint {
  readonly identity: { ip: string; name: string };
  readonly memory = GuestMemory.create(defaultLayout(4096));
  guestRunning = true;
  onNetTx: () => void = () => {};
  rxKicks = 0;
  moved: number[] = [];
  readonly tx: NetfrontRing;
  readonly rx: NetfrontRing;

  constructor(name: string, ip: string) {
    this.identity = { name, ip };
    const placement = netfrontPlacement(this.memory);
    this.tx = new NetfrontRing(this.memory, { address: placement.txAddress });
    this.rx = new NetfrontRing(this.memory, { address: placement.rxAddress });
  }

  notifyRx(): void {
    this.rxKicks++;
  }

  notifyPeerMoved(ip: number): void {
    this.moved.push(ip);
  }

  send(frame: Uint8Array): void {
    assert.equal(this.tx.tryPush(frame), 'ok', 'tx ring has room');
    this.onNetTx();
  }
}

function frame(from: string, to: string, kind: Frame['kind'] = 'syn'): Uint8Array {
  return encodeFrame({
    kind,
    sourceIp: ipToU32(from),
    targetIp: ipToU32(to),
    sourcePort: 40000,
    targetPort: 80,
    offset: 0,
    ack: 0,
    window: 65536,
    nonce: 7,
    payload: EMPTY_PAYLOAD,
  });
}

function setup() {
  const remote: { link: string; bytes: Uint8Array }[] = [];
  const bridge = new Bridge({
    sendRemote: (link, bytes) => remote.push({ link, bytes }),
    log: () => {},
  });
  const a = new FakeEndpoint('a', '10.77.0.1');
  const b = new FakeEndpoint('b', '10.77.0.2');
  bridge.attach(a);
  bridge.attach(b);
  return { bridge, a, b, remote };
}

describe('Bridge', () => {
  it('switches a frame to the co-resident domain that owns the target IP', () => {
    const { bridge, a, b } = setup();
    a.send(frame('10.77.0.1', '10.77.0.2'));
    const got = b.rx.popMany();
    assert.equal(got.length, 1, 'b received the frame');
    assert.equal(b.rxKicks, 1, 'b was notified');
    assert.equal(bridge.counters.framesSwitchedLocal, 1, 'counted');
  });

  it('sends frames for a remote IP to its host and learns routes from arriving frames', () => {
    const { bridge, a, remote } = setup();
    bridge.learn(ipToU32('10.77.9.9'), '127.0.0.1:7002', false);
    a.send(frame('10.77.0.1', '10.77.9.9'));
    assert.deepEqual(
      remote.map((r) => r.link),
      ['127.0.0.1:7002'],
      'went to the right host',
    );
    bridge.fromRemote(frame('10.77.8.8', '10.77.0.1'), '127.0.0.1:7003');
    assert.equal(a.rx.popMany().length, 1, 'delivered locally');
    a.send(frame('10.77.0.1', '10.77.8.8', 'ack'));
    assert.equal(remote.at(-1)!.link, '127.0.0.1:7003', 'the route was learned from the source IP');
  });

  it('answers a frame for an unknown IP with UNREACHABLE', () => {
    const { bridge, a } = setup();
    a.send(frame('10.77.0.1', '10.77.5.5'));
    const [answer] = a.rx.popMany();
    const decoded = decodeFrame(answer!);
    assert.ok(
      !isFrameDecodeError(decoded) && decoded.kind === 'unreachable',
      'unreachable came back',
    );
    assert.equal(bridge.counters.framesUnreachable, 1, 'counted');
  });

  it('drops and counts malformed and spoofed frames, whatever their bytes', () => {
    const { bridge, a, b } = setup();
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 4096 }), (bytes) => {
        a.send(bytes);
        bridge.fromRemote(bytes, '127.0.0.1:1');
      }),
      { seed: 99, numRuns: 300 },
    );
    a.send(frame('10.77.0.2', '10.77.0.1'));
    assert.ok(
      bridge.counters.framesMalformed >= 300,
      `malformed counted: ${bridge.counters.framesMalformed}`,
    );
    assert.equal(b.rx.pending + a.rx.pending, 0, 'nothing reached a domain');
  });

  it('never writes into a paused domain and tells domains when a peer moved away', () => {
    const { bridge, a, b } = setup();
    b.guestRunning = false;
    a.send(frame('10.77.0.1', '10.77.0.2'));
    assert.equal(b.rx.pending, 0, 'the paused domain was not touched');
    assert.equal(bridge.counters.framesDroppedPaused, 1, 'the drop was counted');
    bridge.detach(b, { link: '127.0.0.1:7002' });
    assert.deepEqual(a.moved, [ipToU32('10.77.0.2')], 'a heard that b moved');
  });

  it('drains frames a domain queued before it was attached (its kick reached nobody)', () => {
    // A booting guest kicks netfront before Dom0 attaches it; the pending bit folds its later
    // kicks into that lost one, and once the TX ring is full it never kicks again.
    const { bridge, a } = setup();
    const late = new FakeEndpoint('late', '10.77.0.3');
    for (let i = 0; i < late.tx.slotCount; i++) late.send(frame('10.77.0.3', '10.77.0.1'));
    assert.equal(late.tx.free, 0, 'the TX ring is full before the attach');
    bridge.attach(late);
    assert.equal(late.tx.free, late.tx.slotCount, 'attaching drained the TX ring');
    assert.ok(a.rx.popMany().length > 0, 'the queued frames reached their target');
  });
});
