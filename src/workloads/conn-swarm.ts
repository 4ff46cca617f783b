/**
 * The connection swarm: the guest program of the soak (bench/soak/soak.bench.ts). A client
 * holds `connections` concurrent connections to a server; each connection carries
 * `bytesPerConnection` bytes each way at a modest paced rate, so that many connections stay
 * open for minutes, and every byte received is checked against what its sender must have sent
 * at that offset (none lost, duplicated or misdelivered, principle 2).
 *
 * Method.
 * - Connecting: the client opens every connection at start; a refused or unreachable connect,
 *   or one refused for lack of a socket slot (ENOBUFS), is retried `CONNECT_RETRY_MS`
 *   later, up to `connectTriesMax` tries per connection (the lifecycle of
 *   socket-lifecycle.ts, per connection instead of per program). The server accepts up to
 *   `connections` and closes any beyond.
 * - Pacing: a `tick` timer every `tickMs` tops each open connection up to
 *   `bytesPerSecond * (now - opened)` bytes sent (guest time, which stands still while the
 *   domain is paused, so a migration causes no burst). A partial write waits for `writable`.
 *   Bytes are generated into a staging area at the start of the data region through
 *   `GuestMemory.write` (an application's buffer, dirtied as in Xen) and written from there.
 *   After `bytesPerConnection` bytes the direction ends; once the peer's end arrived too, the
 *   socket is closed.
 * - Content: byte `o` of a direction is byte `o % 4` of `swarmWord(key, o / 4)`, a hash of
 *   the direction's key and the word index. Unlike the streamer's chunk generator
 *   (streamer.ts), it is a function of the offset alone, so 1000 connections keep no generator
 *   state, and a receiver checks each arriving byte at its offset: a lost or repeated span
 *   shifts every later byte and shows as mismatches. The key hashes the seed, the client's port
 *   (both ends know it: `info().localPort` and `accepted.remotePort`) and the direction, so
 *   bytes of another connection or of the other direction do not match either.
 * - Checking: bytes past `bytesPerConnection` are counted as excess (duplicated), bytes that
 *   differ as mismatched; a direction that ends short counts its missing bytes as short (lost).
 *
 * The state is plain data (one small record per connection); sockets are kernel state, so only
 * their ids are kept. `restore` arms no timer (the kernel re-arms saved ones).
 *
 * Non-goals: receive-side pacing (reads are immediate), reconnecting a connection that failed
 * once open (the soak must see it as a failure), more than one server port.
 */

import assert from 'node:assert/strict';
import { InputError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { NetError } from '../guest/net-errors.ts';
import type { GuestProgram, ProgramContext, ProgramFactory } from '../guest/program.ts';
import type { GuestNet, SocketEvent, SocketId } from '../guest/socket-api.ts';
import type { Region } from '../memory/layout.ts';
import { checkInteger, checkKnownParams, clientPeerIp } from './params.ts';
import {
  CONNECT_RETRY_MS,
  CONNECT_TRIES_MAX_DEFAULT,
  CONNECT_TRIES_MAX_LIMIT,
  RETRYABLE_CONNECT_ERRORS,
} from './socket-lifecycle.ts';

/** The program kind, as registered with the guest kernel. */
export const CONN_SWARM_KIND = 'conn-swarm';
/** Timer tag: top up every open connection. */
export const CONN_SWARM_TICK_TAG = 'tick';
/** Timer tag: retry the connects waiting for another try. */
export const CONN_SWARM_CONNECT_TAG = 'connect';

/** Most connections of one program: four times what the soak puts in one domain. */
export const CONN_SWARM_CONNECTIONS_MAX = 4096;
/** Most bytes per direction of a connection: 1 TiB, exact in a double. */
export const CONN_SWARM_BYTES_MAX = 2 ** 40;
/** Fastest pace per direction of a connection: 1 GiB/s, far above "modest". */
export const CONN_SWARM_RATE_MAX = 2 ** 30;
/** Default pacing period: 100 ms, ten small writes a second per connection. */
export const CONN_SWARM_TICK_MS_DEFAULT = 100;
export const CONN_SWARM_TICK_MS_MAX = 10_000;
/** Staging area and largest single write: 16 KiB (4 pages), a small socket buffer's worth. */
export const CONN_SWARM_STAGING_BYTES = 16 * 1024;
/** Bytes asked for per `read`; the loop repeats until the socket is empty. */
export const CONN_SWARM_READ_BYTES_MAX = 64 * 1024;

/** Direction of a connection's bytes; part of the content key. */
export type SwarmDirection = 'up' | 'down';

export interface ConnSwarmParams {
  /** `server` listens on `port`; `client` opens `connections` connections to it. */
  role: 'server' | 'client';
  port: number;
  /** The server's IPv4 address; required for a client, refused for a server. */
  peerIp?: string;
  /** Client: connections to hold; server: most connections accepted. In [1, 4096]. */
  connections: number;
  /** Bytes each direction of each connection carries, in [0, 2^40]. */
  bytesPerConnection: number;
  /** Pace of each direction of each connection, bytes per guest second, in [1, 2^30]. */
  bytesPerSecond: number;
  /** @default 100 */
  tickMs?: number;
  /** Seed of the content; client and server must agree. @default 1 */
  seed?: number;
  /** Client only: connect attempts per connection. @default 100 */
  connectTriesMax?: number;
}

export interface ConnSwarmConfig {
  role: 'server' | 'client';
  port: number;
  /** Null for a server. */
  peerIp: string | null;
  connections: number;
  bytesPerConnection: number;
  bytesPerSecond: number;
  tickMs: number;
  seed: number;
  connectTriesMax: number;
}

/**
 * One connection: `connecting` (client) -> `open` -> `closing` (both directions done, closed)
 * -> `done`; `retryWait` between connect attempts; `failed` on any other error or an early
 * close.
 */
export interface SwarmConnection {
  socket: SocketId | null;
  phase: 'connecting' | 'retryWait' | 'open' | 'closing' | 'done' | 'failed';
  /** The client's port: half of the content key. 0 until open. */
  clientPort: number;
  connectTries: number;
  /** Guest time the connection opened (pacing starts there). */
  openedMs: number | null;
  bytesSent: number;
  sendEnded: boolean;
  bytesReceived: number;
  /** Received bytes equal to what the sender must have sent at their offset. */
  bytesVerified: number;
  mismatchedBytes: number;
  /** Bytes beyond `bytesPerConnection`. */
  excessBytes: number;
  /** The peer's end arrived. */
  receiveEnded: boolean;
}

export interface ConnSwarmState {
  params: ConnSwarmConfig;
  connections: SwarmConnection[];
  /** Connections open now (`open` or `closing`), and the most at once. */
  openNow: number;
  openPeak: number;
  /** Server: connections closed because `connections` were already taken. */
  refused: number;
  tickArmed: boolean;
  connectTimerArmed: boolean;
  errors: number;
  lastError: string;
}

/** What the program reports; the soak sums these over domains. */
export type ConnSwarmStats = {
  role: string;
  connections: number;
  open: number;
  openPeak: number;
  connecting: number;
  done: number;
  failed: number;
  refused: number;
  connectTries: number;
  bytesSent: number;
  bytesReceived: number;
  bytesVerified: number;
  mismatchedBytes: number;
  excessBytes: number;
  /** Bytes missing from directions that ended before `bytesPerConnection`. */
  shortBytes: number;
  /** Every connection is done or failed. */
  finished: boolean;
  errors: number;
  lastError: string;
};

const PARAM_NAMES: ReadonlySet<string> = new Set([
  'role',
  'port',
  'peerIp',
  'connections',
  'bytesPerConnection',
  'bytesPerSecond',
  'tickMs',
  'seed',
  'connectTriesMax',
]);

/**
 * Checks `params` against the program's data region and fills in the defaults. Throws
 * `InputError` naming the parameter, its value and what is allowed.
 */
export function resolveConnSwarmParams(
  params: ConnSwarmParams,
  dataRegion: Region,
): ConnSwarmConfig {
  if (typeof params !== 'object' || params === null) {
    throw new InputError(`conn-swarm parameters must be an object; got ${String(params)}`);
  }
  checkKnownParams('conn-swarm', params, PARAM_NAMES);
  const role = params.role;
  if (role !== 'server' && role !== 'client') {
    throw new InputError(`role must be 'server' or 'client'; got ${String(role)}`);
  }
  const port = checkInteger('port', params.port, 1, 65535);
  const peerIp = clientPeerIp(role, params.peerIp);
  const connections = checkInteger(
    'connections',
    params.connections,
    1,
    CONN_SWARM_CONNECTIONS_MAX,
  );
  const bytesPerConnection = checkInteger(
    'bytesPerConnection',
    params.bytesPerConnection,
    0,
    CONN_SWARM_BYTES_MAX,
  );
  const bytesPerSecond = checkInteger(
    'bytesPerSecond',
    params.bytesPerSecond,
    1,
    CONN_SWARM_RATE_MAX,
  );
  const tickMs = checkInteger(
    'tickMs',
    params.tickMs ?? CONN_SWARM_TICK_MS_DEFAULT,
    1,
    CONN_SWARM_TICK_MS_MAX,
  );
  const seed = checkInteger('seed', params.seed ?? 1, 0, 0xffff_ffff);
  if (role === 'server' && params.connectTriesMax !== undefined) {
    throw new InputError('connectTriesMax is for a client only; a server does not connect');
  }
  const connectTriesMax = checkInteger(
    'connectTriesMax',
    params.connectTriesMax ?? CONNECT_TRIES_MAX_DEFAULT,
    1,
    CONNECT_TRIES_MAX_LIMIT,
  );
  const regionBytes = dataRegion.pageCount * PAGE_SIZE_BYTES;
  if (regionBytes < CONN_SWARM_STAGING_BYTES) {
    throw new InputError(
      `the program's data region (${regionBytes} B) cannot hold the ${CONN_SWARM_STAGING_BYTES} B staging area`,
    );
  }
  return {
    role,
    port,
    peerIp,
    connections,
    bytesPerConnection,
    bytesPerSecond,
    tickMs,
    seed,
    connectTriesMax,
  };
}

// ---- content ------------------------------------------------------------------------------

/** A 32-bit finalizer (lowbias32, Wellons 2018): a bijection with good avalanche. */
function mix32(x: number): number {
  let h = x >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The content key of one direction of the connection from `clientPort`. */
export function swarmKey(seed: number, clientPort: number, direction: SwarmDirection): number {
  return mix32(mix32(seed) ^ ((clientPort << 1) | (direction === 'up' ? 0 : 1)));
}

/**
 * Word `wordIndex` of a direction: distinct indices below 2^32 give distinct words (mix32 is a
 * bijection), so the content never repeats within 16 GiB.
 */
export function swarmWord(key: number, wordIndex: number): number {
  const high = Math.floor(wordIndex / 2 ** 32);
  return mix32((wordIndex >>> 0) ^ mix32(key + Math.imul(high, 0x85ebca6b)));
}

/** Fills `out` with the direction's bytes from stream offset `offset` on. */
export function fillSwarmBytes(key: number, offset: number, out: Uint8Array): void {
  let wordIndex = Math.floor(offset / 4);
  let shift = (offset % 4) * 8;
  let word = swarmWord(key, wordIndex);
  for (let i = 0; i < out.length; i++) {
    out[i] = (word >>> shift) & 0xff;
    shift += 8;
    if (shift === 32 && i + 1 < out.length) {
      shift = 0;
      word = swarmWord(key, ++wordIndex);
    }
  }
}

/** How many of `bytes`, received at stream offset `offset`, differ from the direction's. */
export function countSwarmMismatches(
  key: number,
  offset: number,
  bytes: Uint8Array,
  scratch: Uint8Array = new Uint8Array(bytes.length),
): number {
  assert.ok(scratch.length >= bytes.length, 'the scratch holds every byte compared');
  const expected = scratch.subarray(0, bytes.length);
  fillSwarmBytes(key, offset, expected);
  let mismatches = 0;
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== expected[i]) mismatches++;
  return mismatches;
}

/**
 * What a receiver makes of `bytes` arriving at offset `received` of a direction that carries
 * `total` bytes: how many are within it and match, differ, or lie beyond it.
 */
export function checkSwarmArrival(
  key: number,
  received: number,
  total: number,
  bytes: Uint8Array,
  scratch?: Uint8Array,
): { verified: number; mismatched: number; excess: number } {
  const within = Math.max(0, Math.min(bytes.length, total - received));
  const mismatched = countSwarmMismatches(key, received, bytes.subarray(0, within), scratch);
  return { verified: within - mismatched, mismatched, excess: bytes.length - within };
}

/**
 * Bytes a connection opened at `openedMs` should have sent by `nowMs`: the pace, capped at the
 * direction's total.
 */
export function swarmBytesDue(config: ConnSwarmConfig, openedMs: number, nowMs: number): number {
  const elapsedMs = Math.max(0, nowMs - openedMs);
  return Math.min(
    config.bytesPerConnection,
    Math.floor((elapsedMs * config.bytesPerSecond) / 1000),
  );
}

/** The figures of a state (pure, so the soak's arithmetic can be tested on made-up states). */
export function connSwarmStats(state: ConnSwarmState): ConnSwarmStats {
  const { params, connections } = state;
  let connecting = 0;
  let done = 0;
  let failed = 0;
  let connectTries = 0;
  let bytesSent = 0;
  let bytesReceived = 0;
  let bytesVerified = 0;
  let mismatchedBytes = 0;
  let excessBytes = 0;
  let shortBytes = 0;
  for (const c of connections) {
    if (c.phase === 'connecting' || c.phase === 'retryWait') connecting++;
    if (c.phase === 'done') done++;
    if (c.phase === 'failed') failed++;
    connectTries += c.connectTries;
    bytesSent += c.bytesSent;
    bytesReceived += c.bytesReceived;
    bytesVerified += c.bytesVerified;
    mismatchedBytes += c.mismatchedBytes;
    excessBytes += c.excessBytes;
    if (c.receiveEnded) shortBytes += Math.max(0, params.bytesPerConnection - c.bytesReceived);
  }
  return {
    role: params.role,
    connections: params.connections,
    open: state.openNow,
    openPeak: state.openPeak,
    connecting,
    done,
    failed,
    refused: state.refused,
    connectTries,
    bytesSent,
    bytesReceived,
    bytesVerified,
    mismatchedBytes,
    excessBytes,
    shortBytes,
    finished: connections.length === params.connections && done + failed === params.connections,
    errors: state.errors,
    lastError: state.lastError,
  };
}

function newConnection(phase: SwarmConnection['phase']): SwarmConnection {
  return {
    socket: null,
    phase,
    clientPort: 0,
    connectTries: 0,
    openedMs: null,
    bytesSent: 0,
    sendEnded: false,
    bytesReceived: 0,
    bytesVerified: 0,
    mismatchedBytes: 0,
    excessBytes: 0,
    receiveEnded: false,
  };
}

class ConnSwarm implements GuestProgram<ConnSwarmState> {
  readonly kind = CONN_SWARM_KIND;
  readonly state: ConnSwarmState;
  private readonly context: ProgramContext;
  private readonly stagingAddress: number;
  /** Where bytes are generated (send) or expected bytes computed (receive); not state. */
  private readonly sendScratch = new Uint8Array(CONN_SWARM_STAGING_BYTES);
  private readonly receiveScratch = new Uint8Array(CONN_SWARM_READ_BYTES_MAX);

  constructor(context: ProgramContext, state: ConnSwarmState) {
    this.context = context;
    this.state = state;
    this.stagingAddress = context.dataRegion.firstPage * PAGE_SIZE_BYTES;
  }

  start(): void {
    const { params } = this.state;
    if (params.role === 'server') {
      this.context.net.listen(params.port);
    } else {
      for (let i = 0; i < params.connections; i++) {
        const connection = newConnection('connecting');
        this.state.connections.push(connection);
        this.connect(connection);
      }
    }
    this.armTick();
  }

  onTimer(tag: string): void {
    const state = this.state;
    if (tag === CONN_SWARM_CONNECT_TAG) {
      state.connectTimerArmed = false;
      for (const connection of state.connections)
        if (connection.phase === 'retryWait') this.connect(connection);
      return;
    }
    assert.equal(tag, CONN_SWARM_TICK_TAG, `the conn-swarm arms only its own timers; got ${tag}`);
    state.tickArmed = false;
    for (const connection of state.connections) this.send(connection);
    this.armTick();
  }

  onSocket(event: SocketEvent): void {
    if (event.type === 'accepted') {
      this.onAccepted(event.socket, event.remotePort);
      return;
    }
    const connection = this.state.connections.find((c) => c.socket === event.socket);
    // The `closed` of a connection turned away, or of one already failed: nothing to do.
    if (!connection) return;
    switch (event.type) {
      case 'connected': {
        if (connection.phase !== 'connecting') break;
        const info = this.callSocket(connection, (net, socket) => net.info(socket));
        if (info) this.opened(connection, info.localPort);
        break;
      }
      case 'readable':
        this.receive(connection);
        break;
      case 'writable':
        this.send(connection);
        break;
      case 'end':
        this.receive(connection);
        connection.receiveEnded = true;
        this.closeIfFinished(connection);
        break;
      case 'closed':
        connection.socket = null;
        if (connection.phase === 'closing') {
          connection.phase = 'done';
          this.state.openNow--;
        } else if (connection.phase !== 'failed') {
          this.fail(connection, 'the socket closed before both directions finished');
        }
        break;
      case 'error':
        this.onError(connection, event.code, `${event.code}: ${event.message}`);
        break;
    }
  }

  stats(): ConnSwarmStats {
    return connSwarmStats(this.state);
  }

  // ---- connections ---------------------------------------------------------------------------

  private connect(connection: SwarmConnection): void {
    const { peerIp, port } = this.state.params;
    connection.connectTries++;
    connection.phase = 'connecting';
    try {
      connection.socket = this.context.net.connect(peerIp!, port);
    } catch (error) {
      // No socket slot free now: retried like a refused connect.
      if (!(error instanceof NetError) || error.code !== 'ENOBUFS') throw error;
      connection.socket = null;
      this.onError(connection, error.code, `${error.code}: ${error.message}`);
    }
  }

  private onAccepted(socket: SocketId, remotePort: number): void {
    const state = this.state;
    if (state.connections.length >= state.params.connections) {
      state.refused++;
      this.context.net.close(socket);
      return;
    }
    const connection = newConnection('connecting');
    connection.socket = socket;
    state.connections.push(connection);
    this.opened(connection, remotePort);
  }

  private opened(connection: SwarmConnection, clientPort: number): void {
    const state = this.state;
    connection.phase = 'open';
    connection.clientPort = clientPort;
    connection.openedMs = this.context.nowMs();
    state.openNow++;
    state.openPeak = Math.max(state.openPeak, state.openNow);
    this.send(connection);
  }

  private onError(connection: SwarmConnection, code: string, description: string): void {
    const state = this.state;
    connection.socket = null;
    const retryable = connection.phase === 'connecting' && RETRYABLE_CONNECT_ERRORS.has(code);
    if (retryable && connection.connectTries < state.params.connectTriesMax) {
      connection.phase = 'retryWait';
      if (!state.connectTimerArmed) {
        state.connectTimerArmed = true;
        this.context.setTimer(CONNECT_RETRY_MS, CONN_SWARM_CONNECT_TAG);
      }
      return;
    }
    this.fail(
      connection,
      retryable
        ? `gave up after ${connection.connectTries} connect tries: ${description}`
        : description,
    );
  }

  private fail(connection: SwarmConnection, description: string): void {
    const state = this.state;
    if (connection.phase === 'open' || connection.phase === 'closing') state.openNow--;
    connection.phase = 'failed';
    state.errors++;
    state.lastError = description;
    this.context.log(`conn-swarm ${state.params.role} connection failed: ${description}`);
  }

  /** Keeps the pacing timer running until every connection is done or failed. */
  private armTick(): void {
    const state = this.state;
    if (state.tickArmed) return;
    const finished =
      state.connections.length === state.params.connections &&
      state.connections.every((c) => c.phase === 'done' || c.phase === 'failed');
    if (finished) return;
    state.tickArmed = true;
    this.context.setTimer(state.params.tickMs, CONN_SWARM_TICK_TAG);
  }

  // ---- bytes ---------------------------------------------------------------------------------

  private keyOf(connection: SwarmConnection, sending: boolean): number {
    const { role, seed } = this.state.params;
    const up = (role === 'client') === sending;
    return swarmKey(seed, connection.clientPort, up ? 'up' : 'down');
  }

  /** Tops the connection up to its pace; ends its direction once every byte is taken. */
  private send(connection: SwarmConnection): void {
    if (connection.phase !== 'open' || connection.sendEnded) return;
    const { params } = this.state;
    const { memory } = this.context;
    const due = swarmBytesDue(params, connection.openedMs!, this.context.nowMs());
    const key = this.keyOf(connection, true);
    while (connection.bytesSent < due) {
      const length = Math.min(due - connection.bytesSent, CONN_SWARM_STAGING_BYTES);
      const staged = this.sendScratch.subarray(0, length);
      fillSwarmBytes(key, connection.bytesSent, staged);
      memory.write(this.stagingAddress, staged);
      const pending = memory.bytes.subarray(this.stagingAddress, this.stagingAddress + length);
      const taken = this.callSocket(connection, (net, socket) => net.write(socket, pending));
      if (taken === null) return;
      connection.bytesSent += taken;
      if (taken < length) return; // `writable` follows when room frees.
    }
    if (connection.bytesSent === params.bytesPerConnection) {
      if (this.callSocket(connection, (net, socket) => net.end(socket)) === null) return;
      connection.sendEnded = true;
      this.closeIfFinished(connection);
    }
  }

  private receive(connection: SwarmConnection): void {
    if (connection.phase !== 'open') return;
    const { params } = this.state;
    const key = this.keyOf(connection, false);
    for (;;) {
      // Terminates: the receive buffer is bounded and nothing refills it during this event.
      const bytes = this.callSocket(connection, (net, socket) =>
        net.read(socket, CONN_SWARM_READ_BYTES_MAX),
      );
      if (bytes === null || bytes.byteLength === 0) return;
      const arrival = checkSwarmArrival(
        key,
        connection.bytesReceived,
        params.bytesPerConnection,
        bytes,
        this.receiveScratch,
      );
      connection.bytesReceived += bytes.byteLength;
      connection.bytesVerified += arrival.verified;
      connection.mismatchedBytes += arrival.mismatched;
      connection.excessBytes += arrival.excess;
    }
  }

  private closeIfFinished(connection: SwarmConnection): void {
    if (connection.phase !== 'open' || !connection.sendEnded || !connection.receiveEnded) return;
    connection.phase = 'closing';
    this.callSocket(connection, (net, socket) => net.close(socket));
  }

  /**
   * Runs a call on the connection's socket. A `NetError` means the kernel already forgot it (a
   * reset while our events waited): its `error` or `closed` is queued and decides the outcome.
   */
  private callSocket<T>(
    connection: SwarmConnection,
    call: (net: GuestNet, socket: SocketId) => T,
  ): T | null {
    try {
      return call(this.context.net, connection.socket!);
    } catch (error) {
      if (!(error instanceof NetError)) throw error;
      return null;
    }
  }
}

/**
 * Builds swarms: `create` validates the parameters (throwing `InputError`) and starts from
 * zero; `restore` continues a saved state after a migration, arming no timer.
 */
export const connSwarmFactory: ProgramFactory<ConnSwarmParams, ConnSwarmState> = {
  kind: CONN_SWARM_KIND,
  create(context: ProgramContext, params: ConnSwarmParams): GuestProgram<ConnSwarmState> {
    return new ConnSwarm(context, {
      params: resolveConnSwarmParams(params, context.dataRegion),
      connections: [],
      openNow: 0,
      openPeak: 0,
      refused: 0,
      tickArmed: false,
      connectTimerArmed: false,
      errors: 0,
      lastError: '',
    });
  },
  restore(context: ProgramContext, state: ConnSwarmState): GuestProgram<ConnSwarmState> {
    // The target's data region must still hold the staging area.
    const config = resolveConnSwarmParams(asParams(state.params), context.dataRegion);
    assert.deepEqual(config, state.params, 'a saved conn-swarm has resolved parameters');
    return new ConnSwarm(context, state);
  },
};

/** A config back as parameters (a server has neither `peerIp` nor `connectTriesMax`). */
function asParams(config: ConnSwarmConfig): ConnSwarmParams {
  const { peerIp, connectTriesMax, ...rest } = config;
  return peerIp === null ? rest : { ...rest, peerIp, connectTriesMax };
}
