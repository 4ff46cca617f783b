/**
 * The guest kernel's network stack: netfront (a TX and an RX ring in the kernel region of guest
 * memory), the table of sockets and listeners, socket-buffer allocation in the 'sockbuf'
 * region, and the `GuestNet` calls programs make. Streams are `StreamConnection`s (stream.ts);
 * this file only multiplexes them, moves their frames through the rings and turns their state
 * changes into program events.
 *
 * Method. Work happens in `poll()`, which the kernel runs after every guest event (a program
 * event, an RX notification from Dom0, a timer) rather than inside each call, so that frames
 * are batched: one ring publish and one notification to Dom0 per poll. All state is plain data
 * (`NetstackState`), saved in the GuestState at a pause.
 *
 * After a migration the rings are reset, as netfront reconnects to a fresh netback in Xen:
 * frames that were in flight are lost, and every stream rewinds to what its peer acknowledged,
 * so nothing is lost or duplicated (principle 2).
 *
 * Non-goals: UDP, IP fragmentation, routing inside the guest (Dom0 routes), port reuse rules.
 */
import { InputError } from '../core/errors.ts';
import { Random } from '../core/random.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import type { GuestMemory } from '../memory/guest-memory.ts';
import { type MemoryLayout, regionByName } from '../memory/layout.ts';
import {
  decodeFrame,
  encodeFrame,
  type Frame,
  ipToU32,
  isFrameDecodeError,
  maxPayloadBytes,
  refusalFor,
  u32ToIp,
} from '../net/frame.ts';
import {
  NETFRONT_SLOT_COUNT,
  NETFRONT_SLOT_SIZE_BYTES,
  STREAM_BUFFER_BYTES_MAX,
  STREAM_LINGER_MS,
} from '../net/limits.ts';
import { NetfrontRing } from '../net/netfront-ring.ts';
import type { CarriedStream, StreamCarrier } from './carrier.ts';
import { NetError } from './net-errors.ts';
import type { GuestNet, SocketEvent, SocketId, SocketInfo } from './socket-api.ts';
import { StreamConnection, type StreamState } from './stream.ts';

/** Ephemeral ports, as Linux's default ip_local_port_range. */
const EPHEMERAL_PORT_FIRST = 32768;
const EPHEMERAL_PORT_LAST = 60999;
/** Socket buffers: Linux starts TCP buffers small and autotunes up to a few MiB; we give each
 *  stream a fixed share of the sockbuf region, at most this much per direction. */
const SOCKET_BUFFER_BYTES_MAX = 256 * 1024;
const SOCKET_BUFFER_BYTES_MIN = 16 * 1024;
/** The sockbuf region is cut for at least this many concurrent streams. */
export const SOCKET_SLOTS_MIN = 8;
/** Smallest buffer a domain may ask for: one page (one netfront slot's worth of payload). */
export const SOCKET_BUFFER_BYTES_REQUEST_MIN = PAGE_SIZE_BYTES;

/** How the sockbuf region is cut: slots of one send and one receive buffer each. */
export interface SocketBufferPlan {
  /** Bytes of each buffer (per direction). */
  bufferBytes: number;
  slotCount: number;
}

/**
 * Cuts a domain's sockbuf region into socket slots. By default each buffer gets a sixteenth of
 * the region, within [16 KiB, 256 KiB] (16 slots in a 64 MiB domain). A domain that holds many
 * concurrent connections asks for smaller buffers instead (`socketBufferBytes`, as Linux's
 * `tcp_wmem`/`tcp_rmem` start at 16 KiB): 1000 connections at 256 KiB would need 500 MiB of
 * sockbuf. The asked size must be whole pages (so dirty pages stay attributable to one
 * buffer), at most `STREAM_BUFFER_BYTES_MAX`, and leave at least `SOCKET_SLOTS_MIN` slots.
 * Throws `InputError` naming the field; Dom0 calls it before booting the domain.
 */
export function socketBufferPlan(
  layout: MemoryLayout,
  socketBufferBytes?: number,
): SocketBufferPlan {
  const sockbufBytes = regionByName(layout, 'sockbuf').pageCount * PAGE_SIZE_BYTES;
  let bufferBytes: number;
  if (socketBufferBytes === undefined) {
    const perDirection =
      Math.floor(sockbufBytes / (2 * SOCKET_SLOTS_MIN) / PAGE_SIZE_BYTES) * PAGE_SIZE_BYTES;
    bufferBytes = Math.max(
      SOCKET_BUFFER_BYTES_MIN,
      Math.min(SOCKET_BUFFER_BYTES_MAX, perDirection),
    );
  } else {
    bufferBytes = socketBufferBytes;
    if (
      !Number.isSafeInteger(bufferBytes) ||
      bufferBytes < SOCKET_BUFFER_BYTES_REQUEST_MIN ||
      bufferBytes > STREAM_BUFFER_BYTES_MAX ||
      bufferBytes % PAGE_SIZE_BYTES !== 0
    ) {
      throw new InputError(
        `socketBufferBytes must be a whole number of ${PAGE_SIZE_BYTES} B pages in [${SOCKET_BUFFER_BYTES_REQUEST_MIN}, ${STREAM_BUFFER_BYTES_MAX}]; got ${String(socketBufferBytes)}`,
      );
    }
    if (Math.floor(sockbufBytes / (2 * bufferBytes)) < SOCKET_SLOTS_MIN) {
      throw new InputError(
        `socketBufferBytes ${bufferBytes} leaves fewer than ${SOCKET_SLOTS_MIN} socket slots in the ${sockbufBytes} B sockbuf region (each slot holds two buffers)`,
      );
    }
  }
  return { bufferBytes, slotCount: Math.floor(sockbufBytes / (2 * bufferBytes)) };
}

/** Where netfront's rings sit: the first pages of the kernel region. */
export interface NetfrontPlacement {
  txAddress: number;
  rxAddress: number;
  slotCount: number;
  slotSizeBytes: number;
}

/** Computes the ring placement for a domain's memory (Dom0 computes the same). */
export function netfrontPlacement(memory: GuestMemory): NetfrontPlacement {
  const slotCount = NETFRONT_SLOT_COUNT;
  const slotSizeBytes = NETFRONT_SLOT_SIZE_BYTES;
  const ringBytes = NetfrontRing.bytesNeeded({ slotCount, slotSizeBytes });
  const kernel = memory.region('kernel');
  const txAddress = kernel.firstPage * PAGE_SIZE_BYTES;
  const rxAddress = txAddress + ringBytes;
  if (2 * ringBytes > kernel.pageCount * PAGE_SIZE_BYTES) {
    throw new NetError(
      'ENOBUFS',
      `the kernel region (${kernel.pageCount} pages) cannot hold two netfront rings`,
    );
  }
  return { txAddress, rxAddress, slotCount, slotSizeBytes };
}

interface SocketEntry {
  id: SocketId;
  programId: number;
  /** The socket-buffer slot the stream's buffers occupy. */
  slot: number;
  stream: StreamState;
  /** What has been reported to the program, so each event fires once. */
  reportedConnected: boolean;
  reportedEnd: boolean;
  reportedError: boolean;
  bytesAcceptedReported: number;
  wantWritable: boolean;
  /** The program closed it: drop it once it is finished. */
  closing: boolean;
  /** Guest time at which a finished stream is forgotten (it ACKs a resent FIN until then). */
  lingerUntilMs: number | null;
  bytesRead: number;
  bytesWritten: number;
  /** A `readable` for bytes held by another carrier was delivered and not yet read out. */
  carrierReadableTold: boolean;
  /** A FIN that arrived while another carrier still held bytes before it. */
  parkedFinOffset: number | null;
}

/** The stack's whole state (plain data). */
export interface NetstackState {
  ip: number | null;
  placement: NetfrontPlacement;
  bufferBytes: number;
  freeSlots: number[];
  sockets: SocketEntry[];
  listeners: { port: number; programId: number }[];
  nextSocketId: number;
  nextEphemeralPort: number;
  random: [number, number, number, number];
  counters: NetstackCounters;
}

export interface NetstackCounters {
  framesSent: number;
  framesReceived: number;
  framesMalformed: number;
  framesRefused: number;
  txRingFull: number;
}

export interface NetstackComponents {
  memory: GuestMemory;
  nowMs: () => number;
  /** Kick Dom0: the TX ring has new frames, or RX slots were freed (the event channel). */
  notifyBackend: () => void;
  /** Deliver an event to a program (the kernel dispatches it as a guest event). */
  deliver: (programId: number, event: SocketEvent) => void;
  /** Ask for `poll()` to run at guest time `dueMs` (retransmit timers); null cancels. */
  setTimer: (dueMs: number | null) => void;
  /** Another carrier for co-resident peers (the XENVMC module), if the kernel has one. */
  carrier?: StreamCarrier;
}

export class Netstack {
  readonly state: NetstackState;
  private readonly components: NetstackComponents;
  private readonly tx: NetfrontRing;
  private readonly rx: NetfrontRing;
  private readonly streams = new Map<SocketId, StreamConnection>();
  private readonly random: Random;
  private readonly maxPayload: number;

  private constructor(components: NetstackComponents, state: NetstackState) {
    this.components = components;
    this.state = state;
    const { memory } = components;
    const { placement } = state;
    this.tx = new NetfrontRing(memory, {
      address: placement.txAddress,
      slotCount: placement.slotCount,
      slotSizeBytes: placement.slotSizeBytes,
    });
    this.rx = new NetfrontRing(memory, {
      address: placement.rxAddress,
      slotCount: placement.slotCount,
      slotSizeBytes: placement.slotSizeBytes,
    });
    this.random = new Random(state.random);
    this.maxPayload = maxPayloadBytes(placement.slotSizeBytes);
    for (const entry of state.sockets) {
      this.streams.set(entry.id, StreamConnection.restore(memory, entry.stream));
    }
  }

  /** A fresh stack at boot: rings reset, socket buffers carved out of the sockbuf region. */
  static boot(
    components: NetstackComponents,
    init: { ip: string | null; seed: number; socketBufferBytes?: number },
  ): Netstack {
    const { memory } = components;
    const placement = netfrontPlacement(memory);
    const { bufferBytes, slotCount } = socketBufferPlan(memory.layout, init.socketBufferBytes);
    const random = new Random(init.seed);
    const state: NetstackState = {
      ip: init.ip === null ? null : ipToU32(init.ip),
      placement,
      bufferBytes,
      freeSlots: Array.from({ length: slotCount }, (_, i) => slotCount - 1 - i),
      sockets: [],
      listeners: [],
      nextSocketId: 1,
      nextEphemeralPort:
        EPHEMERAL_PORT_FIRST + random.nextInt(EPHEMERAL_PORT_LAST - EPHEMERAL_PORT_FIRST),
      random: random.state(),
      counters: {
        framesSent: 0,
        framesReceived: 0,
        framesMalformed: 0,
        framesRefused: 0,
        txRingFull: 0,
      },
    };
    const stack = new Netstack(components, state);
    stack.tx.reset();
    stack.rx.reset();
    return stack;
  }

  /**
   * Rebuilds the stack from a saved state after a migration: fresh rings (in-flight frames are
   * lost, as when netfront reconnects), and every stream rewound to what its peer confirmed.
   */
  static restore(components: NetstackComponents, state: NetstackState): Netstack {
    const stack = new Netstack(components, state);
    stack.tx.reset();
    stack.rx.reset();
    stack.rewindAll(null);
    return stack;
  }

  /** Go-back-N for every stream (to `peerIp` only, if given): a pause or a peer that moved. */
  rewindAll(peerIp: number | null): void {
    for (const entry of this.state.sockets) {
      if (peerIp !== null && entry.stream.remoteIp !== peerIp) continue;
      const stream = this.streams.get(entry.id)!;
      stream.rewind(stream.state.sendAcked);
    }
  }

  /** The `GuestNet` of one program. */
  netFor(programId: number): GuestNet {
    return {
      ip: this.state.ip === null ? null : u32ToIp(this.state.ip),
      listen: (port) => this.listen(programId, port),
      unlisten: (port) => {
        this.state.listeners = this.state.listeners.filter(
          (l) => !(l.port === port && l.programId === programId),
        );
      },
      connect: (ip, port) => this.connect(programId, ip, port),
      write: (socket, bytes) => this.write(programId, socket, bytes),
      read: (socket, maxBytes) => this.read(programId, socket, maxBytes),
      readInto: (socket, target) => this.readInto(programId, socket, target),
      end: (socket) => this.stream(programId, socket).end(),
      close: (socket) => this.close(programId, socket),
      info: (socket) => this.info(programId, socket),
    };
  }

  // ---- program calls ------------------------------------------------------------------------

  private listen(programId: number, port: number): void {
    checkPort(port);
    const taken = this.state.listeners.find((l) => l.port === port);
    if (taken && taken.programId !== programId) {
      throw new NetError('ENOBUFS', `port ${port} is already listened on by another program`);
    }
    if (!taken) this.state.listeners.push({ port, programId });
  }

  private connect(programId: number, ip: string, port: number): SocketId {
    checkPort(port);
    if (this.state.ip === null) throw new NetError('EHOSTUNREACH', 'this domain has no IP address');
    const slot = this.takeSlot();
    const stream = StreamConnection.connect(this.components.memory, {
      ...this.buffersOf(slot),
      localIp: this.state.ip,
      localPort: this.ephemeralPort(),
      remoteIp: ipToU32(ip),
      remotePort: port,
      nonce: this.random.nextU32(),
    });
    this.state.random = this.random.state();
    return this.addSocket(programId, slot, stream);
  }

  private write(programId: number, socket: SocketId, bytes: Uint8Array): number {
    const entry = this.entry(programId, socket);
    const stream = this.streams.get(socket)!;
    const byCarrier = this.components.carrier?.write({ socket, stream }, bytes) ?? null;
    const taken = byCarrier ?? stream.write(bytes);
    entry.bytesWritten += taken;
    if (taken < bytes.byteLength) entry.wantWritable = true;
    return taken;
  }

  private read(programId: number, socket: SocketId, maxBytes: number): Uint8Array {
    const entry = this.entry(programId, socket);
    const stream = this.streams.get(socket)!;
    let bytes = stream.read(maxBytes);
    const carrier = this.components.carrier;
    if (bytes.byteLength === 0 && carrier && stream.receiveQuiescent) {
      bytes = carrier.read({ socket, stream }, maxBytes);
      this.takeParkedFin(entry, stream);
    }
    this.noteRead(entry, bytes.byteLength, maxBytes);
    return bytes;
  }

  /** `read` into the program's array: the same bytes, in the same order, from the same places. */
  private readInto(programId: number, socket: SocketId, target: Uint8Array): number {
    const entry = this.entry(programId, socket);
    const stream = this.streams.get(socket)!;
    let count = stream.readInto(target);
    const carrier = this.components.carrier;
    if (count === 0 && carrier && stream.receiveQuiescent) {
      count = carrier.readInto({ socket, stream }, target);
      this.takeParkedFin(entry, stream);
    }
    this.noteRead(entry, count, target.byteLength);
    return count;
  }

  /** A FIN that came by netfront before the carrier's last bytes is taken now. */
  private takeParkedFin(entry: SocketEntry, stream: StreamConnection): void {
    if (entry.parkedFinOffset !== null && entry.parkedFinOffset === stream.state.receiveNext) {
      stream.acceptFin(entry.parkedFinOffset);
      entry.parkedFinOffset = null;
    }
  }

  private noteRead(entry: SocketEntry, count: number, asked: number): void {
    if (count < asked) entry.carrierReadableTold = false;
    entry.bytesRead += count;
  }

  private close(programId: number, socket: SocketId): void {
    const entry = this.entry(programId, socket);
    entry.closing = true;
    this.streams.get(socket)!.end();
  }

  private info(programId: number, socket: SocketId): SocketInfo {
    const entry = this.entry(programId, socket);
    const stream = entry.stream;
    return {
      localIp: u32ToIp(stream.localIp),
      localPort: stream.localPort,
      remoteIp: u32ToIp(stream.remoteIp),
      remotePort: stream.remotePort,
      bytesWritten: entry.bytesWritten,
      bytesRead: entry.bytesRead,
      carrier: this.components.carrier?.carrierOf(this.carried(entry)) ?? 'netfront',
    };
  }

  private carried(entry: SocketEntry): CarriedStream {
    return { socket: entry.id, stream: this.streams.get(entry.id)! };
  }

  // ---- the poll: RX, timers, TX, events ------------------------------------------------------

  /** Runs after every guest event: takes received frames, fires timers, transmits, reports. */
  poll(): void {
    const nowMs = this.components.nowMs();
    // Freed RX slots are news for Dom0 too: it may hold frames it could not place.
    if (this.receive(nowMs) > 0) this.kickOwed = true;
    for (const stream of this.streams.values()) {
      const due = stream.nextTimerMs();
      if (due !== null && due <= nowMs) stream.onTimer(nowMs);
    }
    this.components.carrier?.poll(
      this.state.sockets.map((entry) => this.carried(entry)),
      nowMs,
    );
    this.transmit(nowMs);
    this.report(nowMs);
    this.components.setTimer(this.nextTimerMs());
  }

  /** Set when Dom0 must hear from us at the end of this poll. */
  private kickOwed = false;

  private receive(nowMs: number): number {
    let received = 0;
    for (;;) {
      const slots = this.rx.popMany();
      if (slots.length === 0) return received;
      received += slots.length;
      for (const bytes of slots) {
        this.state.counters.framesReceived++;
        const frame = decodeFrame(bytes);
        if (isFrameDecodeError(frame)) {
          this.state.counters.framesMalformed++;
          continue;
        }
        this.route(frame, nowMs);
      }
    }
  }

  private route(frame: Frame, nowMs: number): void {
    for (const entry of this.state.sockets) {
      const s = entry.stream;
      if (
        s.remoteIp === frame.sourceIp &&
        s.remotePort === frame.sourcePort &&
        s.localPort === frame.targetPort
      ) {
        // A SYN with a new nonce on the ports of a finished stream starts a new one.
        if (
          frame.kind === 'syn' &&
          frame.nonce !== s.nonce &&
          (s.phase === 'closed' || s.phase === 'reset')
        )
          continue;
        this.streams.get(entry.id)!.onFrame(frame, nowMs);
        return;
      }
    }
    const listener = this.state.listeners.find((l) => l.port === frame.targetPort);
    if (frame.kind === 'syn' && listener && this.state.freeSlots.length > 0) {
      const slot = this.takeSlot();
      const stream = StreamConnection.accept(this.components.memory, this.buffersOf(slot), frame);
      this.addSocket(listener.programId, slot, stream);
      return;
    }
    const refusal = refusalFor(frame, 'rst');
    if (refusal) {
      this.state.counters.framesRefused++;
      this.pending.push(refusal);
    }
  }

  /** Refusals waiting for TX room (bounded: a flood of strays must not grow memory). */
  private pending: Frame[] = [];

  private transmit(nowMs: number): void {
    let pushed = 0;
    while (this.pending.length > 0 && this.push(this.pending[0]!)) {
      this.pending.shift();
      pushed++;
    }
    if (this.pending.length > 64) this.pending.length = 64;
    for (const stream of this.streams.values()) {
      const room = this.tx.free;
      if (room === 0) break;
      for (const frame of stream.nextFrames(nowMs, {
        maxFrames: room,
        maxPayloadBytes: this.maxPayload,
      })) {
        // nextFrames never asks for more than `room`, so this push cannot fail.
        if (this.push(frame)) pushed++;
      }
    }
    this.state.counters.framesSent += pushed;
    if (pushed > 0 || this.kickOwed) {
      this.kickOwed = false;
      this.components.notifyBackend();
    }
  }

  /**
   * One frame onto the TX ring; false (and counted) when the ring is full. A method, not a
   * closure made per poll: every poll runs this path, channel wake-ups included, and a named
   * closure costs a `defineProperty` per creation under the tsx loader (5 % of a channel
   * writer's CPU when profiled).
   */
  private push(frame: Frame): boolean {
    if (this.tx.tryPush(encodeFrame(frame)) === 'full') {
      this.state.counters.txRingFull++;
      return false;
    }
    return true;
  }

  /** Turns stream state changes into program events, each once. */
  private report(nowMs: number): void {
    for (const entry of [...this.state.sockets]) {
      const stream = this.streams.get(entry.id)!;
      const programId = entry.programId; // no `deliver` closure per entry: see `push`
      if (stream.state.phase === 'reset') {
        if (!entry.reportedError && stream.error) {
          entry.reportedError = true;
          this.components.deliver(programId, {
            type: 'error',
            socket: entry.id,
            code: stream.error.code,
            message: stream.error.message,
          });
        }
        this.forget(entry);
        this.components.deliver(programId, { type: 'closed', socket: entry.id });
        continue;
      }
      if (!entry.reportedConnected && stream.connected) {
        entry.reportedConnected = true;
        if (stream.state.role === 'connector')
          this.components.deliver(programId, { type: 'connected', socket: entry.id });
        else {
          this.components.deliver(programId, {
            type: 'accepted',
            socket: entry.id,
            localPort: stream.state.localPort,
            remoteIp: u32ToIp(stream.state.remoteIp),
            remotePort: stream.state.remotePort,
          });
        }
      }
      const carrier = this.components.carrier;
      const carried = this.carried(entry);
      if (stream.state.counters.bytesAccepted > entry.bytesAcceptedReported && stream.readable) {
        entry.bytesAcceptedReported = stream.state.counters.bytesAccepted;
        entry.carrierReadableTold = true;
        this.components.deliver(programId, { type: 'readable', socket: entry.id });
      } else if (!entry.carrierReadableTold && carrier && carrier.pendingBytes(carried) > 0) {
        entry.carrierReadableTold = true;
        this.components.deliver(programId, { type: 'readable', socket: entry.id });
      }
      const carrierFree = carrier?.freeBytes(carried) ?? null;
      if (entry.wantWritable && (carrierFree === null ? stream.writable : carrierFree > 0)) {
        entry.wantWritable = false;
        this.components.deliver(programId, { type: 'writable', socket: entry.id });
      }
      if (!entry.reportedEnd && stream.eof) {
        entry.reportedEnd = true;
        this.components.deliver(programId, { type: 'end', socket: entry.id });
      }
      // Closed for the program only once it has seen the end of the peer's bytes: the stream
      // itself closes as soon as both FINs are acknowledged, maybe before the program read.
      const finished = stream.state.phase === 'closed' || (entry.closing && stream.drained);
      if (finished && entry.reportedEnd) {
        if (entry.lingerUntilMs === null) {
          entry.lingerUntilMs = nowMs + STREAM_LINGER_MS;
          this.components.deliver(programId, { type: 'closed', socket: entry.id });
        } else if (nowMs >= entry.lingerUntilMs) {
          this.forget(entry);
        }
      }
    }
  }

  private nextTimerMs(): number | null {
    let next: number | null = null;
    for (const entry of this.state.sockets) {
      const due = this.streams.get(entry.id)!.nextTimerMs() ?? entry.lingerUntilMs;
      if (due !== null && (next === null || due < next)) next = due;
    }
    return next;
  }

  // ---- helpers -----------------------------------------------------------------------------

  private addSocket(programId: number, slot: number, stream: StreamConnection): SocketId {
    const id = this.state.nextSocketId++;
    this.state.sockets.push({
      id,
      programId,
      slot,
      stream: stream.state,
      reportedConnected: false,
      reportedEnd: false,
      reportedError: false,
      bytesAcceptedReported: 0,
      wantWritable: false,
      closing: false,
      lingerUntilMs: null,
      bytesRead: 0,
      bytesWritten: 0,
      carrierReadableTold: false,
      parkedFinOffset: null,
    });
    this.streams.set(id, stream);
    return id;
  }

  private forget(entry: SocketEntry): void {
    this.components.carrier?.forget(this.carried(entry));
    this.state.sockets = this.state.sockets.filter((e) => e !== entry);
    this.streams.delete(entry.id);
    this.state.freeSlots.push(entry.slot);
  }

  private takeSlot(): number {
    const slot = this.state.freeSlots.pop();
    if (slot === undefined) {
      throw new NetError(
        'ENOBUFS',
        `all ${this.state.sockets.length} socket-buffer slots of the sockbuf region are in use`,
      );
    }
    return slot;
  }

  private buffersOf(slot: number): {
    sendBufferAddress: number;
    receiveBufferAddress: number;
    sendBufferBytes: number;
    receiveBufferBytes: number;
  } {
    const base =
      this.components.memory.regionAddress('sockbuf') + slot * 2 * this.state.bufferBytes;
    return {
      sendBufferAddress: base,
      receiveBufferAddress: base + this.state.bufferBytes,
      sendBufferBytes: this.state.bufferBytes,
      receiveBufferBytes: this.state.bufferBytes,
    };
  }

  private ephemeralPort(): number {
    const port = this.state.nextEphemeralPort;
    this.state.nextEphemeralPort = port >= EPHEMERAL_PORT_LAST ? EPHEMERAL_PORT_FIRST : port + 1;
    return port;
  }

  private entry(programId: number, socket: SocketId): SocketEntry {
    const entry = this.state.sockets.find((e) => e.id === socket);
    if (!entry || entry.programId !== programId) {
      throw new NetError('EPIPE', `socket ${socket} is not open in this program`);
    }
    return entry;
  }

  private stream(programId: number, socket: SocketId): StreamConnection {
    this.entry(programId, socket);
    return this.streams.get(socket)!;
  }
}

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new NetError('EPIPE', `port ${port} is not in 1..65535`);
  }
}
