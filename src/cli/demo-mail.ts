/**
 * `xenvmc demo mail`: the paper's workload once. VM1 (the mail server) and VM2 (Mclient) run
 * co-resident on h1; Mclient sends n x n mails with an attachment; VM1 is live-migrated to h2
 * mid-run; then every mailbox on the shared storage is parsed and every attachment's digest
 * checked. Prints the mail counts and the migration's figures.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { InputError } from '../core/errors.ts';
import { formatBytes, parseBandwidth, parseBytes } from '../core/units.ts';
import { LocalCluster } from '../experiments/local-cluster.ts';
import { type MailRunResult, runMailRun } from '../experiments/mail-run.ts';
import type { MigrationStats } from '../migration/stats.ts';
import { XENVMC_MODES, type XenvmcMode } from '../xenvmc/protocol.ts';
import { parseDurationMs } from './demo-migrate.ts';
import { MigrationProgressDisplay } from './progress.ts';

export interface DemoMailOptions {
  mode: string;
  n: string;
  fileSize: string;
  memory: string;
  link: string;
  policy: string;
  migrateAfter: string;
  pacing: string;
  migrate: boolean;
  seed: string;
  json: boolean;
  quiet: boolean;
}

export interface DemoMailResult {
  demo: 'mail';
  mode: XenvmcMode;
  n: number;
  fileSizeBytes: number;
  ok: boolean;
  failure: string | null;
  mailsExpected: number;
  mailsDelivered: number;
  mailsIntact: number;
  mailsDuplicated: number;
  /** Mails Mclient saw answered with 250 / with an error. */
  mailsSent: number;
  mailsFailed: number;
  /** Mail latency (connect to the 250 after the data), guest ms. */
  latencyMs: { median: number | null; max: number | null; duringMigrationMax: number | null };
  channelBytes: number;
  netfrontBytes: number;
  workloadDurationMs: number | null;
  migrationStartMs: number | null;
  migration: MigrationStats | null;
  notes: string[];
}

function positiveInteger(text: string, flag: string, max: number): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new InputError(`${flag} '${text}' must be an integer from 1 to ${max}`);
  }
  return value;
}

function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

export async function runDemoMail(options: DemoMailOptions): Promise<DemoMailResult> {
  const mode = XENVMC_MODES.find((m) => m === options.mode);
  if (!mode)
    throw new InputError(`--mode '${options.mode}' must be one of ${XENVMC_MODES.join(', ')}`);
  const n = positiveInteger(options.n, '--n', 100);
  const fileSizeBytes = parseBytes(options.fileSize, '--file-size');
  const memoryBytes = parseBytes(options.memory, '--memory');
  const warmupMs = parseDurationMs(options.migrateAfter, '--migrate-after');
  const pacingMs = parseDurationMs(options.pacing, '--pacing');
  const seed = Number(options.seed);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)
    throw new InputError(`--seed '${options.seed}' must be an unsigned 32-bit integer`);
  parseBandwidth(options.link, '--link');
  const say = (line: string): void => {
    if (!options.quiet) process.stderr.write(`${line}\n`);
  };
  say(
    `xenvmc demo mail: mode ${mode}, Mclient sends ${n}x${n} = ${n * n} mails with ${formatBytes(fileSizeBytes)} attachments to VM1 (${formatBytes(memoryBytes)})${options.migrate ? ', VM1 migrated from h1 to h2 mid-run' : ''}`,
  );
  const storageDir = mkdtempSync(path.join(os.tmpdir(), 'xenvmc-storage-'));
  const cluster = await LocalCluster.start({
    hostNames: ['h1', 'h2'],
    link: options.link,
    xenvmcMode: mode,
    storageDir,
  });
  try {
    const [h1, h2] = [cluster.host('h1'), cluster.host('h2')];
    const display = new MigrationProgressDisplay({ enabled: !options.quiet });
    let lastAnswered = -1;
    const result: MailRunResult = await runMailRun({
      // A booted guest's memory is not zero: fill VM1's program memory, then leave it be.
      server: {
        name: 'vm1',
        memoryBytes,
        ip: '10.77.0.1',
        tenant: 'lab',
        programs: [{ kind: 'dirtier', params: { behaviour: 'idle' } }],
      },
      client: {
        name: 'vm2',
        memoryBytes: 64 * 2 ** 20,
        ip: '10.77.0.2',
        tenant: 'lab',
        programs: [],
      },
      from: h1,
      to: options.migrate ? h2 : null,
      storageDir,
      n,
      fileSizeBytes,
      seed,
      pacingMs,
      warmupMs,
      policy: options.policy,
      timeoutMs: 600_000,
      onMigrationProgress: (progress) => display.update(progress),
      onMails: (answered, expected) => {
        if (answered !== lastAnswered && !options.quiet && !process.stderr.isTTY) {
          if (answered === expected || answered % Math.max(1, Math.floor(expected / 8)) === 0)
            say(`  mails answered: ${answered}/${expected}`);
        }
        lastAnswered = answered;
      },
    });
    display.stop();
    const latencies = result.mailLatencies.filter((m) => m.latencyMs >= 0);
    const during = latencies.filter((m) => m.duringMigration).map((m) => m.latencyMs);
    return {
      demo: 'mail',
      mode,
      n,
      fileSizeBytes,
      ok: result.ok,
      failure: result.failure,
      mailsExpected: result.mailbox.mailsExpected,
      mailsDelivered: result.mailbox.mailsDelivered,
      mailsIntact: result.mailbox.mailsIntact,
      mailsDuplicated: result.mailbox.mailsDuplicated,
      mailsSent: result.mailsSent,
      mailsFailed: result.mailsFailed,
      latencyMs: {
        median: median(latencies.map((m) => m.latencyMs)),
        max: latencies.length ? Math.max(...latencies.map((m) => m.latencyMs)) : null,
        duringMigrationMax: during.length ? Math.max(...during) : null,
      },
      channelBytes: result.channelBytes,
      netfrontBytes: result.netfrontBytes,
      workloadDurationMs: result.workloadDurationMs,
      migrationStartMs: result.migrationStartMs,
      migration: result.migration,
      notes: [
        "Scaled down: both hosts are processes on this machine; the link is TCP on loopback shaped in-process; VM memory and mail counts are what you asked, not the paper's 1 GiB VM.",
        'Mailboxes were read back from the shared storage directory and every message parsed with mailparser; "intact" means its attachment\'s SHA-256 matched the file Mclient attached.',
      ],
    };
  } finally {
    await cluster.stop();
    rmSync(storageDir, { recursive: true, force: true });
  }
}

export function printMailResult(result: DemoMailResult): void {
  const lines: [string, string][] = [
    ['mode', result.mode],
    ['mails delivered / expected', `${result.mailsDelivered} / ${result.mailsExpected}`],
    ['mails intact (digest ok)', String(result.mailsIntact)],
    ['mails stored twice', String(result.mailsDuplicated)],
    ['Mclient: answered 250 / failed', `${result.mailsSent} / ${result.mailsFailed}`],
    [
      'mail latency median / max',
      `${result.latencyMs.median?.toFixed(0) ?? '-'} ms / ${result.latencyMs.max?.toFixed(0) ?? '-'} ms (max during migration ${result.latencyMs.duringMigrationMax?.toFixed(0) ?? '-'} ms)`,
    ],
    ['bytes over XENVMC channels', formatBytes(result.channelBytes)],
    ['bytes over netfront', formatBytes(result.netfrontBytes)],
    ['workload duration', `${result.workloadDurationMs?.toFixed(0) ?? '-'} ms`],
  ];
  const m = result.migration;
  if (m) {
    lines.push(
      ['migration started at', `${result.migrationStartMs?.toFixed(0)} ms into the workload`],
      [
        'Tmig / downtime',
        `${m.totalMigrationTimeMs.toFixed(0)} ms / ${m.downtimeMs.toFixed(1)} ms, ${m.roundCount} rounds (${m.stopReason})`,
      ],
      ['Vmig / Vmem (Rd)', `${m.pagesSent} / ${m.vmemPages} pages (${m.overheadRatio.toFixed(3)})`],
      [
        'sent by region',
        Object.entries(m.sentByRegion)
          .map(([k, v]) => `${k} ${v}`)
          .join(', '),
      ],
      ['memory verified', m.memoryVerified ? 'yes' : 'NO'],
    );
  }
  lines.push(['result', result.ok ? 'ok' : `FAILED: ${result.failure}`]);
  const width = Math.max(...lines.map(([k]) => k.length));
  for (const [key, value] of lines) process.stdout.write(`${key.padEnd(width)}  ${value}\n`);
}
