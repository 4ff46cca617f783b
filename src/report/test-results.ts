/**
 * TEST DATA ONLY: synthetic results files for the report's tests. Nothing here was measured;
 * every figure is a formula of the run's parameters, so tests can predict medians exactly.
 *
 * Tmig of a run = `tmigMsFor(mode, mails, fileSizeBytes) + repetitionOffsetMs(repetition)`:
 * `advance` is the fastest, `off` the slowest, more so as mails grow.
 */
import { RESULTS_SCHEMA, type ResultsFile, type RunRecord } from '../experiments/results.ts';
import type { RegionCounts } from '../memory/layout.ts';
import type { MigrationStats, RoundStats } from '../migration/stats.ts';

/** Test data: ms per mail per MiB of attachment, per mode. */
const MS_PER_MAIL_MIB: Record<string, number> = {
  off: 400,
  xenvmc: 300,
  'xenvmc-suspend': 250,
  advance: 150,
};
const BASE_TMIG_MS = 10_000;
const VMEM_PAGES = 65_536;
const MIB = 1 << 20;

/** Test data: the Tmig (ms) of repetition 1 of a point. */
export function tmigMsFor(mode: string, mails: number, fileSizeBytes: number): number {
  return BASE_TMIG_MS + (MS_PER_MAIL_MIB[mode] ?? 350) * mails * (fileSizeBytes / MIB);
}

/** Test data: repetitions differ by 1 s each (r1 +0, r2 +1000, r3 +2000 ms). */
export function repetitionOffsetMs(repetition: number): number {
  return (repetition - 1) * 1000;
}

function regions(total: number): RegionCounts {
  const kernel = Math.round(total * 0.1);
  const sockbuf = Math.round(total * 0.2);
  const pagecache = Math.round(total * 0.3);
  return { kernel, sockbuf, pagecache, program: total - kernel - sockbuf - pagecache };
}

function roundRows(pagesSent: number, tmigMs: number): RoundStats[] {
  const rows: RoundStats[] = [];
  let remaining = pagesSent;
  let pages = VMEM_PAGES;
  const roundCount = 4;
  for (let round = 1; round <= roundCount; round++) {
    const sent = round === roundCount ? remaining : Math.min(pages, remaining);
    remaining -= sent;
    const dirtied = Math.max(0, Math.floor((remaining * 2) / 3));
    rows.push({
      round,
      phase: round === roundCount ? 'stopCopy' : 'precopy',
      pagesSent: sent,
      zeroPages: 0,
      bytesOnWire: sent * 4096,
      pagesDirtied: dirtied,
      durationMs: tmigMs / roundCount,
      rateBytesPerSec: (sent * 4096) / (tmigMs / roundCount / 1000),
      sentByRegion: regions(sent),
      dirtiedByRegion: regions(dirtied),
      channelPagesSent: 0,
    });
    pages = Math.ceil(remaining / 2);
  }
  return rows;
}

export interface FixtureRunInit {
  table: string;
  mode: string;
  n: number;
  repetition: number;
  fileSizeBytes: number;
  /** Make this run a failure with this cause. */
  failure?: string;
  /** Override the formula's Tmig (ms). */
  tmigMs?: number;
}

/** Test data: one run, every series filled in by formula. */
export function fixtureRun(init: FixtureRunInit): RunRecord {
  const { table, mode, n, repetition, fileSizeBytes } = init;
  const mails = n * n;
  const failed = init.failure !== undefined;
  const tmigMs =
    init.tmigMs ?? tmigMsFor(mode, mails, fileSizeBytes) + repetitionOffsetMs(repetition);
  const setupTimeMs = 500;
  const downtimeMs = 100 + n;
  const pagesSent = Math.round(VMEM_PAGES * (1 + tmigMs / 100_000));
  const rounds = roundRows(pagesSent, tmigMs);
  const migrationStartMs = 2000;
  const endMs = setupTimeMs + tmigMs;
  const volume = [];
  for (let tMs = -2000; tMs < endMs + 3000; tMs += 1000) {
    const migrating = tMs >= 0 && tMs < endMs;
    volume.push({
      tMs,
      intervalMs: 1000,
      bytesPerSec: {
        migration: migrating ? 100e6 : 0,
        intervm: mode === 'off' ? 5e6 : 0,
        external: 0,
        control: 1000,
      },
    });
  }
  const mailLatencies = [];
  for (let mail = 1; mail <= mails; mail++) {
    const startMs = mail * 100;
    const during = startMs >= migrationStartMs && startMs < migrationStartMs + endMs;
    mailLatencies.push({ mail, startMs, latencyMs: during ? 80 : 20, duringMigration: during });
  }
  const migration: MigrationStats = {
    domain: 'vm1',
    sourceHost: 'h1',
    targetHost: 'h2',
    policy: 'paper',
    xenvmcMode: mode,
    stopReason: 'dirty below threshold',
    linkBytesPerSec: 125e6,
    totalMigrationTimeMs: tmigMs,
    setupTimeMs,
    downtimeMs,
    pagesSent,
    vmemPages: VMEM_PAGES,
    overheadRatio: pagesSent / VMEM_PAGES,
    zeroPages: 0,
    bytesOnWire: pagesSent * 4096,
    roundCount: rounds.length,
    rounds,
    sentByRegion: regions(pagesSent),
    migrateChannelPages: false,
    channelPagesSent: 0,
    guestStateBytes: 1024,
    memoryVerified: true,
    startedAt: '2025-01-01T00:00:00.000Z',
  };
  return {
    id: `${table}/${mode}/n${n}/r${repetition}`,
    table,
    mode,
    n,
    mails,
    fileSizeBytes,
    repetition,
    seed: 42 + repetition,
    ok: !failed,
    failure: failed ? init.failure! : null,
    totalMigrationTimeMs: tmigMs,
    downtimeMs,
    pagesSent,
    vmemPages: VMEM_PAGES,
    overheadRatio: pagesSent / VMEM_PAGES,
    rounds: rounds.length,
    roundRows: rounds,
    sentByRegion: regions(pagesSent),
    bytesOnWire: pagesSent * 4096,
    mailsExpected: mails,
    mailsDelivered: failed ? mails - 1 : mails,
    mailsIntact: failed ? mails - 1 : mails,
    mailsDuplicated: 0,
    mailLatencies,
    volume,
    migrationStartMs,
    workloadDurationMs: mails * 100 + 1000,
    channelBytes: mode === 'off' ? 0 : mails * fileSizeBytes,
    netfrontBytes: mode === 'off' ? mails * fileSizeBytes : 0,
    migration,
  };
}

export interface FixtureInit {
  tables?: { table: string; fileSizeBytes: number }[];
  modes?: string[];
  nValues?: number[];
  repetitions?: number;
  /** Run ids (`table1/advance/n4/r1`) to fail, with their causes. */
  failures?: Record<string, string>;
}

/** Test data: a whole results file, every (table, mode, n, repetition) once. */
export function fixtureResults(init: FixtureInit = {}): ResultsFile {
  const tables = init.tables ?? [
    { table: 'table1', fileSizeBytes: MIB },
    { table: 'table2', fileSizeBytes: 3 * MIB },
  ];
  const modes = init.modes ?? ['off', 'xenvmc', 'xenvmc-suspend', 'advance'];
  const nValues = init.nValues ?? [4, 8, 12, 16, 20];
  const repetitions = init.repetitions ?? 1;
  const runs: RunRecord[] = [];
  for (const { table, fileSizeBytes } of tables) {
    for (const n of nValues) {
      for (const mode of modes) {
        for (let repetition = 1; repetition <= repetitions; repetition++) {
          const id = `${table}/${mode}/n${n}/r${repetition}`;
          const failure = init.failures?.[id];
          runs.push(
            fixtureRun({
              table,
              mode,
              n,
              repetition,
              fileSizeBytes,
              ...(failure !== undefined ? { failure } : {}),
            }),
          );
        }
      }
    }
  }
  return {
    schema: RESULTS_SCHEMA,
    scenario: { name: 'fixture', note: 'synthetic test data' },
    scenarioName: 'fixture',
    runner: 'loopback',
    scaled: ['TEST DATA: synthetic, not measured.', 'VM1 memory 256 MiB instead of 1 GiB.'],
    machine: {
      node: 'v20.0.0',
      platform: 'linux x64',
      cpuModel: 'Test CPU, 2 cores',
      cpus: 2,
      memoryBytes: 4 * 2 ** 30,
      commit: '0123456789abcdef0123456789abcdef01234567',
    },
    startedAt: '2025-01-01T00:00:00.000Z',
    finishedAt: '2025-01-01T01:00:00.000Z',
    runs,
  };
}
