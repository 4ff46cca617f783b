/**
 * Goal: the XENVMC module carries co-resident streams over shared-memory FIFOs transparently
 * (same bytes in every mode), keeps every byte exactly once when a channel is cancelled at any
 * moment (xenvmc, xenvmc-suspend) or kept through a migration and finished by `finish_mig`
 * (advance), and dirties no socket-buffer page while the channel carries the traffic.
 * Method: two guest network stacks with XENVMC modules in one thread, and a small Dom0 in the
 * test (grant table, message relay, event channels, netfront switching, the publisher's
 * notices); fast-check (fixed seed) picks sizes and the moments of cancels and migrations.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Netstack, type NetstackState, netfrontPlacement } from '../guest/netstack.ts';
import { type GuestNet, readSocketInto, type SocketEvent } from '../guest/socket-api.ts';
import { freshProgram, runTestProgram, type TestEndpoint } from '../guest/test-program.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout } from '../memory/layout.ts';
import { ipToU32 } from '../net/frame.ts';
import { NetfrontRing } from '../net/netfront-ring.ts';
import { CHANNEL_READ_BURST_BYTES, XenvmcModule, type XenvmcState } from './module.ts';
import type { PeerRecord, XenvmcCall, XenvmcMode, XenvmcReply } from './protocol.ts';

const PORT = 25;
/** Steps without a byte written or read after which `exchange` gives up (and fails). */
const STALL_STEPS_MAX = 3000;

interface Guest extends TestEndpoint {
  domId: number;
  ip: string;
  tenant: string;
  memory: GuestMemory;
  xenvmc: XenvmcModule;
  tx: NetfrontRing;
  rx: NetfrontRing;
}

/** A fake event-channel end: `postMessage` runs the other end's listener at the next pump. */
class FakePort {
  peer: FakePort | null = null;
  listener: (() => void) | null = null;
  closed = false;
  readonly queue: (() => void)[];
  constructor(queue: (() => void)[]) {
    this.queue = queue;
  }
  on(_event: 'message', listener: () => void): void {
    this.listener = listener;
  }
  postMessage(): void {
    const peer = this.peer;
    if (peer && !peer.closed) this.queue.push(() => peer.listener?.());
  }
  close(): void {
    this.closed = true;
  }
}

class World {
  nowMs = 0;
  readonly guests: Guest[] = [];
  readonly queue: (() => void)[] = [];
  /** Live grants; freed, as Dom0's grant table does, once the granter released it and the
   *  grantee holds no mapping (a refused offer's region is never mapped). */
  grants = new Map<
    number,
    {
      region: SharedArrayBuffer;
      granter: number;
      grantee: number;
      mapped: boolean;
      released: boolean;
    }
  >();
  ports = new Map<number, { owner: number; peer: number; ends: [FakePort, FakePort] }>();
  nextRef = 1;
  mode: XenvmcMode;
  /** Programs read with `readSocketInto` into one reused array of this size, or `read` if null. */
  readIntoBytes: number | null = null;

  constructor(mode: XenvmcMode) {
    this.mode = mode;
  }

  add(name: string, domId: number, ip: string, toSend: number, tenant = 'mail'): Guest {
    const guest = {
      name,
      domId,
      ip,
      tenant,
      events: [],
      socket: null,
      paused: false,
      seed: domId,
    } as unknown as Guest;
    Object.assign(guest, freshProgram(domId, toSend));
    guest.memory = GuestMemory.create(defaultLayout(4096));
    this.boot(guest, null);
    this.guests.push(guest);
    return guest;
  }

  /** Builds a guest's kernel pieces, fresh or from saved state (after a migration). */
  boot(guest: Guest, saved: { net: NetstackState; xenvmc: XenvmcState } | null): void {
    guest.xenvmc = new XenvmcModule({
      identity: { domId: guest.domId, ip: ipToU32(guest.ip), tenant: guest.tenant },
      post: (call) => this.hypercall(guest, call),
      kick: () => {},
      wallNowMs: () => this.nowMs,
      log: () => {},
    });
    if (saved) guest.xenvmc.loadState(saved.xenvmc);
    const components = {
      memory: guest.memory,
      nowMs: () => this.nowMs,
      notifyBackend: () => {},
      deliver: (_programId: number, event: SocketEvent) => guest.events.push(event),
      setTimer: () => {},
      carrier: guest.xenvmc,
    };
    guest.stack = saved
      ? Netstack.restore(components, saved.net)
      : Netstack.boot(components, { ip: guest.ip, seed: guest.domId });
    guest.net = guest.stack.netFor(1);
    if (this.readIntoBytes !== null) guest.net = readingInto(guest.net, this.readIntoBytes);
    const placement = netfrontPlacement(guest.memory);
    guest.tx = new NetfrontRing(guest.memory, { address: placement.txAddress });
    guest.rx = new NetfrontRing(guest.memory, { address: placement.rxAddress });
  }

  /** The VM State Publisher: each guest hears of the others (same host). */
  publish(
    event: 'snapshot' | 'migrating' | 'migratedOut' | 'migrationAborted',
    subject: Guest | null,
  ): void {
    for (const guest of this.guests) {
      if (guest.paused) continue;
      const peers: PeerRecord[] = this.guests
        .filter((g) => g !== guest && !(event === 'migratedOut' && g === subject))
        .map((g) => ({
          domId: g.domId,
          ip: ipToU32(g.ip),
          tenant: g.tenant,
          migrating: event === 'migrating' && g === subject,
        }));
      guest.xenvmc.onNotice({
        type: 'coResidents',
        mode: this.mode,
        event,
        subject: subject
          ? {
              domId: subject.domId,
              ip: ipToU32(subject.ip),
              tenant: subject.tenant,
              migrating: event === 'migrating',
            }
          : null,
        peers,
      });
    }
  }

  private reply(guest: Guest, reply: XenvmcReply): void {
    guest.xenvmc.onNotice(reply);
  }

  /** Dom0's hypercalls: grant table, event channels, message relay (same-tenant policy). */
  private hypercall(guest: Guest, call: XenvmcCall): void {
    const fail = (
      code: 'XENVMC_DENIED' | 'XENVMC_NO_PEER' | 'XENVMC_NOT_GRANTED',
      message: string,
    ) => this.reply(guest, { type: 'xenvmcReply', id: call.id, ok: false, code, message });
    const peerOf = (domId: number) => this.guests.find((g) => g.domId === domId && !g.paused);
    switch (call.op) {
      case 'grant': {
        const peer = peerOf(call.peerDomId);
        if (!peer) return fail('XENVMC_NO_PEER', 'no peer');
        if (peer.tenant !== guest.tenant) return fail('XENVMC_DENIED', 'tenant');
        const grantRef = this.nextRef++;
        const region = new SharedArrayBuffer(call.bytes);
        this.grants.set(grantRef, {
          region,
          granter: guest.domId,
          grantee: peer.domId,
          mapped: false,
          released: false,
        });
        return this.reply(guest, { type: 'xenvmcReply', id: call.id, ok: true, grantRef, region });
      }
      case 'map': {
        const grant = this.grants.get(call.grantRef);
        if (!grant || grant.grantee !== guest.domId)
          return fail('XENVMC_NOT_GRANTED', 'not granted');
        grant.mapped = true;
        return this.reply(guest, {
          type: 'xenvmcReply',
          id: call.id,
          ok: true,
          region: grant.region,
        });
      }
      case 'release': {
        const grant = this.grants.get(call.grantRef);
        if (grant?.granter === guest.domId) grant.released = true;
        if (grant?.grantee === guest.domId) grant.mapped = false;
        if (grant?.released && !grant.mapped) this.grants.delete(call.grantRef);
        return this.reply(guest, { type: 'xenvmcReply', id: call.id, ok: true });
      }
      case 'evtchnAlloc': {
        const port = this.nextRef++;
        const ends: [FakePort, FakePort] = [new FakePort(this.queue), new FakePort(this.queue)];
        ends[0].peer = ends[1];
        ends[1].peer = ends[0];
        this.ports.set(port, { owner: guest.domId, peer: call.peerDomId, ends });
        return this.reply(guest, {
          type: 'xenvmcReply',
          id: call.id,
          ok: true,
          port,
          endpoint: ends[0] as never,
        });
      }
      case 'evtchnBind': {
        const channel = this.ports.get(call.port);
        if (!channel || channel.peer !== guest.domId)
          return fail('XENVMC_NOT_GRANTED', 'not yours');
        return this.reply(guest, {
          type: 'xenvmcReply',
          id: call.id,
          ok: true,
          endpoint: channel.ends[1] as never,
        });
      }
      case 'evtchnClose':
        this.ports.delete(call.port);
        return this.reply(guest, { type: 'xenvmcReply', id: call.id, ok: true });
      case 'send': {
        const peer = peerOf(call.peerDomId);
        if (!peer) return fail('XENVMC_NO_PEER', 'gone');
        this.queue.push(() =>
          peer.xenvmc.onNotice({
            type: 'xenvmcMessage',
            fromDomId: guest.domId,
            message: call.message,
          }),
        );
        return this.reply(guest, { type: 'xenvmcReply', id: call.id, ok: true });
      }
    }
  }

  switchFrames(): void {
    const [a, b] = this.guests as [Guest, Guest];
    for (const [from, to] of [
      [a, b],
      [b, a],
    ] as const) {
      if (from.paused) continue;
      for (const frame of from.tx.popMany()) if (!to.paused) to.rx.tryPush(frame);
    }
  }

  runQueue(): void {
    for (let i = 0; i < 100 && this.queue.length > 0; i++) this.queue.shift()!();
  }
}

/**
 * `net` with `read` made of `readSocketInto` over one reused target (filled with a marker
 * first, so a count too large would hand out stale bytes and break the digest).
 */
function readingInto(net: GuestNet, targetBytes: number): GuestNet {
  const target = new Uint8Array(targetBytes);
  return {
    ...net,
    read: (socket, maxBytes) => {
      const into = target.subarray(0, Math.min(maxBytes, targetBytes));
      into.fill(0xee);
      return into.subarray(0, readSocketInto(net, socket, into));
    },
  };
}

interface Run {
  a: Guest;
  b: Guest;
  world: World;
}

function exchange(
  mode: XenvmcMode,
  options: {
    bytesA: number;
    bytesB: number;
    chunk: number;
    tenantB?: string;
    steps?: (world: World, step: number, run: Run) => void;
    /** Whether a guest's program (and its stack) skips this step: a busy or slow reader. */
    stalled?: (step: number, guest: Guest) => boolean;
    /** Read with `readSocketInto` into a reused array of this size (see `readingInto`). */
    readIntoBytes?: number;
  },
): Run {
  const world = new World(mode);
  world.readIntoBytes = options.readIntoBytes ?? null;
  const a = world.add('a', 1, '10.77.0.1', options.bytesA);
  const b = world.add('b', 2, '10.77.0.2', options.bytesB, options.tenantB ?? 'mail');
  world.publish('snapshot', null);
  b.net.listen(PORT);
  a.socket = a.net.connect('10.77.0.2', PORT);
  const run = { a, b, world };
  // A run that stops making progress fails at once: one left to spin for 30 000 steps keeps
  // offering channels the peer refuses, and this test's Dom0 keeps every refused grant.
  let progress = -1;
  let progressStep = 0;
  for (let step = 0; step < 30_000 && step - progressStep < STALL_STEPS_MAX; step++) {
    const moved = a.sent + b.sent + a.received + b.received;
    if (moved !== progress) {
      progress = moved;
      progressStep = step;
    }
    world.nowMs += 1;
    options.steps?.(world, step, run);
    for (const guest of [a, b]) {
      if (options.stalled?.(step, guest)) continue;
      runTestProgram(guest, { chunkBytes: options.chunk, readBytes: 65536, writesMax: 16 });
    }
    world.switchFrames();
    world.runQueue();
    if (a.ended && b.ended && a.peerEnded && b.peerEnded) break;
  }
  const context = JSON.stringify({
    mode,
    a: a.received,
    b: b.received,
    toA: b.toSend,
    toB: a.toSend,
    xa: a.xenvmc.state.counters,
    xb: b.xenvmc.state.counters,
  });
  assert.ok(a.peerEnded && b.peerEnded, `both ends saw the end: ${context}`);
  assert.equal(b.received, a.toSend, `a -> b bytes: ${context}`);
  assert.equal(a.received, b.toSend, `b -> a bytes: ${context}`);
  assert.equal(b.receiveCrc, a.sendCrc, `a -> b digest: ${context}`);
  assert.equal(a.receiveCrc, b.sendCrc, `b -> a digest: ${context}`);
  if (process.env.XENVMC_TRACE) process.stderr.write(`${context}\n`);
  return run;
}

/** Pauses `guest` and brings it back "on another host": memory copied, no channel runtime. */
function migrate(world: World, guest: Guest): void {
  guest.paused = true;
  const saved = structuredClone({ net: guest.stack.state, xenvmc: guest.xenvmc.state });
  const memory = GuestMemory.create(guest.memory.layout);
  memory.bytes.set(guest.memory.bytes);
  guest.memory = memory;
  world.boot(guest, saved);
  guest.paused = false;
}

interface MigrationScenario {
  mode: XenvmcMode;
  bytesA: number;
  bytesB: number;
  chunk: number;
  at: number;
  who: number;
  downtimeSteps: number;
  precopySteps: number;
  /** b's program stalls this many steps up to the migration's start (and 2 after): its FIFO fills. */
  stallSteps?: number;
  /** Both programs read with `readSocketInto` into a reused array of this size. */
  readIntoBytes?: number;
}

function migrationScenario({
  mode,
  bytesA,
  bytesB,
  chunk,
  at,
  who,
  downtimeSteps,
  precopySteps,
  stallSteps = 0,
  readIntoBytes,
}: MigrationScenario): Run {
  let resumeAt = -1;
  return exchange(mode, {
    bytesA,
    bytesB,
    chunk,
    ...(readIntoBytes === undefined ? {} : { readIntoBytes }),
    stalled: (step, guest) => guest.name === 'b' && step >= at - stallSteps && step < at + 2,
    steps: (world, step, run) => {
      const moving = who === 0 ? run.a : run.b;
      if (step === at) {
        // The migration starts: the mode decides what happens to the channel.
        world.publish('migrating', moving);
        moving.xenvmc.onNotice({ type: 'migration', phase: 'started' });
        if (mode === 'xenvmc-suspend') moving.xenvmc.prepareSuspend(() => {});
      }
      if (step === at + precopySteps) {
        migrate(world, moving);
        moving.paused = true;
        resumeAt = step + downtimeSteps;
      }
      if (step === resumeAt) {
        moving.paused = false;
        world.publish('migratedOut', moving);
        moving.xenvmc.onNotice({ type: 'migration', phase: 'ended' });
        const other = moving === run.a ? run.b : run.a;
        other.stack.rewindAll(ipToU32(moving.ip));
      }
    },
  });
}

describe('XENVMC module', () => {
  it('carries a co-resident stream over the channel, the same bytes in every mode', () => {
    const digests = new Set<string>();
    for (const mode of ['off', 'xenvmc', 'xenvmc-suspend', 'advance'] as const) {
      const { a, b } = exchange(mode, { bytesA: 2_000_000, bytesB: 700_000, chunk: 65536 });
      digests.add(`${b.receiveCrc}/${a.receiveCrc}`);
      const channel =
        a.xenvmc.state.counters.channelBytesReceived + b.xenvmc.state.counters.channelBytesReceived;
      if (mode === 'off') assert.equal(channel, 0, 'off never uses a channel');
      else
        assert.ok(channel > 2_000_000, `${mode}: most bytes went through the channel (${channel})`);
    }
    assert.equal(digests.size, 1, 'identical bytes delivered in all four modes');
  });

  it('never sets up a channel between different tenants', () => {
    const { a, b } = exchange('advance', {
      bytesA: 100_000,
      bytesB: 100_000,
      chunk: 4096,
      tenantB: 'other',
    });
    assert.equal(
      a.xenvmc.state.counters.channelsSetUp + b.xenvmc.state.counters.channelsSetUp,
      0,
      'no channel',
    );
  });

  it('dirties no socket-buffer page while the channel carries the traffic', () => {
    const { a, b, world } = exchange('xenvmc', {
      bytesA: 3_000_000,
      bytesB: 0,
      chunk: 65536,
      steps: (_world, step, run) => {
        if (step === 200) {
          run.a.memory.setLogDirty(true);
          run.b.memory.setLogDirty(true);
        }
      },
    });
    void world;
    const dirtyA = a.memory.countByRegion(a.memory.peekAndClean());
    const dirtyB = b.memory.countByRegion(b.memory.peekAndClean());
    assert.ok(
      dirtyA.sockbuf + dirtyB.sockbuf <= 4,
      `sockbuf pages dirtied: ${dirtyA.sockbuf} + ${dirtyB.sockbuf}`,
    );
  });

  it('keeps every byte exactly once when the channel is cancelled or migrated at random moments', () => {
    fc.assert(
      fc.property(
        fc.record({
          mode: fc.constantFrom<XenvmcMode>('xenvmc', 'xenvmc-suspend', 'advance'),
          bytesA: fc.integer({ min: 0, max: 4_000_000 }),
          bytesB: fc.integer({ min: 0, max: 4_000_000 }),
          chunk: fc.constantFrom(100, 4096, 65536, 300_000),
          at: fc.integer({ min: 0, max: 40 }),
          who: fc.constantFrom(0, 1),
          downtimeSteps: fc.integer({ min: 0, max: 20 }),
          precopySteps: fc.integer({ min: 0, max: 12 }),
        }),
        (scenario) => {
          migrationScenario(scenario);
        },
      ),
      {
        seed: 20261125,
        numRuns: 40,
        ...(process.env.XENVMC_PATH ? { path: process.env.XENVMC_PATH } : {}),
      },
    );
  });
});

describe('XENVMC module, programs reading into their own array (readSocketInto)', () => {
  it('delivers the same bytes as read, in every mode', () => {
    for (const mode of ['off', 'xenvmc', 'xenvmc-suspend', 'advance'] as const) {
      const { a, b } = exchange(mode, {
        bytesA: 2_000_000,
        bytesB: 700_000,
        chunk: 65536,
        readIntoBytes: 70_000,
      });
      const channel =
        a.xenvmc.state.counters.channelBytesReceived + b.xenvmc.state.counters.channelBytesReceived;
      if (mode === 'off') assert.equal(channel, 0, 'off never uses a channel');
      else assert.ok(channel > 2_000_000, `${mode}: the channel carried most bytes (${channel})`);
    }
  });

  it('keeps every byte exactly once when the carrier switches between two reads into one array', () => {
    // Cancels, migrations and take-backs larger than the send buffer land between any two
    // reads of a program that reads into one array: netfront bytes, then channel bytes, then
    // netfront again (from the reader's consumed offset), in the same target.
    fc.assert(
      fc.property(
        fc.record({
          mode: fc.constantFrom<XenvmcMode>('xenvmc', 'xenvmc-suspend', 'advance'),
          bytesA: fc.integer({ min: 0, max: 6_000_000 }),
          bytesB: fc.integer({ min: 0, max: 2_000_000 }),
          chunk: fc.constantFrom(100, 4096, 65536, 300_000),
          at: fc.integer({ min: 0, max: 30 }),
          who: fc.constantFrom(0, 1),
          downtimeSteps: fc.integer({ min: 0, max: 20 }),
          precopySteps: fc.integer({ min: 0, max: 12 }),
          stallSteps: fc.integer({ min: 0, max: 6 }),
          readIntoBytes: fc.constantFrom(13, 777, 65536, 300_000),
        }),
        (scenario) => {
          migrationScenario(scenario);
        },
      ),
      { seed: 20261205, numRuns: 40 },
    );
  });
});

describe('XENVMC module, a reader kept busy', () => {
  it("ends the program's read loop after a burst even while the writer keeps the FIFO full", () => {
    const world = new World('advance');
    const a = world.add('a', 1, '10.77.0.1', 0);
    const b = world.add('b', 2, '10.77.0.2', 0);
    world.publish('snapshot', null);
    b.net.listen(PORT);
    const socketA = a.net.connect('10.77.0.2', PORT);
    let socketB: number | null = null;
    const chunk = new Uint8Array(65536).fill(5);
    // Until a's direction is on the channel (its first write after the channel is ready).
    for (let step = 0; step < 200 && a.net.info(socketA).carrier !== 'xenvmc'; step++) {
      world.nowMs += 1;
      for (const guest of [a, b]) guest.stack.poll();
      for (const event of b.events.splice(0)) if (event.type === 'accepted') socketB = event.socket;
      if (socketB !== null) while (b.net.read(socketB, 1 << 20).byteLength > 0);
      a.events.length = 0;
      a.net.write(socketA, chunk.subarray(0, 1));
      world.switchFrames();
      world.runQueue();
    }
    assert.equal(a.net.info(socketA).carrier, 'xenvmc', 'the channel carries a -> b');
    assert.ok(socketB !== null, 'b accepted');
    // A writer on "another CPU": it refills the FIFO between any two of b's reads.
    const fill = (): void => {
      while (a.net.write(socketA, chunk) === chunk.byteLength);
    };
    fill();
    let burst = 0;
    for (;;) {
      const bytes = b.net.read(socketB, 256 * 1024);
      if (bytes.byteLength === 0) break;
      burst += bytes.byteLength;
      assert.ok(burst <= CHANNEL_READ_BURST_BYTES + 256 * 1024, `no end after ${burst} B`);
      fill();
    }
    assert.ok(burst >= CHANNEL_READ_BURST_BYTES, `the loop ended after ${burst} B only`);
    // The bytes were still there: the next loop (after the next readable) reads on.
    assert.ok(b.net.read(socketB, 256 * 1024).byteLength > 0, 'the next loop reads on');
  });
});

describe('XENVMC module, channel larger than the socket buffers', () => {
  it('takes back a FIFO fuller than the send buffer (cancel and finish_mig): every byte once', () => {
    let overflowRuns = 0;
    fc.assert(
      fc.property(
        fc.record({
          mode: fc.constantFrom<XenvmcMode>('xenvmc', 'xenvmc-suspend', 'advance'),
          bytesA: fc.integer({ min: 4_000_000, max: 8_000_000 }),
          bytesB: fc.integer({ min: 0, max: 500_000 }),
          chunk: fc.constantFrom(65536, 300_000),
          // The channel is up from about step 7; a writes up to 1 MiB a step.
          at: fc.integer({ min: 7, max: 14 }),
          who: fc.constantFrom(0, 1),
          downtimeSteps: fc.integer({ min: 0, max: 20 }),
          precopySteps: fc.integer({ min: 0, max: 12 }),
          stallSteps: fc.integer({ min: 2, max: 6 }),
        }),
        (scenario) => {
          const { a } = migrationScenario(scenario);
          const sendBuffer = a.stack.state.bufferBytes;
          if (a.xenvmc.state.counters.reclaimedBytes > sendBuffer) overflowRuns++;
        },
      ),
      {
        seed: 20261126,
        numRuns: 30,
        ...(process.env.XENVMC_PATH ? { path: process.env.XENVMC_PATH } : {}),
      },
    );
    assert.ok(overflowRuns >= 5, `only ${overflowRuns} runs took back more than a send buffer`);
  });
});

if (process.env.XENVMC_CASE) {
  it('replays XENVMC_CASE', () => {
    migrationScenario(JSON.parse(process.env.XENVMC_CASE!) as MigrationScenario);
  });
}
