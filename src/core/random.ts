/**
 * A small seeded PRNG (sfc32) whose whole state is four 32-bit words, so a guest program can
 * keep it in its `GuestState` and resume the same sequence on the target host.
 *
 * Not for cryptography. `Math.random` is never used for anything a seed should replay.
 */
export type RandomState = [number, number, number, number];

export class Random {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number | RandomState) {
    if (typeof seed === 'number') {
      // splitmix32 spreads a small integer seed over the four words.
      let s = seed >>> 0;
      const next = (): number => {
        s = (s + 0x9e3779b9) >>> 0;
        let z = s;
        z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
        z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
        return (z ^ (z >>> 16)) >>> 0;
      };
      this.a = next();
      this.b = next();
      this.c = next();
      this.d = next();
      for (let i = 0; i < 12; i++) this.nextU32();
    } else {
      [this.a, this.b, this.c, this.d] = seed;
    }
  }

  /** The state to store; `new Random(state)` continues the same sequence. */
  state(): RandomState {
    return [this.a, this.b, this.c, this.d];
  }

  nextU32(): number {
    // Signed 32-bit arithmetic (`| 0`) keeps the four words small integers for V8 (values
    // above 2^31 would be boxed doubles); the bit patterns, and so the sequence, are sfc32's.
    const a = this.a | 0;
    const b = this.b | 0;
    const c = this.c | 0;
    const d = this.d | 0;
    const t = (((a + b) | 0) + d) | 0;
    this.d = (d + 1) | 0;
    this.a = b ^ (b >>> 9);
    this.b = (c + (c << 3)) | 0;
    this.c = (((c << 21) | (c >>> 11)) + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1). */
  nextFloat(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [0, bound). */
  nextInt(bound: number): number {
    return Math.floor(this.nextFloat() * bound);
  }

  /** Fills `bytes` with pseudo-random bytes, four at a time (little-endian words). */
  fill(bytes: Uint8Array): void {
    const words = Math.floor(bytes.byteLength / 4);
    if (bytes.byteOffset % 4 === 0) {
      const view = new Uint32Array(bytes.buffer, bytes.byteOffset, words);
      for (let i = 0; i < words; i++) view[i] = this.nextU32();
    } else {
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let i = 0; i < words; i++) view.setUint32(i * 4, this.nextU32(), true);
    }
    for (let i = words * 4; i < bytes.byteLength; i++) bytes[i] = this.nextU32() & 0xff;
  }
}
