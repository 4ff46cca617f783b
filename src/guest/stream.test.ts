/**
 * Goal: a stream delivers every byte exactly once and in order whatever the channel does
 * around a migration (drop, duplicate, reorder, pause then rewind), whatever carrier moves the
 * bytes, and across a structured-clone of its state; connects fail with the right error; and
 * the bytes dirty the socket buffers (and rings) of both domains.
 *
 * Method: two StreamConnections in two GuestMemory objects joined by a simulated channel on
 * virtual time, driven by fast-check with fixed seeds; running SHA-256 of the bytes each
 * program wrote against the bytes the other program read.
 */
import assert from 'node:assert/strict';
import { createHash, type Hash } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Random } from '../core/random.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout } from '../memory/layout.ts';
import {
  decodeFrame,
  encodeFrame,
  type Frame,
  ipToU32,
  isFrameDecodeError,
  refusalFor,
} from '../net/frame.ts';
import { NetfrontRing } from '../net/netfront-ring.ts';
import { NetError } from './net-errors.ts';
import { type StreamBuffersInit, StreamConnection, type StreamState } from './stream.ts';

const PAGES = 4096;
const IPS = [ipToU32('10.77.0.2'), ipToU32('10.77.0.3')] as const;
const PORTS = [40001, 25] as const;

function buffersIn(memory: GuestMemory, bufferBytes: number): StreamBuffersInit {
  const base = memory.regionAddress('sockbuf');
  const stride = Math.ceil(bufferBytes / PAGE_SIZE_BYTES) * PAGE_SIZE_BYTES;
  return {
    sendBufferAddress: base,
    receiveBufferAddress: base + stride,
    sendBufferBytes: bufferBytes,
    receiveBufferBytes: bufferBytes,
  };
}

interface Faults {
  lossRate: number;
  duplicateRate: number;
  /** Chance that a frame is held back 1-4 steps, so later frames overtake it. */
  delayRate: number;
}

const NO_FAULTS: Faults = { lossRate: 0, duplicateRate: 0, delayRate: 0 };

/**
 * Two domains and the wire between them. Side 0 connects, side 1 accepts on the first SYN.
 * One step: timers, both sides transmit, the channel delivers what is due.
 */
class Pair {
  readonly memories: GuestMemory[];
  readonly conns: (StreamConnection | null)[] = [null, null];
  /** Frames in flight towards side i, with the step at which they arrive. */
  private readonly inFlight: { dueStep: number; bytes: Uint8Array }[][] = [[], []];
  nowMs = 0;
  step = 0;
  paused = false;

  constructor(
    private readonly options: {
      bufferBytes: number;
      faults: Faults;
      random: Random;
      maxFramesPerStep: number;
    },
  ) {
    this.memories = [0, 1].map(() => GuestMemory.create(defaultLayout(PAGES)));
    this.conns[0] = StreamConnection.connect(this.memories[0]!, {
      ...buffersIn(this.memories[0]!, options.bufferBytes),
      localIp: IPS[0],
      localPort: PORTS[0],
      remoteIp: IPS[1],
      remotePort: PORTS[1],
      nonce: options.random.nextU32(),
    });
  }

  conn(side: number): StreamConnection {
    const conn = this.conns[side];
    assert(conn, `side ${side} has no stream yet`);
    return conn;
  }

  get idle(): boolean {
    return this.inFlight[0]!.length === 0 && this.inFlight[1]!.length === 0;
  }

  runStep(): void {
    this.step++;
    let sent = 0;
    for (const side of [0, 1]) {
      const conn = this.conns[side];
      if (!conn) continue;
      conn.onTimer(this.nowMs);
      const frames = conn.nextFrames(this.nowMs, { maxFrames: this.options.maxFramesPerStep });
      for (const frame of frames) this.send(1 - side, encodeFrame(frame));
      sent += frames.length;
    }
    this.deliver();
    // Virtual time: one ms per busy step; an idle wire skips to the next timer.
    const timers = this.conns.map((c) => c?.nextTimerMs() ?? null).filter((t) => t !== null);
    const next = Math.min(...timers);
    this.nowMs = sent === 0 && this.idle && timers.length > 0 ? next : this.nowMs + 1;
  }

  /** Ends a pause the way a resumed migration does: rings were reset, both sides rewind. */
  resume(): void {
    this.paused = false;
    for (const conn of this.conns) conn?.rewind(conn.state.sendAcked);
  }

  /** Moves side `side` to fresh memory through a structured clone, as a migration would. */
  migrate(side: number): void {
    const memory = GuestMemory.create(defaultLayout(PAGES));
    memory.bytes.set(this.memories[side]!.bytes);
    const state: StreamState = structuredClone(this.conn(side).state);
    this.memories[side] = memory;
    this.conns[side] = StreamConnection.restore(memory, state);
    this.inFlight[0] = [];
    this.inFlight[1] = [];
    for (const conn of this.conns) conn?.rewind(conn.state.sendAcked);
  }

  private send(to: number, bytes: Uint8Array): void {
    const { faults, random } = this.options;
    if (this.paused || random.nextFloat() < faults.lossRate) return;
    const copies = random.nextFloat() < faults.duplicateRate ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const delay = random.nextFloat() < faults.delayRate ? 1 + random.nextInt(4) : 0;
      this.inFlight[to]!.push({ dueStep: this.step + delay, bytes });
    }
  }

  private deliver(): void {
    for (const to of [0, 1]) {
      const queue = this.inFlight[to]!;
      const due = queue.filter((item) => item.dueStep <= this.step);
      this.inFlight[to] = queue.filter((item) => item.dueStep > this.step);
      if (this.paused) continue;
      for (const { bytes } of due) this.receive(to, bytes);
    }
  }

  private receive(to: number, bytes: Uint8Array): void {
    const frame = decodeFrame(bytes);
    assert(!isFrameDecodeError(frame), 'the codec round-trips');
    if (!this.conns[to]) {
      if (frame.kind !== 'syn') return;
      const buffers = buffersIn(this.memories[to]!, this.options.bufferBytes);
      this.conns[to] = StreamConnection.accept(this.memories[to]!, buffers, frame);
    }
    this.conn(to).onFrame(frame, this.nowMs);
  }
}

/** One program's side of a transfer: writes its planned chunks, then ends; reads to EOF. */
class Program {
  private readonly random: Random;
  private readonly writeSizes: number[];
  private chunk: Uint8Array | null = null;
  private position = 0;
  private readIndex = 0;
  readonly written: Hash = createHash('sha256');
  readonly read: Hash = createHash('sha256');
  bytesWritten = 0;
  bytesRead = 0;
  ended = false;

  constructor(
    seed: number,
    writeSizes: number[],
    private readonly readSizes: number[],
  ) {
    this.random = new Random(seed);
    this.writeSizes = [...writeSizes];
  }

  run(conn: StreamConnection | null): void {
    if (!conn) return;
    if (!this.chunk && this.writeSizes.length > 0) {
      this.chunk = new Uint8Array(this.writeSizes.shift()!);
      this.random.fill(this.chunk);
      this.position = 0;
    }
    if (this.chunk) {
      const accepted = conn.write(this.chunk.subarray(this.position));
      this.written.update(this.chunk.subarray(this.position, this.position + accepted));
      this.position += accepted;
      this.bytesWritten += accepted;
      if (this.position === this.chunk.byteLength) this.chunk = null;
    }
    if (!this.chunk && this.writeSizes.length === 0 && !this.ended) {
      conn.end();
      this.ended = true;
    }
    const size = this.readSizes[this.readIndex++ % this.readSizes.length]!;
    const bytes = conn.read(size);
    this.read.update(bytes);
    this.bytesRead += bytes.byteLength;
  }
}

interface TransferParams {
  seed: number;
  bufferBytes: number;
  faults: Faults;
  writeSizes: [number[], number[]];
  readSizes: number[];
  /** Steps at which a pause starts, and how many steps each lasts. */
  pauses: { atStep: number; steps: number }[];
  /** Steps at which the accepting side migrates (structured clone). */
  migrations?: number[];
}

const STEP_LIMIT = Number(process.env.STEP_LIMIT ?? 200_000);

/** Runs a whole transfer both ways to close; returns the pair and the programs. */
function transfer(params: TransferParams): { pair: Pair; programs: Program[] } {
  const random = new Random(params.seed);
  const pair = new Pair({
    bufferBytes: params.bufferBytes,
    faults: params.faults,
    random,
    maxFramesPerStep: 64,
  });
  const programs = [0, 1].map(
    (side) => new Program(params.seed + side + 1, params.writeSizes[side]!, params.readSizes),
  );
  const pauseEnds = new Map<number, number>();
  for (const pause of params.pauses) pauseEnds.set(pause.atStep, pause.atStep + pause.steps);
  let pauseEnd = -1;
  const done = (): boolean =>
    pair.idle &&
    pair.conns.every((conn) => conn !== null && conn.state.phase === 'closed' && conn.eof);
  while (!done()) {
    assert(pair.step < STEP_LIMIT, `no progress after ${STEP_LIMIT} steps: ${report(pair)}`);
    const end = pauseEnds.get(pair.step);
    if (end !== undefined && !pair.paused) {
      pair.paused = true;
      pauseEnd = end;
    }
    if (pair.paused && pair.step >= pauseEnd) pair.resume();
    if (params.migrations?.includes(pair.step) && pair.conns[1]) pair.migrate(1);
    programs.forEach((program, side) => {
      program.run(pair.conns[side] ?? null);
    });
    pair.runStep();
  }
  return { pair, programs };
}

/**
 * A pair over a link that loses and duplicates frames at `lossRate` and delays some, run until
 * connected and idle; `random` drives the link and is the test's to use after.
 */
function connectedLossyPair(
  seed: number,
  bufferBytes: number,
  lossRate: number,
): { pair: Pair; random: Random } {
  const random = new Random(seed);
  const faults = { lossRate, duplicateRate: lossRate, delayRate: 0.1 };
  const pair = new Pair({ bufferBytes, faults, random, maxFramesPerStep: 16 });
  for (let i = 0; i < 10_000 && !(pair.conns[1]?.connected && pair.idle); i++) pair.runStep();
  return { pair, random };
}

function report(pair: Pair): string {
  return JSON.stringify(pair.conns.map((conn) => conn?.state));
}

/** Both directions arrived whole and once: equal counts and equal running digests. */
function assertExactlyOnce(pair: Pair, programs: Program[]): void {
  for (const side of [0, 1]) {
    const sender = programs[side]!;
    const receiver = programs[1 - side]!;
    assert.equal(receiver.bytesRead, sender.bytesWritten, `bytes ${side} -> ${1 - side}`);
    assert.equal(receiver.read.digest('hex'), sender.written.digest('hex'), 'digests match');
    const conn = pair.conn(1 - side);
    assert.equal(conn.state.counters.bytesAccepted, sender.bytesWritten, 'accepted once');
    assert.ok(conn.eof, 'eof');
  }
}

/** A rate in [0, max/1000]; fc.double would mostly give denormals near 0. */
const permille = (max: number) => fc.integer({ min: 0, max }).map((value) => value / 1000);

const size = fc.oneof(
  { arbitrary: fc.integer({ min: 1, max: 300 * 1024 }), weight: 3 },
  { arbitrary: fc.integer({ min: 1, max: 5000 }), weight: 2 },
);

describe('StreamConnection', () => {
  it('a stream delivers every byte exactly once and in order over a channel that drops, duplicates, reorders and pauses', () => {
    const params = fc.record({
      seed: fc.integer({ min: 0, max: 2 ** 31 }),
      bufferBytes: fc.constantFrom(8192, 65536 + 123, 256 * 1024),
      faults: fc.record({
        lossRate: permille(50),
        duplicateRate: permille(50),
        delayRate: permille(100),
      }),
      writeSizes: fc.tuple(
        fc.array(size, { minLength: 0, maxLength: 6 }),
        fc.array(size, { minLength: 0, maxLength: 6 }),
      ),
      readSizes: fc.array(size, { minLength: 1, maxLength: 8 }),
      pauses: fc.array(
        fc.record({
          atStep: fc.integer({ min: 0, max: 100 }),
          steps: fc.integer({ min: 1, max: 60 }),
        }),
        { maxLength: 3 },
      ),
    });
    let retransmitted = 0;
    fc.assert(
      fc.property(params, (p) => {
        const { pair, programs } = transfer(p);
        assertExactlyOnce(pair, programs);
        retransmitted += pair.conn(0).state.counters.bytesRetransmitted;
      }),
      { seed: 1234, numRuns: 150 },
    );
    assert.ok(retransmitted > 0, 'the faults made the streams retransmit');
  });

  it('survives structuredClone of its state mid-transfer (restore over migrated memory)', () => {
    const { pair, programs } = transfer({
      seed: 5,
      bufferBytes: 256 * 1024,
      faults: { lossRate: 0.01, duplicateRate: 0.01, delayRate: 0.02 },
      writeSizes: [[300 * 1024, 70_000], [200_000]],
      readSizes: [30_000, 1, 9000],
      pauses: [],
      migrations: [3, 10, 11, 20],
    });
    assertExactlyOnce(pair, programs);
    assert.ok(pair.conn(1).state.counters.rewinds >= 4, 'migrated four times');
  });

  it('refuses a connect: closed port ECONNREFUSED, unknown IP EHOSTUNREACH', () => {
    for (const [kind, code] of [
      ['rst', 'ECONNREFUSED'],
      ['unreachable', 'EHOSTUNREACH'],
    ] as const) {
      const pair = new Pair({
        bufferBytes: 8192,
        faults: NO_FAULTS,
        random: new Random(1),
        maxFramesPerStep: 64,
      });
      const conn = pair.conn(0);
      conn.write(new Uint8Array(10));
      const [syn] = conn.nextFrames(0);
      assert.equal(syn?.kind, 'syn');
      assert.equal(conn.nextTimerMs(), 200);
      const refusal = refusalFor(syn, kind);
      assert.ok(refusal, 'a refusal');
      conn.onFrame(refusal, 1);
      assert.equal(conn.state.phase, 'reset');
      assert.equal(conn.error?.code, code);
      assert.ok(conn.error instanceof NetError, 'a NetError');
      assert.throws(() => conn.write(new Uint8Array(1)), { code });
      assert.deepEqual(conn.nextFrames(2), []);
      assert.equal(conn.nextTimerMs(), null);
      assert.equal(conn.writable, false);
    }
  });

  it('retransmits a lost SYN with backoff from 200 ms to 2 s', () => {
    const pair = new Pair({
      bufferBytes: 8192,
      faults: NO_FAULTS,
      random: new Random(1),
      maxFramesPerStep: 64,
    });
    const conn = pair.conn(0);
    const deadlines: number[] = [];
    let nowMs = 0;
    for (let attempt = 0; attempt < 7; attempt++) {
      assert.equal(conn.nextFrames(nowMs)[0]?.kind, 'syn');
      const deadline = conn.nextTimerMs();
      assert.ok(deadline !== null, 'armed');
      conn.onTimer(deadline - 1);
      assert.deepEqual(conn.nextFrames(deadline - 1), [], 'nothing before the deadline');
      deadlines.push(deadline - nowMs);
      nowMs = deadline;
      conn.onTimer(nowMs);
    }
    assert.deepEqual(deadlines, [200, 400, 800, 1600, 2000, 2000, 2000]);
    assert.equal(conn.state.counters.retransmitTimeouts, 7);
  });

  it('drops frames of another connection (stale nonce, wrong port) and ignores their RST', () => {
    const pair = new Pair({
      bufferBytes: 8192,
      faults: NO_FAULTS,
      random: new Random(2),
      maxFramesPerStep: 64,
    });
    while (!pair.conns[1]?.connected) pair.runStep();
    const sender = pair.conn(0);
    const receiver = pair.conn(1);
    sender.write(new Uint8Array([1, 2, 3]));
    const [data] = sender.nextFrames(pair.nowMs);
    assert.equal(data?.kind, 'data');
    const stale: Frame[] = [
      { ...data, nonce: (data.nonce + 1) >>> 0 },
      { ...data, sourcePort: data.sourcePort + 1 },
      { ...data, sourceIp: data.sourceIp + 1 },
      { ...data, kind: 'rst', payload: new Uint8Array(0), nonce: (data.nonce + 1) >>> 0 },
    ];
    for (const frame of stale) receiver.onFrame(frame, pair.nowMs);
    assert.equal(receiver.state.counters.staleFramesDropped, 4);
    assert.equal(receiver.readableBytes, 0);
    assert.equal(receiver.state.phase, 'established');
    receiver.onFrame(data, pair.nowMs);
    assert.deepEqual(receiver.read(10), new Uint8Array([1, 2, 3]));
    assert.throws(() => {
      sender.end();
      sender.write(new Uint8Array(1));
    }, /EPIPE|write after end/);
  });

  it('moves bytes by a carrier without frames, then switches to frames at receiveNext', () => {
    const pair = new Pair({
      bufferBytes: 65536,
      faults: NO_FAULTS,
      random: new Random(3),
      maxFramesPerStep: 64,
    });
    while (!pair.conns[1]?.connected) pair.runStep();
    const sender = pair.conn(0);
    const receiver = pair.conn(1);
    const random = new Random(33);
    const data = new Uint8Array(4_000_000);
    random.fill(data);
    let written = 0;
    const received: Uint8Array[] = [];
    // The shared-memory carrier: copy what the window allows; acknowledge directly.
    const move = (length: number, fate: 'delivered' | 'unacknowledged' | 'lost'): void => {
      written += sender.write(data.subarray(written));
      const range = sender.sendableRange();
      const count = Math.min(range.length, length);
      if (count > 0) {
        const bytes = sender.readSendBuffer(range.offset, count);
        sender.markTransmitted(range.offset + count);
        if (fate !== 'lost') assert.equal(receiver.acceptAt(range.offset, bytes), count);
      }
      if (fate === 'delivered') {
        received.push(receiver.read(1 + random.nextInt(70_000)));
        sender.acknowledge(receiver.ackOffset, receiver.receiveWindow);
      }
    };
    for (let i = 0; i < 150; i++) move(1 + random.nextInt(20_000), 'delivered');
    received.push(receiver.read(1 << 20));
    sender.acknowledge(receiver.ackOffset, receiver.receiveWindow);
    // The carrier is torn down: its last acknowledgements and bytes in its FIFO are lost.
    for (let i = 0; i < 5; i++) move(5000, 'unacknowledged');
    for (let i = 0; i < 5; i++) move(5000, 'lost');
    assert.ok(sender.state.sendAcked < receiver.state.receiveNext, 'some acks never arrived');
    assert.ok(receiver.state.receiveNext < sender.state.sendNext, 'some bytes died in the FIFO');
    // Carrier switch: resume from what the receiver has accepted.
    sender.rewind(receiver.state.receiveNext);
    assert.equal(sender.state.sendAcked, receiver.state.receiveNext);
    for (let step = 0; step < 100_000 && !receiver.eof; step++) {
      if (written < data.byteLength) written += sender.write(data.subarray(written));
      if (written === data.byteLength) sender.end();
      received.push(receiver.read(50_000));
      pair.runStep();
    }
    assert.ok(receiver.eof, 'eof');
    assert.deepEqual(Buffer.concat(received), Buffer.from(data));
    assert.equal(receiver.state.counters.duplicateBytesDropped, 0, 'nothing sent twice');
  });

  it('takes back more than its send buffer holds after a channel: every byte once, in order, across faults and a migration', () => {
    // A channel's FIFO may be larger than the send buffer: at tear-down the sender takes back
    // what the receiver never read, the send buffer holds what fits, `sendOverflow` the rest.
    fc.assert(
      fc.property(
        fc.record({
          seed: fc.integer({ min: 0, max: 2 ** 31 }),
          bufferBytes: fc.constantFrom(4096, 16384, 65536),
          channelBytes: fc.integer({ min: 1, max: 600_000 }),
          readShare: fc.double({ min: 0, max: 1, noNaN: true }),
          laterBytes: fc.integer({ min: 0, max: 100_000 }),
          lossRate: fc.constantFrom(0, 0.05),
          migrateAtStep: fc.option(fc.integer({ min: 0, max: 60 }), { nil: null }),
        }),
        (p) => {
          const { pair, random } = connectedLossyPair(p.seed, p.bufferBytes, p.lossRate);
          const data = new Uint8Array(p.channelBytes + p.laterBytes);
          new Random(p.seed + 1).fill(data);
          const received: Uint8Array[] = [];
          // The channel carries channelBytes; the receiver's program reads readBytes of them.
          const readBytes = Math.floor(p.readShare * p.channelBytes);
          pair.conn(0).sentByCarrier(p.channelBytes);
          pair.conn(1).receivedByCarrier(readBytes);
          received.push(data.subarray(0, readBytes));
          // Tear-down: the rest comes back to the sender, more than its buffer may hold.
          pair.conn(0).reclaim(readBytes, data.slice(readBytes, p.channelBytes));
          const overflow = p.channelBytes - readBytes - p.bufferBytes;
          assert.equal(
            pair.conn(0).state.sendOverflow?.byteLength ?? 0,
            Math.max(0, overflow),
            'what does not fit waits in sendOverflow',
          );
          if (overflow > 0) assert.equal(pair.conn(0).writableBytes, 0, 'no writes meanwhile');
          let written = p.channelBytes;
          let ended = false;
          for (let step = 0; step < STEP_LIMIT && !pair.conn(1).eof; step++) {
            if (step === p.migrateAtStep) pair.migrate(0);
            const sender = pair.conn(0);
            if (written < data.byteLength) written += sender.write(data.subarray(written));
            if (written === data.byteLength && !ended) {
              sender.end();
              ended = true;
            }
            received.push(pair.conn(1).read(1 + random.nextInt(40_000)));
            pair.runStep();
          }
          assert.ok(pair.conn(1).eof, `the receiver reached the end: ${report(pair)}`);
          assert.equal(pair.conn(0).state.sendOverflow, null, 'everything taken back was sent');
          assert.ok(
            Buffer.concat(received).equals(Buffer.from(data)),
            'the receiver got every byte once, in order',
          );
        },
      ),
      { seed: 4242, numRuns: 60 },
    );
  });

  it('reads into one reused array across carrier switches: netfront, channel, take-back, netfront', () => {
    // The receiving program reads with `readInto` into one array throughout: netfront bytes,
    // then a channel's (the FIFO's `readInto` into the same array, `receivedByCarrier`), then,
    // after the tear-down, what the sender took back and later bytes over netfront again.
    fc.assert(
      fc.property(
        fc.record({
          seed: fc.integer({ min: 0, max: 2 ** 31 }),
          bufferBytes: fc.constantFrom(4096, 65536),
          beforeBytes: fc.integer({ min: 0, max: 200_000 }),
          channelBytes: fc.integer({ min: 1, max: 600_000 }),
          readShare: fc.double({ min: 0, max: 1, noNaN: true }),
          laterBytes: fc.integer({ min: 0, max: 100_000 }),
          targetBytes: fc.constantFrom(1, 1000, 65536, 300_000),
          lossRate: fc.constantFrom(0, 0.05),
          migrateAtStep: fc.option(fc.integer({ min: 0, max: 60 }), { nil: null }),
        }),
        (p) => {
          const { pair } = connectedLossyPair(p.seed, p.bufferBytes, p.lossRate);
          const data = new Uint8Array(p.beforeBytes + p.channelBytes + p.laterBytes);
          new Random(p.seed + 1).fill(data);
          const target = new Uint8Array(p.targetBytes);
          const received: Uint8Array[] = [];
          const readAll = (): void => {
            for (;;) {
              target.fill(0xee); // a count too large would hand out these
              const count = pair.conn(1).readInto(target);
              if (count === 0) return;
              received.push(target.slice(0, count));
            }
          };
          // Netfront until the sender is quiescent and the receiver read everything.
          let written = 0;
          for (let step = 0; step < STEP_LIMIT; step++) {
            if (written < p.beforeBytes)
              written += pair.conn(0).write(data.subarray(written, p.beforeBytes));
            readAll();
            pair.runStep();
            if (written === p.beforeBytes && pair.conn(0).sendQuiescent && pair.idle) {
              readAll();
              if (pair.conn(1).receiveQuiescent) break;
            }
          }
          assert.ok(pair.conn(1).receiveQuiescent, `netfront part read: ${report(pair)}`);
          // The channel: its FIFO is `data[beforeBytes, +channelBytes)`; the reader takes
          // readBytes of it, a target's worth at a time, into the same array.
          const readBytes = Math.floor(p.readShare * p.channelBytes);
          pair.conn(0).sentByCarrier(p.channelBytes);
          for (let done = 0; done < readBytes; ) {
            const count = Math.min(p.targetBytes, readBytes - done);
            const from = p.beforeBytes + done;
            target.set(data.subarray(from, from + count));
            pair.conn(1).receivedByCarrier(count);
            received.push(target.slice(0, count));
            done += count;
          }
          // Tear-down: the unread rest goes back to the sender (maybe into sendOverflow).
          const consumed = p.beforeBytes + readBytes;
          pair.conn(0).reclaim(consumed, data.slice(consumed, p.beforeBytes + p.channelBytes));
          written = p.beforeBytes + p.channelBytes;
          let ended = false;
          for (let step = 0; step < STEP_LIMIT && !pair.conn(1).eof; step++) {
            if (step === p.migrateAtStep) pair.migrate(0);
            const sender = pair.conn(0);
            if (written < data.byteLength) written += sender.write(data.subarray(written));
            if (written === data.byteLength && !ended) {
              sender.end();
              ended = true;
            }
            readAll();
            pair.runStep();
          }
          assert.ok(pair.conn(1).eof, `the receiver reached the end: ${report(pair)}`);
          assert.ok(
            Buffer.concat(received).equals(Buffer.from(data)),
            'the receiver got every byte once, in order, into its one array',
          );
        },
      ),
      { seed: 20261205, numRuns: 40 },
    );
  });

  it('dirties both domains: sockbuf through the socket buffers, kernel through the rings', () => {
    const pair = new Pair({
      bufferBytes: 256 * 1024,
      faults: NO_FAULTS,
      random: new Random(4),
      maxFramesPerStep: 64,
    });
    while (!pair.conns[1]?.connected) pair.runStep();
    const [memoryA, memoryB] = pair.memories as [GuestMemory, GuestMemory];
    const rings = [memoryA, memoryB].map((memory) => {
      const address = memory.regionAddress('kernel');
      const tx = new NetfrontRing(memory, { address });
      const rx = new NetfrontRing(memory, { address: address + NetfrontRing.bytesNeeded({}) });
      return { tx, rx };
    });
    memoryA.setLogDirty(true);
    memoryB.setLogDirty(true);
    const sender = pair.conn(0);
    const receiver = pair.conn(1);
    assert.equal(sender.write(new Uint8Array(64 * 1024).fill(7)), 64 * 1024);
    let read = 0;
    for (let round = 0; round < 10 && read < 64 * 1024; round++) {
      // Guest -> TX ring -> Dom0 bridge -> peer's RX ring -> peer guest, both ways, with the
      // zero-copy ring calls: encode into the slot, copy slot to slot, decode from the slot.
      for (const [side, conn] of [sender, receiver].entries()) {
        const frames = conn.nextFrames(round);
        const pushed = rings[side]!.tx.pushEach(frames, (frame, slot) => encodeFrame(frame, slot));
        assert.equal(pushed, frames.length, 'the TX ring had room');
        const peerRx = rings[1 - side]!.rx;
        rings[side]!.tx.popEach((bytes) => peerRx.pushMany([bytes]) === 1);
      }
      for (const [side, conn] of [sender, receiver].entries()) {
        rings[side]!.rx.popEach((bytes) => {
          const frame = decodeFrame(bytes);
          assert.ok(!isFrameDecodeError(frame), 'decodes');
          conn.onFrame(frame, round);
          return true;
        });
      }
      read += receiver.read(1 << 20).byteLength;
    }
    assert.equal(read, 64 * 1024);
    const dirtyA = memoryA.countByRegion(memoryA.peekAndClean());
    const dirtyB = memoryB.countByRegion(memoryB.peekAndClean());
    assert.equal(dirtyA.sockbuf, 16, 'the sender dirtied its 64 KiB send buffer');
    assert.equal(dirtyB.sockbuf, 16, 'the receiver dirtied 64 KiB of receive buffer');
    // 17 DATA frames of at most 4056 B: 17 TX slots + its control page (plus RX for ACKs).
    assert.ok(dirtyA.kernel >= 18, `sender kernel pages ${dirtyA.kernel}`);
    assert.ok(dirtyB.kernel >= 18, `receiver kernel pages ${dirtyB.kernel}`);
    assert.equal(dirtyA.program + dirtyA.pagecache + dirtyB.program + dirtyB.pagecache, 0);
  });
});
