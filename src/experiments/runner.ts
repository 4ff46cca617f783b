/**
 * The experiment runner: brings up the hosts for each mode, runs every point of the scenario
 * (`mail-run.ts`), writes `results.json` after every run (an interrupted experiment keeps what
 * it measured), and renders the report at the end. Hosts come up one of three ways
 * (`testbed.ts`): processes on loopback, processes in network namespaces joined by a real
 * shaped veth link, or hosts already running elsewhere.
 *
 * A run that fails (migration failed, a mail missing, damaged or stored twice) is recorded with
 * its cause and the experiment goes on; reports never average it in.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeError } from '../core/errors.ts';
import { formatBytes } from '../core/units.ts';
import type { MigrationProgress } from '../migration/stats.ts';
import { runMailRun } from './mail-run.ts';
import { type MachineInfo, RESULTS_SCHEMA, type ResultsFile, type RunRecord } from './results.ts';
import { domainWithRole, planRuns, type RunPoint, type Scenario } from './scenario.ts';
import { startTestbed, type TestbedKind } from './testbed.ts';

export interface ExperimentOptions {
  scenario: Scenario;
  testbed: TestbedKind;
  /** Output directory (created). */
  outDir: string;
  /** Progress of the whole experiment and of the run in flight. */
  onProgress?: (event: ExperimentProgress) => void;
  /** Host log lines (for `--verbose`). */
  onHostLog?: (host: string, line: string) => void;
}

export type ExperimentProgress =
  | { type: 'testbed'; mode: string; message: string }
  | { type: 'run-start'; index: number; total: number; run: RunPoint }
  | { type: 'mails'; answered: number; expected: number }
  | { type: 'migration'; progress: MigrationProgress }
  | { type: 'run-end'; index: number; total: number; record: RunRecord };

const REPO_DIR = fileURLToPath(new URL('../..', import.meta.url));

export function machineInfo(): MachineInfo {
  let commit: string | null = null;
  try {
    commit = execFileSync('git', ['rev-parse', 'HEAD'], {
      cwd: REPO_DIR,
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .toString()
      .trim();
  } catch {
    commit = null;
  }
  return {
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    cpus: os.cpus().length,
    memoryBytes: os.totalmem(),
    commit,
  };
}

/** What every output must say about how this testbed differs from the paper's. */
export function scaledLabels(scenario: Scenario, testbed: TestbedKind): string[] {
  const server = domainWithRole(scenario, 'mail-server');
  const labels = [
    testbed === 'loopback'
      ? `Hosts are processes on one machine; the ${scenario.link.bandwidth} link between them is TCP on loopback shaped in-process by a token bucket (the paper: two PCs on a 1 Gbit/s network).`
      : testbed === 'netns'
        ? `Hosts are processes in network namespaces of one machine, joined by a veth link shaped by tc tbf to ${scenario.link.bandwidth} (the paper: two PCs on a 1 Gbit/s network).`
        : 'Hosts are the remote xenvmc host daemons the scenario lists.',
    'Guests are JavaScript programs on a model guest kernel (worker threads with real paged memory and log-dirty tracking), not Linux VMs; the mail server and Mclient speak real SMTP.',
    `VM1 has ${formatBytes(server.memory)} of memory (the paper does not state VM1's size; its hosts had 4 GB).`,
    ...scenario.scaled,
  ];
  return labels;
}

/** Runs the whole experiment; returns the results (also written to `outDir`). */
export async function runExperiment(options: ExperimentOptions): Promise<ResultsFile> {
  const { scenario } = options;
  mkdirSync(options.outDir, { recursive: true });
  const runs = planRuns(scenario);
  const results: ResultsFile = {
    schema: RESULTS_SCHEMA,
    scenario,
    scenarioName: scenario.name,
    runner: options.testbed,
    scaled: scaledLabels(scenario, options.testbed),
    machine: machineInfo(),
    startedAt: new Date().toISOString(),
    finishedAt: '',
    runs: [],
  };
  const save = (): void => {
    results.finishedAt = new Date().toISOString();
    writeFileSync(
      path.join(options.outDir, 'results.json'),
      `${JSON.stringify(results, null, 2)}\n`,
    );
  };
  save();
  const progress = options.onProgress ?? (() => {});
  const server = domainWithRole(scenario, 'mail-server');
  const client = domainWithRole(scenario, 'mclient');
  let index = 0;
  for (const mode of scenario.modes) {
    const modeRuns = runs.filter((run) => run.mode === mode);
    progress({
      type: 'testbed',
      mode,
      message: `starting ${options.testbed} hosts in mode ${mode}`,
    });
    const testbed = await startTestbed({
      kind: options.testbed,
      scenario,
      mode,
      storageDir: scenario.storage ?? path.join(options.outDir, 'storage'),
      onLog: options.onHostLog,
    });
    try {
      for (const run of modeRuns) {
        index++;
        progress({ type: 'run-start', index, total: runs.length, run });
        let record: RunRecord;
        try {
          const result = await runMailRun({
            server: { ...server, memoryBytes: server.memory },
            client: { ...client, memoryBytes: client.memory },
            from: testbed.host(scenario.migrate.from),
            to: testbed.host(scenario.migrate.to),
            storageDir: testbed.storageDir,
            n: run.n,
            fileSizeBytes: run.fileSizeBytes,
            seed: run.seed,
            pacingMs: scenario.mclient.pacingMs,
            warmupMs: scenario.migrate.warmupMs,
            policy: scenario.policy,
            timeoutMs: scenario.runTimeoutMs,
            onMails: (answered, expected) => progress({ type: 'mails', answered, expected }),
            onMigrationProgress: (p) => progress({ type: 'migration', progress: p }),
          });
          const m = result.migration;
          record = {
            ...runIdentity(run),
            ok: result.ok,
            failure: result.failure,
            totalMigrationTimeMs: m?.totalMigrationTimeMs ?? null,
            downtimeMs: m?.downtimeMs ?? null,
            pagesSent: m?.pagesSent ?? null,
            vmemPages: m?.vmemPages ?? null,
            overheadRatio: m?.overheadRatio ?? null,
            rounds: m?.roundCount ?? null,
            roundRows: m?.rounds ?? [],
            sentByRegion: m?.sentByRegion ?? null,
            bytesOnWire: m?.bytesOnWire ?? null,
            mailsExpected: result.mailbox.mailsExpected,
            mailsDelivered: result.mailbox.mailsDelivered,
            mailsIntact: result.mailbox.mailsIntact,
            mailsDuplicated: result.mailbox.mailsDuplicated,
            mailLatencies: result.mailLatencies,
            volume: result.volume,
            migrationStartMs: result.migrationStartMs,
            workloadDurationMs: result.workloadDurationMs,
            channelBytes: result.channelBytes,
            netfrontBytes: result.netfrontBytes,
            migration: m,
          };
        } catch (error) {
          record = failedRecord(run, describeError(error));
        }
        results.runs.push(record);
        save();
        progress({ type: 'run-end', index, total: runs.length, record });
      }
    } finally {
      await testbed.stop();
    }
  }
  save();
  return results;
}

function runIdentity(run: RunPoint) {
  return {
    id: run.id,
    table: run.table,
    mode: run.mode,
    n: run.n,
    mails: run.n * run.n,
    fileSizeBytes: run.fileSizeBytes,
    repetition: run.repetition,
    seed: run.seed,
  };
}

function failedRecord(run: RunPoint, failure: string): RunRecord {
  return {
    ...runIdentity(run),
    ok: false,
    failure,
    totalMigrationTimeMs: null,
    downtimeMs: null,
    pagesSent: null,
    vmemPages: null,
    overheadRatio: null,
    rounds: null,
    roundRows: [],
    sentByRegion: null,
    bytesOnWire: null,
    mailsExpected: run.n * run.n,
    mailsDelivered: 0,
    mailsIntact: 0,
    mailsDuplicated: 0,
    mailLatencies: [],
    volume: [],
    migrationStartMs: null,
    workloadDurationMs: null,
    channelBytes: 0,
    netfrontBytes: 0,
    migration: null,
  };
}
