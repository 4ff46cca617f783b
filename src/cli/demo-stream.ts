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
}

interface StreamerStats {
  role: string;
  bytesToSend: number;
  bytesSent: number;
  bytesReceived: number;
  sendCrc: number;
  receiveCrc: number;
  finished: boolean;
  errors: number;
  lastError: string;
  longestGapMs: number;
  startedMs: number;
  finishedMs: number;
}

type DomainView = DomainSummary & {
  stats: { programs: { stats: StreamerStats }[]; net: Record<string, number> | null } | null;
};

export interface DemoStreamResult {
  demo: 'stream';
  mode: StreamMode;
  migrate: 'sender' | 'receiver' | 'none';
  bytesPerDirection: number;
  bytesSent: number;
  bytesDelivered: number;
  digestsMatch: boolean;
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
  if (mode !== 'off') {
    throw new InputError(
      `--mode ${mode} needs XENVMC channels, which this build does not have yet (issues 4 and 5); use --mode off`,
    );
  }
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
  const cluster = await LocalCluster.start({ hostNames: ['h1', 'h2'], link: options.link });
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
    if (migrating) {
      await sleepMs(migrateAfterMs);
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
    const [server, client] = [views.get('vm1')!, views.get('vm2')!];
    const directions = [
      direction('vm2', client, 'vm1', server),
      direction('vm1', server, 'vm2', client),
    ];
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
      bytesDelivered: directions.reduce((sum, d) => sum + d.bytesDelivered, 0),
      digestsMatch,
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
        `Mode ${mode}: every byte goes through netfront rings in guest memory and Dom0's bridge.`,
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

async function waitForStreams(
  location: Map<string, LocalHost>,
): Promise<Map<string, StreamerStats>> {
  const deadline = performance.now() + FINISH_TIMEOUT_MS;
  for (;;) {
    const views = new Map<string, StreamerStats>();
    for (const [name, host] of location) {
      const view = await host.client.get<DomainView>(`/v1/domains/${name}`);
      const stats = view.stats?.programs[0]?.stats;
      if (!stats)
        throw new TestbedError(
          'DEMO_FAILED',
          `${name} on ${host.name} reports no streamer (status ${view.status})`,
        );
      views.set(name, stats);
    }
    if ([...views.values()].every((s) => s.finished || s.errors > 0)) return views;
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
        'Tmig / downtime',
        `${m.totalMigrationTimeMs.toFixed(0)} ms / ${m.downtimeMs.toFixed(1)} ms, ${m.roundCount} rounds`,
      ],
      ['link', formatBandwidth(m.linkBytesPerSec)],
    );
  }
  const width = Math.max(...lines.map(([k]) => k.length));
  for (const [key, value] of lines) process.stdout.write(`${key.padEnd(width)}  ${value}\n`);
}
