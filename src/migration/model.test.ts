/**
 * Goal: `liuModel` computes Liu et al.'s closed forms. Method: the degenerate cases (L = 0,
 * L = 1), a case computed by hand, and a fast-check property that Tmig and Vmig equal the sums
 * of the per-round rows.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../core/errors.ts';
import { liuModel } from './model.ts';

function close(actual: number, expected: number, relative = 1e-9): void {
  assert.ok(
    Math.abs(actual - expected) <= relative * Math.abs(expected),
    `${actual} is not within ${relative} of ${expected}`,
  );
}

describe('liuModel', () => {
  it('gives Vmem / R when the guest dirties nothing (L = 0)', () => {
    const result = liuModel({
      vmemBytes: 2 ** 30,
      linkBytesPerSec: 125e6,
      dirtyBytesPerSec: 0,
      rounds: 29,
    });
    assert.equal(result.lambda, 0);
    close(result.tmigMs, (2 ** 30 / 125e6) * 1000);
    assert.equal(result.vmigBytes, 2 ** 30);
    assert.equal(result.perRound.length, 30);
    assert.equal(result.perRound[1]!.bytes, 0);
  });

  it('matches a hand-computed case when L = 0.5 and n = 3', () => {
    // 1 GB over 100 MB/s is 10 s; the rounds send 1, 0.5, 0.25, 0.125 of it: 1.875 x 10 s.
    const result = liuModel({
      vmemBytes: 1e9,
      linkBytesPerSec: 1e8,
      dirtyBytesPerSec: 5e7,
      rounds: 3,
    });
    assert.equal(result.lambda, 0.5);
    close(result.tmigMs, 18_750);
    close(result.vmigBytes, 1.875e9);
    assert.deepEqual(result.perRound, [
      { round: 0, bytes: 1e9, ms: 10_000 },
      { round: 1, bytes: 5e8, ms: 5000 },
      { round: 2, bytes: 2.5e8, ms: 2500 },
      { round: 3, bytes: 1.25e8, ms: 1250 },
    ]);
  });

  it('gives (n + 1) x Vmem / R when the guest dirties as fast as the link (L = 1)', () => {
    const input = { vmemBytes: 4e8, linkBytesPerSec: 1e8, dirtyBytesPerSec: 1e8, rounds: 4 };
    const result = liuModel(input);
    assert.equal(result.lambda, 1);
    close(result.tmigMs, 5 * 4000);
    close(result.vmigBytes, 5 * 4e8);
    const near = liuModel({ ...input, dirtyBytesPerSec: 1e8 * (1 + 1e-9) });
    close(near.tmigMs, 5 * 4000, 1e-7);
  });

  it('grows geometrically when the guest outruns the link (L > 1)', () => {
    const result = liuModel({
      vmemBytes: 1e6,
      linkBytesPerSec: 1e6,
      dirtyBytesPerSec: 2e6,
      rounds: 2,
    });
    close(result.vmigBytes, 7e6);
    close(result.tmigMs, 7000);
  });

  it('sums its per-round rows when inputs are random', () => {
    fc.assert(
      fc.property(
        fc.double({ min: 1e3, max: 1e11, noNaN: true }),
        fc.double({ min: 1e3, max: 1e10, noNaN: true }),
        fc.double({ min: 0, max: 2, noNaN: true }),
        fc.integer({ min: 0, max: 60 }),
        (vmemBytes, linkBytesPerSec, lambda, rounds) => {
          const result = liuModel({
            vmemBytes,
            linkBytesPerSec,
            dirtyBytesPerSec: lambda * linkBytesPerSec,
            rounds,
          });
          const bytes = result.perRound.reduce((sum, row) => sum + row.bytes, 0);
          const ms = result.perRound.reduce((sum, row) => sum + row.ms, 0);
          close(result.vmigBytes, bytes, 1e-6);
          close(result.tmigMs, ms, 1e-6);
        },
      ),
      { seed: 2011, numRuns: 300 },
    );
  });

  it('throws InputError when sizes, rates or rounds are out of range', () => {
    const good = { vmemBytes: 1, linkBytesPerSec: 1, dirtyBytesPerSec: 0, rounds: 0 };
    assert.throws(() => liuModel({ ...good, vmemBytes: 0 }), InputError);
    assert.throws(() => liuModel({ ...good, linkBytesPerSec: 0 }), InputError);
    assert.throws(() => liuModel({ ...good, dirtyBytesPerSec: -1 }), InputError);
    assert.throws(() => liuModel({ ...good, rounds: 1.5 }), InputError);
    assert.throws(() => liuModel({ ...good, rounds: -1 }), InputError);
  });
});
