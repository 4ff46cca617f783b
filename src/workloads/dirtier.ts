/**
 * The synthetic dirtier: a guest program that dirties pages of its working set at a set rate,
 * with a chosen access pattern. It is the knob of every migration experiment that asks "how
 * does pre-copy behave when the guest dirties R pages per second?".
 *
 * Method: on `start()` it fills the working set with seeded pseudo-random bytes (so pages are
 * not zero and a migration really has to copy them), then runs a periodic `tick` timer. Each
 * tick credits the guest time elapsed since the previous one, `elapsedMs * rate`, in thousandths
 * of a page; the whole pages of that credit are written, the fraction is carried to the next
 * tick in `carryMilliPages`. So the long-run rate is exact whatever the timer's lateness or
 * jitter: after any tick, `pagesWritten = floor(rate * creditedMs / 1000)` (exactly, when rate
 * and times are integers). Each page written gets a 64-byte stamp through `GuestMemory.write`,
 * so log-dirty sees it:
 *
 * ```
 * stamp (64 B) = 4 x | counter low u32 | counter high u32 | page index u32 | 'DIRT' |
 * offset in page = (counter mod 64) * 64    (cycles through the page's 64 slots)
 * ```
 *
 * The counter (all pages ever written) makes every write change the page's content.
 *
 * The state is plain data (parameters, picker state, counters, last tick time, carry): the
 * kernel saves it at pause with the program's timers, and `restore` continues the identical
 * PRNG sequence on the target host. The program never re-arms its timer on restore: the kernel
 * does.
 *
 * Non-goals: reads (they do not dirty memory), multi-page writes (use a sequential pattern),
 * and modelling the CPU cost of a real workload (the dirtier only writes).
 */
import assert from 'node:assert/strict';
import { InputError } from '../core/errors.ts';
import { Random } from '../core/random.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import type {
  GuestProgram,
  ProgramContext,
  ProgramFactory,
  ProgramStats,
} from '../guest/program.ts';
import type { Region } from '../memory/layout.ts';
import {
  type AccessPattern,
  createPagePicker,
  PagePicker,
  type PagePickerState,
  resolvePagePickerParams,
} from './page-picker.ts';
import { checkKnownParams } from './params.ts';

/** The program kind, as registered with the guest kernel. */
export const DIRTIER_KIND = 'dirtier';
/** The tag of the dirtier's only timer. */
export const DIRTIER_TICK_TAG = 'tick';

/** Bytes written per dirtied page: one cache line, so a write costs little beyond the mark. */
export const STAMP_SIZE_BYTES = 64;
/** Chunk of the initial random fill: large enough to amortise calls, small enough to cache. */
export const FILL_CHUNK_SIZE_BYTES = 1 << 20;

/** Shortest tick: below 1 ms, timer overhead would dominate the work. */
export const TICK_MS_MIN = 1;
/** Longest tick: above 1 s, a pre-copy round could see no write at all between two ticks. */
export const TICK_MS_MAX = 1000;

/**
 * Most guest time one tick credits. A tick that comes later (the event loop was busy, the domain
 * was paused) catches up at most this much and the rest is counted in `skippedMs`: a paused
 * guest does no work, and an unbounded burst would distort the round that sees it.
 */
export const TICK_CREDIT_MS_MAX = 1000;
/**
 * Most pages one tick writes: 65 536 pages (256 MiB of pages) take about 50 ms of CPU here
 * (uniform writes over 1 GiB, 780 ns a page), which bounds how long one guest event can delay
 * the kernel's pause. Far above any rate this CPU can sustain at the default 10 ms tick; a
 * configuration that needs more per on-time tick is rejected: use a shorter `tickMs`.
 */
export const TICK_PAGES_MAX = 65_536;

/**
 * Named guest behaviours for experiments beyond the paper; a behaviour gives defaults that
 * explicit parameters override. `idle`: a booted guest holding its memory, writing nothing
 * after the fill. `web`: a web-like server, 2000 pages/s (8 MB/s) into a hot set of 5 % of the
 * working set that takes 95 % of the writes (request buffers, session caches). `memory-bound`:
 * 50,000 pages/s (200 MB/s) spread uniformly, faster than a 1 Gbit/s link can resend, so
 * pre-copy does not converge and stops at its round cap.
 */
export const DIRTIER_BEHAVIOURS = {
  idle: { dirtyRatePagesPerSec: 0 },
  web: {
    dirtyRatePagesPerSec: 2000,
    pattern: 'hotcold',
    hotFraction: 0.05,
    hotProbability: 0.95,
  },
  'memory-bound': { dirtyRatePagesPerSec: 50_000, pattern: 'uniform' },
} as const satisfies Record<string, Partial<DirtierParams>>;
export type DirtierBehaviour = keyof typeof DIRTIER_BEHAVIOURS;

/** Parameters of a dirtier, e.g. from a scenario file. */
export interface DirtierParams {
  /** A named behaviour whose settings are the defaults of the parameters below. */
  behaviour?: DirtierBehaviour;
  /**
   * Pages dirtied per second of guest time; 0 makes the dirtier idle after its fill. Required
   * unless a `behaviour` gives it.
   */
  dirtyRatePagesPerSec?: number;
  /**
   * Size of the working set: the first pages of the program's data region.
   * @default the whole data region
   */
  workingSetPages?: number;
  /**
   * How writes spread over the working set.
   * @default 'uniform'
   */
  pattern?: AccessPattern;
  /**
   * Seed of the page choices and of the initial fill (an unsigned 32-bit integer).
   * @default 1
   */
  seed?: number;
  /**
   * Period of the tick timer in ms, in [1, 1000].
   * @default 10
   */
  tickMs?: number;
  /**
   * `hotcold`: share of the working set that is hot, in (0, 1].
   * @default 0.1
   */
  hotFraction?: number;
  /**
   * `hotcold`: probability that a write goes to the hot set, in (0, 1].
   * @default 0.9
   */
  hotProbability?: number;
  /**
   * `zipf`: exponent of the rank distribution, > 0.
   * @default 0.99
   */
  zipfExponent?: number;
  /**
   * Initial content of the working set: `random` writes seeded pseudo-random bytes at start;
   * `zero` writes nothing and leaves the pages as allocated (zero in a fresh domain).
   * @default 'random'
   */
  fill?: 'random' | 'zero';
}

/** Dirtier parameters with every default filled in. */
export type DirtierConfig = Required<Omit<DirtierParams, 'behaviour'>>;

/** The dirtier's whole state: plain structured-clone data. */
export interface DirtierState {
  params: DirtierConfig;
  picker: PagePickerState;
  /** Pages written by ticks since start (the initial fill is not counted). */
  pagesWritten: number;
  /** Ticks run since start. */
  ticks: number;
  /** Guest time of the previous tick (or of the end of `start()`), in ms. */
  lastTickMs: number;
  /** Credit not yet spent, in thousandths of a page, in [0, 1000). */
  carryMilliPages: number;
  /** Guest time not credited because a tick came more than `TICK_CREDIT_MS_MAX` late, in ms. */
  skippedMs: number;
}

const PARAM_NAMES: ReadonlySet<string> = new Set([
  'dirtyRatePagesPerSec',
  'workingSetPages',
  'pattern',
  'seed',
  'tickMs',
  'hotFraction',
  'hotProbability',
  'zipfExponent',
  'fill',
  'behaviour',
]);

/**
 * Checks `params` against the program's data region and fills in the defaults. Throws
 * `InputError` naming the parameter, its value and what is allowed.
 */
export function resolveDirtierParams(given: DirtierParams, dataRegion: Region): DirtierConfig {
  checkKnownParams('dirtier', given, PARAM_NAMES);
  if (given.behaviour !== undefined && !Object.hasOwn(DIRTIER_BEHAVIOURS, given.behaviour)) {
    throw new InputError(
      `behaviour must be one of ${Object.keys(DIRTIER_BEHAVIOURS).join(', ')}; got ${String(given.behaviour)}`,
    );
  }
  const params: DirtierParams = {
    ...(given.behaviour ? DIRTIER_BEHAVIOURS[given.behaviour] : {}),
    ...Object.fromEntries(Object.entries(given).filter(([, value]) => value !== undefined)),
  };
  const rate = params.dirtyRatePagesPerSec;
  if (typeof rate !== 'number' || !Number.isFinite(rate) || rate < 0) {
    throw new InputError(`dirtyRatePagesPerSec must be a finite number >= 0; got ${rate}`);
  }
  const workingSetPages = params.workingSetPages ?? dataRegion.pageCount;
  if (
    !Number.isInteger(workingSetPages) ||
    workingSetPages < 1 ||
    workingSetPages > dataRegion.pageCount
  ) {
    throw new InputError(
      `workingSetPages must be an integer in [1, ${dataRegion.pageCount}] ` +
        `(the program's data region); got ${workingSetPages}`,
    );
  }
  const tickMs = params.tickMs ?? 10;
  if (typeof tickMs !== 'number' || !(tickMs >= TICK_MS_MIN && tickMs <= TICK_MS_MAX)) {
    throw new InputError(`tickMs must be in [${TICK_MS_MIN}, ${TICK_MS_MAX}] ms; got ${tickMs}`);
  }
  const pagesPerTick = (rate * tickMs) / 1000;
  if (pagesPerTick > TICK_PAGES_MAX) {
    throw new InputError(
      `dirtyRatePagesPerSec ${rate} with tickMs ${tickMs} needs ${Math.ceil(pagesPerTick)} ` +
        `pages per tick, over the limit of ${TICK_PAGES_MAX}; use a shorter tickMs`,
    );
  }
  const seed = params.seed ?? 1;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffff_ffff) {
    throw new InputError(`seed must be an integer in [0, 2^32 - 1]; got ${seed}`);
  }
  const fill = params.fill ?? 'random';
  if (fill !== 'random' && fill !== 'zero') {
    throw new InputError(`fill must be 'random' or 'zero'; got ${String(fill)}`);
  }
  const picker = resolvePagePickerParams({
    pattern: params.pattern ?? 'uniform',
    workingSetPages,
    ...definedOnly(params),
  });
  return { dirtyRatePagesPerSec: rate, tickMs, seed, fill, ...picker };
}

/** The picker's optional parameters that were given (an explicit `undefined` means default). */
function definedOnly(
  params: DirtierParams,
): Pick<DirtierParams, 'hotFraction' | 'hotProbability' | 'zipfExponent'> {
  const out: Pick<DirtierParams, 'hotFraction' | 'hotProbability' | 'zipfExponent'> = {};
  if (params.hotFraction !== undefined) out.hotFraction = params.hotFraction;
  if (params.hotProbability !== undefined) out.hotProbability = params.hotProbability;
  if (params.zipfExponent !== undefined) out.zipfExponent = params.zipfExponent;
  return out;
}

/**
 * The fill has its own PRNG stream, so changing `fill` never changes the page sequence. The
 * constant only makes the two seeds differ; splitmix32 in `Random` decorrelates them.
 */
function fillSeed(seed: number): number {
  return (seed ^ 0x5eed_f111) >>> 0;
}

/** 'DIRT' as a little-endian u32, so a stamp is recognisable in a hex dump of a page. */
const STAMP_MAGIC = 0x54524944;
const STAMP_SLOTS_PER_PAGE = PAGE_SIZE_BYTES / STAMP_SIZE_BYTES;

class Dirtier implements GuestProgram<DirtierState> {
  readonly kind = DIRTIER_KIND;
  readonly state: DirtierState;
  private readonly context: ProgramContext;
  private readonly picker: PagePicker;
  private readonly dataAddress: number;
  private readonly stamp = new Uint8Array(STAMP_SIZE_BYTES);
  private readonly stampView = new DataView(this.stamp.buffer);

  constructor(context: ProgramContext, state: DirtierState) {
    this.context = context;
    this.state = state;
    this.picker = new PagePicker(state.picker);
    this.dataAddress = context.dataRegion.firstPage * PAGE_SIZE_BYTES;
  }

  start(): void {
    if (this.state.params.fill === 'random') this.fillWorkingSet();
    // Credit starts after the fill: its duration is set-up, not time owed to the rate.
    this.state.lastTickMs = this.context.nowMs();
    if (this.state.params.dirtyRatePagesPerSec > 0) {
      this.context.setTimer(this.state.params.tickMs, DIRTIER_TICK_TAG);
    }
  }

  onTimer(tag: string): void {
    assert.equal(tag, DIRTIER_TICK_TAG, `the dirtier arms only '${DIRTIER_TICK_TAG}' timers`);
    const pageCount = this.creditTick(this.context.nowMs());
    this.writePages(pageCount);
    this.state.ticks++;
    this.context.setTimer(this.state.params.tickMs, DIRTIER_TICK_TAG);
  }

  stats(): ProgramStats {
    const { params, pagesWritten, ticks, skippedMs } = this.state;
    return {
      pagesWritten,
      ticks,
      dirtyRatePagesPerSec: params.dirtyRatePagesPerSec,
      pattern: params.pattern,
      workingSetPages: params.workingSetPages,
      skippedMs,
    };
  }

  /** Credits the guest time since the last tick; returns the whole pages now due. */
  private creditTick(nowMs: number): number {
    const state = this.state;
    const rate = state.params.dirtyRatePagesPerSec;
    const elapsedMs = Math.max(0, nowMs - state.lastTickMs);
    state.lastTickMs = nowMs;
    const creditedMs = Math.min(elapsedMs, TICK_CREDIT_MS_MAX, (TICK_PAGES_MAX * 1000) / rate);
    state.skippedMs += elapsedMs - creditedMs;
    const milliPages = state.carryMilliPages + creditedMs * rate;
    let pageCount = Math.floor(milliPages / 1000);
    // Rounding in the division can reach the next integer; the carry must stay >= 0.
    if (pageCount * 1000 > milliPages) pageCount--;
    state.carryMilliPages = milliPages - pageCount * 1000;
    // carry < 1000 and creditedMs * rate <= TICK_PAGES_MAX * 1000 bound the page count.
    assert.ok(pageCount <= TICK_PAGES_MAX, `tick of ${pageCount} pages within the limit`);
    return pageCount;
  }

  private writePages(pageCount: number): void {
    const memory = this.context.memory;
    const view = this.stampView;
    let counter = this.state.pagesWritten;
    for (let i = 0; i < pageCount; i++) {
      const page = this.picker.next();
      const counterLow = counter >>> 0;
      const counterHigh = Math.floor(counter / 2 ** 32);
      for (let word = 0; word < STAMP_SIZE_BYTES; word += 16) {
        view.setUint32(word, counterLow, true);
        view.setUint32(word + 4, counterHigh, true);
        view.setUint32(word + 8, page, true);
        view.setUint32(word + 12, STAMP_MAGIC, true);
      }
      const offset = (counter % STAMP_SLOTS_PER_PAGE) * STAMP_SIZE_BYTES;
      memory.write(this.dataAddress + page * PAGE_SIZE_BYTES + offset, this.stamp);
      counter++;
    }
    this.state.pagesWritten = counter;
    // The state must be complete at the end of every event: the kernel may pause now.
    this.picker.save();
  }

  private fillWorkingSet(): void {
    const noise = new FillNoise(fillSeed(this.state.params.seed));
    const sizeBytes = this.state.params.workingSetPages * PAGE_SIZE_BYTES;
    const chunk = new Uint8Array(Math.min(FILL_CHUNK_SIZE_BYTES, sizeBytes));
    for (let offset = 0; offset < sizeBytes; offset += chunk.byteLength) {
      const part = chunk.subarray(0, Math.min(chunk.byteLength, sizeBytes - offset));
      noise.fill(part);
      this.context.memory.write(this.dataAddress + offset, part);
    }
  }
}

/**
 * The noise of the initial fill: xorshift128 (Marsaglia 2003) seeded from `Random`, kept in
 * local int32 variables and written through an `Int32Array`. Why not `Random.fill`: measured
 * here at 44 ns per 32-bit word (11 s of CPU to fill 1 GiB), because sfc32's fields hold values
 * above 2^31 that V8 boxes; this loop runs at about 3 ns per word (0.8 s per GiB, 1.3 s with
 * the copy into guest memory). The fill needs no particular
 * quality, only pages that are not zero and not alike. Words are stored in platform byte order,
 * so the bytes (not the page sequence) would differ on a big-endian host.
 */
class FillNoise {
  private readonly words: Int32Array;

  constructor(seed: number) {
    const random = new Random(seed);
    this.words = Int32Array.from([0, 0, 0, 0], () => random.nextU32() | 0);
    // xorshift128 must not start from all zeros.
    if (this.words.every((word) => word === 0)) this.words[0] = 1;
  }

  /** Fills `bytes` (a multiple of 4 bytes long, 4-byte aligned) with noise. */
  fill(bytes: Uint8Array): void {
    assert.ok(bytes.byteOffset % 4 === 0 && bytes.byteLength % 4 === 0, 'whole aligned words');
    const out = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    const words = this.words;
    let x = words[0]!;
    let y = words[1]!;
    let z = words[2]!;
    let w = words[3]!;
    for (let i = 0; i < out.length; i++) {
      const t = x ^ (x << 11);
      x = y;
      y = z;
      z = w;
      w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
      out[i] = w;
    }
    words[0] = x;
    words[1] = y;
    words[2] = z;
    words[3] = w;
  }
}

/**
 * Builds dirtiers: `create` validates the parameters (throwing `InputError`) and starts from
 * zero; `restore` continues a saved `DirtierState` after a migration, without arming a timer.
 */
export const dirtierFactory: ProgramFactory<DirtierParams, DirtierState> = {
  kind: DIRTIER_KIND,
  create(context: ProgramContext, params: DirtierParams): GuestProgram<DirtierState> {
    const config = resolveDirtierParams(params, context.dataRegion);
    const state: DirtierState = {
      params: config,
      picker: createPagePicker(config, config.seed),
      pagesWritten: 0,
      ticks: 0,
      lastTickMs: context.nowMs(),
      carryMilliPages: 0,
      skippedMs: 0,
    };
    return new Dirtier(context, state);
  },
  restore(context: ProgramContext, state: DirtierState): GuestProgram<DirtierState> {
    // The target's data region must still hold the working set.
    resolveDirtierParams(state.params, context.dataRegion);
    return new Dirtier(context, state);
  },
};
