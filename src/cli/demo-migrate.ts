/**
 * `xenvmc demo migrate`: two hosts on loopback, one domain running a dirtier, one pre-copy
 * live migration over real TCP through the shaped link, the target's memory verified against
 * the source's at the pause, the statistics printed, everything torn down.
 */
import { sleepMs } from '../core/clock.ts';
import { InputError } from '../core/errors.ts';
import {
  formatBandwidth,
  formatBytes,
  PAGE_SIZE_BYTES,
  parseBandwidth,
  parseBytes,
} from '../core/units.ts';
import { LocalCluster } from '../experiments/local-cluster.ts';
import type { DomainSummary } from '../hypervisor/host.ts';
import type { MigrationStats } from '../migration/stats.ts';
import { textTable } from '../report/table.ts';
import { followMigration } from './migrate-command.ts';
import { MigrationProgressDisplay } from './progress.ts';

export interface DemoMigrateOptions {
  memory: string;
  dirtyRate: string;
  pattern: string;
  workingSet?: string;
  link: string;
  policy: string;
  warmup: string;
  json: boolean;
  quiet: boolean;
}

export interface DemoMigrateResult extends MigrationStats {
  demo: 'migrate';
  memoryBytes: number;
  dirtyRatePagesPerSec: number;
  pattern: string;
  link: string;
  domainRunsOnTarget: boolean;
  domainGoneFromSource: boolean;
  notes: string[];
}

export async function runDemoMigrate(options: DemoMigrateOptions): Promise<DemoMigrateResult> {
  const memoryBytes = parseBytes(options.memory, '--memory');
  const dirtyRatePagesPerSec = Number(options.dirtyRate);
  if (!Number.isFinite(dirtyRatePagesPerSec) || dirtyRatePagesPerSec < 0) {
    throw new InputError(
      `--dirty-rate '${options.dirtyRate}' must be a number of pages per second (0 for idle)`,
    );
  }
  const linkBytesPerSec = parseBandwidth(options.link, '--link');
  const warmupMs = parseDurationMs(options.warmup, '--warmup');
  const workingSetPages = options.workingSet
    ? Math.floor(parseBytes(options.workingSet, '--working-set') / PAGE_SIZE_BYTES)
    : undefined;
  const say = (line: string): void => {
    if (!options.quiet) process.stderr.write(`${line}\n`);
  };

  say(
    `xenvmc demo migrate: ${formatBytes(memoryBytes)} domain, dirtier at ${dirtyRatePagesPerSec} pages/s (${options.pattern}), link ${formatBandwidth(linkBytesPerSec)}, policy ${options.policy}`,
  );
  say('starting hosts h1 and h2 on loopback...');
  const cluster = await LocalCluster.start({ hostNames: ['h1', 'h2'], link: options.link });
  try {
    const [source, target] = [cluster.host('h1'), cluster.host('h2')];
    say(`creating vm1 on h1 (guest memory pre-touched outside the timed phases)...`);
    await source.client.post<DomainSummary>('/v1/domains', {
      name: 'vm1',
      memory: memoryBytes,
      ip: '10.77.0.1',
      programs: [
        {
          kind: 'dirtier',
          params: {
            dirtyRatePagesPerSec,
            pattern: options.pattern,
            ...(workingSetPages ? { workingSetPages } : {}),
            seed: 1,
          },
        },
      ],
    });
    say(`warming up ${warmupMs} ms, then migrating vm1 from h1 to h2 (${target.link})...`);
    await sleepMs(warmupMs);
    const stats = await followMigration(
      source.client,
      'vm1',
      { to: target.link, policy: options.policy },
      new MigrationProgressDisplay({ enabled: !options.quiet }),
    );
    const onTarget = await target.client.get<DomainSummary>('/v1/domains/vm1').catch(() => null);
    const onSource = await source.client.get<DomainSummary>('/v1/domains/vm1').catch(() => null);
    return {
      demo: 'migrate',
      ...stats,
      memoryBytes,
      dirtyRatePagesPerSec,
      pattern: options.pattern,
      link: formatBandwidth(linkBytesPerSec),
      domainRunsOnTarget: onTarget?.status === 'running',
      domainGoneFromSource: onSource === null,
      notes: [
        'Hosts are two processes on this machine joined by TCP on loopback; the link is shaped in-process (token bucket) to the rate above.',
        "Tmig runs from log-dirty on to the target's resumed notice; setup (connect, authenticate, reserve and pre-touch target memory) is reported apart.",
        "Downtime is measured on the source's clock from the pause request to the target's resumed notice.",
      ],
    };
  } finally {
    await cluster.stop();
  }
}

export function printMigrationStats(stats: MigrationStats): void {
  const ms = (value: number): string => value.toFixed(value < 10 ? 2 : 0);
  const rows = stats.rounds.map((row) => [
    row.round,
    row.phase,
    row.pagesSent,
    row.zeroPages,
    row.pagesDirtied,
    ms(row.durationMs),
    `${formatBytes(row.rateBytesPerSec)}/s`,
  ]);
  process.stdout.write(
    `${textTable(['round', 'phase', 'pages sent', 'zero', 'dirtied', 'ms', 'rate'], rows)}\n\n`,
  );
  const summary: [string, string][] = [
    ['Tmig (total migration time)', `${ms(stats.totalMigrationTimeMs)} ms`],
    ['downtime', `${ms(stats.downtimeMs)} ms`],
    ['setup (not in Tmig)', `${ms(stats.setupTimeMs)} ms`],
    ['Vmig (pages sent)', `${stats.pagesSent} (${formatBytes(stats.pagesSent * PAGE_SIZE_BYTES)})`],
    ['Vmem (pages)', `${stats.vmemPages} (${formatBytes(stats.vmemPages * PAGE_SIZE_BYTES)})`],
    ['Rd = Vmig/Vmem', stats.overheadRatio.toFixed(3)],
    ['zero pages (sent as flags)', String(stats.zeroPages)],
    ['bytes on the wire', formatBytes(stats.bytesOnWire)],
    ['guest state', `${stats.guestStateBytes} B`],
    ['policy', `${stats.policy}: ${stats.stopReason}`],
    [
      'memory verified',
      stats.memoryVerified
        ? "yes (every page's CRC-32 matches)"
        : 'NO: target memory differs from the source at the pause',
    ],
  ];
  const width = Math.max(...summary.map(([k]) => k.length));
  for (const [key, value] of summary) process.stdout.write(`${key.padEnd(width)}  ${value}\n`);
}

export function parseDurationMs(text: string, what: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$/.exec(text);
  if (!match) throw new InputError(`${what} '${text}' is not a duration: use e.g. 500ms or 2s`);
  return Number(match[1]) * (match[2] === 'ms' ? 1 : 1000);
}
