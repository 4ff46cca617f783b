/**
 * One guest connection: an ordered byte stream with absolute offsets (principle 2), as a
 * sans-I/O state machine (principle 4). The kernel feeds it frames, timer expiries and
 * application calls; it answers with frames to transmit and with bytes for the program.
 *
 * Method. All state is one plain-data `StreamState` (structured-clone safe, so it travels in
 * the domain's `GuestState` at stop-and-copy); the bytes live in two `SocketBuffer`s in the
 * 'sockbuf' region of guest memory, so sending and receiving dirty the pages they dirty in
 * Xen. The sender keeps every unacknowledged byte in its send buffer, and the receiver
 * acknowledges what it has accepted, so after any pause (a migration of either end, a carrier
 * switch) the sender resumes from an offset the receiver confirmed, and no byte is lost or
 * duplicated.
 *
 * Go-back-N, deliberately. The receiver accepts bytes only at exactly `receiveNext`: a frame
 * straddling it is trimmed, a frame beyond it is dropped and counted, and an ACK is owed so the
 * sender learns where to resume. There is no reassembly queue and no selective
 * acknowledgement: frames are lost here only around a migration (rings reset, a domain paused)
 * and on explicit fault injection, never by congestion, so the simplest scheme that is
 * obviously exactly-once wins. A loss costs one retransmit timeout (or an explicit `rewind`)
 * plus a resend of the window.
 *
 * Offsets. Each direction counts bytes from 0. The end of stream (FIN) occupies one offset
 * after the last byte, as in TCP, so that it can be acknowledged: `ack` on the wire is the
 * receiver's `receiveNext`, which is `finOffset + 1` once the FIN is accepted. The window is
 * kept by the sender as an absolute offset, `peerWindowEnd = ack + window`, which only grows
 * (the receiver's buffer end `receiveRead + capacity` only grows), so a reordered, older ACK
 * can never shrink it or overrun the receiver.
 *
 * Carriers. `nextFrames`/`onFrame` are the netfront carrier. A carrier that moves bytes by
 * other means (a XENVMC shared-memory FIFO) uses the same stream through `sendableRange`,
 * `readSendBuffer`, `markTransmitted` on the sender and `acceptAt`, `acceptFin`, `ackOffset`,
 * `receiveWindow` on the receiver, then `acknowledge` on the sender. Switching carriers is
 * `rewind(receiver's receiveNext)` on the sender.
 *
 * Driving it (the kernel). After program calls and after each batch of incoming frames, call
 * `nextFrames` and push what it returns to the TX ring. Keep one timer at the earliest
 * `nextTimerMs` of all streams; when it fires call `onTimer`, then `nextFrames`. When the
 * domain resumes on a new host, or is told a peer moved, call `rewind(state.sendAcked)` on the
 * streams concerned. Demultiplex by (local port, remote IP, remote port) and nonce; answer a
 * frame that matches no stream or listener with `refusalFor(frame, 'rst')`; keep a `closed`
 * stream for `STREAM_LINGER_MS` so it can still acknowledge a resent FIN.
 *
 * Non-goals: congestion control, Nagle, SACK, urgent data, simultaneous open, port
 * allocation and demultiplexing (the kernel's), keepalives.
 */
import assert from 'node:assert/strict';
import type { GuestMemory } from '../memory/guest-memory.ts';
import {
  EMPTY_PAYLOAD,
  type Frame,
  type FrameKind,
  maxPayloadBytes,
  u32ToIp,
} from '../net/frame.ts';
import {
  NETFRONT_SLOT_COUNT,
  RETRANSMIT_TIMEOUT_MS_MAX,
  RETRANSMIT_TIMEOUT_MS_MIN,
  STREAM_BUFFER_BYTES_MAX,
  STREAM_RECEIVE_BUFFER_BYTES,
  STREAM_SEND_BUFFER_BYTES,
} from '../net/limits.ts';
import { NetError, type NetErrorCode } from './net-errors.ts';
import { SocketBuffer, type SocketBufferPlace } from './socket-buffer.ts';

/**
 * - `synSent`: connector sent SYN, waits for SYN_ACK.
 * - `synReceived`: acceptor sent SYN_ACK, waits for the first ACK or DATA.
 * - `established`: bytes flow both ways (the peer may already have ended its direction).
 * - `finWait`: this side ended; waits for the FIN's ACK and/or the peer's FIN.
 * - `closed`: both directions ended and our FIN acknowledged; still ACKs a resent FIN.
 * - `reset`: refused or reset (see `error`), or aborted locally (`error` null).
 */
export type StreamPhase =
  | 'synSent'
  | 'synReceived'
  | 'established'
  | 'finWait'
  | 'closed'
  | 'reset';

/** Counters of one stream, in bytes unless named otherwise. */
export interface StreamCounters {
  /** Payload bytes handed to a carrier, retransmissions included. */
  bytesTransmitted: number;
  /** Of those, bytes at offsets transmitted before. */
  bytesRetransmitted: number;
  /** New bytes taken into the receive buffer. */
  bytesAccepted: number;
  /** Received bytes already accepted before (retransmissions, duplicates). */
  duplicateBytesDropped: number;
  /** Received bytes beyond `receiveNext` (go-back-N drops them). */
  outOfOrderBytesDropped: number;
  /** Received bytes at `receiveNext` with no receive space left. */
  overflowBytesDropped: number;
  /** Frames of another stream (nonce, addresses) or not valid in the current phase. */
  staleFramesDropped: number;
  /** Acknowledgements beyond anything transmitted, ignored. */
  invalidAcksDropped: number;
  /** Retransmit timer expiries. */
  retransmitTimeouts: number;
  /** Explicit `rewind` calls (pauses, peer moves, carrier switches). */
  rewinds: number;
}

/** The whole state of one stream: plain data, structured-clone safe. */
export interface StreamState {
  localIp: number;
  localPort: number;
  remoteIp: number;
  remotePort: number;
  /** Chosen by the connector; every frame of the stream carries it. */
  nonce: number;
  role: 'connector' | 'acceptor';
  phase: StreamPhase;
  /** Why the stream was reset by the peer or the network; null otherwise. */
  error: NetErrorCode | null;
  sendBuffer: SocketBufferPlace;
  receiveBuffer: SocketBufferPlace;
  /** Peer confirmed everything below this offset (FIN counts as one unit). */
  sendAcked: number;
  /** Next offset to transmit (go-back-N rewinds it to `sendAcked`). */
  sendNext: number;
  /** Highest offset ever transmitted plus one; tells retransmissions from new bytes. */
  sendHighest: number;
  /** Bytes written by the program: offsets below this are in the send buffer or acked. */
  sendWritten: number;
  /** Offset of our FIN (= `sendWritten` at `end()`), or null while the program may write. */
  sendFinOffset: number | null;
  /**
   * Bytes a carrier took back (`reclaim`) that did not fit the send buffer: the last
   * `byteLength` bytes before `sendWritten`, in order. They move into the send buffer as
   * acknowledgements free it; meanwhile the program cannot write. Null when empty (always,
   * unless a channel larger than the send buffer was torn down). Plain data: it travels in the
   * GuestState, where a kernel's own memory would carry it.
   */
  sendOverflow: Uint8Array | null;
  /** The peer has receive space for offsets below this. */
  peerWindowEnd: number;
  /** Accepted into the receive buffer below this offset (+1 once the FIN is accepted). */
  receiveNext: number;
  /** Consumed by the program below this offset. */
  receiveRead: number;
  /** Offset of the peer's FIN once accepted, else null. */
  receiveFinOffset: number | null;
  /** The window end (`receiveRead + capacity`) we last told the peer. */
  receiveWindowEndAdvertised: number;
  /** SYN (connector) or SYN_ACK (acceptor) to (re)send. */
  handshakeOwed: boolean;
  /** The peer should hear our `receiveNext` and window. */
  ackOwed: boolean;
  /** Send one byte beyond a closed window (the timer expired with data waiting). */
  probeOwed: boolean;
  /** Send RST (after a local `abort`). */
  resetOwed: boolean;
  /** Guest time (ms) at which the retransmit timer expires, or null when not armed. */
  retransmitDeadlineMs: number | null;
  /** Current retransmit timeout (ms), doubled per expiry up to the maximum. */
  retransmitTimeoutMs: number;
  counters: StreamCounters;
}

/** Where the two socket buffers of a stream go in guest memory (the kernel allocates them). */
export interface StreamBuffersInit {
  /** Byte address of the send buffer, inside the 'sockbuf' region. */
  sendBufferAddress: number;
  /** Byte address of the receive buffer, inside the 'sockbuf' region. */
  receiveBufferAddress: number;
  /** @default 262144 (STREAM_SEND_BUFFER_BYTES) */
  sendBufferBytes?: number;
  /** @default 262144 (STREAM_RECEIVE_BUFFER_BYTES) */
  receiveBufferBytes?: number;
}

/** The two ends of a stream (IPv4 as u32, see `ipToU32`). */
export interface StreamEndpoints {
  localIp: number;
  localPort: number;
  remoteIp: number;
  remotePort: number;
}

/** What `connect` needs. */
export interface StreamConnectInit extends StreamBuffersInit, StreamEndpoints {
  /** u32 from the kernel's seeded `Random`, so a replay reproduces it. */
  nonce: number;
}

/** Bytes the sender may hand to a carrier now. */
export interface SendableRange {
  /** Stream offset of the first byte (`sendNext`). */
  offset: number;
  /** Bytes available from `offset`, within the written bytes and the peer's window. */
  length: number;
  /** True when every byte has been transmitted and the FIN is next (`length` is 0). */
  finDue: boolean;
}

/** Limits of one `nextFrames` call. */
export interface NextFramesOptions {
  /** At most this many frames. @default 256 (a whole netfront ring) */
  maxFrames?: number;
  /** Payload per DATA frame, in bytes. @default 4056 (`maxPayloadBytes(4096)`) */
  maxPayloadBytes?: number;
}

const MESSAGES: Record<NetErrorCode, string> = {
  ECONNREFUSED: 'connection refused: no listener on the peer port',
  EHOSTUNREACH: 'no route to host: no domain has the peer IP',
  ECONNRESET: 'connection reset by the peer',
  EPIPE: 'write after end or after the stream closed',
  ENOBUFS: 'no buffer space',
  FRAME_MALFORMED: 'malformed frame',
};

export class StreamConnection {
  /** The stream's whole state, mutated in place; save it (a structured clone) at pause. */
  readonly state: StreamState;
  private readonly sendBuffer: SocketBuffer;
  private readonly receiveBuffer: SocketBuffer;

  private constructor(memory: GuestMemory, state: StreamState) {
    this.state = state;
    this.sendBuffer = new SocketBuffer(memory, state.sendBuffer);
    this.receiveBuffer = new SocketBuffer(memory, state.receiveBuffer);
  }

  /** Opens a stream to `remoteIp:remotePort`; the SYN goes out with the next `nextFrames`. */
  static connect(memory: GuestMemory, init: StreamConnectInit): StreamConnection {
    const state = initialState(init, 'connector', init.nonce);
    state.phase = 'synSent';
    return new StreamConnection(memory, state);
  }

  /**
   * Accepts a SYN addressed to a listening port (the kernel checked that no stream with this
   * 4-tuple and nonce exists; a duplicate SYN goes to that stream's `onFrame`).
   */
  static accept(memory: GuestMemory, init: StreamBuffersInit, syn: Frame): StreamConnection {
    assert.equal(syn.kind, 'syn', 'accept needs a SYN');
    const endpoints = {
      localIp: syn.targetIp,
      localPort: syn.targetPort,
      remoteIp: syn.sourceIp,
      remotePort: syn.sourcePort,
    };
    const state = initialState({ ...init, ...endpoints }, 'acceptor', syn.nonce);
    state.phase = 'synReceived';
    state.peerWindowEnd = syn.window;
    return new StreamConnection(memory, state);
  }

  /** Rebuilds a stream from its saved state over (migrated) guest memory. */
  static restore(memory: GuestMemory, state: StreamState): StreamConnection {
    assert(state.sendAcked <= state.sendNext && state.sendNext <= state.sendHighest, 'send');
    assert(state.receiveRead <= state.receiveNext, 'receive offsets');
    state.sendOverflow ??= null; // a state saved before the field existed
    return new StreamConnection(memory, state);
  }

  // ---- application side ---------------------------------------------------------------------

  /** True once the handshake completed (also after the stream closed). */
  get connected(): boolean {
    const phase = this.state.phase;
    return phase === 'established' || phase === 'finWait' || phase === 'closed';
  }

  /** Bytes waiting in the receive buffer for `read`. */
  get readableBytes(): number {
    return receiveDataEnd(this.state) - this.state.receiveRead;
  }

  get readable(): boolean {
    return this.readableBytes > 0;
  }

  /** Free bytes in the send buffer (0 after `end`, reset or close, or while reclaimed bytes wait). */
  get writableBytes(): number {
    const state = this.state;
    if (state.phase === 'reset' || state.phase === 'closed' || state.sendFinOffset !== null) {
      return 0;
    }
    if (state.sendOverflow !== null) return 0;
    const ackedData = Math.min(state.sendAcked, state.sendWritten);
    return state.sendBuffer.capacityBytes - (state.sendWritten - ackedData);
  }

  get writable(): boolean {
    return this.writableBytes > 0;
  }

  /** The peer ended its direction and the program has read every byte before the end. */
  get eof(): boolean {
    const state = this.state;
    return state.receiveFinOffset !== null && state.receiveRead === state.receiveFinOffset;
  }

  /** Every byte written (and the FIN, after `end`) is acknowledged by the peer. */
  get drained(): boolean {
    return this.state.sendAcked >= sendEnd(this.state);
  }

  /** Why the stream was reset, or null. */
  get error(): NetError | null {
    const code = this.state.error;
    return code === null ? null : new NetError(code, `${MESSAGES[code]} (${describe(this.state)})`);
  }

  /**
   * Copies as much of `bytes` as fits into the send buffer; returns the count (0 when full).
   * Throws NetError EPIPE after `end`/close, or the reset's error, as Node's write-after-end.
   */
  write(bytes: Uint8Array): number {
    const state = this.state;
    if (state.phase === 'reset') {
      const code = state.error ?? 'EPIPE';
      throw new NetError(code, `${MESSAGES[code]} (${describe(state)})`);
    }
    if (state.sendFinOffset !== null || state.phase === 'closed') {
      throw new NetError('EPIPE', `${MESSAGES.EPIPE} (${describe(state)})`);
    }
    const count = Math.min(bytes.byteLength, this.writableBytes);
    if (count === 0) return 0;
    this.sendBuffer.writeAt(state.sendWritten, bytes.subarray(0, count));
    state.sendWritten += count;
    return count;
  }

  /** Takes up to `maxBytes` received bytes (may be empty). Never throws. */
  read(maxBytes: number): Uint8Array {
    const count = Math.max(0, Math.min(maxBytes, this.readableBytes));
    // Every read-until-empty loop ends with an empty read; it needs no array of its own.
    if (count === 0) return NO_BYTES;
    const bytes = new Uint8Array(count);
    this.readInto(bytes);
    return bytes;
  }

  /** Copies up to `target.byteLength` received bytes into `target`; returns the count. */
  readInto(target: Uint8Array): number {
    const state = this.state;
    const count = Math.min(target.byteLength, this.readableBytes);
    if (count <= 0) return 0;
    this.receiveBuffer.readAt(state.receiveRead, count, target);
    state.receiveRead += count;
    // A window update is worth a frame only once a quarter of the buffer has opened; a lost
    // update costs nothing worse than the sender's zero-window probe.
    const capacity = state.receiveBuffer.capacityBytes;
    const opened = state.receiveRead + capacity - state.receiveWindowEndAdvertised;
    if (opened >= Math.max(1, Math.floor(capacity / 4)) && state.phase !== 'reset') {
      state.ackOwed = true;
    }
    return count;
  }

  /** Ends our direction after the bytes written so far (FIN). Idempotent. */
  end(): void {
    const state = this.state;
    if (state.sendFinOffset !== null || state.phase === 'reset') return;
    state.sendFinOffset = state.sendWritten;
    updatePhase(state);
  }

  /** Drops the stream at once and tells the peer (RST); unread and unsent bytes are lost. */
  abort(): void {
    const state = this.state;
    if (state.phase === 'reset') return;
    this.enterReset(null);
    state.resetOwed = true;
  }

  // ---- network side -------------------------------------------------------------------------

  /**
   * Handles one decoded frame the kernel routed to this stream; re-arms the retransmit timer
   * from `nowMs` (guest ms) if the frame acknowledged progress and more is outstanding.
   */
  onFrame(frame: Frame, nowMs: number): void {
    const state = this.state;
    if (!belongsTo(state, frame) || state.phase === 'reset') {
      state.counters.staleFramesDropped++;
      return;
    }
    this.dispatch(frame);
    if (state.retransmitDeadlineMs === null && outstanding(state)) {
      state.retransmitDeadlineMs = nowMs + state.retransmitTimeoutMs;
    }
  }

  /**
   * Frames to transmit now, in order: the handshake, DATA within the peer's window (each
   * carrying our ack and window), the FIN once every byte went out, a zero-window probe if
   * the timer asked for one, and a bare ACK only if nothing else carried it. Arms the
   * retransmit timer when something is unacknowledged. A DATA payload may be a view of the
   * send buffer in guest memory, valid until the peer acknowledges those bytes: encode promptly.
   */
  nextFrames(nowMs: number, options: NextFramesOptions = {}): Frame[] {
    const state = this.state;
    const maxFrames = options.maxFrames ?? NETFRONT_SLOT_COUNT;
    const maxPayload = options.maxPayloadBytes ?? maxPayloadBytes();
    assert(maxPayload >= 1, 'payload size');
    const frames: Frame[] = [];
    if (maxFrames <= 0) return frames;
    if (state.resetOwed) {
      state.resetOwed = false;
      frames.push(this.frame('rst', 0));
      return frames;
    }
    if (state.phase === 'synSent' || state.phase === 'synReceived') {
      if (state.handshakeOwed) {
        state.handshakeOwed = false;
        frames.push(this.frame(state.phase === 'synSent' ? 'syn' : 'synAck', 0));
      }
    } else if (state.phase !== 'reset') {
      this.pushData(frames, maxFrames, maxPayload);
      if (state.ackOwed && frames.length < maxFrames) {
        frames.push(this.frame('ack', state.sendNext));
      }
    }
    if (state.retransmitDeadlineMs === null && outstanding(state)) {
      state.retransmitDeadlineMs = nowMs + state.retransmitTimeoutMs;
    }
    return frames;
  }

  /** When `onTimer` wants to run (guest ms), or null when no timer is armed. */
  nextTimerMs(): number | null {
    return this.state.retransmitDeadlineMs;
  }

  /**
   * Retransmit timeout: go back to `sendAcked` (or resend the handshake) and double the
   * timeout, from 200 ms up to 2 s (limits.ts). Does nothing before the deadline.
   */
  onTimer(nowMs: number): void {
    const state = this.state;
    const deadline = state.retransmitDeadlineMs;
    if (deadline === null || nowMs < deadline) return;
    state.counters.retransmitTimeouts++;
    state.retransmitDeadlineMs = null;
    state.retransmitTimeoutMs = Math.min(2 * state.retransmitTimeoutMs, RETRANSMIT_TIMEOUT_MS_MAX);
    if (state.phase === 'synSent' || state.phase === 'synReceived') {
      state.handshakeOwed = true;
    } else if (state.phase === 'established' || state.phase === 'finWait') {
      state.sendNext = state.sendAcked;
      state.probeOwed = true;
    }
  }

  /**
   * Resumes transmission from `offset` (go-back-N), with the timeout back at its minimum and
   * an ACK owed so the peer hears our state too. Call with `state.sendAcked` after a pause or
   * when told the peer moved; with the receiver's `receiveNext` when a carrier switch resumes:
   * an offset above `sendAcked` must be one the receiver accepted, and counts as acknowledged.
   */
  rewind(offset: number): void {
    const state = this.state;
    state.counters.rewinds++;
    state.retransmitDeadlineMs = null;
    state.retransmitTimeoutMs = RETRANSMIT_TIMEOUT_MS_MIN;
    if (state.phase === 'synSent' || state.phase === 'synReceived') {
      state.handshakeOwed = true;
      return;
    }
    if (state.phase === 'reset') return;
    assert(offset <= state.sendHighest, `rewind to ${offset} beyond ${state.sendHighest} sent`);
    if (offset > state.sendAcked) state.sendAcked = offset;
    if (state.sendOverflow !== null) this.refillFromOverflow();
    state.sendNext = Math.max(state.sendAcked, Math.min(offset, state.sendNext));
    state.ackOwed = true;
    state.probeOwed = true;
    updatePhase(state);
  }

  // ---- carrier-neutral primitives -----------------------------------------------------------

  /**
   * Bytes between `sendNext` and min(end of the send buffer's bytes, peer window end), and
   * whether FIN is due.
   */
  sendableRange(): SendableRange {
    const state = this.state;
    const sending = state.phase === 'established' || state.phase === 'finWait';
    const end = Math.min(bufferedEnd(state), state.peerWindowEnd);
    const length = sending ? Math.max(0, end - state.sendNext) : 0;
    const finDue = sending && state.sendFinOffset === state.sendNext;
    return { offset: state.sendNext, length, finDue };
  }

  /** Copies unacknowledged bytes `[offset, offset + length)` out of the send buffer. */
  readSendBuffer(offset: number, length: number, target?: Uint8Array): Uint8Array {
    const state = this.state;
    assert(offset >= state.sendAcked && offset + length <= bufferedEnd(state), 'not in buffer');
    return this.sendBuffer.readAt(offset, length, target);
  }

  /** Records that a carrier took everything below `upToOffset` (FIN included at fin + 1). */
  markTransmitted(upToOffset: number): void {
    const state = this.state;
    assert(upToOffset <= sendEnd(state), `transmitted ${upToOffset} beyond ${sendEnd(state)}`);
    if (upToOffset <= state.sendNext) return;
    const from = Math.min(state.sendNext, state.sendWritten);
    const to = Math.min(upToOffset, state.sendWritten);
    const resent = Math.max(0, Math.min(to, state.sendHighest) - from);
    state.counters.bytesTransmitted += to - from;
    state.counters.bytesRetransmitted += resent;
    state.sendNext = upToOffset;
    state.sendHighest = Math.max(state.sendHighest, upToOffset);
  }

  /**
   * Receiver: takes `bytes` found at stream `offset` if they continue the stream exactly,
   * trimming a prefix accepted before and anything beyond the free receive space. Returns the
   * new bytes accepted. Always owes an ACK: a duplicate or a gap means the sender must hear
   * where to resume.
   */
  acceptAt(offset: number, bytes: Uint8Array): number {
    const state = this.state;
    const counters = state.counters;
    if (!this.connected) return 0;
    state.ackOwed = true;
    const length = bytes.byteLength;
    if (state.receiveFinOffset !== null || offset + length <= state.receiveNext) {
      counters.duplicateBytesDropped += length;
      return 0;
    }
    if (offset > state.receiveNext) {
      counters.outOfOrderBytesDropped += length;
      return 0;
    }
    const skip = state.receiveNext - offset;
    const space = state.receiveBuffer.capacityBytes - (state.receiveNext - state.receiveRead);
    const count = Math.min(length - skip, space);
    counters.duplicateBytesDropped += skip;
    counters.overflowBytesDropped += length - skip - count;
    if (count > 0) {
      this.receiveBuffer.writeAt(state.receiveNext, bytes.subarray(skip, skip + count));
      state.receiveNext += count;
      counters.bytesAccepted += count;
    }
    return count;
  }

  /** Receiver: the peer's FIN at `offset`; accepted (true) only at exactly `receiveNext`. */
  acceptFin(offset: number): boolean {
    const state = this.state;
    if (!this.connected) return false;
    state.ackOwed = true;
    if (state.receiveFinOffset !== null || offset !== state.receiveNext) return false;
    state.receiveFinOffset = offset;
    state.receiveNext = offset + 1;
    updatePhase(state);
    return true;
  }

  /** Receiver: what to acknowledge (`receiveNext`). */
  get ackOffset(): number {
    return this.state.receiveNext;
  }

  /** Receiver: free receive space after `ackOffset`, in bytes. */
  get receiveWindow(): number {
    const state = this.state;
    return state.receiveBuffer.capacityBytes - (receiveDataEnd(state) - state.receiveRead);
  }

  /**
   * Sender: the peer accepted everything below `ackOffset` and has `window` bytes of space
   * after it. Ignores an ack beyond anything transmitted. Progress resets the timeout to its
   * minimum and disarms the timer (the next `nextFrames` re-arms it if needed).
   */
  acknowledge(ackOffset: number, window: number): void {
    const state = this.state;
    if (ackOffset > state.sendHighest) {
      state.counters.invalidAcksDropped++;
      return;
    }
    state.peerWindowEnd = Math.max(state.peerWindowEnd, ackOffset + window);
    if (ackOffset > state.sendAcked) {
      state.sendAcked = ackOffset;
      state.sendNext = Math.max(state.sendNext, ackOffset);
      state.retransmitTimeoutMs = RETRANSMIT_TIMEOUT_MS_MIN;
      state.retransmitDeadlineMs = null;
      if (state.sendOverflow !== null) this.refillFromOverflow();
      updatePhase(state);
    }
  }

  // ---- a carrier that owns its in-flight bytes (a XENVMC FIFO) ------------------------------
  //
  // A shared-memory channel bypasses the socket buffers, as XenVMC's data path does: the
  // program's bytes go straight into the FIFO and come straight out of it, so channel traffic
  // dirties no guest page. While the channel carries a direction, the FIFO holds that
  // direction's in-flight bytes, and the stream counts them as acknowledged; when the channel
  // goes away, the sender takes back what the receiver never read (`reclaim`) and netfront
  // resends it from the receiver's consumed offset.

  /** True when nothing is in flight on netfront: a channel may take over this direction. */
  get sendQuiescent(): boolean {
    const state = this.state;
    return (
      state.phase === 'established' &&
      state.sendFinOffset === null &&
      state.sendAcked === state.sendWritten &&
      state.sendNext === state.sendWritten
    );
  }

  /** True when every received byte has been read: channel bytes may be handed out in order. */
  get receiveQuiescent(): boolean {
    const state = this.state;
    return state.receiveRead === state.receiveNext && state.receiveFinOffset === null;
  }

  /** Sender: a carrier took `count` new bytes of the program's (at offset `sendWritten`). */
  sentByCarrier(count: number): void {
    const state = this.state;
    assert(this.sendQuiescent, 'a carrier may only take bytes when nothing is in flight');
    state.sendWritten += count;
    state.sendNext = state.sendWritten;
    state.sendHighest = Math.max(state.sendHighest, state.sendWritten);
    state.sendAcked = state.sendWritten;
    state.peerWindowEnd = Math.max(state.peerWindowEnd, state.sendWritten);
    state.counters.bytesTransmitted += count;
  }

  /** Receiver: a carrier handed the program `count` bytes at offset `receiveNext`. */
  receivedByCarrier(count: number): void {
    const state = this.state;
    assert(this.receiveQuiescent, 'carrier bytes must come after every netfront byte was read');
    state.receiveNext += count;
    state.receiveRead += count;
    state.counters.bytesAccepted += count;
    // No ACK owed: the channel's own counters tell the sender what was read. A window update
    // per channel read cost a netfront frame each (8 % of the reader's time when measured);
    // after a switch back, the first netfront read advertises the window again.
  }

  /**
   * Sender, when a channel is torn down: `bytes` were written at `fromOffset` (up to
   * `sendWritten`) but never read by the receiver. They go back into the send buffer, and
   * netfront resends from `fromOffset` (go-back-N). What does not fit the send buffer (a
   * channel's FIFO may be larger) waits in `sendOverflow` and follows as acknowledgements
   * free the buffer; the program writes again once all of it is in.
   */
  reclaim(fromOffset: number, bytes: Uint8Array): void {
    const state = this.state;
    assert.equal(fromOffset + bytes.byteLength, state.sendWritten, 'reclaim ends at sendWritten');
    assert.equal(state.sendOverflow, null, 'no reclaimed bytes still waiting');
    const fits = Math.min(bytes.byteLength, state.sendBuffer.capacityBytes);
    if (fits > 0) this.sendBuffer.writeAt(fromOffset, bytes.subarray(0, fits));
    // A copy, not a view: the state must hold only these bytes, whatever `bytes` views.
    if (fits < bytes.byteLength) state.sendOverflow = bytes.slice(fits);
    state.sendAcked = Math.min(state.sendAcked, fromOffset);
    state.sendNext = fromOffset;
    state.retransmitDeadlineMs = null;
    state.retransmitTimeoutMs = RETRANSMIT_TIMEOUT_MS_MIN;
    state.probeOwed = true;
    state.ackOwed = true;
  }

  // ---- internals ----------------------------------------------------------------------------

  /**
   * Moves reclaimed bytes from `sendOverflow` into the send buffer, as far as acknowledged
   * bytes left room (the buffer holds `[sendAcked, bufferedEnd)`).
   */
  private refillFromOverflow(): void {
    const state = this.state;
    const overflow = state.sendOverflow;
    if (overflow === null) return;
    const end = bufferedEnd(state);
    // An acknowledgement never covers bytes netfront has not sent; skip them if one did.
    const skip = Math.min(overflow.byteLength, Math.max(0, state.sendAcked - end));
    const room = state.sendBuffer.capacityBytes - Math.max(0, end - state.sendAcked);
    const count = Math.min(overflow.byteLength - skip, room);
    if (count > 0) this.sendBuffer.writeAt(end + skip, overflow.subarray(skip, skip + count));
    const moved = skip + count;
    if (moved === 0) return;
    state.sendOverflow = moved === overflow.byteLength ? null : overflow.slice(moved);
  }

  private dispatch(frame: Frame): void {
    const state = this.state;
    switch (frame.kind) {
      case 'rst':
        this.onReset();
        break;
      case 'unreachable':
        // Only a connect fails on it: during a migration Dom0 may briefly know no route to a
        // peer we already talk to, and the retransmit timer rides that out.
        if (state.phase === 'synSent') this.enterReset('EHOSTUNREACH');
        else state.counters.staleFramesDropped++;
        break;
      case 'syn':
        if (state.phase === 'synReceived') state.handshakeOwed = true;
        else state.counters.staleFramesDropped++;
        break;
      case 'synAck':
        this.onSynAck(frame);
        break;
      default:
        this.onSegment(frame);
    }
  }

  private onSynAck(frame: Frame): void {
    const state = this.state;
    if (state.role !== 'connector') {
      state.counters.staleFramesDropped++;
      return;
    }
    if (state.phase === 'synSent') {
      state.phase = 'established';
      state.peerWindowEnd = frame.ack + frame.window;
      state.retransmitDeadlineMs = null;
      state.retransmitTimeoutMs = RETRANSMIT_TIMEOUT_MS_MIN;
      updatePhase(state);
    }
    // A repeated SYN_ACK means the acceptor missed our ACK.
    state.ackOwed = true;
  }

  /** DATA, ACK or FIN. */
  private onSegment(frame: Frame): void {
    const state = this.state;
    if (state.phase === 'synSent') {
      state.counters.staleFramesDropped++;
      return;
    }
    if (state.phase === 'synReceived') {
      state.phase = 'established';
      state.handshakeOwed = false;
      state.retransmitDeadlineMs = null;
      state.retransmitTimeoutMs = RETRANSMIT_TIMEOUT_MS_MIN;
      updatePhase(state);
    }
    this.acknowledge(frame.ack, frame.window);
    if (frame.kind === 'data') this.acceptAt(frame.offset, frame.payload);
    else if (frame.kind === 'fin') this.acceptFin(frame.offset);
  }

  private onReset(): void {
    const state = this.state;
    if (state.phase === 'synSent') {
      this.enterReset('ECONNREFUSED');
      return;
    }
    // The peer forgot a stream that had finished both ways: its RST answers a FIN we resent
    // because its ACK was lost (it lingered less than we retried). Nothing was lost.
    const finished =
      state.sendFinOffset !== null &&
      state.sendAcked >= state.sendFinOffset &&
      state.receiveFinOffset !== null;
    if (finished) {
      state.phase = 'closed';
      state.retransmitDeadlineMs = null;
      return;
    }
    this.enterReset('ECONNRESET');
  }

  private enterReset(error: NetErrorCode | null): void {
    const state = this.state;
    state.phase = 'reset';
    state.error = error;
    state.handshakeOwed = false;
    state.ackOwed = false;
    state.probeOwed = false;
    state.retransmitDeadlineMs = null;
  }

  /** DATA within the window, then the FIN, then a probe if owed. */
  private pushData(frames: Frame[], maxFrames: number, maxPayload: number): void {
    const state = this.state;
    const firstData = frames.length;
    while (frames.length < maxFrames) {
      const range = this.sendableRange();
      if (range.length > 0) {
        const length = Math.min(range.length, maxPayload);
        const payload = this.sendBuffer.peekAt(range.offset, length);
        frames.push(this.frame('data', range.offset, payload));
        this.markTransmitted(range.offset + length);
      } else if (range.finDue) {
        frames.push(this.frame('fin', range.offset));
        this.markTransmitted(range.offset + 1);
      } else {
        break;
      }
    }
    const sentData = frames.length > firstData;
    if (sentData) state.probeOwed = false;
    if (state.probeOwed && frames.length < maxFrames && state.sendNext < bufferedEnd(state)) {
      // The window looks closed but the timer expired: one byte past it makes the receiver
      // answer with its real window (TCP's zero-window probe).
      const payload = this.sendBuffer.peekAt(state.sendNext, 1);
      frames.push(this.frame('data', state.sendNext, payload));
      this.markTransmitted(state.sendNext + 1);
    }
    state.probeOwed = false;
  }

  /** A frame of this stream carrying our current ack and window. */
  private frame(kind: FrameKind, offset: number, payload: Uint8Array = EMPTY_PAYLOAD): Frame {
    const state = this.state;
    const carriesAck = kind !== 'rst';
    if (carriesAck) {
      state.ackOwed = false;
      state.receiveWindowEndAdvertised = state.receiveRead + state.receiveBuffer.capacityBytes;
    }
    return {
      kind,
      sourceIp: state.localIp,
      targetIp: state.remoteIp,
      sourcePort: state.localPort,
      targetPort: state.remotePort,
      offset,
      ack: carriesAck ? state.receiveNext : 0,
      window: carriesAck ? this.receiveWindow : 0,
      nonce: state.nonce,
      payload,
    };
  }
}

/** The empty read's result (length 0: nobody can write into it). */
const NO_BYTES = new Uint8Array(0);

function initialState(
  init: StreamBuffersInit & StreamEndpoints,
  role: StreamState['role'],
  nonce: number,
): StreamState {
  const sendBytes = init.sendBufferBytes ?? STREAM_SEND_BUFFER_BYTES;
  const receiveBytes = init.receiveBufferBytes ?? STREAM_RECEIVE_BUFFER_BYTES;
  for (const bytes of [sendBytes, receiveBytes]) {
    assert(Number.isInteger(bytes) && bytes >= 1 && bytes <= STREAM_BUFFER_BYTES_MAX, 'buffer');
  }
  assert(Number.isInteger(nonce) && nonce >= 0 && nonce <= 0xffffffff, 'nonce is a u32');
  return {
    localIp: init.localIp,
    localPort: init.localPort,
    remoteIp: init.remoteIp,
    remotePort: init.remotePort,
    nonce,
    role,
    phase: 'synSent',
    error: null,
    sendBuffer: { address: init.sendBufferAddress, capacityBytes: sendBytes },
    receiveBuffer: { address: init.receiveBufferAddress, capacityBytes: receiveBytes },
    sendAcked: 0,
    sendNext: 0,
    sendHighest: 0,
    sendWritten: 0,
    sendFinOffset: null,
    sendOverflow: null,
    peerWindowEnd: 0,
    receiveNext: 0,
    receiveRead: 0,
    receiveFinOffset: null,
    receiveWindowEndAdvertised: 0,
    handshakeOwed: true,
    ackOwed: false,
    probeOwed: false,
    resetOwed: false,
    retransmitDeadlineMs: null,
    retransmitTimeoutMs: RETRANSMIT_TIMEOUT_MS_MIN,
    counters: {
      bytesTransmitted: 0,
      bytesRetransmitted: 0,
      bytesAccepted: 0,
      duplicateBytesDropped: 0,
      outOfOrderBytesDropped: 0,
      overflowBytesDropped: 0,
      staleFramesDropped: 0,
      invalidAcksDropped: 0,
      retransmitTimeouts: 0,
      rewinds: 0,
    },
  };
}

/** Offset just past everything the sender must deliver: the FIN's unit once ended. */
function sendEnd(state: StreamState): number {
  return state.sendFinOffset === null ? state.sendWritten : state.sendFinOffset + 1;
}

/** Offset just past the bytes in the send buffer: `sendWritten` less any `sendOverflow`. */
function bufferedEnd(state: StreamState): number {
  return state.sendWritten - (state.sendOverflow?.byteLength ?? 0);
}

/** Offset just past the received data bytes (the FIN's unit excluded). */
function receiveDataEnd(state: StreamState): number {
  return state.receiveFinOffset ?? state.receiveNext;
}

/** Whether the retransmit timer must run: a handshake or unacknowledged bytes or FIN. */
function outstanding(state: StreamState): boolean {
  switch (state.phase) {
    case 'synSent':
    case 'synReceived':
      return true;
    case 'established':
    case 'finWait':
      return state.sendAcked < sendEnd(state);
    default:
      return false;
  }
}

/** established -> finWait after `end`; -> closed once our FIN is acked and theirs accepted. */
function updatePhase(state: StreamState): void {
  if (state.phase !== 'established' && state.phase !== 'finWait') return;
  if (state.sendFinOffset === null) return;
  const finAcked = state.sendAcked > state.sendFinOffset;
  state.phase = finAcked && state.receiveFinOffset !== null ? 'closed' : 'finWait';
  if (state.phase === 'closed') state.retransmitDeadlineMs = null;
}

function belongsTo(state: StreamState, frame: Frame): boolean {
  return (
    frame.nonce === state.nonce &&
    frame.sourceIp === state.remoteIp &&
    frame.sourcePort === state.remotePort &&
    frame.targetIp === state.localIp &&
    frame.targetPort === state.localPort
  );
}

function describe(state: StreamState): string {
  const local = `${u32ToIp(state.localIp)}:${state.localPort}`;
  return `${local} -> ${u32ToIp(state.remoteIp)}:${state.remotePort}`;
}
