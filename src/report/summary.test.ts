/**
 * Goal: the report's figures are right: medians and spreads over successful runs only, failed
 * runs listed and never averaged in, advance's improvement as 1 - advance/other.
 * Method: synthetic results (test data, see `test-results.ts`) whose values are formulas.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  chooseFocusPoint,
  focusRuns,
  improvementOf,
  migrationTrafficEndMs,
  spreadOf,
  summarize,
} from './summary.ts';
import { fixtureResults, fixtureRun, tmigMsFor } from './test-results.ts';

const MIB = 1 << 20;

describe('spreadOf', () => {
  it('gives the middle value for an odd count and the mean of the two middles for an even one', () => {
    assert.deepEqual(spreadOf([3, 1, 2]), { median: 2, min: 1, max: 3, count: 3 }, 'odd count');
    assert.deepEqual(spreadOf([4, 1, 3, 2]), { median: 2.5, min: 1, max: 4, count: 4 }, 'even');
    assert.equal(spreadOf([]), null, 'no values, no spread');
  });
});

describe('summarize', () => {
  it('takes medians over successful runs only and lists the failed ones with their cause', () => {
    const results = fixtureResults({
      tables: [{ table: 'table1', fileSizeBytes: MIB }],
      nValues: [4],
      repetitions: 3,
      failures: { 'table1/advance/n4/r3': 'mails missing: 15 of 16 delivered' },
    });
    // The failed run is made very slow, so averaging it in would show.
    const failed = results.runs.find((run) => run.id === 'table1/advance/n4/r3');
    assert.ok(failed, 'the fixture has the failed run');
    failed.totalMigrationTimeMs = 1e9;
    const summary = summarize(results.runs);
    const advance = summary.points.find((p) => p.mode === 'advance');
    assert.ok(advance, 'advance has a point');
    const base = tmigMsFor('advance', 16, MIB);
    // Successful: r1 = base, r2 = base + 1000; median of two = base + 500.
    assert.deepEqual(
      advance.totalMigrationTimeMs,
      { median: base + 500, min: base, max: base + 1000, count: 2 },
      'Tmig over r1 and r2 only',
    );
    assert.equal(advance.okCount, 2, 'two runs ok');
    assert.equal(advance.runCount, 3, 'three runs in all');
    assert.equal(advance.mailsExpected, 48, 'mails expected summed over all runs');
    assert.equal(advance.mailsDelivered, 47, 'the failed run lost one mail');
    assert.deepEqual(
      summary.failed.map((f) => [f.id, f.failure]),
      [['table1/advance/n4/r3', 'mails missing: 15 of 16 delivered']],
      'the failed run is listed with its cause',
    );
    const xenvmc = summary.points.find((p) => p.mode === 'xenvmc');
    assert.equal(xenvmc?.totalMigrationTimeMs?.median, tmigMsFor('xenvmc', 16, MIB) + 1000, 'r2');
  });

  it('orders tables naturally, points by n, and modes off, xenvmc, xenvmc-suspend, advance', () => {
    const results = fixtureResults({
      tables: [
        { table: 'table10', fileSizeBytes: MIB },
        { table: 'table2', fileSizeBytes: MIB },
      ],
      modes: ['advance', 'zeta', 'off', 'xenvmc-suspend', 'xenvmc'],
      nValues: [12, 4],
    });
    const summary = summarize(results.runs);
    assert.deepEqual(summary.tables, ['table2', 'table10'], 'natural table order');
    assert.deepEqual(
      summary.modes,
      ['off', 'xenvmc', 'xenvmc-suspend', 'advance', 'zeta'],
      'known modes first, then others',
    );
    assert.deepEqual(
      summary.points.slice(0, 5).map((p) => `${p.table} ${p.n} ${p.mode}`),
      [
        'table2 4 off',
        'table2 4 xenvmc',
        'table2 4 xenvmc-suspend',
        'table2 4 advance',
        'table2 4 zeta',
      ],
      'first point in mode order',
    );
  });

  it('computes the improvement of advance over every other mode and its maximum per table', () => {
    const results = fixtureResults({ nValues: [4, 20] });
    const summary = summarize(results.runs);
    const at20 = summary.improvements.find(
      (i) => i.table === 'table1' && i.n === 20 && i.otherMode === 'xenvmc',
    );
    assert.ok(at20, 'improvement over xenvmc at n = 20');
    const advance = tmigMsFor('advance', 400, MIB);
    const xenvmc = tmigMsFor('xenvmc', 400, MIB);
    assert.equal(at20.improvement, 1 - advance / xenvmc, 'improvement = 1 - advance/other');
    assert.equal(summary.improvements.length, 2 * 2 * 3, 'tables x points x other modes');
    const max = summary.improvementMaxima.find(
      (m) => m.table === 'table1' && m.otherMode === 'xenvmc',
    );
    assert.equal(max?.n, 20, 'the fixture improves more with more mails');
    assert.equal(max?.improvementMax, at20.improvement, 'the maximum is the n = 20 value');
    assert.equal(max?.pointCount, 2, 'over two points');
  });

  it('leaves out a point whose runs all failed from medians and improvements', () => {
    const results = fixtureResults({
      tables: [{ table: 'table1', fileSizeBytes: MIB }],
      nValues: [4],
      modes: ['xenvmc', 'advance'],
      failures: { 'table1/xenvmc/n4/r1': 'migration failed: MIGRATION_STALLED' },
    });
    const summary = summarize(results.runs);
    const xenvmc = summary.points.find((p) => p.mode === 'xenvmc');
    assert.equal(xenvmc?.totalMigrationTimeMs, null, 'no Tmig from a failed run');
    assert.equal(xenvmc?.pagesSent, null, 'no Vmig from a failed run');
    assert.equal(summary.improvements.length, 0, 'no improvement against a failed point');
  });

  it('gives NaN, not a division by zero, for an improvement over a zero time', () => {
    assert.ok(Number.isNaN(improvementOf(1, 0)), 'other = 0');
    assert.equal(improvementOf(50, 100), 0.5, '50 % lower');
    assert.equal(improvementOf(150, 100), -0.5, 'slower is negative');
  });
});

describe('focus point', () => {
  it('defaults to the largest n of table1, repetition 1', () => {
    const results = fixtureResults({ nValues: [4, 8] });
    assert.deepEqual(
      chooseFocusPoint(results.runs),
      { table: 'table1', n: 8, repetition: 1 },
      'largest n of table1',
    );
    assert.deepEqual(
      chooseFocusPoint(results.runs, { table: 'table2', repetition: 2 }),
      { table: 'table2', n: 8, repetition: 2 },
      'as requested',
    );
    assert.equal(chooseFocusPoint([]), null, 'no runs, no point');
  });

  it('uses another successful repetition when the requested one failed, and says so', () => {
    const results = fixtureResults({
      tables: [{ table: 'table1', fileSizeBytes: MIB }],
      nValues: [4],
      modes: ['xenvmc', 'advance'],
      repetitions: 2,
      failures: {
        'table1/advance/n4/r1': 'mails missing',
        'table1/xenvmc/n4/r1': 'migration failed',
        'table1/xenvmc/n4/r2': 'migration failed again',
      },
    });
    const runs = focusRuns(results.runs, { table: 'table1', n: 4, repetition: 1 });
    const advance = runs.find((r) => r.mode === 'advance');
    assert.equal(advance?.run?.repetition, 2, 'advance falls back to repetition 2');
    assert.match(advance?.note ?? '', /repetition 1 failed: mails missing/, 'and says why');
    const xenvmc = runs.find((r) => r.mode === 'xenvmc');
    assert.equal(xenvmc?.run, null, 'no successful xenvmc run');
    assert.match(xenvmc?.note ?? '', /no successful run/, 'and says so');
  });

  it('finds when migration traffic ended from the volume samples', () => {
    const run = fixtureRun({
      table: 'table1',
      mode: 'advance',
      n: 4,
      repetition: 1,
      fileSizeBytes: MIB,
      tmigMs: 9_000,
    });
    // Setup 500 + Tmig 9000 = 9500 ms: the sample starting at 9000 ms is the last with traffic.
    assert.equal(migrationTrafficEndMs(run), 10_000, 'end of the 9000-10000 ms interval');
    assert.equal(migrationTrafficEndMs({ ...run, volume: [] }), null, 'no samples');
  });
});
