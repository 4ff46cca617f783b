/**
 * A test double of guest networking: two `GuestNet`s joined in memory, for unit tests of guest
 * programs and adapters that need sockets but not the data path (no guest memory, no rings, no
 * frames).
 *
 * Method. Each side keeps its sockets in a map; a connection is two endpoints, each with a
 * bounded send queue and a bounded receive queue (`bufferBytes` each), so a writer sees partial
 * writes and `writable` events, and a reader that stops reading stops its peer. Calls never
 * deliver events: they change state, and `pump()` moves bytes from send queues into the peer's
 * receive queue and delivers the resulting events synchronously, round after round, until
 * nothing moves. `step()` runs one round, for tests that stop in the middle of a transfer.
 *
 * Semantics follow the guest kernel's (src/guest/netstack.ts):
 * - a connect to an IP neither side has fails with `EHOSTUNREACH`, to a port nobody listens on
 *   with `ECONNREFUSED`; writes before `connected` are queued;
 * - an `error` is always followed by `closed`, and the id is invalid from then on (calls on it
 *   throw `NetError` EPIPE, as for any unknown id);
 * - `closed` comes once both directions are finished (our FIN delivered, the peer's `end`
 *   reported), whether or not the program called `close()`;
 * - `close()` ends our direction; unlike the kernel, it also drops unread and later received
 *   bytes (a program that closed will not read them), so `closed` follows the peer's FIN.
 *
 * Non-goals: timing (moves are instant), loss and retransmission, more than two sides.
 */
import assert from 'node:assert/strict';
import { NetError, type NetErrorCode } from './net-errors.ts';
import type { GuestNet, SocketEvent, SocketId, SocketInfo } from './socket-api.ts';

/** Send and receive queue size of each socket, per direction. */
export const FAKE_NET_BUFFER_BYTES_DEFAULT = 64 * 1024;
/** First port given to a connecting socket, as Linux's ip_local_port_range. */
const EPHEMERAL_PORT_FIRST = 32768;
/** A pump that runs this many rounds is looping (a program that never stops writing). */
const PUMP_ROUNDS_MAX = 10_000_000;

/** A FIFO of byte arrays that hands out bytes in any split. */
class ByteQueue {
  private readonly chunks: Uint8Array[] = [];
  private headOffset = 0;
  sizeBytes = 0;

  push(bytes: Uint8Array): void {
    if (bytes.byteLength === 0) return;
    this.chunks.push(bytes);
    this.sizeBytes += bytes.byteLength;
  }

  take(maxBytes: number): Uint8Array {
    const length = Math.max(0, Math.min(maxBytes, this.sizeBytes));
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      const head = this.chunks[0]!;
      const count = Math.min(head.byteLength - this.headOffset, length - filled);
      out.set(head.subarray(this.headOffset, this.headOffset + count), filled);
      filled += count;
      this.headOffset += count;
      if (this.headOffset === head.byteLength) {
        this.chunks.shift();
        this.headOffset = 0;
      }
    }
    this.sizeBytes -= length;
    return out;
  }

  clear(): void {
    this.chunks.length = 0;
    this.headOffset = 0;
    this.sizeBytes = 0;
  }
}

interface Endpoint {
  readonly id: SocketId;
  readonly net: FakeNet;
  localPort: number;
  remoteIp: string;
  remotePort: number;
  phase: 'connecting' | 'open' | 'released';
  peer: Endpoint | null;
  readonly sendQueue: ByteQueue;
  readonly receiveQueue: ByteQueue;
  /** A write took fewer bytes than offered: `writable` is owed when room frees. */
  wantWritable: boolean;
  endRequested: boolean;
  closeRequested: boolean;
  /** Our FIN reached the peer (after every byte we wrote). */
  finSent: boolean;
  /** The peer's FIN reached us. */
  finReceived: boolean;
  endReported: boolean;
  bytesWritten: number;
  bytesRead: number;
}

/** One side of a fake pair: a `GuestNet` whose events go to the handler set with `setHandler`. */
export class FakeNet implements GuestNet {
  readonly ip: string;
  /** Ports listened on. */
  readonly listening = new Set<number>();
  private readonly bufferBytes: number;
  private readonly sockets = new Map<SocketId, Endpoint>();
  private readonly pending: SocketEvent[] = [];
  private handler: ((event: SocketEvent) => void) | null = null;
  private nextSocketId = 1;
  private nextEphemeralPort = EPHEMERAL_PORT_FIRST;
  /** Finds the side that owns an IP (the pair's routing). */
  private readonly resolve: (ip: string) => FakeNet | null;

  /** Use `createFakeNetPair`. */
  constructor(ip: string, bufferBytes: number, resolve: (ip: string) => FakeNet | null) {
    this.ip = ip;
    this.bufferBytes = bufferBytes;
    this.resolve = resolve;
  }

  /** Where this side's events go. Events wait (and the pump does not spin) until one is set. */
  setHandler(handler: (event: SocketEvent) => void): void {
    this.handler = handler;
  }

  /** Sockets whose id is still valid (not yet `closed`): a leak check for tests. */
  get openSocketCount(): number {
    return this.sockets.size;
  }

  listen(port: number): void {
    assertPort(port);
    this.listening.add(port);
  }

  unlisten(port: number): void {
    this.listening.delete(port);
  }

  connect(ip: string, port: number): SocketId {
    assertPort(port);
    const endpoint = this.addEndpoint(this.nextEphemeralPort++, ip, port);
    endpoint.phase = 'connecting';
    return endpoint.id;
  }

  write(socket: SocketId, bytes: Uint8Array): number {
    const endpoint = this.endpoint(socket);
    if (endpoint.endRequested) {
      throw new NetError('EPIPE', `write after end on socket ${socket}`);
    }
    const count = Math.min(bytes.byteLength, this.bufferBytes - endpoint.sendQueue.sizeBytes);
    // A copy: the caller's array may be a view of memory it rewrites next.
    endpoint.sendQueue.push(bytes.slice(0, count));
    endpoint.bytesWritten += count;
    if (count < bytes.byteLength) endpoint.wantWritable = true;
    return count;
  }

  read(socket: SocketId, maxBytes: number): Uint8Array {
    const endpoint = this.endpoint(socket);
    const bytes = endpoint.receiveQueue.take(maxBytes);
    endpoint.bytesRead += bytes.byteLength;
    return bytes;
  }

  end(socket: SocketId): void {
    this.endpoint(socket).endRequested = true;
  }

  close(socket: SocketId): void {
    const endpoint = this.endpoint(socket);
    endpoint.endRequested = true;
    endpoint.closeRequested = true;
    endpoint.receiveQueue.clear();
  }

  info(socket: SocketId): SocketInfo {
    const endpoint = this.endpoint(socket);
    return {
      localIp: this.ip,
      localPort: endpoint.localPort,
      remoteIp: endpoint.remoteIp,
      remotePort: endpoint.remotePort,
      bytesWritten: endpoint.bytesWritten,
      bytesRead: endpoint.bytesRead,
      carrier: 'netfront',
    };
  }

  /**
   * Resets a connection, as a peer's RST would: this socket and its peer each get `error` with
   * `code`, then `closed`.
   * @param code default 'ECONNRESET'
   */
  abort(socket: SocketId, code: NetErrorCode = 'ECONNRESET'): void {
    const endpoint = this.endpoint(socket);
    const peer = endpoint.peer;
    endpoint.net.fail(endpoint, code, `connection reset (fake abort of socket ${socket})`);
    if (peer !== null && peer.phase !== 'released') {
      peer.net.fail(peer, code, 'connection reset by peer (fake abort)');
    }
  }

  // ---- pair side ----------------------------------------------------------------------------

  /**
   * The pair's round, part 1: moves bytes and FINs of every socket of this side. True when
   * anything moved.
   */
  advance(): boolean {
    let moved = false;
    for (const endpoint of [...this.sockets.values()]) {
      if (endpoint.phase === 'connecting') {
        this.establish(endpoint);
        moved = true;
      } else if (endpoint.phase === 'open') {
        moved = this.transfer(endpoint) || moved;
        this.reportEndAndClose(endpoint);
      }
    }
    return moved;
  }

  /** The pair's round, part 2: delivers the events queued so far. True when any was. */
  deliver(): boolean {
    const handler = this.handler;
    if (handler === null || this.pending.length === 0) return false;
    for (const event of this.pending.splice(0)) handler(event);
    return true;
  }

  private addEndpoint(localPort: number, remoteIp: string, remotePort: number): Endpoint {
    const endpoint: Endpoint = {
      id: this.nextSocketId++,
      net: this,
      localPort,
      remoteIp,
      remotePort,
      phase: 'open',
      peer: null,
      sendQueue: new ByteQueue(),
      receiveQueue: new ByteQueue(),
      wantWritable: false,
      endRequested: false,
      closeRequested: false,
      finSent: false,
      finReceived: false,
      endReported: false,
      bytesWritten: 0,
      bytesRead: 0,
    };
    this.sockets.set(endpoint.id, endpoint);
    return endpoint;
  }

  private establish(endpoint: Endpoint): void {
    const target = this.resolve(endpoint.remoteIp);
    if (target === null) {
      this.fail(endpoint, 'EHOSTUNREACH', `no domain has IP ${endpoint.remoteIp}`);
      return;
    }
    if (!target.listening.has(endpoint.remotePort)) {
      const where = `${endpoint.remoteIp}:${endpoint.remotePort}`;
      this.fail(endpoint, 'ECONNREFUSED', `nobody listens on ${where}`);
      return;
    }
    const accepted = target.addEndpoint(endpoint.remotePort, this.ip, endpoint.localPort);
    accepted.peer = endpoint;
    endpoint.peer = accepted;
    endpoint.phase = 'open';
    target.pending.push({
      type: 'accepted',
      socket: accepted.id,
      localPort: accepted.localPort,
      remoteIp: this.ip,
      remotePort: endpoint.localPort,
    });
    this.pending.push({ type: 'connected', socket: endpoint.id });
  }

  /** Moves queued bytes (then our FIN) into the peer's receive queue, as room allows. */
  private transfer(endpoint: Endpoint): boolean {
    const peer = endpoint.peer!;
    let moved = false;
    if (endpoint.sendQueue.sizeBytes > 0 && peer.phase === 'released') {
      endpoint.sendQueue.clear(); // Nobody will read them: the peer closed.
    }
    const room = peer.closeRequested ? Infinity : this.bufferBytes - peer.receiveQueue.sizeBytes;
    const count = Math.min(endpoint.sendQueue.sizeBytes, room);
    if (count > 0) {
      const bytes = endpoint.sendQueue.take(count);
      if (!peer.closeRequested) {
        peer.receiveQueue.push(bytes);
        peer.net.pending.push({ type: 'readable', socket: peer.id });
      }
      if (endpoint.wantWritable) {
        endpoint.wantWritable = false;
        this.pending.push({ type: 'writable', socket: endpoint.id });
      }
      moved = true;
    }
    if (endpoint.endRequested && !endpoint.finSent && endpoint.sendQueue.sizeBytes === 0) {
      endpoint.finSent = true;
      peer.finReceived = true;
      moved = true;
    }
    return moved;
  }

  private reportEndAndClose(endpoint: Endpoint): void {
    const eof = endpoint.finReceived && endpoint.receiveQueue.sizeBytes === 0;
    // Released at the earliest one round after `end`, so the program has handled `end` (and
    // may still call the socket then) before the id becomes invalid.
    if (endpoint.finSent && (endpoint.endReported || (endpoint.closeRequested && eof))) {
      this.release(endpoint);
    } else if (eof && !endpoint.endReported && !endpoint.closeRequested) {
      endpoint.endReported = true;
      this.pending.push({ type: 'end', socket: endpoint.id });
    }
  }

  private fail(endpoint: Endpoint, code: NetErrorCode, message: string): void {
    this.pending.push({ type: 'error', socket: endpoint.id, code, message });
    this.release(endpoint);
  }

  private release(endpoint: Endpoint): void {
    endpoint.phase = 'released';
    endpoint.sendQueue.clear();
    endpoint.receiveQueue.clear();
    this.sockets.delete(endpoint.id);
    this.pending.push({ type: 'closed', socket: endpoint.id });
  }

  private endpoint(socket: SocketId): Endpoint {
    const endpoint = this.sockets.get(socket);
    if (endpoint === undefined) {
      throw new NetError('EPIPE', `socket ${socket} is not open on ${this.ip}`);
    }
    return endpoint;
  }
}

function assertPort(port: number): void {
  assert.ok(Number.isInteger(port) && port >= 1 && port <= 65535, `port ${port} in 1..65535`);
}

/** Options of `createFakeNetPair`. */
export interface FakeNetPairInit {
  /** IPv4 address of side `a`. */
  ipA: string;
  /** IPv4 address of side `b`. */
  ipB: string;
  /**
   * Send and receive queue size of every socket, per direction, in bytes.
   * @default 65536
   */
  bufferBytes?: number;
}

/** Two joined fake nets and the pump that moves bytes between them. */
export interface FakeNetPair {
  a: FakeNet;
  b: FakeNet;
  /** Runs one round (moves, then events); false when nothing happened. */
  step(): boolean;
  /** Runs rounds until nothing moves and no event is left to deliver. */
  pump(): void;
}

/** Builds two fake nets that reach each other (and themselves) by IP. */
export function createFakeNetPair(init: FakeNetPairInit): FakeNetPair {
  const bufferBytes = init.bufferBytes ?? FAKE_NET_BUFFER_BYTES_DEFAULT;
  assert.ok(Number.isInteger(bufferBytes) && bufferBytes >= 1, `bufferBytes ${bufferBytes} >= 1`);
  assert.notEqual(init.ipA, init.ipB, 'the two sides need different IPs');
  const resolve = (ip: string): FakeNet | null => (ip === a.ip ? a : ip === b.ip ? b : null);
  const a = new FakeNet(init.ipA, bufferBytes, resolve);
  const b = new FakeNet(init.ipB, bufferBytes, resolve);
  const step = (): boolean => {
    const moved = [a.advance(), b.advance()].includes(true);
    const delivered = [a.deliver(), b.deliver()].includes(true);
    return moved || delivered;
  };
  const pump = (): void => {
    for (let round = 0; step(); round++) {
      assert.ok(round < PUMP_ROUNDS_MAX, `fake net still busy after ${PUMP_ROUNDS_MAX} rounds`);
    }
  };
  return { a, b, step, pump };
}
