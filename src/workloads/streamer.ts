/**
 * The streamer: the guest program of `xenvmc demo stream`. Two domains, a server and a client,
 * stream seeded pseudo-random bytes to each other both ways at once, while one of them may be
 * migrated; at the end each side's digest of what it sent must equal the other side's digest
 * of what it received (every byte arrived once and in order, principle 2).
 *
 * Method. The server listens and accepts exactly one connection; the client connects, and
 * retries every `CONNECT_RETRY_MS` after ECONNREFUSED or EHOSTUNREACH (so it may start before
 * the server), up to `connectTriesMax` tries. Then both sides do the same:
 * - send: generate the next chunk into a staging area at the start of the program's data
 *   region, through `GuestMemory.write` (a real application's buffer: it dirties program pages,
 *   as it would in Xen), and `write` it to the socket from a view of guest memory. A partial
 *   write leaves `chunkSentBytes` in the state and sending resumes on `writable`; after `bytes`
 *   bytes, `end()`.
 * - receive: on `readable`, read until `read` returns nothing (events are edge-triggered).
 * - digests: running CRC-32s (`zlib.crc32(data, previous)`) of the bytes the socket took and of
 *   the bytes read. The running value is a plain number, so it survives a migration in the
 *   state; a `crypto` Hash object would not.
 * When our `end()` is done and the peer's `end` has arrived, the program closes its socket.
 *
 * Staging area (`stagingBytes`, a whole number of chunk slots, `slotCount` of them):
 *
 * ```
 * dataRegion start
 * | slot 0: chunk 0, slotCount, 2*slotCount, ... | slot 1: chunk 1, ... | ... | unused |
 *   <---------------- chunkBytes -------------->
 * ```
 *
 * Chunk content: the state's `Random` (sfc32, plain data) draws four words per chunk, which seed
 * an xorshift128 (Marsaglia 2003) that fills the chunk. Why not `Random.fill` for every byte:
 * measured at about 44 ns per word here (src/workloads/dirtier.ts), about 90 MB/s, slower than
 * the links we want to saturate; xorshift in int32 locals runs at about 3 ns per word. The
 * chunk's generator never outlives the event that fills it, so only the sfc32 state is saved.
 * `streamCrc` replays the same bytes without guest memory, for checkers.
 *
 * Stalls: the gap between two arrivals (a `readable` that brought bytes, or the `end`), from the
 * connection on, goes into a log2 histogram and a maximum with its time, to show what a
 * migration does to the stream.
 *
 * The state is plain data; the socket is kernel state, restored by the kernel, so the program
 * keeps only its id. `restore` arms no timer (the kernel re-arms saved ones).
 *
 * Non-goals: received bytes are hashed, not stored in guest memory (the receive path already
 * dirties the socket buffer and rings); more than one connection per program; pacing.
 */

import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { InputError } from '../core/errors.ts';
import { Random, type RandomState } from '../core/random.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import type { GuestProgram, ProgramContext, ProgramFactory } from '../guest/program.ts';
import type { GuestNet, SocketEvent, SocketId } from '../guest/socket-api.ts';
import type { Region } from '../memory/layout.ts';
import { checkInteger, checkKnownParams, clientPeerIp } from './params.ts';
import {
  acceptOne,
  CONNECT_RETRY_MS,
  CONNECT_TRIES_MAX_DEFAULT,
  CONNECT_TRIES_MAX_LIMIT,
  callSocket,
  type LifecycleOptions,
  onSocketClosed,
  onSocketError,
  startConnect,
} from './socket-lifecycle.ts';

/** The program kind, as registered with the guest kernel. */
/** What a streamer reports (`stats()`); demos and tests read it through the control API. */
export type StreamerStats = {
  role: string;
  phase: string;
  bytesToSend: number;
  bytesSent: number;
  bytesReceived: number;
  /** Running CRC-32 of every byte written / read. */
  sendCrc: number;
  receiveCrc: number;
  /** Both directions are done. */
  finished: boolean;
  errors: number;
  lastError: string;
  lastSocketCallError: string;
  connectTries: number;
  /** Longest time between two arrivals, in guest ms. */
  longestGapMs: number;
  longestGapEndMs: number;
  gapCounts: string;
  startedMs: number;
  sendFinishedMs: number;
  receiveFinishedMs: number;
  finishedMs: number;
};

export const STREAMER_KIND = 'streamer';
/** Timer tag: the client's next connect attempt. */
export const STREAMER_CONNECT_TAG = 'connect';
/** Timer tag: continue sending after a full per-event budget (see `SEND_BYTES_PER_EVENT_MAX`). */
export const STREAMER_SEND_TAG = 'send';

/** The client's connect retries: the policy every guest program shares (socket-lifecycle). */
export { CONNECT_RETRY_MS, CONNECT_TRIES_MAX_DEFAULT, CONNECT_TRIES_MAX_LIMIT };
/** Default chunk: 64 KiB, a common application write size (and 16 pages of staging). */
export const CHUNK_BYTES_DEFAULT = 64 * 1024;
/** Largest chunk: generating 16 MiB takes about 15 ms, the most one event should spend on it. */
export const CHUNK_BYTES_MAX = 16 * 1024 * 1024;
/** Most bytes one side may send: 1 TiB, far above any demo, and exact in a double. */
export const STREAM_BYTES_MAX = 2 ** 40;
/**
 * Most bytes one event writes before yielding with a 0 ms timer. Socket buffers are a few
 * hundred KiB, so backpressure normally stops us first; the bound keeps one guest event short
 * (the kernel pauses a domain only between events) whatever the buffer size.
 */
export const SEND_BYTES_PER_EVENT_MAX = 4 * 1024 * 1024;
/** Bytes asked for per `read` call; the loop repeats until the socket is empty. */
export const READ_BYTES_MAX = 256 * 1024;
/** Buckets of the gap histogram: [0, 1) ms, then [2^(k-1), 2^k) ms, the last open-ended. */
export const GAP_BUCKET_COUNT = 16;

/** Parameters of a streamer, e.g. from the demo's command line. */
export interface StreamerParams {
  /** `server` listens on `port` and accepts one connection; `client` connects to it. */
  role: 'server' | 'client';
  /** TCP port: the server's listening port, the client's target port, in [1, 65535]. */
  port: number;
  /** The server's IPv4 address; required for a client, refused for a server. */
  peerIp?: string;
  /** Bytes to send, an integer in [0, 2^40]. */
  bytes: number;
  /**
   * Seed of the bytes sent (an unsigned 32-bit integer). The defaults differ by role, so the
   * two directions carry different bytes and a crossed digest cannot match by accident.
   * @default 1 for a client, 2 for a server
   */
  seed?: number;
  /**
   * Bytes generated and written per chunk, in [1, 16 MiB].
   * @default 65536
   */
  chunkBytes?: number;
  /**
   * Size of the staging area at the start of the data region, in bytes: chunks rotate through
   * `floor(stagingBytes / chunkBytes)` slots, so a larger area dirties more program pages.
   * At least `chunkBytes`, at most the data region.
   * @default chunkBytes
   */
  stagingBytes?: number;
  /**
   * Client only: connect attempts before giving up, `CONNECT_RETRY_MS` apart, in [1, 36000].
   * @default 100
   */
  connectTriesMax?: number;
}

/** Streamer parameters with every default filled in. */
export interface StreamerConfig {
  role: 'server' | 'client';
  port: number;
  /** Null for a server. */
  peerIp: string | null;
  bytes: number;
  seed: number;
  chunkBytes: number;
  stagingBytes: number;
  connectTriesMax: number;
}

/**
 * - `idle`: created, not started.
 * - `listening`: server waiting for its connection.
 * - `connecting`: client waiting for `connected` (or an error).
 * - `retryWait`: client waiting for its next attempt.
 * - `streaming`: bytes flow both ways.
 * - `closing`: both directions done, `close()` called, waiting for `closed`.
 * - `done`: finished and closed.
 * - `failed`: an error stopped the stream (see `lastError`).
 */
export type StreamerPhase =
  | 'idle'
  | 'listening'
  | 'connecting'
  | 'retryWait'
  | 'streaming'
  | 'closing'
  | 'done'
  | 'failed';

/** The streamer's whole state: plain structured-clone data. */
export interface StreamerState {
  params: StreamerConfig;
  phase: StreamerPhase;
  /** The connection's socket (kernel state, restored by the kernel), or null. */
  socket: SocketId | null;
  /** Connect attempts made (client). */
  connectTries: number;
  /** The chunk generator's seed stream. */
  random: RandomState;
  /** Chunks generated so far; chunk n lives in staging slot n mod slotCount. */
  chunksStaged: number;
  /** Byte offset of the current chunk inside the staging area. */
  chunkOffsetBytes: number;
  /** Size of the current chunk (the last one may be short). */
  chunkSizeBytes: number;
  /** Bytes of the current chunk the socket has taken. */
  chunkSentBytes: number;
  /** A `send` timer is pending. */
  sendTimerArmed: boolean;
  /** Bytes the socket took, and their running CRC-32. */
  bytesSent: number;
  sendCrc: number;
  /** Bytes read, and their running CRC-32. */
  bytesReceived: number;
  receiveCrc: number;
  /** Guest times in ms; null until the moment comes. */
  startedMs: number | null;
  connectedMs: number | null;
  sendFinishedMs: number | null;
  receiveFinishedMs: number | null;
  finishedMs: number | null;
  /** Time of the previous arrival (or of the connection). */
  lastArrivalMs: number | null;
  /** Counts of gaps between arrivals per log2 bucket (see `GAP_BUCKET_COUNT`). */
  gapCounts: number[];
  longestGapMs: number;
  /** When the longest gap ended. */
  longestGapEndMs: number | null;
  /** Errors seen (retried connect refusals are not errors), and the last one. */
  errors: number;
  lastError: string;
  /** The last socket call that threw (the socket was already gone; see `callSocket`). */
  lastSocketCallError: string;
}

const PARAM_NAMES: ReadonlySet<string> = new Set([
  'role',
  'port',
  'peerIp',
  'bytes',
  'seed',
  'chunkBytes',
  'stagingBytes',
  'connectTriesMax',
]);

/**
 * Checks `params` against the program's data region and fills in the defaults. Throws
 * `InputError` naming the parameter, its value and what is allowed.
 */
export function resolveStreamerParams(params: StreamerParams, dataRegion: Region): StreamerConfig {
  checkKnownParams('streamer', params, PARAM_NAMES);
  const role = params.role;
  if (role !== 'server' && role !== 'client') {
    throw new InputError(`role must be 'server' or 'client'; got ${String(role)}`);
  }
  const port = checkInteger('port', params.port, 1, 65535);
  const peerIp = clientPeerIp(role, params.peerIp);
  const bytes = checkInteger('bytes', params.bytes, 0, STREAM_BYTES_MAX);
  const seed = checkInteger('seed', params.seed ?? (role === 'client' ? 1 : 2), 0, 0xffff_ffff);
  const chunkBytes = checkInteger(
    'chunkBytes',
    params.chunkBytes ?? CHUNK_BYTES_DEFAULT,
    1,
    CHUNK_BYTES_MAX,
  );
  const regionBytes = dataRegion.pageCount * PAGE_SIZE_BYTES;
  if (chunkBytes > regionBytes) {
    throw new InputError(
      `chunkBytes ${chunkBytes} does not fit the program's data region of ${regionBytes} B`,
    );
  }
  const stagingBytes = checkInteger(
    'stagingBytes',
    params.stagingBytes ?? chunkBytes,
    chunkBytes,
    regionBytes,
  );
  const connectTriesMax = checkInteger(
    'connectTriesMax',
    params.connectTriesMax ?? CONNECT_TRIES_MAX_DEFAULT,
    1,
    CONNECT_TRIES_MAX_LIMIT,
  );
  return { role, port, peerIp, bytes, seed, chunkBytes, stagingBytes, connectTriesMax };
}

/** Four seed words from the chunk stream; xorshift128 must not start from all zeros. */
function drawChunkSeed(random: Random): [number, number, number, number] {
  const words: [number, number, number, number] = [
    random.nextU32() | 0,
    random.nextU32() | 0,
    random.nextU32() | 0,
    random.nextU32() | 0,
  ];
  if (words.every((word) => word === 0)) words[0] = 1;
  return words;
}

/**
 * Fills `out` (4-byte aligned, a multiple of 4 bytes) with xorshift128 noise from `seed`.
 * Words are stored in platform byte order: a big-endian host would send other bytes (its
 * digests would still match each other).
 */
function fillChunk(seed: [number, number, number, number], out: Uint8Array): void {
  const words = new Int32Array(out.buffer, out.byteOffset, out.byteLength / 4);
  let [x, y, z, w] = seed;
  for (let i = 0; i < words.length; i++) {
    const t = x ^ (x << 11);
    x = y;
    y = z;
    z = w;
    w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
    words[i] = w;
  }
}

/** A chunk-sized scratch array, rounded up to whole words for `fillChunk`. */
function chunkScratch(chunkBytes: number): Uint8Array {
  return new Uint8Array(Math.ceil(chunkBytes / 4) * 4);
}

/**
 * The CRC-32 of the `bytes` bytes a streamer with this `seed` and `chunkBytes` sends: what the
 * peer's `receiveCrc` must be at the end. Replays the generator without guest memory.
 */
export function streamCrc(seed: number, bytes: number, chunkBytes: number): number {
  const random = new Random(seed);
  const scratch = chunkScratch(chunkBytes);
  let crc = 0;
  for (let offset = 0; offset < bytes; offset += chunkBytes) {
    fillChunk(drawChunkSeed(random), scratch);
    crc = crc32(scratch.subarray(0, Math.min(chunkBytes, bytes - offset)), crc);
  }
  return crc;
}

/** Log2 bucket of a gap (see `GAP_BUCKET_COUNT`). */
function gapBucket(gapMs: number): number {
  if (gapMs < 1) return 0;
  return Math.min(GAP_BUCKET_COUNT - 1, Math.floor(Math.log2(gapMs)) + 1);
}

class Streamer implements GuestProgram<StreamerState> {
  readonly kind = STREAMER_KIND;
  readonly state: StreamerState;
  private readonly context: ProgramContext;
  private readonly stagingAddress: number;
  private readonly slotCount: number;
  /** Where a chunk is generated before its copy into guest memory; not state. */
  private scratch: Uint8Array | null = null;

  constructor(context: ProgramContext, state: StreamerState) {
    this.context = context;
    this.state = state;
    this.stagingAddress = context.dataRegion.firstPage * PAGE_SIZE_BYTES;
    this.slotCount = Math.floor(state.params.stagingBytes / state.params.chunkBytes);
  }

  start(): void {
    const state = this.state;
    assert.equal(state.phase, 'idle', 'a streamer starts once');
    state.startedMs = this.context.nowMs();
    if (state.params.role === 'server') {
      this.context.net.listen(state.params.port);
      state.phase = 'listening';
    } else {
      this.connect();
    }
  }

  onTimer(tag: string): void {
    const state = this.state;
    if (tag === STREAMER_CONNECT_TAG) {
      if (state.phase === 'retryWait') this.connect();
    } else {
      assert.equal(tag, STREAMER_SEND_TAG, `the streamer arms only its own timers; got ${tag}`);
      state.sendTimerArmed = false;
      this.send();
    }
  }

  onSocket(event: SocketEvent): void {
    if (event.type === 'accepted') {
      this.onAccepted(event.socket);
      return;
    }
    // Events of other sockets: the `closed` of a failed attempt or of a refused extra
    // connection. Nothing to do.
    if (event.socket !== this.state.socket) return;
    switch (event.type) {
      case 'connected':
        this.onConnected();
        break;
      case 'readable':
        this.receive();
        break;
      case 'writable':
        this.send();
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

  /** Figures for the demo; times are guest ms, -1 until they happen; `gapCounts` per bucket. */
  stats(): StreamerStats {
    const s = this.state;
    return {
      role: s.params.role,
      phase: s.phase,
      bytesToSend: s.params.bytes,
      bytesSent: s.bytesSent,
      bytesReceived: s.bytesReceived,
      sendCrc: s.sendCrc,
      receiveCrc: s.receiveCrc,
      finished: s.sendFinishedMs !== null && s.receiveFinishedMs !== null,
      errors: s.errors,
      lastError: s.lastError,
      lastSocketCallError: s.lastSocketCallError,
      connectTries: s.connectTries,
      longestGapMs: s.longestGapMs,
      longestGapEndMs: s.longestGapEndMs ?? -1,
      gapCounts: s.gapCounts.join(','),
      startedMs: s.startedMs ?? -1,
      sendFinishedMs: s.sendFinishedMs ?? -1,
      receiveFinishedMs: s.receiveFinishedMs ?? -1,
      finishedMs: s.finishedMs ?? -1,
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
    const nowMs = this.context.nowMs();
    state.phase = 'streaming';
    state.connectedMs = nowMs;
    state.lastArrivalMs = nowMs;
    this.send();
  }

  private lifecycle(): LifecycleOptions {
    const state = this.state;
    return {
      label: `streamer ${state.params.role}`,
      connectTriesMax: state.params.connectTriesMax,
      retryMs: CONNECT_RETRY_MS,
      retryTag: STREAMER_CONNECT_TAG,
    };
  }

  private onError(description: string, code: string): void {
    onSocketError(this.context, this.state, this.lifecycle(), { description, code });
  }

  private onClosed(): void {
    onSocketClosed(this.context, this.state, this.lifecycle().label);
  }

  // ---- sending -------------------------------------------------------------------------------

  /** Writes until backpressure, the end of the stream, or the per-event budget. */
  private send(): void {
    const state = this.state;
    if (state.phase !== 'streaming' || state.sendFinishedMs !== null) return;
    const memory = this.context.memory;
    let budgetBytes = SEND_BYTES_PER_EVENT_MAX;
    while (budgetBytes > 0) {
      if (state.chunkSentBytes === state.chunkSizeBytes) {
        if (state.bytesSent === state.params.bytes) {
          this.finishSending();
          return;
        }
        this.stageNextChunk();
      }
      const address = this.stagingAddress + state.chunkOffsetBytes + state.chunkSentBytes;
      const length = Math.min(state.chunkSizeBytes - state.chunkSentBytes, budgetBytes);
      // A view, not a copy: the socket copies what it takes into its send buffer.
      const pending = memory.bytes.subarray(address, address + length);
      const taken = this.callSocket((net, socket) => net.write(socket, pending));
      if (taken === null) return;
      state.sendCrc = crc32(pending.subarray(0, taken), state.sendCrc);
      state.chunkSentBytes += taken;
      state.bytesSent += taken;
      budgetBytes -= taken;
      if (taken < length) return; // `writable` follows when room frees.
    }
    if (!state.sendTimerArmed) {
      state.sendTimerArmed = true;
      this.context.setTimer(0, STREAMER_SEND_TAG);
    }
  }

  /**
   * Runs a call on our socket. A `NetError` means the kernel has forgotten the socket already (a
   * reset, or a close while our events waited, e.g. during a pause): its `error` or `closed` is
   * queued for us and decides the outcome, so the call only yields null and leaves a note.
   */
  private callSocket<T>(call: (net: GuestNet, socket: SocketId) => T): T | null {
    return callSocket(this.context, this.state, call);
  }

  /** Generates the next chunk into its staging slot, through log-dirty. */
  private stageNextChunk(): void {
    const state = this.state;
    const { chunkBytes, bytes } = state.params;
    const random = new Random(state.random);
    const seed = drawChunkSeed(random);
    state.random = random.state();
    this.scratch ??= chunkScratch(chunkBytes);
    fillChunk(seed, this.scratch);
    const sizeBytes = Math.min(chunkBytes, bytes - state.bytesSent);
    const offsetBytes = (state.chunksStaged % this.slotCount) * chunkBytes;
    this.context.memory.write(
      this.stagingAddress + offsetBytes,
      this.scratch.subarray(0, sizeBytes),
    );
    state.chunksStaged++;
    state.chunkOffsetBytes = offsetBytes;
    state.chunkSizeBytes = sizeBytes;
    state.chunkSentBytes = 0;
  }

  private finishSending(): void {
    const state = this.state;
    if (this.callSocket((net, socket) => net.end(socket)) === null) return;
    state.sendFinishedMs = this.context.nowMs();
    this.closeIfFinished();
  }

  // ---- receiving -----------------------------------------------------------------------------

  private receive(): void {
    const state = this.state;
    if (state.phase !== 'streaming' || state.socket === null) return;
    let arrived = false;
    for (;;) {
      // Terminates: the receive buffer is bounded and nothing refills it during this event.
      const bytes = this.callSocket((net, socket) => net.read(socket, READ_BYTES_MAX));
      if (bytes === null || bytes.byteLength === 0) break;
      state.receiveCrc = crc32(bytes, state.receiveCrc);
      state.bytesReceived += bytes.byteLength;
      arrived = true;
    }
    if (arrived) this.noteArrival();
  }

  private onEnd(): void {
    const state = this.state;
    if (state.phase !== 'streaming') return;
    this.receive(); // `end` follows the last byte, but reading costs nothing if it did not.
    this.noteArrival();
    state.receiveFinishedMs = this.context.nowMs();
    this.closeIfFinished();
  }

  private noteArrival(): void {
    const state = this.state;
    const nowMs = this.context.nowMs();
    const gapMs = Math.max(0, nowMs - (state.lastArrivalMs ?? nowMs));
    state.lastArrivalMs = nowMs;
    state.gapCounts[gapBucket(gapMs)]!++;
    if (gapMs > state.longestGapMs) {
      state.longestGapMs = gapMs;
      state.longestGapEndMs = nowMs;
    }
  }

  private closeIfFinished(): void {
    const state = this.state;
    if (state.sendFinishedMs === null || state.receiveFinishedMs === null) return;
    state.finishedMs = this.context.nowMs();
    state.phase = 'closing';
    this.callSocket((net, socket) => net.close(socket));
  }
}

/**
 * Builds streamers: `create` validates the parameters (throwing `InputError`) and starts from
 * zero; `restore` continues a saved `StreamerState` after a migration, arming no timer.
 */
export const streamerFactory: ProgramFactory<StreamerParams, StreamerState> = {
  kind: STREAMER_KIND,
  create(context: ProgramContext, params: StreamerParams): GuestProgram<StreamerState> {
    const config = resolveStreamerParams(params, context.dataRegion);
    const state: StreamerState = {
      params: config,
      phase: 'idle',
      socket: null,
      connectTries: 0,
      random: new Random(config.seed).state(),
      chunksStaged: 0,
      chunkOffsetBytes: 0,
      chunkSizeBytes: 0,
      chunkSentBytes: 0,
      sendTimerArmed: false,
      bytesSent: 0,
      sendCrc: 0,
      bytesReceived: 0,
      receiveCrc: 0,
      startedMs: null,
      connectedMs: null,
      sendFinishedMs: null,
      receiveFinishedMs: null,
      finishedMs: null,
      lastArrivalMs: null,
      gapCounts: new Array<number>(GAP_BUCKET_COUNT).fill(0),
      longestGapMs: 0,
      longestGapEndMs: null,
      errors: 0,
      lastError: '',
      lastSocketCallError: '',
    };
    return new Streamer(context, state);
  },
  restore(context: ProgramContext, state: StreamerState): GuestProgram<StreamerState> {
    // The target's data region must still hold the staging area.
    const config = resolveStreamerParams(asParams(state.params), context.dataRegion);
    assert.deepEqual(config, state.params, 'a saved streamer has resolved parameters');
    assert.equal(state.gapCounts.length, GAP_BUCKET_COUNT, 'a saved streamer has its histogram');
    return new Streamer(context, state);
  },
};

/** A config back as parameters (a server's `peerIp` is null in the config, absent in params). */
function asParams(config: StreamerConfig): StreamerParams {
  const { peerIp, ...rest } = config;
  return peerIp === null ? rest : { ...rest, peerIp };
}
