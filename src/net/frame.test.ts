/**
 * Goal: every valid frame survives encode/decode unchanged, and no input, however malformed,
 * makes the decoder throw. Method: fast-check round trips and fuzzing (random bytes, mutated
 * valid frames, truncations), fixed seeds.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  decodeFrame,
  encodeFrame,
  FRAME_HEADER_BYTES,
  type Frame,
  type FrameKind,
  ipToU32,
  isFrameDecodeError,
  maxPayloadBytes,
  refusalFor,
  u32ToIp,
} from './frame.ts';

const KINDS: FrameKind[] = ['syn', 'synAck', 'data', 'ack', 'fin', 'rst', 'unreachable'];
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const offset = fc.oneof(
  fc.integer({ min: 0, max: 1 << 30 }),
  fc.constantFrom(0, 2 ** 53 - 5000, 2 ** 32 + 7),
);

const frameArb: fc.Arbitrary<Frame> = fc
  .record({
    kind: fc.constantFrom(...KINDS),
    sourceIp: u32,
    targetIp: u32,
    sourcePort: u16,
    targetPort: u16,
    offset,
    ack: offset,
    window: u32,
    nonce: u32,
    payload: fc.uint8Array({ minLength: 1, maxLength: maxPayloadBytes() }),
  })
  // Spread: fast-check records have a null prototype, decoded frames a plain one.
  .map((frame) => ({
    ...frame,
    payload: frame.kind === 'data' ? frame.payload : new Uint8Array(0),
  }));

describe('frame codec', () => {
  it('decodes what it encodes, into a new array or a target', () => {
    fc.assert(
      fc.property(frameArb, (frame) => {
        const bytes = encodeFrame(frame);
        assert.equal(bytes.byteLength, FRAME_HEADER_BYTES + frame.payload.byteLength);
        assert.deepEqual(decodeFrame(bytes), frame);
        const target = new Uint8Array(4096 + 16);
        const length = encodeFrame(frame, target.subarray(16));
        assert.deepEqual(decodeFrame(target.subarray(16, 16 + length)), frame);
      }),
      { seed: 7, numRuns: 300 },
    );
  });

  it('returns an error value, never throws, on random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 5000 }), (bytes) => {
        const result = decodeFrame(bytes);
        // Random bytes almost never form a valid frame; when they do, it must re-encode.
        if (!isFrameDecodeError(result)) assert.deepEqual(encodeFrame(result), bytes);
      }),
      { seed: 8, numRuns: 2000 },
    );
  });

  it('rejects every mutation that breaks a field, and never throws', () => {
    const mutation = fc.record({
      index: fc.nat(),
      value: fc.integer({ min: 0, max: 255 }),
      cut: fc.nat(),
    });
    fc.assert(
      fc.property(frameArb, mutation, (frame, { index, value, cut }) => {
        const bytes = encodeFrame(frame);
        const mutated = bytes.slice();
        mutated[index % bytes.byteLength] = value;
        const result = decodeFrame(mutated);
        if (!isFrameDecodeError(result)) assert.deepEqual(encodeFrame(result), mutated);
        const truncated = decodeFrame(bytes.subarray(0, cut % bytes.byteLength));
        assert.ok(isFrameDecodeError(truncated), 'a truncated frame is an error');
      }),
      { seed: 9, numRuns: 1000 },
    );
  });

  it('names the fault of each malformed frame', () => {
    const ack = encodeFrame(sample('ack'));
    const data = encodeFrame(sample('data', new Uint8Array(10)));
    const cases: [string, Uint8Array, RegExp][] = [
      ['short', ack.subarray(0, 39), /truncated/],
      ['version', patch(ack, 0, 2), /version/],
      ['kind 0', patch(ack, 1, 0), /kind/],
      ['kind 8', patch(ack, 1, 8), /kind/],
      ['payload on ack', withPayload(ack, 5), /ack frame carries 5 B/],
      ['length mismatch', data.subarray(0, data.byteLength - 1), /disagrees/],
      ['beyond slot', new Uint8Array(4097), /exceeds a ring slot/],
      ['empty data', withPayload(data, 0), /without payload/],
      ['NaN offset', patchF64(ack, 16, Number.NaN), /offset/],
      ['negative ack', patchF64(ack, 24, -1), /ack/],
      ['fractional offset', patchF64(ack, 16, 1.5), /offset/],
      ['offset beyond 2^53', patchF64(ack, 16, 2 ** 54), /offset/],
      ['infinite ack', patchF64(ack, 24, Number.POSITIVE_INFINITY), /ack/],
    ];
    for (const [name, bytes, pattern] of cases) {
      const result = decodeFrame(bytes);
      assert.ok(isFrameDecodeError(result), name);
      assert.match(result.error, pattern, name);
    }
    const big = encodeFrame(sample('data', new Uint8Array(5000)));
    assert.ok(isFrameDecodeError(decodeFrame(big)), 'a frame beyond the default slot');
    assert.ok(!isFrameDecodeError(decodeFrame(big, { slotSizeBytes: 8192 })));
  });

  it('refuses to encode an invalid frame', () => {
    assert.throws(() => encodeFrame(sample('ack', new Uint8Array(1))), RangeError);
    assert.throws(() => encodeFrame({ ...sample('ack'), offset: -1 }), RangeError);
    assert.throws(() => encodeFrame(sample('data', new Uint8Array(100)), new Uint8Array(50)));
  });

  it('answers a frame with a refusal, but never a refusal', () => {
    const syn = sample('syn');
    const rst = refusalFor(syn, 'rst');
    assert.ok(rst, 'a refusal');
    assert.equal(rst.sourceIp, syn.targetIp);
    assert.equal(rst.targetPort, syn.sourcePort);
    assert.equal(rst.nonce, syn.nonce);
    assert.equal(refusalFor(rst, 'rst'), null);
    assert.equal(refusalFor(sample('unreachable'), 'unreachable'), null);
  });

  it('converts dotted-quad IPs both ways', () => {
    assert.equal(ipToU32('10.77.0.2'), 0x0a4d0002);
    assert.equal(ipToU32('255.255.255.255'), 0xffffffff);
    assert.equal(u32ToIp(0x0a4d0002), '10.77.0.2');
    fc.assert(
      fc.property(u32, (value) => ipToU32(u32ToIp(value)) === value),
      { seed: 10 },
    );
    for (const bad of ['10.77.0', '10.77.0.256', '1.2.3.4.5', 'a.b.c.d', '', '1..2.3']) {
      assert.throws(() => ipToU32(bad), { code: 'INPUT_INVALID' }, bad);
    }
  });
});

function sample(kind: FrameKind, payload = new Uint8Array(0)): Frame {
  return {
    kind,
    sourceIp: ipToU32('10.77.0.2'),
    targetIp: ipToU32('10.77.0.3'),
    sourcePort: 40000,
    targetPort: 25,
    offset: 1000,
    ack: 2000,
    window: 65536,
    nonce: 0xdeadbeef,
    payload,
  };
}

function patch(bytes: Uint8Array, index: number, value: number): Uint8Array {
  const out = bytes.slice();
  out[index] = value;
  return out;
}

function patchF64(bytes: Uint8Array, at: number, value: number): Uint8Array {
  const out = bytes.slice();
  new DataView(out.buffer).setFloat64(at, value, true);
  return out;
}

/** The header of `bytes` with its length field and payload replaced by `length` zero bytes. */
function withPayload(bytes: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_BYTES + length);
  out.set(bytes.subarray(0, FRAME_HEADER_BYTES));
  new DataView(out.buffer).setUint16(2, length, true);
  return out;
}
