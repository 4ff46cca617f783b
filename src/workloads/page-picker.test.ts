/**
 * Goal: each access pattern picks pages inside the working set with the distribution it
 * promises, and a picker's plain-data state replays and resumes the same sequence.
 * Method: exact checks for `sequential`, fast-check properties (fixed seeds) for the bounds and
 * the scatter bijection, and loose statistical bounds (many sigmas wide, fixed seeds, so never
 * flaky) for `hotcold` and `zipf`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../core/errors.ts';
import {
  ACCESS_PATTERNS,
  type AccessPattern,
  createPagePicker,
  nextPage,
  PagePicker,
  type PagePickerParams,
  type PagePickerState,
  zipfPageOfRank,
} from './page-picker.ts';

function take(state: PagePickerState, count: number): number[] {
  const pages: number[] = [];
  for (let i = 0; i < count; i++) pages.push(nextPage(state));
  return pages;
}

/** Zipf probability of each rank 1..n (index 0 unused). */
function zipfPmf(n: number, exponent: number): number[] {
  const weights = [0];
  for (let k = 1; k <= n; k++) weights.push(k ** -exponent);
  const total = weights.reduce((sum, w) => sum + w, 0);
  return weights.map((w) => w / total);
}

/** How many samples landed on each rank (index 0 unused). */
function rankCounts(state: PagePickerState, samples: number): number[] {
  const n = state.params.workingSetPages;
  const rankOfPage = new Map<number, number>();
  for (let rank = 1; rank <= n; rank++) rankOfPage.set(zipfPageOfRank(rank, n), rank);
  const counts = new Array<number>(n + 1).fill(0);
  for (const page of take(state, samples)) counts[rankOfPage.get(page)!]!++;
  return counts;
}

describe('page picker', () => {
  it('sequential returns 0, 1, 2, … and wraps at the end of the working set', () => {
    const state = createPagePicker({ pattern: 'sequential', workingSetPages: 5 }, 7);
    assert.deepEqual(take(state, 12), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]);
    assert.deepEqual(
      take(createPagePicker({ pattern: 'sequential', workingSetPages: 1 }, 7), 3),
      [0, 0, 0],
    );
  });

  it('every pattern stays within the working set', () => {
    const fraction = fc.double({ min: 0, max: 1, minExcluded: true, noNaN: true });
    const params = fc.record({
      pattern: fc.constantFrom(...ACCESS_PATTERNS),
      workingSetPages: fc.oneof(
        fc.integer({ min: 1, max: 64 }),
        fc.integer({ min: 1, max: 1 << 24 }),
      ),
      hotFraction: fraction,
      hotProbability: fraction,
      zipfExponent: fc.double({ min: 0.01, max: 8, noNaN: true }),
    });
    fc.assert(
      fc.property(params, fc.nat({ max: 0xffff_ffff }), (p, seed) => {
        const state = createPagePicker(p, seed);
        for (const page of take(state, 200)) {
          assert.ok(Number.isInteger(page) && page >= 0 && page < p.workingSetPages, `${page}`);
        }
      }),
      { seed: 20240601, numRuns: 300 },
    );
  });

  it('uniform spreads writes evenly over the working set', () => {
    const state = createPagePicker({ pattern: 'uniform', workingSetPages: 10 }, 3);
    const counts = new Array<number>(10).fill(0);
    for (const page of take(state, 20_000)) counts[page]!++;
    // Expected 2000 each, sigma about 42: 1800..2200 is a wide, never-flaky bound.
    for (const count of counts) assert.ok(count > 1800 && count < 2200, `${counts}`);
  });

  it('hotcold puts about hotProbability of the writes in the hot set', () => {
    for (const [hotFraction, hotProbability] of [
      [undefined, undefined],
      [0.25, 0.5],
    ] as const) {
      const state = createPagePicker(
        { pattern: 'hotcold', workingSetPages: 1000, hotFraction, hotProbability },
        11,
      );
      const hotPages = Math.round((hotFraction ?? 0.1) * 1000);
      const pages = take(state, 20_000);
      const hotShare = pages.filter((page) => page < hotPages).length / pages.length;
      // sigma <= 0.0036 for 20k samples; 0.02 is more than five sigmas.
      assert.ok(Math.abs(hotShare - (hotProbability ?? 0.9)) < 0.02, `hot share ${hotShare}`);
      // The cold writes reach most cold pages (2000 draws over 900 pages cover about 89%).
      const coldPages = new Set(pages.filter((page) => page >= hotPages));
      assert.ok(coldPages.size > 0.8 * (1000 - hotPages), `${coldPages.size} cold pages`);
    }
  });

  it('hotcold with a hot fraction of 1 is uniform over the whole set', () => {
    const state = createPagePicker(
      { pattern: 'hotcold', workingSetPages: 4, hotFraction: 1, hotProbability: 0.5 },
      1,
    );
    assert.deepEqual(new Set(take(state, 200)), new Set([0, 1, 2, 3]));
  });

  it('zipf makes rank 1 the most frequent and frequency fall with rank', () => {
    const counts = rankCounts(
      createPagePicker({ pattern: 'zipf', workingSetPages: 1000 }, 5),
      20_000,
    );
    const pmf = zipfPmf(1000, 0.99);
    assert.equal(Math.max(...counts), counts[1]);
    // Ranks 1, 2, 4, …, 64: expected counts 2570 down to 45, each about twice the next.
    for (let rank = 1; rank < 64; rank *= 2) {
      assert.ok(counts[rank]! > counts[rank * 2]!, `rank ${rank}: ${counts[rank]}`);
    }
    const expected = pmf[1]! * 20_000;
    assert.ok(Math.abs(counts[1]! - expected) < 0.1 * expected, `rank 1: ${counts[1]}`);
  });

  it('zipf matches the exact distribution for several exponents', () => {
    for (const exponent of [0.5, 0.99, 1, 1.5, 3]) {
      const samples = 50_000;
      const counts = rankCounts(
        createPagePicker({ pattern: 'zipf', workingSetPages: 50, zipfExponent: exponent }, 9),
        samples,
      );
      const pmf = zipfPmf(50, exponent);
      let distance = 0;
      for (let rank = 1; rank <= 50; rank++)
        distance += Math.abs(counts[rank]! / samples - pmf[rank]!);
      // Total variation distance; sampling noise alone gives about 0.01 here.
      assert.ok(distance / 2 < 0.03, `exponent ${exponent}: distance ${distance / 2}`);
    }
  });

  it('zipfPageOfRank is a bijection of the working set', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 5000 }), (n) => {
        const pages = new Set<number>();
        for (let rank = 1; rank <= n; rank++) {
          const page = zipfPageOfRank(rank, n);
          assert.ok(page >= 0 && page < n);
          pages.add(page);
        }
        assert.equal(pages.size, n);
      }),
      { seed: 77, numRuns: 60 },
    );
  });

  it('the same seed gives the same sequence and another seed a different one', () => {
    for (const pattern of ['uniform', 'hotcold', 'zipf'] as const) {
      const params: PagePickerParams = { pattern, workingSetPages: 100_000 };
      const first = take(createPagePicker(params, 42), 500);
      assert.deepEqual(take(createPagePicker(params, 42), 500), first);
      assert.notDeepEqual(take(createPagePicker(params, 43), 500), first);
    }
  });

  it('a structured clone of the state taken mid-run continues the identical sequence', () => {
    for (const pattern of ACCESS_PATTERNS) {
      const params: PagePickerParams = { pattern, workingSetPages: 777 };
      const unbroken = take(createPagePicker(params, 2024), 1000);
      const state = createPagePicker(params, 2024);
      const firstHalf = take(state, 600);
      const clone: PagePickerState = structuredClone(state);
      assert.deepEqual([...firstHalf, ...take(clone, 400)], unbroken, pattern);

      // The batch interface: a PagePicker saved once, then rebuilt from a clone.
      const picker = new PagePicker(createPagePicker(params, 2024));
      const batch: number[] = [];
      for (let i = 0; i < 300; i++) batch.push(picker.next());
      const resumed = new PagePicker(structuredClone(picker.save()));
      for (let i = 0; i < 700; i++) batch.push(resumed.next());
      assert.deepEqual(batch, unbroken, pattern);
    }
  });

  it('nextPage follows a state whose PRNG words were replaced by a saved copy', () => {
    const state = createPagePicker({ pattern: 'uniform', workingSetPages: 1000 }, 8);
    const saved = structuredClone(state);
    const first = take(state, 50);
    state.random = saved.random;
    assert.deepEqual(take(state, 50), first);
  });

  it('rejects bad parameters with an InputError that names them', () => {
    const cases: Array<[Partial<PagePickerParams>, RegExp]> = [
      [{ workingSetPages: 0 }, /working set .* \[1, \d+\]; got 0/],
      [{ workingSetPages: 2.5 }, /working set .*got 2\.5/],
      [{ workingSetPages: 2 ** 25 }, /working set .*got 33554432/],
      [{ pattern: 'random' as AccessPattern }, /access pattern must be one of .*got random/],
      [{ hotFraction: 0 }, /hotFraction must be a number in \(0, 1\]; got 0/],
      [{ hotFraction: 1.5 }, /hotFraction .*got 1\.5/],
      [{ hotProbability: Number.NaN }, /hotProbability .*got NaN/],
      [{ zipfExponent: 0 }, /zipfExponent must be a finite number > 0; got 0/],
      [{ zipfExponent: Number.POSITIVE_INFINITY }, /zipfExponent .*got Infinity/],
    ];
    for (const [override, message] of cases) {
      const params = { pattern: 'zipf', workingSetPages: 10, ...override } as PagePickerParams;
      assert.throws(
        () => createPagePicker(params, 1),
        (error: unknown) => {
          assert.ok(error instanceof InputError);
          assert.match(error.message, message);
          return true;
        },
      );
    }
    assert.throws(
      () => createPagePicker({ pattern: 'uniform', workingSetPages: 1 }, -1),
      /seed must be an integer in \[0, 2\^32 - 1\]; got -1/,
    );
  });
});
