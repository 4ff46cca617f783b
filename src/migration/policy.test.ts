/**
 * Goal: each stop policy stops exactly where its engine's rule says, at the boundaries
 * (63 vs 64 pages for 256 KiB, round 29, 3x memory; 49 vs 50 pages, round 5; bandwidth x
 * 300 ms), and the QEMU policy aborts at its cap. Method: hand-picked boundary inputs, plus a
 * fast-check property that decisions are pure and follow the rule on random inputs.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../core/errors.ts';
import {
  type PolicyInput,
  paperPolicy,
  policyByName,
  qemuPolicy,
  type StopPolicy,
  xenPolicy,
} from './policy.ts';

/** A 1 GiB domain (262144 pages), round 3, nothing near any limit unless overridden. */
function input(overrides: Partial<PolicyInput> = {}): PolicyInput {
  return {
    round: 3,
    pagesSentTotal: 300_000,
    dirtyPageCount: 10_000,
    vmemPages: 262_144,
    lastRoundPagesSent: 20_000,
    lastRoundDurationMs: 1000,
    ...overrides,
  };
}

function kind(policy: StopPolicy, overrides: Partial<PolicyInput>): string {
  return policy.decide(input(overrides)).kind;
}

describe('paperPolicy', () => {
  const policy = paperPolicy();

  it('stops when a round dirtied 63 pages (< 256 KiB) and continues at 64', () => {
    assert.deepEqual(policy.decide(input({ dirtyPageCount: 63 })), {
      kind: 'stopAndCopy',
      reason: 'round 3 dirtied 63 pages (252 KiB) < 256 KiB',
    });
    assert.equal(kind(policy, { dirtyPageCount: 64 }), 'continue');
    assert.equal(kind(policy, { dirtyPageCount: 0 }), 'stopAndCopy');
  });

  it('gives the reason of the example when round 3 dirtied 41 pages', () => {
    const decision = policy.decide(input({ dirtyPageCount: 41 }));
    assert.ok(decision.kind === 'stopAndCopy');
    assert.equal(decision.reason, 'round 3 dirtied 41 pages (164 KiB) < 256 KiB');
  });

  it('stops at round 29 and continues at round 28', () => {
    assert.equal(kind(policy, { round: 28 }), 'continue');
    const decision = policy.decide(input({ round: 29 }));
    assert.ok(decision.kind === 'stopAndCopy');
    assert.match(decision.reason, /round 29 reached the limit of 29 rounds/);
  });

  it('stops when sending the dirty pages would exceed 3x memory, not when it reaches it', () => {
    const vmemPages = 262_144;
    const atLimit = { pagesSentTotal: 3 * vmemPages - 10_000, dirtyPageCount: 10_000 };
    assert.equal(kind(policy, atLimit), 'continue');
    const decision = policy.decide(
      input({ ...atLimit, pagesSentTotal: atLimit.pagesSentTotal + 1 }),
    );
    assert.ok(decision.kind === 'stopAndCopy');
    assert.match(decision.reason, /exceed 3 x the domain's 262144 pages \(786432\)/);
  });

  it('follows its options when given', () => {
    const custom = paperPolicy({ maxRounds: 4, dirtyThresholdBytes: 4096, maxSentFactor: 2 });
    assert.equal(kind(custom, { dirtyPageCount: 1 }), 'continue');
    assert.equal(kind(custom, { dirtyPageCount: 0 }), 'stopAndCopy');
    assert.equal(kind(custom, { round: 4 }), 'stopAndCopy');
    assert.equal(kind(custom, { pagesSentTotal: 2 * 262_144 }), 'stopAndCopy');
  });
});

describe('xenPolicy', () => {
  const policy = xenPolicy();

  it('stops when a round dirtied 49 pages and continues at 50', () => {
    const decision = policy.decide(input({ dirtyPageCount: 49 }));
    assert.ok(decision.kind === 'stopAndCopy');
    assert.equal(decision.reason, 'round 3 dirtied 49 pages (196 KiB), fewer than 50 pages');
    assert.equal(kind(policy, { dirtyPageCount: 50 }), 'continue');
  });

  it('stops after round 5 and continues after round 4', () => {
    assert.equal(kind(policy, { round: 4 }), 'continue');
    assert.equal(kind(policy, { round: 5 }), 'stopAndCopy');
  });

  it('never stops for data sent, unlike the legacy policy', () => {
    assert.equal(kind(policy, { round: 2, pagesSentTotal: 10 * 262_144 }), 'continue');
  });
});

describe('qemuPolicy', () => {
  const policy = qemuPolicy();
  // 25,600 pages in 1000 ms = 104,857.6 bytes/ms; x 300 ms = 31,457,280 bytes = 7,680 pages.
  const link = { lastRoundPagesSent: 25_600, lastRoundDurationMs: 1000 };

  it('switches over when the dirty pages fit in bandwidth x 300 ms, and not one page more', () => {
    const decision = policy.decide(input({ ...link, dirtyPageCount: 7680 }));
    assert.ok(decision.kind === 'stopAndCopy');
    assert.match(decision.reason, /7680 pages \(30\.0 MiB\), which fit in 300 ms/);
    assert.match(decision.reason, /104\.9 MB\/s/);
    assert.equal(kind(policy, { ...link, dirtyPageCount: 7681 }), 'continue');
  });

  it('aborts at round 1000 when it has not converged, saying the guest outruns the link', () => {
    assert.equal(kind(policy, { ...link, dirtyPageCount: 8000, round: 999 }), 'continue');
    const decision = policy.decide(input({ ...link, dirtyPageCount: 8000, round: 1000 }));
    assert.ok(decision.kind === 'abort');
    assert.match(decision.reason, /faster than the link/);
  });

  it('switches over at the cap round when the pages fit', () => {
    assert.equal(kind(policy, { ...link, dirtyPageCount: 10, round: 1000 }), 'stopAndCopy');
  });

  it('treats a zero-length round as an infinitely fast link and an idle one as a dead link', () => {
    assert.equal(kind(policy, { lastRoundDurationMs: 0, dirtyPageCount: 1e6 }), 'stopAndCopy');
    const idle = { lastRoundPagesSent: 0, lastRoundDurationMs: 0 };
    assert.equal(kind(policy, { ...idle, dirtyPageCount: 1 }), 'continue');
    assert.equal(kind(policy, { ...idle, dirtyPageCount: 0 }), 'stopAndCopy');
  });

  it('follows its downtime limit', () => {
    const strict = qemuPolicy({ downtimeLimitMs: 30, maxRounds: 10 });
    assert.equal(kind(strict, { ...link, dirtyPageCount: 768 }), 'stopAndCopy');
    assert.equal(kind(strict, { ...link, dirtyPageCount: 769 }), 'continue');
    assert.equal(kind(strict, { ...link, dirtyPageCount: 769, round: 10 }), 'abort');
  });
});

describe('policies', () => {
  const arbitraryInput = fc.record({
    round: fc.integer({ min: 1, max: 2000 }),
    pagesSentTotal: fc.nat({ max: 1e7 }),
    dirtyPageCount: fc.nat({ max: 1e6 }),
    vmemPages: fc.integer({ min: 1, max: 1 << 24 }),
    lastRoundPagesSent: fc.nat({ max: 1e6 }),
    lastRoundDurationMs: fc.double({ min: 0, max: 1e5, noNaN: true }),
  });

  it('decide the same way twice and follow their rule when inputs are random', () => {
    const paper = paperPolicy();
    const xen = xenPolicy();
    const qemu = qemuPolicy();
    fc.assert(
      fc.property(arbitraryInput, (x) => {
        for (const policy of [paper, xen, qemu]) {
          assert.deepEqual(policy.decide(x), policy.decide({ ...x }));
        }
        const paperStops =
          x.dirtyPageCount * 4096 < 256 * 1024 ||
          x.round >= 29 ||
          x.pagesSentTotal + x.dirtyPageCount > 3 * x.vmemPages;
        assert.equal(paper.decide(x).kind, paperStops ? 'stopAndCopy' : 'continue');
        const xenStops = x.dirtyPageCount < 50 || x.round >= 5;
        assert.equal(xen.decide(x).kind, xenStops ? 'stopAndCopy' : 'continue');
        assert.notEqual(qemu.decide(x).kind, x.round < 1000 ? 'abort' : 'continue');
      }),
      { seed: 1337, numRuns: 500 },
    );
  });

  it('policyByName builds each policy with its options when the name is known', () => {
    assert.equal(policyByName('paper').name, 'paper');
    assert.equal(
      policyByName('xen', { maxRounds: 2 }).decide(input({ round: 2 })).kind,
      'stopAndCopy',
    );
    assert.equal(policyByName('qemu', { downtimeLimitMs: 1 }).name, 'qemu');
    for (const name of ['paper', 'xen', 'qemu']) {
      assert.ok(policyByName(name).description.length > 20);
    }
  });

  it('policyByName throws InputError listing the valid names when the name is unknown', () => {
    assert.throws(
      () => policyByName('postcopy'),
      (error) => error instanceof InputError && /'postcopy'.*paper, xen, qemu/.test(error.message),
    );
  });

  it('constructors throw InputError when options are out of range', () => {
    assert.throws(() => paperPolicy({ maxRounds: 0 }), InputError);
    assert.throws(() => xenPolicy({ dirtyThresholdPages: 1.5 }), InputError);
    assert.throws(() => qemuPolicy({ downtimeLimitMs: -1 }), InputError);
    assert.throws(() => qemuPolicy({ downtimeLimitMs: Number.NaN }), InputError);
  });
});
