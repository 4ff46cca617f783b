/**
 * The numbers behind every table and chart of the report, from the runs of a results file
 * (pure: no I/O, no clock).
 *
 * Runs are grouped by point: (table, mode, n). For each point we give the median and the spread
 * (min, max, count) of Tmig, setup, downtime, Vmig and Rd over the runs with `ok === true` only;
 * a failed run (mails missing, migration failed) is listed with its cause and never averaged
 * in, so a point whose runs all failed has no figures at all rather than wrong ones. The median
 * (not the mean) because repetitions are few and one slow run should not move the figure.
 *
 * Advance's improvement over another mode at a point is `1 - median(advance Tmig) /
 * median(other Tmig)`, the form of the paper's "up to 50 % lower total migration time"; its
 * maximum over the points of a table is what compares with that claim.
 */
import type { RunRecord } from '../experiments/results.ts';

/** The modes in report order (no XENVMC first, the paper's proposal last). */
export const MODE_ORDER: readonly string[] = ['off', 'xenvmc', 'xenvmc-suspend', 'advance'];

/** The mode whose improvement over the others the report gives (Advance-XENVMC). */
export const PROPOSED_MODE = 'advance';

/** The median and the spread of one figure over the successful runs of a point. */
export interface Spread {
  median: number;
  min: number;
  max: number;
  /** How many runs the figure was taken over. */
  count: number;
}

/** One point of a table in one mode: every repetition's runs together. */
export interface PointSummary {
  table: string;
  mode: string;
  n: number;
  mails: number;
  fileSizeBytes: number;
  runCount: number;
  okCount: number;
  /** Null when no run of the point succeeded. */
  totalMigrationTimeMs: Spread | null;
  /** Connect, authenticate and target reservation before round 1 (reported apart from Tmig). */
  setupTimeMs: Spread | null;
  downtimeMs: Spread | null;
  /** Vmig, pages. */
  pagesSent: Spread | null;
  /** Rd = Vmig / Vmem. */
  overheadRatio: Spread | null;
  /** Mails found in the mailboxes, summed over every run of the point (failed ones too). */
  mailsDelivered: number;
  /** Mails Mclient sent, summed over every run of the point. */
  mailsExpected: number;
}

/** A run that did not succeed, with why. */
export interface FailedRun {
  id: string;
  table: string;
  mode: string;
  n: number;
  repetition: number;
  failure: string;
}

/** Advance's improvement in Tmig over one other mode at one point. */
export interface PointImprovement {
  table: string;
  n: number;
  mails: number;
  otherMode: string;
  advanceTmigMsMedian: number;
  otherTmigMsMedian: number;
  /** 1 - advance / other: 0.5 is "50 % lower"; negative when advance was slower. */
  improvement: number;
}

/** The largest improvement over the points of one table, against one other mode. */
export interface ImprovementMax {
  table: string;
  otherMode: string;
  improvementMax: number;
  /** The point where the maximum was reached. */
  n: number;
  /** How many points had successful runs in both modes. */
  pointCount: number;
}

export interface Summary {
  /** Tables in report order (natural order of their names). */
  tables: string[];
  /** Modes in report order (`MODE_ORDER`, then any others by name). */
  modes: string[];
  /** Sorted by table, n, mode. */
  points: PointSummary[];
  failed: FailedRun[];
  improvements: PointImprovement[];
  improvementMaxima: ImprovementMax[];
}

/** Median, min, max and count of `values`; null when there are none. */
export function spreadOf(values: readonly number[]): Spread | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  const median =
    sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]!, count: sorted.length };
}

/** Natural order of table names: `table2` before `table10`. */
export function compareTables(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/** Report order of modes: the known ones in `MODE_ORDER`, then the rest by name. */
export function compareModes(a: string, b: string): number {
  const rank = (mode: string): number => {
    const index = MODE_ORDER.indexOf(mode);
    return index === -1 ? MODE_ORDER.length : index;
  };
  return rank(a) - rank(b) || a.localeCompare(b);
}

function pointKey(table: string, mode: string, n: number): string {
  return JSON.stringify([table, mode, n]);
}

function metricSpread(
  runs: readonly RunRecord[],
  pick: (run: RunRecord) => number | null | undefined,
): Spread | null {
  const values: number[] = [];
  for (const run of runs) {
    const value = pick(run);
    if (typeof value === 'number' && Number.isFinite(value)) values.push(value);
  }
  return spreadOf(values);
}

function summarizePoint(runs: readonly RunRecord[]): PointSummary {
  const first = runs[0]!;
  const ok = runs.filter((run) => run.ok === true);
  return {
    table: first.table,
    mode: first.mode,
    n: first.n,
    mails: first.mails,
    fileSizeBytes: first.fileSizeBytes,
    runCount: runs.length,
    okCount: ok.length,
    totalMigrationTimeMs: metricSpread(ok, (run) => run.totalMigrationTimeMs),
    setupTimeMs: metricSpread(ok, (run) => run.migration?.setupTimeMs),
    downtimeMs: metricSpread(ok, (run) => run.downtimeMs),
    pagesSent: metricSpread(ok, (run) => run.pagesSent),
    overheadRatio: metricSpread(ok, (run) => run.overheadRatio),
    mailsDelivered: runs.reduce((sum, run) => sum + run.mailsDelivered, 0),
    mailsExpected: runs.reduce((sum, run) => sum + run.mailsExpected, 0),
  };
}

/** Groups runs by (table, mode, n) and summarises each group. */
export function summarizePoints(runs: readonly RunRecord[]): PointSummary[] {
  const groups = new Map<string, RunRecord[]>();
  for (const run of runs) {
    const key = pointKey(run.table, run.mode, run.n);
    const group = groups.get(key);
    if (group) group.push(run);
    else groups.set(key, [run]);
  }
  return [...groups.values()]
    .map(summarizePoint)
    .sort((a, b) => compareTables(a.table, b.table) || a.n - b.n || compareModes(a.mode, b.mode));
}

/** The runs that did not succeed, in report order, each with its cause. */
export function failedRuns(runs: readonly RunRecord[]): FailedRun[] {
  return runs
    .filter((run) => run.ok !== true)
    .map((run) => ({
      id: run.id,
      table: run.table,
      mode: run.mode,
      n: run.n,
      repetition: run.repetition,
      failure: run.failure ?? 'failed (no cause recorded)',
    }))
    .sort(
      (a, b) =>
        compareTables(a.table, b.table) ||
        a.n - b.n ||
        compareModes(a.mode, b.mode) ||
        a.repetition - b.repetition,
    );
}

/** `1 - proposed / other`; the fraction by which `proposed` is lower than `other`. */
export function improvementOf(proposed: number, other: number): number {
  if (!(other > 0)) return Number.NaN;
  return 1 - proposed / other;
}

/** Advance's improvement in median Tmig over every other mode, at every point both have. */
export function improvements(points: readonly PointSummary[]): PointImprovement[] {
  const result: PointImprovement[] = [];
  for (const proposed of points) {
    if (proposed.mode !== PROPOSED_MODE || !proposed.totalMigrationTimeMs) continue;
    const others = points.filter(
      (p) => p.table === proposed.table && p.n === proposed.n && p.mode !== PROPOSED_MODE,
    );
    for (const other of others) {
      const otherTmig = other.totalMigrationTimeMs;
      if (!otherTmig || !(otherTmig.median > 0)) continue;
      result.push({
        table: proposed.table,
        n: proposed.n,
        mails: proposed.mails,
        otherMode: other.mode,
        advanceTmigMsMedian: proposed.totalMigrationTimeMs.median,
        otherTmigMsMedian: otherTmig.median,
        improvement: improvementOf(proposed.totalMigrationTimeMs.median, otherTmig.median),
      });
    }
  }
  return result;
}

/** For each table and other mode, the largest improvement over the points and where it was. */
export function improvementMaxima(list: readonly PointImprovement[]): ImprovementMax[] {
  const best = new Map<string, ImprovementMax>();
  for (const item of list) {
    const key = JSON.stringify([item.table, item.otherMode]);
    const current = best.get(key);
    if (!current) {
      best.set(key, {
        table: item.table,
        otherMode: item.otherMode,
        improvementMax: item.improvement,
        n: item.n,
        pointCount: 1,
      });
      continue;
    }
    current.pointCount += 1;
    if (item.improvement > current.improvementMax) {
      current.improvementMax = item.improvement;
      current.n = item.n;
    }
  }
  return [...best.values()].sort(
    (a, b) => compareTables(a.table, b.table) || compareModes(a.otherMode, b.otherMode),
  );
}

/** Everything the report's tables need, from the runs of one results file. */
export function summarize(runs: readonly RunRecord[]): Summary {
  const points = summarizePoints(runs);
  const list = improvements(points);
  return {
    tables: [...new Set(runs.map((run) => run.table))].sort(compareTables),
    modes: [...new Set(runs.map((run) => run.mode))].sort(compareModes),
    points,
    failed: failedRuns(runs),
    improvements: list,
    improvementMaxima: improvementMaxima(list),
  };
}

/** The point whose per-run detail (volume, rounds, regions, latency) the charts show. */
export interface FocusPoint {
  table: string;
  n: number;
  /** The repetition preferred in each mode (another successful one is used if it failed). */
  repetition: number;
}

/**
 * The largest n of `table1` (or of the first table when there is none), repetition 1, unless
 * `requested` says otherwise. Null when there are no runs.
 */
export function chooseFocusPoint(
  runs: readonly RunRecord[],
  requested: Partial<FocusPoint> = {},
): FocusPoint | null {
  const tables = [...new Set(runs.map((run) => run.table))].sort(compareTables);
  const table = requested.table ?? (tables.includes('table1') ? 'table1' : tables[0]);
  if (table === undefined) return null;
  const inTable = runs.filter((run) => run.table === table);
  if (inTable.length === 0) return null;
  const n = requested.n ?? Math.max(...inTable.map((run) => run.n));
  return { table, n, repetition: requested.repetition ?? 1 };
}

/** The run one mode contributes to the per-run charts, or why there is none. */
export interface FocusRun {
  mode: string;
  run: RunRecord | null;
  /** Set when the run is not the requested repetition, or when there is no run at all. */
  note: string | null;
}

/**
 * For each mode with runs at the focus point: the requested repetition if it succeeded, else
 * the lowest successful repetition (noted), else none (noted with the failure). A failed run's
 * series are never drawn as if they were a result.
 */
export function focusRuns(runs: readonly RunRecord[], focus: FocusPoint): FocusRun[] {
  const atPoint = runs.filter((run) => run.table === focus.table && run.n === focus.n);
  const modes = [...new Set(atPoint.map((run) => run.mode))].sort(compareModes);
  return modes.map((mode) => {
    const candidates = atPoint
      .filter((run) => run.mode === mode)
      .sort((a, b) => a.repetition - b.repetition);
    const requested = candidates.find((run) => run.repetition === focus.repetition);
    if (requested?.ok === true) return { mode, run: requested, note: null };
    const fallback = candidates.find((run) => run.ok === true);
    const why = requested
      ? `repetition ${focus.repetition} failed: ${requested.failure ?? 'no cause recorded'}`
      : `no repetition ${focus.repetition}`;
    if (fallback) {
      return { mode, run: fallback, note: `${mode}: repetition ${fallback.repetition} (${why})` };
    }
    return { mode, run: null, note: `${mode}: no successful run at this point (${why})` };
  });
}

/**
 * When migration traffic ended, ms after the migrate command: the end of the last volume
 * sample with migration bytes in it (what the paper reads off Figure 11). Null without samples.
 */
export function migrationTrafficEndMs(run: RunRecord): number | null {
  let endMs: number | null = null;
  for (const sample of run.volume) {
    if (sample.bytesPerSec.migration > 0) {
      const sampleEndMs = sample.tMs + sample.intervalMs;
      if (endMs === null || sampleEndMs > endMs) endMs = sampleEndMs;
    }
  }
  return endMs;
}
