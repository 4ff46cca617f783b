/**
 * A Node `Duplex` over a guest socket, so that an ordinary Node library (nodemailer through
 * its `getSocket` hook, for one) can talk over the testbed's guest network as over a
 * `net.Socket`.
 *
 * Only in a domain that is NOT migrated. A Duplex keeps pending write callbacks, its readable
 * buffer, listeners and a timer in the JavaScript heap; none of that is plain data in guest
 * memory, so it cannot travel in a `GuestState` (principle 3). Programs of a migrated domain
 * use `GuestNet` directly, as state machines (src/workloads/streamer.ts).
 *
 * Method. The owner routes the socket's events to `handleEvent` (the guest kernel delivers them
 * to a program, not to a socket):
 * - `_write` writes as much as the send buffer takes and completes its callback once every
 *   byte is taken, continuing on `writable`; `_final` ends our direction (FIN).
 * - `_read` pulls from `net.read` until the socket is empty or `push` says stop; more comes on
 *   `readable`. Bytes the consumer is not ready for stay in the guest's receive buffer, so
 *   backpressure reaches the peer. `end` pushes the end of stream.
 * - `error` destroys the stream with a `NetError` whose `code` is the errno-like code
 *   (ECONNREFUSED, ECONNRESET...), which is what Node libraries match on.
 * - `closed` destroys the stream if it was not finished both ways; otherwise Node's
 *   autoDestroy closes it once the consumer has seen the end. `_destroy` closes the socket.
 * - `setTimeout(ms)` emits `timeout` after `ms` without bytes read or taken, as `net.Socket`
 *   does; `setKeepAlive`, `setNoDelay`, `ref` and `unref` are accepted and do nothing.
 *
 * Non-goals: `net.Socket`'s byte counters, `address()`, pause/resume of the guest socket
 * (backpressure does that), TLS (wrap this Duplex with `tls.connect({ socket })`).
 */
import { Duplex } from 'node:stream';
import { clearTimeout as clearTimer, setTimeout as setTimer } from 'node:timers';
import { NetError } from './net-errors.ts';
import type { GuestNet, SocketEvent, SocketId, SocketInfo } from './socket-api.ts';

/** Bytes asked for per `net.read`: four times Node's default highWaterMark of 16 KiB. */
export const DUPLEX_READ_BYTES_MAX = 64 * 1024;

/** Options of a `GuestSocketDuplex`. */
export interface GuestSocketDuplexInit {
  /**
   * The socket comes from `connect` and is not connected yet: the Duplex is `connecting` and
   * emits `connect` (then `ready`) on the `connected` event. Writes before that are queued by
   * the guest socket.
   * @default false (an accepted socket)
   */
  connecting?: boolean;
  /**
   * Keep our direction open after the peer ended its own (Node's option). Unlike `net.Socket`
   * the default is true: a byte stream's two directions are independent (principle 2).
   * @default true
   */
  allowHalfOpen?: boolean;
}

interface PendingWrite {
  bytes: Uint8Array;
  /** Bytes of `bytes` the socket has taken. */
  takenBytes: number;
  callback: (error?: Error | null) => void;
}

/** A `Duplex` over one guest socket; feed it the socket's events with `handleEvent`. */
export class GuestSocketDuplex extends Duplex {
  readonly net: GuestNet;
  readonly socket: SocketId;
  /** True until `connected`, for a socket from `connect` (as `net.Socket#connecting`). */
  connecting: boolean;
  private pendingWrite: PendingWrite | null = null;
  /** Node asked for data (`_read`) and `push` has not said stop since. */
  private readWanted = false;
  private pulling = false;
  private endPushed = false;
  private endWritten = false;
  /** The id is no longer valid: `closed` or `error` came, or we closed it. */
  private socketGone = false;
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(net: GuestNet, socket: SocketId, init: GuestSocketDuplexInit = {}) {
    super({ allowHalfOpen: init.allowHalfOpen ?? true });
    this.net = net;
    this.socket = socket;
    this.connecting = init.connecting ?? false;
  }

  /**
   * Feed this the socket's events. Returns false (and does nothing) for another socket's event,
   * so one program handler can offer every event to each of its Duplexes.
   */
  handleEvent(event: SocketEvent): boolean {
    if (event.socket !== this.socket || event.type === 'accepted') return false;
    if (this.destroyed) {
      if (event.type === 'closed' || event.type === 'error') this.socketGone = true;
      return true;
    }
    switch (event.type) {
      case 'connected':
        this.connecting = false;
        this.touch();
        this.emit('connect');
        this.emit('ready');
        break;
      case 'readable':
        this.pull();
        break;
      case 'writable':
        this.continueWrite();
        break;
      case 'end':
        this.onEnd();
        break;
      case 'closed':
        this.socketGone = true;
        if (!(this.endPushed && this.endWritten)) this.destroy();
        break;
      case 'error':
        // The kernel forgets the id with the error (`closed` follows).
        this.socketGone = true;
        this.destroy(new NetError(event.code, event.message));
        break;
    }
    return true;
  }

  /** The peer's address, as `net.Socket#remoteAddress`; undefined once the socket is gone. */
  get remoteAddress(): string | undefined {
    return this.socketInfo()?.remoteIp;
  }

  get remotePort(): number | undefined {
    return this.socketInfo()?.remotePort;
  }

  get localAddress(): string | undefined {
    return this.socketInfo()?.localIp;
  }

  get localPort(): number | undefined {
    return this.socketInfo()?.localPort;
  }

  /**
   * Emits `timeout` after `timeoutMs` ms without a byte read or taken (then again after the
   * next activity and another `timeoutMs`); 0 disables it. `callback` is added as a one-time
   * `timeout` listener (removed when `timeoutMs` is 0), as in `net.Socket`. The timer is
   * ref'd: unlike a real socket, a guest socket holds no handle that keeps the event loop alive.
   */
  setTimeout(timeoutMs: number, callback?: () => void): this {
    if (callback !== undefined) {
      if (timeoutMs === 0) this.removeListener('timeout', callback);
      else this.once('timeout', callback);
    }
    this.stopIdleTimer();
    if (timeoutMs > 0 && !this.destroyed) {
      this.idleTimer = setTimer(() => this.emit('timeout'), timeoutMs);
    }
    return this;
  }

  /** Accepted for `net.Socket` compatibility; the guest stream has no keepalive. */
  setKeepAlive(_enable?: boolean, _initialDelayMs?: number): this {
    return this;
  }

  /** Accepted for `net.Socket` compatibility; the guest stream has no Nagle delay. */
  setNoDelay(_noDelay?: boolean): this {
    return this;
  }

  ref(): this {
    return this;
  }

  unref(): this {
    return this;
  }

  override _read(_sizeBytes: number): void {
    this.readWanted = true;
    this.pull();
  }

  override _write(
    chunk: Buffer,
    _encoding: BufferEncoding,
    callback: (error?: Error | null) => void,
  ): void {
    this.pendingWrite = { bytes: chunk, takenBytes: 0, callback };
    this.continueWrite();
  }

  override _final(callback: (error?: Error | null) => void): void {
    const result = this.callNet(() => this.net.end(this.socket));
    if (result instanceof NetError) {
      callback(result);
      return;
    }
    this.endWritten = true;
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.stopIdleTimer();
    const pending = this.pendingWrite;
    this.pendingWrite = null;
    if (pending !== null) pending.callback(error ?? new Error('the guest socket was destroyed'));
    if (!this.socketGone) {
      this.socketGone = true;
      // A NetError here means the kernel forgot the socket already: nothing left to close.
      this.callNet(() => this.net.close(this.socket));
    }
    callback(error);
  }

  /** Reads while Node wants data; bytes beyond that stay in the guest socket. */
  private pull(): void {
    if (this.pulling || this.endPushed || this.socketGone) return;
    this.pulling = true;
    try {
      while (this.readWanted) {
        const bytes = this.readSome();
        if (bytes === null) break;
        this.readWanted = this.push(bytes);
      }
    } finally {
      this.pulling = false;
    }
  }

  /** The peer ended: every remaining byte, then the end of stream. */
  private onEnd(): void {
    if (this.endPushed) return;
    for (;;) {
      // Bounded by the guest's receive buffer, so ignoring `push`'s stop costs little.
      const bytes = this.readSome();
      if (bytes === null) break;
      this.push(bytes);
    }
    if (this.destroyed) return;
    this.endPushed = true;
    this.push(null);
  }

  /**
   * One `net.read`; null when the socket is empty or already forgotten by the kernel (its
   * `error` or `closed` is then queued for us and decides what happens).
   */
  private readSome(): Uint8Array | null {
    const bytes = this.callNet(() => this.net.read(this.socket, DUPLEX_READ_BYTES_MAX));
    if (bytes instanceof NetError || bytes.byteLength === 0) return null;
    this.touch();
    return bytes;
  }

  private continueWrite(): void {
    const pending = this.pendingWrite;
    if (pending === null) return;
    const taken = this.callNet(() =>
      this.net.write(this.socket, pending.bytes.subarray(pending.takenBytes)),
    );
    if (taken instanceof NetError) {
      this.pendingWrite = null;
      pending.callback(taken);
      return;
    }
    if (taken > 0) this.touch();
    pending.takenBytes += taken;
    if (pending.takenBytes === pending.bytes.byteLength) {
      this.pendingWrite = null;
      pending.callback();
    }
    // Otherwise `writable` follows once the send buffer has room.
  }

  /** Runs a socket call; returns its result, or the `NetError` it threw (EPIPE etc.). */
  private callNet<T>(call: () => T): T | NetError {
    try {
      return call();
    } catch (error) {
      if (error instanceof NetError) return error;
      throw error;
    }
  }

  private socketInfo(): SocketInfo | undefined {
    if (this.socketGone) return undefined;
    const info = this.callNet(() => this.net.info(this.socket));
    return info instanceof NetError ? undefined : info;
  }

  /** Activity: restart the idle timer. */
  private touch(): void {
    this.idleTimer?.refresh();
  }

  private stopIdleTimer(): void {
    if (this.idleTimer !== null) clearTimer(this.idleTimer);
    this.idleTimer = null;
  }
}

/**
 * Opens a guest connection as a Duplex that emits `connect` once connected, or `error` (with
 * `code` ECONNREFUSED, EHOSTUNREACH...) if it cannot be. The caller routes the socket's events
 * to the Duplex's `handleEvent`. Throws `NetError` if the call itself fails (the domain has no
 * IP, no socket buffer is free).
 */
export function connectDuplex(net: GuestNet, ip: string, port: number): GuestSocketDuplex {
  const socket = net.connect(ip, port);
  return new GuestSocketDuplex(net, socket, { connecting: true });
}
