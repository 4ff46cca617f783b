/**
 * The netbench: the guest program of the netfront-path benchmark (bench/net/netfront.bench.ts).
 * One connection, one of four roles:
 * - `sink` listens on `port`, accepts one connection, reads (`readSocketInto`, into one reused
 *   array) and counts everything, and records the guest time of the first and the last
 *   arrival (throughput is measured between them, on one clock, so it does not depend on
 *   when the source started);
 * - `source` connects to `peerIp:port`, writes `bytes` in messages of `messageBytes` taken
 *   from a staging area at the start of its data region (guest memory, as an application's
 *   buffer), then ends its direction;
 * - `echo` listens, accepts one connection and writes back whatever it reads, through a staging
 *   area in its data region; it reads nothing more while earlier bytes wait to be written, so a
 *   slow reader on the other side slows the echo down instead of filling memory;
 * - `ping` connects, sends `messageBytes`, waits until as many bytes came back, and repeats,
 *   `warmupRounds + rounds` times; the round-trip times of the last `rounds` go into an array
 *   (bounded by `NETBENCH_ROUNDS_MAX`), reported as median and p99.
 *
 * Shape (principle 3): an event-driven state machine whose state is plain data; the socket is
 * kernel state, so only its id is kept. Sending follows the streamer (src/workloads/streamer.ts):
 * a partial write leaves the offset in the state and sending resumes on `writable`; one event
 * writes at most `NETBENCH_SEND_BYTES_PER_EVENT_MAX` before yielding with a 0 ms timer. Both
 * sides end their direction when their work is done and close the socket once the peer's `end`
 * has arrived too.
 *
 * Staging area (source and ping: one message; echo: `NETBENCH_ECHO_STAGING_BYTES`):
 *
 * ```
 * dataRegion start
 * | message bytes (pattern i & 0xff, written once at start) | unused ... |
 * ```
 *
 * Times come from `ProgramContext.nowMs()` (guest time: monotonic, and equal to real time for a
 * domain that is not migrated, which is how the benchmark runs it).
 *
 * Non-goals: verifying the bytes (the streamer does that with digests; hashing here would cost
 * guest time the benchmark means to spend on the path), more than one connection, pacing.
 */

import assert from 'node:assert/strict';
import { InputError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import type { GuestProgram, ProgramContext, ProgramFactory } from '../guest/program.ts';
import {
  type GuestNet,
  readSocketInto,
  type SocketEvent,
  type SocketId,
} from '../guest/socket-api.ts';
import type { Region } from '../memory/layout.ts';
import { checkInteger, IPV4 } from './params.ts';
import {
  acceptOne,
  CONNECT_RETRY_MS,
  CONNECT_TRIES_MAX_DEFAULT,
  CONNECT_TRIES_MAX_LIMIT,
  callSocket,
  failProgram,
  type LifecycleOptions,
  onSocketClosed,
  onSocketError,
  startConnect,
} from './socket-lifecycle.ts';

/** The program kind, as registered with the guest kernel. */
export const NETBENCH_KIND = 'netbench';
/** Timer tag: the next connect attempt of a source or ping. */
export const NETBENCH_CONNECT_TAG = 'connect';
/** Timer tag: continue sending (or echoing) after a full per-event budget. */
export const NETBENCH_SEND_TAG = 'send';

/** Connect retries: the policy every guest program shares (socket-lifecycle). */
export const NETBENCH_CONNECT_RETRY_MS = CONNECT_RETRY_MS;
export const NETBENCH_CONNECT_TRIES_MAX_DEFAULT = CONNECT_TRIES_MAX_DEFAULT;
export const NETBENCH_CONNECT_TRIES_MAX_LIMIT = CONNECT_TRIES_MAX_LIMIT;
/** Most bytes a source may send: 1 TiB, far above any run, and exact in a double. */
export const NETBENCH_BYTES_MAX = 2 ** 40;
/** Largest message: 16 MiB, as the streamer's chunk; larger says nothing more about the path. */
export const NETBENCH_MESSAGE_BYTES_MAX = 16 * 1024 * 1024;
/** Default message: 64 KiB for a source, a common application write. */
export const NETBENCH_SOURCE_MESSAGE_BYTES_DEFAULT = 64 * 1024;
/** Default message: 64 B for a ping, the latency figure's size. */
export const NETBENCH_PING_MESSAGE_BYTES_DEFAULT = 64;
/**
 * Most measured rounds of a ping: every round-trip time is kept in the state (8 B each in a
 * structured clone), so this bounds it at 800 KB; 100 000 rounds give a stable p99.
 */
export const NETBENCH_ROUNDS_MAX = 100_000;
/** Most unmeasured warm-up rounds of a ping (not stored, only counted). */
export const NETBENCH_WARMUP_ROUNDS_MAX = 1_000_000;
/**
 * Most bytes one event writes before yielding with a 0 ms timer: socket buffers are a few
 * hundred KiB, so backpressure normally stops us first; the bound keeps one guest event short
 * (the kernel pauses a domain only between events) whatever the buffer size.
 */
export const NETBENCH_SEND_BYTES_PER_EVENT_MAX = 4 * 1024 * 1024;
/** Bytes asked for per `read` call; reading repeats until the socket is empty. */
export const NETBENCH_READ_BYTES_MAX = 256 * 1024;
/** The echo's staging area: one read's worth, at most the data region. */
export const NETBENCH_ECHO_STAGING_BYTES = NETBENCH_READ_BYTES_MAX;

/** The four roles (see the file header). */
export type NetbenchRole = 'sink' | 'source' | 'echo' | 'ping';

/** Parameters of a netbench. Each role takes only the parameters listed for it. */
export interface NetbenchParams {
  role: NetbenchRole;
  /** TCP port: the listening port (sink, echo) or the target port (source, ping), 1..65535. */
  port: number;
  /** Source and ping only, required: the peer's IPv4 address. */
  peerIp?: string;
  /** Source only, required: bytes to send, an integer in [0, 2^40]. */
  bytes?: number;
  /**
   * Source and ping: bytes per message (one `write` call's worth), in [1, 16 MiB], at most the
   * data region.
   * @default 65536 for a source, 64 for a ping
   */
  messageBytes?: number;
  /** Ping only, required: measured round trips, in [1, 100000]. */
  rounds?: number;
  /**
   * Ping only: round trips before the measured ones (connection warm-up), in [0, 1000000].
   * @default 0
   */
  warmupRounds?: number;
  /**
   * Source and ping: connect attempts before giving up, `NETBENCH_CONNECT_RETRY_MS` apart,
   * in [1, 36000].
   * @default 100
   */
  connectTriesMax?: number;
}

/** Netbench parameters with every default filled in; fields a role does not use are 0/null. */
export interface NetbenchConfig {
  role: NetbenchRole;
  port: number;
  peerIp: string | null;
  bytes: number;
  messageBytes: number;
  rounds: number;
  warmupRounds: number;
  connectTriesMax: number;
}

/**
 * - `idle`: created, not started.
 * - `listening`: sink or echo waiting for its connection.
 * - `connecting`: source or ping waiting for `connected` (or an error).
 * - `retryWait`: source or ping waiting for its next attempt.
 * - `running`: connected, bytes flow.
 * - `closing`: both directions done, `close()` called, waiting for `closed`.
 * - `done`: finished and closed.
 * - `failed`: an error stopped the program (see `lastError`).
 */
export type NetbenchPhase =
  | 'idle'
  | 'listening'
  | 'connecting'
  | 'retryWait'
  | 'running'
  | 'closing'
  | 'done'
  | 'failed';

/** What a netbench reports (`stats()`); times are guest ms, -1 until they happen. */
export type NetbenchStats = {
  role: string;
  phase: string;
  finished: boolean;
  bytesToSend: number;
  messageBytes: number;
  bytesSent: number;
  bytesReceived: number;
  firstArrivalBytes: number;
  elapsedMs: number;
  /** Bytes after the first arrival over the time from first to last arrival. */
  throughputBytesPerSec: number;
  roundsDone: number;
  rttCount: number;
  rttMedianMs: number;
  rttP99Ms: number;
  rttMinMs: number;
  rttMaxMs: number;
  errors: number;
  lastError: string;
  lastSocketCallError: string;
  connectTries: number;
  startedMs: number;
  connectedMs: number;
  firstArrivalMs: number;
  lastArrivalMs: number;
  finishedMs: number;
};

/** The netbench's whole state: plain structured-clone data. */
export interface NetbenchState {
  params: NetbenchConfig;
  phase: NetbenchPhase;
  /** The connection's socket (kernel state, restored by the kernel), or null. */
  socket: SocketId | null;
  connectTries: number;
  /** Bytes the socket took, and bytes read. */
  bytesSent: number;
  bytesReceived: number;
  /** Guest ms of the first and last arrival; null until then. */
  firstArrivalMs: number | null;
  lastArrivalMs: number | null;
  /** Bytes the first arrival brought (they precede the measured interval). */
  firstArrivalBytes: number;
  /** Source and ping: bytes of the current message the socket has taken. */
  messageSentBytes: number;
  /** A `send` timer is pending. */
  sendTimerArmed: boolean;
  /** Echo: the bytes waiting to be written back are staging[pendingStart, pendingEnd). */
  pendingStart: number;
  pendingEnd: number;
  /** Ping: rounds completed (warm-up included), and the current round's start and arrivals. */
  roundsDone: number;
  roundStartMs: number;
  roundReceivedBytes: number;
  /** Ping: round-trip times of the measured rounds, guest ms, in order. */
  rttMs: number[];
  /** Guest ms: started, connected, our `end` called, the peer's `end` seen, work finished. */
  startedMs: number | null;
  connectedMs: number | null;
  endSentMs: number | null;
  endReceivedMs: number | null;
  finishedMs: number | null;
  /** Errors seen (retried connect refusals are not errors), and the last one. */
  errors: number;
  lastError: string;
  /** The last socket call that threw (the socket was already gone; see `callSocket`). */
  lastSocketCallError: string;
}

/** The parameters each role accepts. */
const ROLE_PARAM_NAMES: Record<NetbenchRole, readonly string[]> = {
  sink: ['role', 'port'],
  echo: ['role', 'port'],
  source: ['role', 'port', 'peerIp', 'bytes', 'messageBytes', 'connectTriesMax'],
  ping: ['role', 'port', 'peerIp', 'messageBytes', 'rounds', 'warmupRounds', 'connectTriesMax'],
};

function isRole(value: unknown): value is NetbenchRole {
  return typeof value === 'string' && Object.hasOwn(ROLE_PARAM_NAMES, value);
}

/**
 * Checks `params` against the role and the program's data region and fills in the defaults.
 * Throws `InputError` naming the parameter, its value and what is allowed.
 */
export function resolveNetbenchParams(params: NetbenchParams, dataRegion: Region): NetbenchConfig {
  const role = params.role;
  if (!isRole(role)) {
    throw new InputError(`role must be 'sink', 'source', 'echo' or 'ping'; got ${String(role)}`);
  }
  const allowed = ROLE_PARAM_NAMES[role];
  const unknown = Object.keys(params).filter((name) => !allowed.includes(name));
  if (unknown.length > 0) {
    throw new InputError(
      `netbench role ${role} takes no parameter ${unknown.join(', ')}; ` +
        `it takes ${allowed.join(', ')}`,
    );
  }
  const config: NetbenchConfig = {
    role,
    port: checkInteger('port', params.port, 1, 65535),
    peerIp: null,
    bytes: 0,
    messageBytes: 0,
    rounds: 0,
    warmupRounds: 0,
    connectTriesMax: 0,
  };
  if (role === 'sink' || role === 'echo') {
    const regionBytes = dataRegion.pageCount * PAGE_SIZE_BYTES;
    if (role === 'echo' && regionBytes < NETBENCH_ECHO_STAGING_BYTES) {
      throw new InputError(
        `an echo needs a data region of ${NETBENCH_ECHO_STAGING_BYTES} B; got ${regionBytes} B`,
      );
    }
    return config;
  }
  if (typeof params.peerIp !== 'string' || !IPV4.test(params.peerIp)) {
    throw new InputError(
      `a ${role} needs peerIp, its peer's IPv4 address; got ${String(params.peerIp)}`,
    );
  }
  config.peerIp = params.peerIp;
  config.connectTriesMax = checkInteger(
    'connectTriesMax',
    params.connectTriesMax ?? NETBENCH_CONNECT_TRIES_MAX_DEFAULT,
    1,
    NETBENCH_CONNECT_TRIES_MAX_LIMIT,
  );
  const messageDefault =
    role === 'source' ? NETBENCH_SOURCE_MESSAGE_BYTES_DEFAULT : NETBENCH_PING_MESSAGE_BYTES_DEFAULT;
  config.messageBytes = checkInteger(
    'messageBytes',
    params.messageBytes ?? messageDefault,
    1,
    NETBENCH_MESSAGE_BYTES_MAX,
  );
  const regionBytes = dataRegion.pageCount * PAGE_SIZE_BYTES;
  if (config.messageBytes > regionBytes) {
    throw new InputError(
      `messageBytes ${config.messageBytes} does not fit the program's data region ` +
        `of ${regionBytes} B`,
    );
  }
  if (role === 'source') {
    config.bytes = checkInteger('bytes', params.bytes, 0, NETBENCH_BYTES_MAX);
  } else {
    config.rounds = checkInteger('rounds', params.rounds, 1, NETBENCH_ROUNDS_MAX);
    config.warmupRounds = checkInteger(
      'warmupRounds',
      params.warmupRounds ?? 0,
      0,
      NETBENCH_WARMUP_ROUNDS_MAX,
    );
  }
  return config;
}

/** A config back as the parameters its role takes (for re-checking a saved state). */
function paramsOf(config: NetbenchConfig): NetbenchParams {
  const entries = ROLE_PARAM_NAMES[config.role].map((name) => [
    name,
    config[name as keyof NetbenchConfig],
  ]);
  return Object.fromEntries(entries) as NetbenchParams;
}

/** The `fraction` quantile of sorted values (nearest rank); NaN for no values. */
function quantile(sorted: readonly number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.max(1, Math.ceil(fraction * sorted.length));
  return sorted[rank - 1]!;
}

/** The median of sorted values (mean of the middle two for an even count); NaN for none. */
function sortedMedian(sorted: readonly number[]): number {
  if (sorted.length === 0) return Number.NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

class Netbench implements GuestProgram<NetbenchState> {
  readonly kind = NETBENCH_KIND;
  readonly state: NetbenchState;
  private readonly context: ProgramContext;
  private readonly stagingAddress: number;
  /** Sorted round-trip times, computed once the ping finished; not state. */
  private sortedRttMs: number[] | null = null;
  /**
   * Where the sink and the ping read to, reused by every read (`readSocketInto`): they only
   * count bytes, and a new array per read costs a bulk reader as much as the copy. Not state:
   * nothing in it outlives an event. Not guest memory either: writes there would skip the
   * log-dirty bitmap (the echo, which keeps bytes across events, stages them in guest memory).
   */
  private readTarget: Uint8Array | null = null;

  constructor(context: ProgramContext, state: NetbenchState) {
    this.context = context;
    this.state = state;
    this.stagingAddress = context.dataRegion.firstPage * PAGE_SIZE_BYTES;
  }

  start(): void {
    const state = this.state;
    assert.equal(state.phase, 'idle', 'a netbench starts once');
    state.startedMs = this.context.nowMs();
    const { role, port, messageBytes } = state.params;
    if (role === 'sink' || role === 'echo') {
      this.context.net.listen(port);
      state.phase = 'listening';
      return;
    }
    // The message, written once through log-dirty (an application's buffer).
    const message = new Uint8Array(messageBytes);
    for (let i = 0; i < messageBytes; i++) message[i] = i & 0xff;
    this.context.memory.write(this.stagingAddress, message);
    this.connect();
  }

  onTimer(tag: string): void {
    const state = this.state;
    if (tag === NETBENCH_CONNECT_TAG) {
      if (state.phase === 'retryWait') this.connect();
      return;
    }
    assert.equal(tag, NETBENCH_SEND_TAG, `the netbench arms only its own timers; got ${tag}`);
    state.sendTimerArmed = false;
    this.onWork();
  }

  onSocket(event: SocketEvent): void {
    if (event.type === 'accepted') {
      this.onAccepted(event.socket);
      return;
    }
    // Events of other sockets: the `closed` of a failed attempt or a refused extra connection.
    if (event.socket !== this.state.socket) return;
    switch (event.type) {
      case 'connected':
        this.onConnected();
        break;
      case 'readable':
      case 'writable':
        this.onWork();
        break;
      case 'end':
        this.onEnd();
        break;
      case 'closed':
        this.onClosed();
        break;
      case 'error':
        this.onError(`${event.code}: ${event.message}`, event.code);
        break;
    }
  }

  /**
   * Figures for the benchmark. Times are guest ms, -1 until they happen; `throughputBytesPerSec`
   * counts the bytes after the first arrival over the time from the first to the last arrival
   * (0 until two arrivals); the round-trip figures are -1 until the ping finished.
   */
  stats(): NetbenchStats {
    const s = this.state;
    const elapsedMs =
      s.firstArrivalMs === null || s.lastArrivalMs === null
        ? 0
        : s.lastArrivalMs - s.firstArrivalMs;
    const measuredBytes = s.bytesReceived - s.firstArrivalBytes;
    const rtt = this.rttFigures();
    return {
      role: s.params.role,
      phase: s.phase,
      finished: s.finishedMs !== null,
      bytesToSend: s.params.bytes,
      messageBytes: s.params.messageBytes,
      bytesSent: s.bytesSent,
      bytesReceived: s.bytesReceived,
      firstArrivalBytes: s.firstArrivalBytes,
      elapsedMs,
      throughputBytesPerSec: elapsedMs > 0 ? (measuredBytes * 1000) / elapsedMs : 0,
      roundsDone: s.roundsDone,
      rttCount: s.rttMs.length,
      rttMedianMs: rtt.medianMs,
      rttP99Ms: rtt.p99Ms,
      rttMinMs: rtt.minMs,
      rttMaxMs: rtt.maxMs,
      errors: s.errors,
      lastError: s.lastError,
      lastSocketCallError: s.lastSocketCallError,
      connectTries: s.connectTries,
      startedMs: s.startedMs ?? -1,
      connectedMs: s.connectedMs ?? -1,
      firstArrivalMs: s.firstArrivalMs ?? -1,
      lastArrivalMs: s.lastArrivalMs ?? -1,
      finishedMs: s.finishedMs ?? -1,
    };
  }

  private rttFigures(): { medianMs: number; p99Ms: number; minMs: number; maxMs: number } {
    const s = this.state;
    if (s.params.role !== 'ping' || s.finishedMs === null || s.rttMs.length === 0) {
      return { medianMs: -1, p99Ms: -1, minMs: -1, maxMs: -1 };
    }
    this.sortedRttMs ??= [...s.rttMs].sort((a, b) => a - b);
    const sorted = this.sortedRttMs;
    return {
      medianMs: sortedMedian(sorted),
      p99Ms: quantile(sorted, 0.99),
      minMs: sorted[0]!,
      maxMs: sorted[sorted.length - 1]!,
    };
  }

  // ---- connection ----------------------------------------------------------------------------

  private connect(): void {
    const { peerIp, port } = this.state.params;
    const attempt = startConnect(this.context, this.state, { ip: peerIp!, port });
    if (!attempt.ok) this.onError(attempt.description, attempt.code);
  }

  private onAccepted(socket: SocketId): void {
    if (acceptOne(this.context, this.state, socket, this.state.params.port)) this.onConnected();
  }

  private onConnected(): void {
    const state = this.state;
    state.phase = 'running';
    state.connectedMs = this.context.nowMs();
    if (state.params.role === 'ping') this.startRound();
    this.onWork();
  }

  private lifecycle(): LifecycleOptions {
    const state = this.state;
    return {
      label: `netbench ${state.params.role}`,
      connectTriesMax: state.params.connectTriesMax,
      retryMs: NETBENCH_CONNECT_RETRY_MS,
      retryTag: NETBENCH_CONNECT_TAG,
    };
  }

  private onError(description: string, code: string): void {
    onSocketError(this.context, this.state, this.lifecycle(), { description, code });
  }

  private fail(description: string): void {
    failProgram(this.context, this.state, this.lifecycle().label, description);
  }

  private onClosed(): void {
    onSocketClosed(this.context, this.state, this.lifecycle().label);
  }

  /**
   * Runs a call on our socket. A `NetError` means the kernel has forgotten the socket already (a
   * reset, or a close while our events waited): its `error` or `closed` is queued for us and
   * decides the outcome, so the call only yields null and leaves a note.
   */
  private callSocket<T>(call: (net: GuestNet, socket: SocketId) => T): T | null {
    return callSocket(this.context, this.state, call);
  }

  // ---- the roles' work -----------------------------------------------------------------------

  /** Whatever the role does when bytes arrived, room freed, or a send timer fired. */
  private onWork(): void {
    if (this.state.phase !== 'running' || this.state.socket === null) return;
    switch (this.state.params.role) {
      case 'sink':
        this.receive();
        break;
      case 'source':
        this.sendStream();
        break;
      case 'echo':
        this.echo();
        break;
      case 'ping':
        this.receive();
        if (this.state.phase === 'running') this.sendMessage();
        break;
    }
  }

  /** Source: writes messages until backpressure, the end of the stream, or the budget. */
  private sendStream(): void {
    const state = this.state;
    if (state.endSentMs !== null) return;
    const { bytes, messageBytes } = state.params;
    let budgetBytes = NETBENCH_SEND_BYTES_PER_EVENT_MAX;
    while (budgetBytes > 0) {
      if (state.bytesSent === bytes) {
        this.sendEnd();
        return;
      }
      const messageSizeBytes = Math.min(
        messageBytes,
        bytes - state.bytesSent + state.messageSentBytes,
      );
      const taken = this.writeStaged(state.messageSentBytes, messageSizeBytes);
      if (taken === null) return;
      state.messageSentBytes += taken;
      budgetBytes -= taken;
      if (state.messageSentBytes === messageSizeBytes) state.messageSentBytes = 0;
      else return; // Partial: `writable` follows when room frees.
    }
    this.armSendTimer();
  }

  /** Ping: writes the rest of the current round's message (partial writes wait for room). */
  private sendMessage(): void {
    const state = this.state;
    const messageBytes = state.params.messageBytes;
    if (state.messageSentBytes === messageBytes) return;
    const taken = this.writeStaged(state.messageSentBytes, messageBytes);
    if (taken !== null) state.messageSentBytes += taken;
  }

  /** Writes staging[from, to) from a view of guest memory; returns what the socket took. */
  private writeStaged(fromBytes: number, toBytes: number): number | null {
    const address = this.stagingAddress;
    const pending = this.context.memory.bytes.subarray(address + fromBytes, address + toBytes);
    const taken = this.callSocket((net, socket) => net.write(socket, pending));
    if (taken !== null) this.state.bytesSent += taken;
    return taken;
  }

  /** Sink and ping: reads until the socket is empty; the ping then completes rounds. */
  private receive(): void {
    const state = this.state;
    let arrivedBytes = 0;
    this.readTarget ??= new Uint8Array(NETBENCH_READ_BYTES_MAX);
    const target = this.readTarget;
    for (;;) {
      // Terminates: the receive buffer is bounded and nothing refills it during this event (a
      // channel ends a long burst with an empty read, CHANNEL_READ_BURST_BYTES).
      const count = this.callSocket((net, socket) => readSocketInto(net, socket, target));
      if (count === null || count === 0) break;
      arrivedBytes += count;
    }
    if (arrivedBytes === 0) return;
    this.noteArrival(arrivedBytes);
    if (state.params.role === 'ping') this.onPingBytes(arrivedBytes);
  }

  private noteArrival(arrivedBytes: number): void {
    const state = this.state;
    const nowMs = this.context.nowMs();
    if (state.firstArrivalMs === null) {
      state.firstArrivalMs = nowMs;
      state.firstArrivalBytes = arrivedBytes;
    }
    state.lastArrivalMs = nowMs;
    state.bytesReceived += arrivedBytes;
  }

  /** Ping: counts echoed bytes; a full message back ends the round. */
  private onPingBytes(arrivedBytes: number): void {
    const state = this.state;
    const { messageBytes, rounds, warmupRounds } = state.params;
    state.roundReceivedBytes += arrivedBytes;
    if (state.roundReceivedBytes > messageBytes) {
      this.fail(`the echo returned ${state.roundReceivedBytes} B for a ${messageBytes} B message`);
      this.callSocket((net, socket) => net.close(socket));
      return;
    }
    if (state.roundReceivedBytes < messageBytes) return;
    const rttMs = this.context.nowMs() - state.roundStartMs;
    if (state.roundsDone >= warmupRounds) state.rttMs.push(rttMs);
    state.roundsDone++;
    if (state.roundsDone === warmupRounds + rounds) {
      state.finishedMs = this.context.nowMs();
      this.sendEnd();
    } else {
      this.startRound();
    }
  }

  private startRound(): void {
    const state = this.state;
    state.roundStartMs = this.context.nowMs();
    state.roundReceivedBytes = 0;
    state.messageSentBytes = 0;
  }

  /**
   * Echo: writes back what waits in staging, then reads more, until the socket is empty, the
   * send buffer is full, or the budget is spent. After the peer's `end`, ends once empty.
   */
  private echo(): void {
    const state = this.state;
    const memory = this.context.memory;
    let budgetBytes = NETBENCH_SEND_BYTES_PER_EVENT_MAX;
    while (budgetBytes > 0) {
      if (state.pendingStart < state.pendingEnd) {
        const taken = this.writeStaged(state.pendingStart, state.pendingEnd);
        if (taken === null) return;
        state.pendingStart += taken;
        budgetBytes -= taken;
        if (state.pendingStart < state.pendingEnd) return; // `writable` follows.
        continue;
      }
      const bytes = this.callSocket((net, socket) => net.read(socket, NETBENCH_ECHO_STAGING_BYTES));
      if (bytes === null) return;
      if (bytes.byteLength === 0) {
        if (state.endReceivedMs !== null) this.sendEnd();
        return;
      }
      this.noteArrival(bytes.byteLength);
      memory.write(this.stagingAddress, bytes);
      state.pendingStart = 0;
      state.pendingEnd = bytes.byteLength;
    }
    this.armSendTimer();
  }

  private armSendTimer(): void {
    const state = this.state;
    if (state.sendTimerArmed) return;
    state.sendTimerArmed = true;
    this.context.setTimer(0, NETBENCH_SEND_TAG);
  }

  // ---- the end -------------------------------------------------------------------------------

  /** Ends our direction (once); a source's or echo's work is then finished. */
  private sendEnd(): void {
    const state = this.state;
    if (state.endSentMs !== null) return;
    if (this.callSocket((net, socket) => net.end(socket)) === null) return;
    state.endSentMs = this.context.nowMs();
    state.finishedMs ??= state.endSentMs;
    this.closeIfFinished();
  }

  private onEnd(): void {
    const state = this.state;
    if (state.phase !== 'running') return;
    state.endReceivedMs = this.context.nowMs();
    const role = state.params.role;
    if (role === 'sink') {
      this.receive(); // `end` follows the last byte, but reading costs nothing if it did not.
      state.finishedMs = state.endReceivedMs;
      this.sendEnd();
    } else if (role === 'echo') {
      this.echo(); // Ends once everything was written back.
    } else if (role === 'ping' && state.finishedMs === null) {
      this.fail(`the echo ended after ${state.roundsDone} of ${state.params.rounds} rounds`);
      this.callSocket((net, socket) => net.close(socket));
    }
    this.closeIfFinished();
  }

  private closeIfFinished(): void {
    const state = this.state;
    if (state.phase !== 'running') return;
    if (state.endSentMs === null || state.endReceivedMs === null) return;
    state.phase = 'closing';
    this.callSocket((net, socket) => net.close(socket));
  }
}

/**
 * Builds netbenches: `create` validates the parameters (throwing `InputError`) and starts from
 * zero; `restore` continues a saved `NetbenchState` after a migration, arming no timer.
 */
export const netbenchFactory: ProgramFactory<NetbenchParams, NetbenchState> = {
  kind: NETBENCH_KIND,
  create(context: ProgramContext, params: NetbenchParams): GuestProgram<NetbenchState> {
    const config = resolveNetbenchParams(params, context.dataRegion);
    const state: NetbenchState = {
      params: config,
      phase: 'idle',
      socket: null,
      connectTries: 0,
      bytesSent: 0,
      bytesReceived: 0,
      firstArrivalMs: null,
      lastArrivalMs: null,
      firstArrivalBytes: 0,
      messageSentBytes: 0,
      sendTimerArmed: false,
      pendingStart: 0,
      pendingEnd: 0,
      roundsDone: 0,
      roundStartMs: 0,
      roundReceivedBytes: 0,
      rttMs: [],
      startedMs: null,
      connectedMs: null,
      endSentMs: null,
      endReceivedMs: null,
      finishedMs: null,
      errors: 0,
      lastError: '',
      lastSocketCallError: '',
    };
    return new Netbench(context, state);
  },
  restore(context: ProgramContext, state: NetbenchState): GuestProgram<NetbenchState> {
    // The target's data region must still hold the staging area.
    const config = resolveNetbenchParams(paramsOf(state.params), context.dataRegion);
    assert.deepEqual(config, state.params, 'a saved netbench has resolved parameters');
    assert.ok(state.rttMs.length <= config.rounds, 'a saved ping keeps at most rounds samples');
    return new Netbench(context, state);
  },
};
