/**
 * Whole-record faults for the fault-injecting relay: the source's bytes of a migration stream
 * are re-framed into records (the codec's framing: u32 type, u32 bodyLength, body padded to 8)
 * so that the PAGE_BATCH holding a given byte (or the first one after it) can be held back and
 * sent after the record that follows it (a record reordered on the way), or not sent at all (a
 * record dropped). Bytes before the stream's HEADER record (the peer-link handshake) pass as
 * they come. Pure: bytes in, bytes out; the relay does the I/O.
 */

/** The HEADER record's first 12 bytes: type 1, bodyLength 8, magic 'XMIG' (little-endian). */
const HEADER_RECORD_START = Buffer.from([1, 0, 0, 0, 8, 0, 0, 0, 0x47, 0x49, 0x4d, 0x58]);
const PAGE_BATCH_TYPE = 3;
const RECORD_HEADER_BYTES = 8;

export type RecordFault = 'reorder' | 'drop';

export class RecordRelay {
  /** Bytes received and not yet passed on: the start of a record not yet whole. */
  private pending: Buffer = Buffer.alloc(0);
  /** Stream offset of `pending[0]`, counted like the relay's `afterBytes` (from the first byte). */
  private pendingOffset = 0;
  private inStream = false;
  /** Until the stream starts: the last bytes passed, where the HEADER may have begun. */
  private tail: Buffer = Buffer.alloc(0);
  /** Bytes of `pending` already forwarded (a HEADER that began in `tail`). */
  private forwardedAhead = 0;
  private held: Buffer | null = null;
  /** Whether the fault struck (a PAGE_BATCH was held back or dropped). */
  fired = false;

  constructor(
    private readonly fault: RecordFault,
    private readonly afterBytes: number,
  ) {}

  /** Takes the next bytes from the source; returns what to forward now, in order. */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    if (!this.inStream) {
      // The handshake passes at once (its peer waits for the answer), so the HEADER is looked
      // for in the last bytes passed and this chunk: it may straddle the two.
      const window = Buffer.concat([this.tail, chunk]);
      const at = window.indexOf(HEADER_RECORD_START);
      if (at < 0) {
        out.push(chunk);
        this.pendingOffset += chunk.length;
        this.tail = window.subarray(Math.max(0, window.length - HEADER_RECORD_START.length));
        return out;
      }
      const inChunk = Math.max(0, at - this.tail.length);
      out.push(chunk.subarray(0, inChunk));
      this.forwardedAhead = this.tail.length - Math.min(at, this.tail.length);
      this.pending = window.subarray(at);
      this.pendingOffset += inChunk - this.forwardedAhead;
      this.inStream = true;
    } else {
      this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    }
    while (this.pending.length >= RECORD_HEADER_BYTES) {
      const type = this.pending.readUInt32LE(0);
      const bodyLength = this.pending.readUInt32LE(4);
      const size = RECORD_HEADER_BYTES + Math.ceil(bodyLength / 8) * 8;
      if (this.pending.length < size) break;
      const start = this.pendingOffset;
      const record: Buffer[] = [];
      this.take(size, record);
      if (this.held) {
        out.push(...record, this.held);
        this.held = null;
      } else if (!this.fired && type === PAGE_BATCH_TYPE && start + size > this.afterBytes) {
        this.fired = true;
        if (this.fault === 'reorder') this.held = Buffer.from(record[0]!);
      } else {
        out.push(...record);
      }
    }
    return out;
  }

  private take(bytes: number, out: Buffer[]): void {
    const skip = Math.min(this.forwardedAhead, bytes);
    this.forwardedAhead -= skip;
    out.push(this.pending.subarray(skip, bytes));
    this.pending = this.pending.subarray(bytes);
    this.pendingOffset += bytes;
  }
}
