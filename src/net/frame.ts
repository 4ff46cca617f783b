/**
 * The frame codec of the netfront path: one frame fits in one netfront ring slot.
 *
 * Method: a fixed 40-byte little-endian header followed by the payload. The header carries the
 * stream offsets of principle 2 (every connection is a byte stream with absolute offsets), so
 * a receiver can tell new bytes from retransmitted ones whatever carrier or host they came
 * through. Decoding never throws: a malformed frame is an expected outcome (a guest may write
 * anything into its TX ring) and comes back as `{ error }` for the caller to count and drop.
 *
 * Non-goals: IP fragmentation, checksums (the rings are memory, not wires), options.
 *
 * ```
 * byte  size  field (little-endian)
 *    0     1  version = 1
 *    1     1  kind: 1 syn, 2 synAck, 3 data, 4 ack, 5 fin, 6 rst, 7 unreachable
 *    2     2  payloadLength (u16)
 *    4     4  sourceIp (u32)                 8     4  targetIp (u32)
 *   12     2  sourcePort (u16)              14     2  targetPort (u16)
 *   16     8  offset (f64): stream offset of the payload's first byte, or of the FIN
 *   24     8  ack (f64): next offset expected = bytes accepted (+1 once the FIN is)
 *   32     4  window (u32): bytes of receive space after `ack`
 *   36     4  nonce (u32): chosen by the connector, names the connection
 *   40     n  payload: data frames only, n = payloadLength >= 1
 * ```
 */
import { InputError } from '../core/errors.ts';
import { NETFRONT_SLOT_SIZE_BYTES, STREAM_OFFSET_MAX } from './limits.ts';

/** Version byte of every frame; a frame with another version is malformed. */
export const FRAME_VERSION = 1;

/** Size of the fixed header, in bytes. */
export const FRAME_HEADER_BYTES = 40;

/** The largest payload the u16 length field can state. */
const PAYLOAD_LENGTH_MAX = 0xffff;

/**
 * What a frame does. `syn`/`synAck` open a stream, `data` carries bytes, `ack` carries only an
 * acknowledgement and window, `fin` ends the sender's direction, `rst` refuses or aborts a
 * stream, `unreachable` is Dom0's answer when no domain has the target IP.
 */
export type FrameKind = 'syn' | 'synAck' | 'data' | 'ack' | 'fin' | 'rst' | 'unreachable';

/** Wire codes, index + 1 (0 is never valid, so a zeroed slot does not decode). */
const FRAME_KINDS: readonly FrameKind[] = [
  'syn',
  'synAck',
  'data',
  'ack',
  'fin',
  'rst',
  'unreachable',
];

/** One decoded frame. Addresses are IPv4 as u32 (see `ipToU32`). */
export interface Frame {
  kind: FrameKind;
  sourceIp: number;
  targetIp: number;
  sourcePort: number;
  targetPort: number;
  /** Stream offset of the payload's first byte (`data`) or of the end of stream (`fin`). */
  offset: number;
  /** The sender's receive position: next offset it expects (FIN counts as one unit). */
  ack: number;
  /** Bytes of receive space the sender has after `ack`. */
  window: number;
  /** Connection nonce chosen by the connector; frames of an older connection are dropped. */
  nonce: number;
  /** Bytes of a `data` frame; empty otherwise. A view into the decoded bytes (no copy). */
  payload: Uint8Array;
}

/** Why `decodeFrame` rejected its input. */
export interface FrameDecodeError {
  error: string;
}

export const EMPTY_PAYLOAD = new Uint8Array(0);

/** Largest payload a ring slot of `slotSizeBytes` can hold, in bytes. */
export function maxPayloadBytes(slotSizeBytes: number = NETFRONT_SLOT_SIZE_BYTES): number {
  return Math.min(slotSizeBytes - FRAME_HEADER_BYTES, PAYLOAD_LENGTH_MAX);
}

/** Encoded size of `frame`, in bytes. */
export function frameBytes(frame: Frame): number {
  return FRAME_HEADER_BYTES + frame.payload.byteLength;
}

/**
 * Encodes `frame`. With `target`, writes into it from index 0 and returns the byte count;
 * without, returns a new array. An invalid frame is a programmer error (throws RangeError).
 */
export function encodeFrame(frame: Frame): Uint8Array;
export function encodeFrame(frame: Frame, target: Uint8Array): number;
export function encodeFrame(frame: Frame, target?: Uint8Array): number | Uint8Array {
  const problem = checkFrame(frame);
  if (problem !== null) throw new RangeError(`cannot encode frame: ${problem}`);
  const length = frameBytes(frame);
  const out = target ?? new Uint8Array(length);
  if (out.byteLength < length) {
    throw new RangeError(`frame of ${length} B does not fit a target of ${out.byteLength} B`);
  }
  const view = new DataView(out.buffer, out.byteOffset, length);
  view.setUint8(0, FRAME_VERSION);
  view.setUint8(1, FRAME_KINDS.indexOf(frame.kind) + 1);
  view.setUint16(2, frame.payload.byteLength, true);
  view.setUint32(4, frame.sourceIp, true);
  view.setUint32(8, frame.targetIp, true);
  view.setUint16(12, frame.sourcePort, true);
  view.setUint16(14, frame.targetPort, true);
  view.setFloat64(16, frame.offset, true);
  view.setFloat64(24, frame.ack, true);
  view.setUint32(32, frame.window, true);
  view.setUint32(36, frame.nonce, true);
  out.set(frame.payload, FRAME_HEADER_BYTES);
  return target === undefined ? out : length;
}

/**
 * Decodes exactly one frame filling `bytes`. Never throws: malformed input (bad version or
 * kind, a length that disagrees with `bytes`, a frame larger than a slot, offsets that are
 * not integers in [0, 2^53], a payload on anything but `data`) returns `{ error }`.
 * The payload is a view into `bytes`.
 */
export function decodeFrame(
  bytes: Uint8Array,
  options: { slotSizeBytes?: number } = {},
): Frame | FrameDecodeError {
  const slotSizeBytes = options.slotSizeBytes ?? NETFRONT_SLOT_SIZE_BYTES;
  if (bytes.byteLength < FRAME_HEADER_BYTES) {
    return { error: `truncated: ${bytes.byteLength} B is shorter than the header` };
  }
  if (bytes.byteLength > slotSizeBytes) {
    return { error: `${bytes.byteLength} B exceeds a ring slot of ${slotSizeBytes} B` };
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint8(0);
  if (version !== FRAME_VERSION) return { error: `version ${version} is not ${FRAME_VERSION}` };
  const kind = FRAME_KINDS[view.getUint8(1) - 1];
  if (kind === undefined) return { error: `unknown kind ${view.getUint8(1)}` };
  const payloadLength = view.getUint16(2, true);
  if (FRAME_HEADER_BYTES + payloadLength !== bytes.byteLength) {
    return {
      error: `payload length ${payloadLength} disagrees with ${bytes.byteLength} B received`,
    };
  }
  const frame: Frame = {
    kind,
    sourceIp: view.getUint32(4, true),
    targetIp: view.getUint32(8, true),
    sourcePort: view.getUint16(12, true),
    targetPort: view.getUint16(14, true),
    offset: view.getFloat64(16, true),
    ack: view.getFloat64(24, true),
    window: view.getUint32(32, true),
    nonce: view.getUint32(36, true),
    payload: payloadLength === 0 ? EMPTY_PAYLOAD : bytes.subarray(FRAME_HEADER_BYTES),
  };
  const problem = checkFrame(frame);
  return problem === null ? frame : { error: problem };
}

/** Type guard for the result of `decodeFrame`. */
export function isFrameDecodeError(result: Frame | FrameDecodeError): result is FrameDecodeError {
  return 'error' in result;
}

/** The one validation both directions share; returns a reason or null. */
function checkFrame(frame: Frame): string | null {
  if (!FRAME_KINDS.includes(frame.kind)) return `unknown kind ${String(frame.kind)}`;
  if (!isU32(frame.sourceIp) || !isU32(frame.targetIp)) return 'IP is not a u32';
  if (!isU16(frame.sourcePort) || !isU16(frame.targetPort)) return 'port is not a u16';
  if (!isU32(frame.window) || !isU32(frame.nonce)) return 'window or nonce is not a u32';
  if (!isOffset(frame.offset)) return `offset ${frame.offset} is not an integer in [0, 2^53]`;
  if (!isOffset(frame.ack)) return `ack ${frame.ack} is not an integer in [0, 2^53]`;
  const payloadLength = frame.payload.byteLength;
  if (payloadLength > PAYLOAD_LENGTH_MAX) return `payload of ${payloadLength} B exceeds u16`;
  if (frame.kind === 'data' && payloadLength === 0) return 'data frame without payload';
  if (frame.kind !== 'data' && payloadLength !== 0) {
    return `${frame.kind} frame carries ${payloadLength} B of payload`;
  }
  if (frame.offset + payloadLength > STREAM_OFFSET_MAX) return 'payload ends beyond 2^53';
  return null;
}

function isU32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffffffff;
}

function isU16(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffff;
}

function isOffset(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= STREAM_OFFSET_MAX;
}

/**
 * The answer to a frame nobody can take: `rst` from a guest kernel with no listener or stream
 * for it, `unreachable` from Dom0 when no domain has the target IP. Echoes the nonce so the
 * sender can tell it belongs to its current stream. Returns null for a frame that must not be
 * answered (a `rst` or `unreachable` itself, so two refusals never ping-pong).
 */
export function refusalFor(frame: Frame, kind: 'rst' | 'unreachable'): Frame | null {
  if (frame.kind === 'rst' || frame.kind === 'unreachable') return null;
  return {
    kind,
    sourceIp: frame.targetIp,
    targetIp: frame.sourceIp,
    sourcePort: frame.targetPort,
    targetPort: frame.sourcePort,
    offset: 0,
    ack: 0,
    window: 0,
    nonce: frame.nonce,
    payload: EMPTY_PAYLOAD,
  };
}

/** `'10.77.0.2'` -> `0x0a4d0002`. Throws InputError on anything but dotted-quad IPv4. */
export function ipToU32(ip: string): number {
  const parts = ip.split('.');
  const octets = parts.map((part) => (/^\d{1,3}$/.test(part) ? Number(part) : Number.NaN));
  if (octets.length !== 4 || octets.some((octet) => !(octet >= 0 && octet <= 255))) {
    throw new InputError(`'${ip}' is not an IPv4 address such as 10.77.0.2`);
  }
  return ((octets[0]! << 24) | (octets[1]! << 16) | (octets[2]! << 8) | octets[3]!) >>> 0;
}

/** `0x0a4d0002` -> `'10.77.0.2'`. */
export function u32ToIp(value: number): string {
  return [value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff].join('.');
}
