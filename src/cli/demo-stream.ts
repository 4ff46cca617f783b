/**
 * `xenvmc demo stream`: two co-resident domains on h1 stream seeded random bytes to each other
 * both ways over guest sockets, while one of them is live-migrated to h2; at the end each
 * side's CRC-32 of what it sent must equal the other side's CRC-32 of what it received, byte
 * counts equal. It shows that a connection survives the migration of either end, and how many
 * pages the migrating domain had to send.
 */
import { sleepMs } from '../core/clock.ts';
import { InputError, TestbedError } from '../core/errors.ts';
import { formatBandwidth, formatBytes, parseBandwidth, parseBytes } from '../core/units.ts';
import { LocalCluster, type LocalHost } from '../experiments/local-cluster.ts';
import type { DomainSummary } from '../hypervisor/host.ts';
import type { MigrationStats } from '../migration/stats.ts';
import { textTable } from '../report/table.ts';
import type { StreamerStats } from '../workloads/streamer.ts';
import type { XenvmcCounters } from '../xenvmc/module.ts';
import { parseDurationMs } from './demo-migrate.ts';
import { followMigration } from './migrate-command.ts';
import { MigrationProgressDisplay } from './progress.ts';

export const STREAM_MODES = ['off', 'xenvmc', 'xenvmc-suspend', 'advance'] as const;
export type StreamMode = (typeof STREAM_MODES)[number];

/** How long the demo waits for both streams to finish after the migration, at most. */
const FINISH_TIMEOUT_MS = 300_000;
const STREAM_PORT = 5001;

export interface DemoStreamOptions {
  mode: string;
  bytes: string;
  migrate: string;
  memory: string;
  link: string;
  policy: string;
  json: boolean;
  quiet: boolean;
  migrateAfter: string;
  migrateChannelPages?: boolean;
}

interface XenvmcView {
  mode: string;
  counters: XenvmcCounters;
  events: { atMs: number; what: string }[];
}

type DomainView = DomainSummary & {
  stats: {
    programs: { stats: StreamerStats }[];
    net: Record<string, number> | null;
    xenvmc: XenvmcView | null;
  } | null;
};

export interface DemoStreamResult {
  demo: 'stream';
  mode: StreamMode;
  migrate: 'sender' | 'receiver' | 'none';
  bytesPerDirection: number;
  bytesSent: number;
  bytesDelivered: number;
  digestsMatch: boolean;
  /** Bytes delivered through XENVMC shared-memory channels (both directions). */
  channelBytes: number;
  /** Bytes that went over the netfront path, resent ones included. */
  netfrontBytes: number;
  /** Bytes finished over netfront by finish_mig after the migration (advance). */
  finishMigBytes: number;
  /** Bytes taken back from a channel at a tear-down and resent over netfront. */
  reclaimedBytes: number;
  channelsSetUp: number;
  channelsCancelled: number;
  /** Wall-clock ms from the migrate command to the first channel cancel or finish_mig. */
  channelCancelledAfterMs: number | null;
  channelEvents: string[];
  migratingDomainSentByRegion: Record<string, number> | null;
  /** Channel pages were sent with the migrating domain (real Xen's grant behaviour). */
  migrateChannelPages: boolean;
  channelPagesSent: number;
  streamErrors: number;
  /** The last error each program saw, if any (a correct run has none). */
  streamErrorMessages: string[];
  directions: {
    from: string;
    to: string;
    bytesSent: number;
    bytesDelivered: number;
    sendCrc: number;
    receiveCrc: number;
    longestGapMs: number;
  }[];
  migratingDomain: string | null;
  migratingDomainPagesSent: number | null;
  migration: MigrationStats | null;
  streamDurationMs: number;
  notes: string[];
}

export async function runDemoStream(options: DemoStreamOptions): Promise<DemoStreamResult> {
  const mode = parseMode(options.mode);
  const migrate = options.migrate;
  if (migrate !== 'sender' && migrate !== 'receiver' && migrate !== 'none') {
    throw new InputError(`--migrate '${migrate}' must be sender, receiver or none`);
  }
  const bytes = parseBytes(options.bytes, '--bytes');
  const memoryBytes = parseBytes(options.memory, '--memory');
  const migrateAfterMs = parseDurationMs(options.migrateAfter, '--migrate-after');
  parseBandwidth(options.link, '--link');
  const say = (line: string): void => {
    if (!options.quiet) process.stderr.write(`${line}\n`);
  };

  say(
    `xenvmc demo stream: mode ${mode}, ${formatBytes(bytes)} each way between vm1 (server) and vm2 (client) on h1, migrating ${migrate === 'none' ? 'nothing' : migrate === 'receiver' ? 'vm1' : 'vm2'}`,
  );
  const cluster = await LocalCluster.start({
    hostNames: ['h1', 'h2'],
    link: options.link,
    hostArgs: Object.fromEntries(
      ['h1', 'h2'].map((name) => [
        name,
        [
          '--xenvmc-mode',
          mode,
          ...(options.migrateChannelPages ? ['--migrate-channel-pages'] : []),
        ],
      ]),
    ),
  });
  try {
    const [h1, h2] = [cluster.host('h1'), cluster.host('h2')];
    const common = { memory: memoryBytes, tenant: 'demo' };
    await h1.client.post('/v1/domains', {
      ...common,
      name: 'vm1',
      ip: '10.77.0.1',
      programs: [
        { kind: 'streamer', params: { role: 'server', port: STREAM_PORT, bytes, seed: 1 } },
      ],
    });
    await h1.client.post('/v1/domains', {
      ...common,
      name: 'vm2',
      ip: '10.77.0.2',
      programs: [
        {
          kind: 'streamer',
          params: { role: 'client', port: STREAM_PORT, peerIp: '10.77.0.1', bytes, seed: 2 },
        },
      ],
    });
    const location = new Map<string, LocalHost>([
      ['vm1', h1],
      ['vm2', h1],
    ]);
    const startedMs = performance.now();
    let migration: MigrationStats | null = null;
    const migrating = migrate === 'none' ? null : migrate === 'receiver' ? 'vm1' : 'vm2';
    let migrationStartedAt: number | null = null;
    if (migrating) {
      await sleepMs(migrateAfterMs);
      migrationStartedAt = Date.now();
      say(`migrating ${migrating} from h1 to h2 while the streams run...`);
      migration = await followMigration(
        h1.client,
        migrating,
        { to: h2.link, policy: options.policy },
        new MigrationProgressDisplay({ enabled: !options.quiet }),
      );
      location.set(migrating, h2);
      say(
        `migrated in ${migration.totalMigrationTimeMs.toFixed(0)} ms (downtime ${migration.downtimeMs.toFixed(1)} ms); waiting for the streams to finish...`,
      );
    }
    const views = await waitForStreams(location);
    const streamDurationMs = performance.now() - startedMs;
    const [server, client] = [views.get('vm1')!.streamer, views.get('vm2')!.streamer];
    const channels = [views.get('vm1')!.xenvmc, views.get('vm2')!.xenvmc];
    const sum = (key: keyof XenvmcCounters): number =>
      channels.reduce((total, x) => total + (x?.counters[key] ?? 0), 0);
    const cancelEvents = channels
      .flatMap((x) => x?.events ?? [])
      .filter((e) => /cancelled|finish_mig/.test(e.what))
      .sort((a, b) => a.atMs - b.atMs);
    const directions = [
      direction('vm2', client, 'vm1', server),
      direction('vm1', server, 'vm2', client),
    ];
    const bytesDelivered = directions.reduce((total, d) => total + d.bytesDelivered, 0);
    const channelBytes = sum('channelBytesReceived');
    const digestsMatch = directions.every(
      (d) =>
        d.sendCrc === d.receiveCrc && d.bytesSent === d.bytesDelivered && d.bytesSent === bytes,
    );
    return {
      demo: 'stream',
      mode,
      migrate,
      bytesPerDirection: bytes,
      bytesSent: directions.reduce((sum, d) => sum + d.bytesSent, 0),
      bytesDelivered,
      digestsMatch,
      channelBytes,
      netfrontBytes: bytesDelivered - channelBytes + sum('reclaimedBytes'),
      finishMigBytes: sum('finishMigBytes'),
      reclaimedBytes: sum('reclaimedBytes'),
      channelsSetUp: sum('channelsSetUp'),
      channelsCancelled: sum('channelsCancelled'),
      channelCancelledAfterMs:
        migrationStartedAt !== null && cancelEvents[0]
          ? cancelEvents[0].atMs - migrationStartedAt
          : null,
      channelEvents: cancelEvents.map((e) => e.what),
      migratingDomainSentByRegion: migration?.sentByRegion ?? null,
      migrateChannelPages: Boolean(options.migrateChannelPages),
      channelPagesSent: migration?.channelPagesSent ?? 0,
      streamErrors: server.errors + client.errors,
      streamErrorMessages: [server, client]
        .filter((s) => s.errors > 0)
        .map((s) => `${s.role}: ${s.lastError}`),
      directions,
      migratingDomain: migrating,
      migratingDomainPagesSent: migration?.pagesSent ?? null,
      migration,
      streamDurationMs,
      notes: [
        'Both domains run on host process h1; h2 is a second process; the link between them is TCP on loopback shaped in-process.',
        mode === 'off'
          ? "Mode off: every byte goes through netfront rings in guest memory and Dom0's bridge."
          : `Mode ${mode}: co-resident streams use a XENVMC channel (FIFOs in a shared region outside guest memory) once set up; the rest goes over netfront.`,
        "Digests are CRC-32 over each direction's bytes, kept by the guest programs themselves.",
      ],
    };
  } finally {
    await cluster.stop();
  }
}

function parseMode(text: string): StreamMode {
  if ((STREAM_MODES as readonly string[]).includes(text)) return text as StreamMode;
  throw new InputError(`--mode '${text}' must be one of ${STREAM_MODES.join(', ')}`);
}

type DomainReport = { streamer: StreamerStats; xenvmc: XenvmcView | null };

async function waitForStreams(
  location: Map<string, LocalHost>,
): Promise<Map<string, DomainReport>> {
  const deadline = performance.now() + FINISH_TIMEOUT_MS;
  for (;;) {
    const views = new Map<string, DomainReport>();
    for (const [name, host] of location) {
      const view = await host.client.get<DomainView>(`/v1/domains/${name}`);
      const stats = view.stats?.programs[0]?.stats;
      if (!stats)
        throw new TestbedError(
          'DEMO_FAILED',
          `${name} on ${host.name} reports no streamer (status ${view.status})`,
        );
      views.set(name, { streamer: stats, xenvmc: view.stats?.xenvmc ?? null });
    }
    if ([...views.values()].every(({ streamer: s }) => s.finished || s.errors > 0)) return views;
    if (performance.now() > deadline) {
      throw new TestbedError(
        'DEMO_TIMEOUT',
        `streams did not finish within ${FINISH_TIMEOUT_MS / 1000} s: ${JSON.stringify([...views])}`,
      );
    }
    await sleepMs(100);
  }
}

function direction(from: string, sender: StreamerStats, to: string, receiver: StreamerStats) {
  return {
    from,
    to,
    bytesSent: sender.bytesSent,
    bytesDelivered: receiver.bytesReceived,
    sendCrc: sender.sendCrc,
    receiveCrc: receiver.receiveCrc,
    longestGapMs: receiver.longestGapMs,
  };
}

export function printStreamResult(result: DemoStreamResult): void {
  const rows = result.directions.map((d) => [
    `${d.from} -> ${d.to}`,
    d.bytesSent,
    d.bytesDelivered,
    d.sendCrc.toString(16).padStart(8, '0'),
    d.receiveCrc.toString(16).padStart(8, '0'),
    d.sendCrc === d.receiveCrc && d.bytesSent === d.bytesDelivered ? 'yes' : 'NO',
    d.longestGapMs.toFixed(0),
  ]);
  process.stdout.write(
    `${textTable(['direction', 'bytes sent', 'bytes delivered', 'sent crc', 'received crc', 'match', 'longest gap ms'], rows)}\n\n`,
  );
  const lines: [string, string][] = [
    ['mode', result.mode],
    ['bytes over XENVMC channels', String(result.channelBytes)],
    ['bytes over netfront', String(result.netfrontBytes)],
    ['finished by finish_mig', String(result.finishMigBytes)],
    [
      'channel cancelled after',
      result.channelCancelledAfterMs === null
        ? '-'
        : `${result.channelCancelledAfterMs} ms (from the migrate command)`,
    ],
    ['digests match', result.digestsMatch ? 'yes: every byte arrived once, in order' : 'NO'],
    ['stream errors seen by programs', String(result.streamErrors)],
    ['stream duration', `${result.streamDurationMs.toFixed(0)} ms`],
  ];
  if (result.migration) {
    const m = result.migration;
    lines.push(
      ['migrated domain', `${result.migratingDomain} (${result.migrate})`],
      [
        'its pages sent (Vmig)',
        `${m.pagesSent} of ${m.vmemPages} (Rd ${m.overheadRatio.toFixed(3)})`,
      ],
      [
        'sent by region',
        Object.entries(m.sentByRegion)
          .map(([k, v]) => `${k} ${v}`)
          .join(', '),
      ],
      [
        'channel pages sent',
        m.migrateChannelPages
          ? String(m.channelPagesSent)
          : 'none (channel memory is not migrated)',
      ],
      [
        'Tmig / downtime',
        `${m.totalMigrationTimeMs.toFixed(0)} ms / ${m.downtimeMs.toFixed(1)} ms, ${m.roundCount} rounds`,
      ],
      ['link', formatBandwidth(m.linkBytesPerSec)],
    );
  }
  const width = Math.max(...lines.map(([k]) => k.length));
  for (const [key, value] of lines) process.stdout.write(`${key.padEnd(width)}  ${value}\n`);
}
