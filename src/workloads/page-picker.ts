/**
 * Which page of a working set the next synthetic guest write goes to.
 *
 * Purpose: the dirtier (and any other synthetic workload) needs access patterns whose dirty
 * sets behave like real guests' under pre-copy: a sequential sweep (every page dirtied once per
 * pass, the worst case for pre-copy), uniform writes, a hot/cold split, and a Zipf-skewed
 * distribution (a few pages written very often, the long tail rarely: the shape that makes
 * later pre-copy rounds converge).
 *
 * Method: a pure, seeded sampler. The whole state (`PagePickerState`) is plain data – the
 * parameters, the four sfc32 words and a cursor – so it survives `structuredClone` and a
 * migration, and the sequence continues exactly where it stopped. A `PagePicker` holds the
 * derived constants and a live `Random` for speed; `save()` writes the PRNG words back.
 *
 * Zipf sampling is rejection-inversion (Hörmann & Derflinger 1996, "Rejection-inversion to
 * generate variates from monotone discrete distributions"), as in Apache Commons RNG's
 * `RejectionInversionZipfSampler`: O(1) expected time per sample and O(1) memory, with no
 * table of the N probabilities (a 1 GiB working set has 262 144 pages; a table would be
 * rebuilt after every migration and would not fit the plain-data state).
 *
 * Ranks are scattered over pages (see `zipfPageOfRank`) rather than mapped rank -> page, so
 * the hot pages of a Zipf workload are spread over the working set like the hot objects of a
 * real heap, instead of being packed into its first bitmap words.
 *
 * Non-goals: temporal locality (phases, shifting hot sets) and multi-page writes; those belong
 * to the workload that calls this picker.
 */
import assert from 'node:assert/strict';
import { InputError } from '../core/errors.ts';
import { Random, type RandomState } from '../core/random.ts';
import { MAX_DOMAIN_PAGES } from '../memory/layout.ts';

/**
 * How writes spread over the working set.
 * - `sequential`: pages 0, 1, 2, … wrapping at the end.
 * - `uniform`: every page equally likely.
 * - `hotcold`: a small hot set (the first pages) gets most writes, the cold rest the others.
 * - `zipf`: the page of rank k is written with probability proportional to 1 / k^exponent.
 */
export type AccessPattern = 'sequential' | 'uniform' | 'hotcold' | 'zipf';

/** Every `AccessPattern`, for validation and CLI help. */
export const ACCESS_PATTERNS: readonly AccessPattern[] = [
  'sequential',
  'uniform',
  'hotcold',
  'zipf',
];

/** Default share of the working set that is hot, for `hotcold`. */
export const HOT_FRACTION_DEFAULT = 0.1;
/** Default probability that a `hotcold` write goes to the hot set. */
export const HOT_PROBABILITY_DEFAULT = 0.9;
/**
 * Default Zipf exponent: 0.99, the value YCSB uses for its "zipfian" request distribution,
 * so results compare with the key-value literature.
 */
export const ZIPF_EXPONENT_DEFAULT = 0.99;

/**
 * Largest working set: a whole domain. It also keeps page numbers far below 2^31, which the
 * 32-bit integer arithmetic of `zipfPageOfRank` relies on.
 */
export const WORKING_SET_PAGES_MAX = MAX_DOMAIN_PAGES;

/** The parameters of a picker. */
export interface PagePickerParams {
  /** The access pattern. */
  pattern: AccessPattern;
  /** Size of the working set in pages (>= 1); pages are numbered 0 .. workingSetPages - 1. */
  workingSetPages: number;
  /**
   * `hotcold` only: the share of the working set that is hot, in (0, 1]. The hot set is the
   * first `round(hotFraction * workingSetPages)` pages, at least one.
   * @default 0.1
   */
  hotFraction?: number;
  /**
   * `hotcold` only: the probability, in (0, 1], that a write goes to the hot set.
   * @default 0.9
   */
  hotProbability?: number;
  /**
   * `zipf` only: the exponent s (> 0) of P(rank k) ∝ 1 / k^s.
   * @default 0.99
   */
  zipfExponent?: number;
}

/** A picker's whole state: plain structured-clone data. */
export interface PagePickerState {
  /** The parameters, with every default filled in. */
  params: PagePickerParams;
  /** The sfc32 PRNG words. */
  random: RandomState;
  /** `sequential` only: the next page to return. Always 0 for the other patterns. */
  cursor: number;
}

/**
 * Validates `params` and returns a new picker state seeded with `seed` (an unsigned 32-bit
 * integer). Throws `InputError` naming the bad parameter.
 */
export function createPagePicker(params: PagePickerParams, seed: number): PagePickerState {
  const resolved = resolvePagePickerParams(params);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffff_ffff) {
    throw new InputError(`page picker seed must be an integer in [0, 2^32 - 1]; got ${seed}`);
  }
  return { params: resolved, random: new Random(seed).state(), cursor: 0 };
}

/**
 * Checks `params` and fills in the defaults. Throws `InputError` with the parameter's name,
 * its value and the allowed range.
 */
export function resolvePagePickerParams(params: PagePickerParams): Required<PagePickerParams> {
  const { pattern, workingSetPages } = params;
  if (!ACCESS_PATTERNS.includes(pattern)) {
    throw new InputError(
      `access pattern must be one of ${ACCESS_PATTERNS.join(', ')}; got ${String(pattern)}`,
    );
  }
  if (
    !Number.isInteger(workingSetPages) ||
    workingSetPages < 1 ||
    workingSetPages > WORKING_SET_PAGES_MAX
  ) {
    throw new InputError(
      `working set must be an integer number of pages in [1, ${WORKING_SET_PAGES_MAX}]; ` +
        `got ${workingSetPages}`,
    );
  }
  const hotFraction = params.hotFraction ?? HOT_FRACTION_DEFAULT;
  const hotProbability = params.hotProbability ?? HOT_PROBABILITY_DEFAULT;
  const zipfExponent = params.zipfExponent ?? ZIPF_EXPONENT_DEFAULT;
  checkFraction('hotFraction', hotFraction);
  checkFraction('hotProbability', hotProbability);
  if (typeof zipfExponent !== 'number' || !Number.isFinite(zipfExponent) || zipfExponent <= 0) {
    throw new InputError(`zipfExponent must be a finite number > 0; got ${zipfExponent}`);
  }
  return { pattern, workingSetPages, hotFraction, hotProbability, zipfExponent };
}

function checkFraction(name: string, value: number): void {
  if (typeof value !== 'number' || !(value > 0 && value <= 1)) {
    throw new InputError(`${name} must be a number in (0, 1]; got ${value}`);
  }
}

/**
 * A picker over a `PagePickerState`, with the derived constants precomputed and a live PRNG.
 * `next()` advances; `save()` writes the PRNG words back into `state` (call it before the state
 * is read: at the end of each guest event). The cursor lives in `state` directly.
 */
export class PagePicker {
  /** The state this picker advances; complete after `save()`. */
  readonly state: PagePickerState;
  private readonly random: Random;
  private readonly pageCount: number;
  private readonly hotPageCount: number;
  private readonly coldPageCount: number;
  private readonly hotProbability: number;
  private readonly zipf: ZipfRanks | undefined;
  private readonly scatter: Scatter;

  constructor(state: PagePickerState) {
    const params = resolvePagePickerParams(state.params);
    assert.ok(
      // `Random` keeps some words as signed 32-bit values, others unsigned.
      state.random.length === 4 && state.random.every((w) => w === w >>> 0 || w === (w | 0)),
      'picker state holds four 32-bit PRNG words',
    );
    assert.ok(
      Number.isInteger(state.cursor) && state.cursor >= 0 && state.cursor < params.workingSetPages,
      `picker cursor ${state.cursor} lies in the working set of ${params.workingSetPages} pages`,
    );
    this.state = state;
    this.random = new Random(state.random);
    this.pageCount = params.workingSetPages;
    // Rounded, not floored: 0.29 * 100 is 28.999… in binary floating point.
    this.hotPageCount = Math.max(1, Math.round(params.hotFraction * this.pageCount));
    this.coldPageCount = this.pageCount - this.hotPageCount;
    this.hotProbability = params.hotProbability;
    this.zipf =
      params.pattern === 'zipf' ? new ZipfRanks(this.pageCount, params.zipfExponent) : undefined;
    this.scatter = scatterFor(this.pageCount);
  }

  /** The next page, in [0, workingSetPages). */
  next(): number {
    switch (this.state.params.pattern) {
      case 'sequential': {
        const page = this.state.cursor;
        this.state.cursor = page + 1 === this.pageCount ? 0 : page + 1;
        return page;
      }
      case 'uniform':
        return this.random.nextInt(this.pageCount);
      case 'hotcold':
        if (this.coldPageCount === 0 || this.random.nextFloat() < this.hotProbability) {
          return this.random.nextInt(this.hotPageCount);
        }
        return this.hotPageCount + this.random.nextInt(this.coldPageCount);
      case 'zipf':
        return scatterRank(this.zipf!.sample(this.random) - 1, this.scatter);
    }
  }

  /** Writes the PRNG words back into `state` and returns it. */
  save(): PagePickerState {
    this.state.random = this.random.state();
    return this.state;
  }
}

/**
 * Pickers cached per state object for `nextPage`, so a call does not rebuild the Zipf constants.
 * `random` is the array the picker last wrote: if the caller has replaced `state.random` (or
 * `state.params`) since, the cache is stale and is rebuilt from the state.
 */
const cachedPickers = new WeakMap<
  PagePickerState,
  { picker: PagePicker; random: RandomState; params: PagePickerParams }
>();

/**
 * Returns the next page and advances `state` (which stays complete plain data after every
 * call). For tight loops, a `PagePicker` with one `save()` per batch is cheaper.
 */
export function nextPage(state: PagePickerState): number {
  let entry = cachedPickers.get(state);
  if (entry === undefined || entry.random !== state.random || entry.params !== state.params) {
    entry = { picker: new PagePicker(state), random: state.random, params: state.params };
    cachedPickers.set(state, entry);
  }
  const page = entry.picker.next();
  entry.random = entry.picker.save().random;
  return page;
}

// ---- Zipf ranks by rejection-inversion ------------------------------------------------------

/**
 * Samples ranks in [1, n] with P(k) ∝ k^-s. A port of Apache Commons RNG's
 * `RejectionInversionZipfSampler`: H is an integral of h(x) = x^-s, u is drawn uniformly
 * between H(1.5) - 1 and H(n + 0.5), x = H⁻¹(u) rounded gives a candidate k, accepted when it
 * lies close enough (k - x <= s) or passes the exact test; the expected number of iterations is
 * below 1.1 for every s and n.
 *
 * u comes from one 32-bit draw. Its resolution costs nothing measurable: for n = 2^24 pages and
 * s = 0.99 a step of u moves x by 0.07 pages at the far end of the tail.
 */
class ZipfRanks {
  private readonly n: number;
  private readonly exponent: number;
  private readonly hIntegralX1: number;
  private readonly hIntegralN: number;
  /** Candidates with k - x at most this are accepted without the exact test. */
  private readonly acceptanceWidth: number;

  constructor(n: number, exponent: number) {
    this.n = n;
    this.exponent = exponent;
    this.hIntegralX1 = this.hIntegral(1.5) - 1;
    this.hIntegralN = this.hIntegral(n + 0.5);
    this.acceptanceWidth = 2 - this.hIntegralInverse(this.hIntegral(2.5) - this.h(2));
  }

  sample(random: Random): number {
    // Bounded only to turn a numerical bug into an assertion instead of a hung guest.
    for (let attempt = 0; attempt < 1000; attempt++) {
      const u = this.hIntegralN + random.nextFloat() * (this.hIntegralX1 - this.hIntegralN);
      const x = this.hIntegralInverse(u);
      let k = Math.floor(x + 0.5);
      if (k < 1) k = 1;
      else if (k > this.n) k = this.n;
      if (k - x <= this.acceptanceWidth || u >= this.hIntegral(k + 0.5) - this.h(k)) return k;
    }
    assert.fail(`zipf sampler rejected 1000 times (n ${this.n}, exponent ${this.exponent})`);
  }

  /** H(x) = ((x^(1-s)) - 1) / (1 - s), and log(x) when s = 1, computed without cancellation. */
  private hIntegral(x: number): number {
    const logX = Math.log(x);
    return expm1OverX((1 - this.exponent) * logX) * logX;
  }

  private h(x: number): number {
    return Math.exp(-this.exponent * Math.log(x));
  }

  private hIntegralInverse(x: number): number {
    // t < -1 only through rounding error; log1p would return NaN below it.
    const t = Math.max(-1, x * (1 - this.exponent));
    return Math.exp(log1pOverX(t) * x);
  }
}

/** log(1 + x) / x, with its Taylor series near 0. */
function log1pOverX(x: number): number {
  if (Math.abs(x) > 1e-8) return Math.log1p(x) / x;
  return 1 - x * (0.5 - x * (1 / 3 - 0.25 * x));
}

/** (e^x - 1) / x, with its Taylor series near 0. */
function expm1OverX(x: number): number {
  if (Math.abs(x) > 1e-8) return Math.expm1(x) / x;
  return 1 + x * 0.5 * (1 + (x / 3) * (1 + 0.25 * x));
}

// ---- Scattering ranks over pages ------------------------------------------------------------

/** Odd multiplier (2^32 / golden ratio, made odd) and odd increment of the scatter steps. */
const SCATTER_MULTIPLIER = 0x9e3779b1;
const SCATTER_INCREMENT = 0x7f4a7c15;

interface Scatter {
  pageCount: number;
  mask: number;
  shift: number;
}

function scatterFor(pageCount: number): Scatter {
  const bits = 32 - Math.clz32(pageCount - 1);
  return { pageCount, mask: bits === 0 ? 0 : 2 ** bits - 1, shift: (bits >>> 1) + 1 };
}

function scatterRank(rankIndex: number, scatter: Scatter): number {
  let x = rankIndex;
  do {
    x = (Math.imul(x, SCATTER_MULTIPLIER) + SCATTER_INCREMENT) & scatter.mask;
    x ^= x >>> scatter.shift;
  } while (x >= scatter.pageCount);
  return x;
}

/**
 * The page that holds Zipf rank `rank` (1 = most frequent) in a working set of
 * `workingSetPages` pages.
 *
 * A bijection of [0, n) without a table: with 2^b the smallest power of two >= n, one step
 * `x -> (x * odd + odd) mod 2^b` followed by `x ^= x >> (b/2 + 1)` permutes [0, 2^b) (both
 * parts are invertible), and repeating the step until the value falls below n ("cycle
 * walking") restricts that permutation to [0, n). As 2^b < 2n, fewer than two steps are needed
 * on average. The xorshift mixes high bits into low ones, so consecutive ranks land far apart.
 * Rejected alternative: rank -> page identity, which packs the hot pages into the first few
 * bitmap words, unlike a real heap.
 */
export function zipfPageOfRank(rank: number, workingSetPages: number): number {
  assert.ok(
    Number.isInteger(rank) && rank >= 1 && rank <= workingSetPages,
    `rank ${rank} lies in [1, ${workingSetPages}]`,
  );
  return scatterRank(rank - 1, scatterFor(workingSetPages));
}
