/**
 * Goal: the guest network stack moves every byte exactly once and in order through netfront
 * rings in guest memory, also when either end is migrated at any moment (its memory and state
 * copied to a new "host", its rings reset, frames in flight lost), and a netfront transfer
 * dirties the rings and socket buffers of both domains.
 * Method: two `Netstack`s over two `GuestMemory`s in one thread; a tiny Dom0 in the test
 * copies frames between their rings (dropping them while a domain is "paused"); fast-check
 * (fixed seed) picks write sizes, read sizes and the migration moments.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout } from '../memory/layout.ts';
import { NetfrontRing } from '../net/netfront-ring.ts';
import { Netstack, type NetstackState, netfrontPlacement } from './netstack.ts';
import type { SocketEvent } from './socket-api.ts';
import { freshProgram, runTestProgram, type TestEndpoint } from './test-program.ts';

const PAGES = 4096;
const PORT = 80;

interface Endpoint extends TestEndpoint {
  ip: string;
  memory: GuestMemory;
  tx: NetfrontRing;
  rx: NetfrontRing;
  stateAtPause: NetstackState | null;
}

class World {
  nowMs = 0;
  readonly endpoints: Endpoint[] = [];

  add(name: string, ip: string, toSend: number, seed: number): Endpoint {
    const memory = GuestMemory.create(defaultLayout(PAGES));
    const endpoint = {
      name,
      ip,
      memory,
      events: [],
      socket: null,
      paused: false,
    } as unknown as Endpoint;
    Object.assign(endpoint, freshProgram(seed, toSend), { stateAtPause: null });
    endpoint.stack = Netstack.boot(this.components(endpoint), { ip, seed });
    this.attach(endpoint);
    this.endpoints.push(endpoint);
    return endpoint;
  }

  private components(endpoint: Endpoint) {
    return {
      memory: endpoint.memory,
      nowMs: () => this.nowMs,
      notifyBackend: () => {},
      deliver: (_programId: number, event: SocketEvent) => endpoint.events.push(event),
      setTimer: () => {},
    };
  }

  private attach(endpoint: Endpoint): void {
    endpoint.net = endpoint.stack.netFor(1);
    const placement = netfrontPlacement(endpoint.memory);
    const ring = { slotCount: placement.slotCount, slotSizeBytes: placement.slotSizeBytes };
    endpoint.tx = new NetfrontRing(endpoint.memory, { address: placement.txAddress, ...ring });
    endpoint.rx = new NetfrontRing(endpoint.memory, { address: placement.rxAddress, ...ring });
  }

  /** Dom0: frames from each TX ring to the other's RX ring; dropped for a paused domain. */
  switchFrames(): void {
    const [a, b] = this.endpoints as [Endpoint, Endpoint];
    for (const [from, to] of [
      [a, b],
      [b, a],
    ] as const) {
      if (from.paused) continue;
      for (const frame of from.tx.popMany()) {
        if (!to.paused) to.rx.tryPush(frame);
      }
    }
  }

  /** Pauses a domain between two events: its state is what travels. */
  pause(endpoint: Endpoint): void {
    endpoint.paused = true;
    endpoint.stateAtPause = structuredClone(endpoint.stack.state);
  }

  /** Resumes it "on another host": memory copied, stack restored, the peer told it moved. */
  migrate(endpoint: Endpoint, peer: Endpoint): void {
    const memory = GuestMemory.create(endpoint.memory.layout);
    memory.bytes.set(endpoint.memory.bytes);
    endpoint.memory = memory;
    endpoint.stack = Netstack.restore(this.components(endpoint), endpoint.stateAtPause!);
    this.attach(endpoint);
    endpoint.paused = false;
    peer.stack.rewindAll(endpoint.stack.state.ip!);
  }
}

function describeEnds(...endpoints: Endpoint[]): string {
  return JSON.stringify(
    endpoints.map((e) => ({
      name: e.name,
      received: e.received,
      ended: e.ended,
      peerEnded: e.peerEnded,
      socket: e.socket,
      streams: e.stack.state.sockets.map((s) => ({
        id: s.id,
        phase: s.stream.phase,
        sendAcked: s.stream.sendAcked,
        sendWritten: s.stream.sendWritten,
        fin: s.stream.sendFinOffset,
        receiveNext: s.stream.receiveNext,
        receiveRead: s.stream.receiveRead,
        receiveFin: s.stream.receiveFinOffset,
        reportedEnd: s.reportedEnd,
      })),
    })),
  );
}

interface Scenario {
  bytesA: number;
  bytesB: number;
  chunk: number;
  read: number;
  migrations: { at: number; who: number; pauseSteps: number }[];
}

function scenario({ bytesA, bytesB, chunk, read, migrations }: Scenario): void {
  const world = new World();
  const chunkBytes = chunk;
  const a = world.add('a', '10.77.0.1', bytesA, 11);
  const b = world.add('b', '10.77.0.2', bytesB, 22);
  b.net.listen(PORT);
  a.socket = a.net.connect('10.77.0.2', PORT);
  const resumeAt = new Map<number, Endpoint>();
  for (let step = 0; step < 20_000; step++) {
    world.nowMs += 1;
    for (const m of migrations) {
      const who = world.endpoints[m.who]!;
      if (m.at === step && !who.paused) {
        world.pause(who);
        resumeAt.set(step + m.pauseSteps, who);
      }
    }
    const resuming = resumeAt.get(step);
    if (resuming) world.migrate(resuming, resuming === a ? b : a);
    runTestProgram(a, { chunkBytes, readBytes: read, writesMax: 64 });
    runTestProgram(b, { chunkBytes, readBytes: read, writesMax: 64 });
    world.switchFrames();
    // Retransmit timers: the stack asks to be polled at a deadline; polling every step
    // with the clock advancing fires them.
    if (a.ended && b.ended && a.peerEnded && b.peerEnded) break;
  }
  assert.ok(a.peerEnded && b.peerEnded, `both ends saw the end: ${describeEnds(a, b)}`);
  assert.equal(b.received, a.toSend, 'a -> b byte count');
  assert.equal(a.received, b.toSend, 'b -> a byte count');
  assert.equal(b.receiveCrc, a.sendCrc, 'a -> b digest');
  assert.equal(a.receiveCrc, b.sendCrc, 'b -> a digest');
}

describe('Netstack', () => {
  it('delivers every byte exactly once both ways while either end is migrated at random moments', () => {
    fc.assert(
      fc.property(
        fc.record({
          bytesA: fc.integer({ min: 0, max: 300_000 }),
          bytesB: fc.integer({ min: 0, max: 300_000 }),
          chunk: fc.constantFrom(1, 100, 4096, 4 * 4056, 65536),
          read: fc.constantFrom(7, 4096, 1 << 20),
          migrations: fc.array(
            fc.record({
              at: fc.integer({ min: 1, max: 400 }),
              who: fc.constantFrom(0, 1),
              pauseSteps: fc.integer({ min: 0, max: 5 }),
            }),
            { maxLength: 3 },
          ),
        }),
        scenario,
      ),
      {
        seed: 4242,
        numRuns: 40,
        ...(process.env.REPLAY_PATH ? { path: process.env.REPLAY_PATH } : {}),
      },
    );
  });

  it('dirties the rings and socket buffers of both domains on a netfront transfer', () => {
    const world = new World();
    const a = world.add('a', '10.77.0.1', 64 * 1024, 1);
    const b = world.add('b', '10.77.0.2', 0, 2);
    a.memory.setLogDirty(true);
    b.memory.setLogDirty(true);
    b.net.listen(PORT);
    a.socket = a.net.connect('10.77.0.2', PORT);
    for (let step = 0; step < 200 && b.received < a.toSend; step++) {
      world.nowMs += 1;
      runTestProgram(a, { chunkBytes: 65536, readBytes: 65536, writesMax: 64 });
      runTestProgram(b, { chunkBytes: 65536, readBytes: 65536, writesMax: 64 });
      world.switchFrames();
    }
    assert.equal(b.received, a.toSend, 'the transfer completed');
    const dirtyA = a.memory.countByRegion(a.memory.peekAndClean());
    const dirtyB = b.memory.countByRegion(b.memory.peekAndClean());
    // 64 KiB through 4 KiB pages: at least 16 socket-buffer pages and 16 ring slots each side.
    assert.ok(dirtyA.sockbuf >= 16, `sender send buffer pages dirtied: ${dirtyA.sockbuf}`);
    assert.ok(dirtyA.kernel >= 16, `sender TX ring pages dirtied: ${dirtyA.kernel}`);
    assert.ok(dirtyB.sockbuf >= 16, `receiver receive buffer pages dirtied: ${dirtyB.sockbuf}`);
    assert.ok(dirtyB.kernel >= 16, `receiver RX ring pages dirtied: ${dirtyB.kernel}`);
    assert.equal(
      dirtyA.program + dirtyB.program + dirtyA.pagecache + dirtyB.pagecache,
      0,
      'nothing else',
    );
  });

  it('refuses a connect to a closed port with ECONNREFUSED', () => {
    const world = new World();
    const a = world.add('a', '10.77.0.1', 0, 1);
    world.add('b', '10.77.0.2', 0, 2);
    a.net.connect('10.77.0.2', 9);
    const seen: SocketEvent[] = [];
    for (let step = 0; step < 5; step++) {
      for (const e of world.endpoints) {
        e.stack.poll();
        if (e === a) seen.push(...a.events.splice(0));
      }
      world.switchFrames();
    }
    assert.ok(
      seen.some((e) => e.type === 'error' && e.code === 'ECONNREFUSED'),
      `events: ${JSON.stringify(seen)}`,
    );
  });
});

if (process.env.NETSTACK_CASE) {
  it('replays NETSTACK_CASE', () => scenario(JSON.parse(process.env.NETSTACK_CASE!) as Scenario));
}
