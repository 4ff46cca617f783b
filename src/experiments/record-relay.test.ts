import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { RecordRelay } from './record-relay.ts';

/** A record in the codec's framing: u32 type, u32 bodyLength, body padded to 8 bytes. */
function record(type: number, body: number[]): Buffer {
  const bytes = Buffer.alloc(8 + Math.ceil(body.length / 8) * 8);
  bytes.writeUInt32LE(type, 0);
  bytes.writeUInt32LE(body.length, 4);
  Buffer.from(body).copy(bytes, 8);
  return bytes;
}

const HANDSHAKE = Buffer.from('\u0005\u0000\u0000\u0000{"a":1}');
const HEADER = record(1, [0x47, 0x49, 0x4d, 0x58, 1, 0, 0, 0]);
const INFO = record(2, [...Buffer.from('{"name":"vm"}')]);
const BATCHES = [1, 2, 3].map((n) =>
  record(
    3,
    Array.from({ length: 20 + n }, () => n),
  ),
);
const END = record(5, []);
const STREAM = [HANDSHAKE, HEADER, INFO, ...BATCHES, END];

/** Feeds the stream in chunks cut at `cuts` and joins what the relay forwards. */
function relay(fault: 'reorder' | 'drop', afterBytes: number, cuts: number[]) {
  const whole = Buffer.concat(STREAM);
  const relayed = new RecordRelay(fault, afterBytes);
  const out: Buffer[] = [];
  let from = 0;
  for (const cut of [...new Set(cuts)].sort((a, b) => a - b).concat(whole.length)) {
    out.push(...relayed.push(whole.subarray(from, cut)));
    from = cut;
  }
  return { forwarded: Buffer.concat(out), fired: relayed.fired };
}

describe('RecordRelay', () => {
  const firstBatchAt = HANDSHAKE.length + HEADER.length + INFO.length;

  it('sends the page batch holding the given byte behind the record that follows it, in any chunking', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(Buffer.concat(STREAM).length - 1), { maxLength: 12 }), (cuts) => {
        const { forwarded, fired } = relay('reorder', firstBatchAt + BATCHES[0]!.length, cuts);
        const expected = Buffer.concat([
          HANDSHAKE,
          HEADER,
          INFO,
          BATCHES[0]!,
          BATCHES[2]!,
          BATCHES[1]!,
          END,
        ]);
        assert.ok(fired, 'the fault struck');
        assert.ok(forwarded.equals(expected), 'batch 2 comes after batch 3, nothing else moves');
      }),
      { seed: 17, numRuns: 200 },
    );
  });

  it('drops the page batch holding the given byte, and only that one', () => {
    const { forwarded, fired } = relay('drop', firstBatchAt + 5, [3, 40, 41]);
    assert.ok(fired, 'the fault struck');
    assert.ok(
      forwarded.equals(Buffer.concat([HANDSHAKE, HEADER, INFO, BATCHES[1]!, BATCHES[2]!, END])),
      'batch 1 is missing, the rest is whole',
    );
  });

  it('passes the handshake on at once: its peer waits for the answer', () => {
    const relayed = new RecordRelay('reorder', 0);
    assert.ok(Buffer.concat(relayed.push(HANDSHAKE)).equals(HANDSHAKE), 'nothing held back');
  });

  it('passes everything when no page batch follows the given byte', () => {
    const whole = Buffer.concat(STREAM);
    const { forwarded, fired } = relay('drop', whole.length - END.length, [7]);
    assert.equal(fired, false, 'the fault did not strike');
    assert.ok(forwarded.equals(whole), 'the stream passes unchanged');
  });
});
