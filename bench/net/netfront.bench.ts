/**
 * The netfront path (guest sockets over netfront rings in guest memory and Dom0's bridge):
 * throughput for 64 B, 4 KiB, 64 KiB and 1 MiB messages and one-way latency for 64 B
 * (ping-pong round trip / 2), co-resident (both domains on host process h1) and cross-host
 * (h1 to h2, link unshaped), against Node's kernel TCP loopback between two worker threads of
 * this process, measured in the same run (issue 3). The issue sets no target: these figures
 * are the baseline of the later XENVMC channel benchmark, so every figure is reported only.
 *
 * Method. Throughput: a `netbench` sink domain and a source domain (src/workloads/netbench.ts);
 * the sink times the bytes after its first arrival over its first-to-last arrival interval, in
 * guest time (real time for a domain that is not migrated during the transfer); the kernel TCP
 * baseline times the same way in its sink worker. Latency: a `netbench` ping against an echo,
 * median and p99 of the measured round trips after warm-up; the baseline is a Node ping-pong
 * pair with `setNoDelay`. Domains are deleted after each point, so memory stays bounded.
 *
 * Cross-host placement: a fresh domain on h2 is unknown to h1's bridge (hosts learn remote IPs
 * from gratuitous ARPs after a migration, from frames that arrive over a link and from the
 * table a migrating domain brings; nothing announces a domain at creation), so a connect from
 * h1 would be refused as EHOSTUNREACH. The listening domain is therefore created on h1 and
 * migrated, idle, to h2 before its peer is created on h1: h1 then routes its IP to h2.
 */
import { sleepMs } from '../../src/core/clock.ts';
import { LocalCluster, type LocalHost } from '../../src/experiments/local-cluster.ts';
import type { DomainSummary } from '../../src/hypervisor/host.ts';
import type { NetbenchParams } from '../../src/workloads/netbench.ts';
import { migrateAndWait } from '../../test/support/hosts.ts';
import { type BenchFigure, type BenchMode, type Benchmark, median, param } from '../harness.ts';
import { createNetbench, type NetbenchStats, sizeLabel, totalBytesFor } from './netbench-points.ts';
import { quantile, tcpRoundTrips, tcpThroughput } from './tcp-baseline.ts';

/** Message sizes of the throughput figures (issue 3: 64 B to 1 MiB). */
const MESSAGE_SIZES_BYTES = [64, 4096, 64 * 1024, 1024 * 1024] as const;
/**
 * Smoke mode measures the two extremes only: every point boots two domains (about 1 s each,
 * a worker thread loading the sources) and a cross-host point migrates one, so the four sizes
 * would add some 15 s to `npm test` and prove nothing more.
 */
const SMOKE_MESSAGE_SIZES_BYTES = [64, 1024 * 1024] as const;
/** Message size of the latency figures. */
const PING_MESSAGE_BYTES = 64;
const PORT = 7100;
/** Every domain's memory: 16384 pages, a 36 MiB program region, room for a 1 MiB message. */
const DOMAIN_MEMORY = '64MiB';
/** Pause between two polls of a domain's statistics. */
const POLL_INTERVAL_MS = 100;

type Placement = 'co-resident' | 'cross-host';

interface Settings {
  /** Bytes per throughput point with 64 B messages (slow per byte), and with larger ones. */
  smallMessageTotalBytes: number;
  totalBytes: number;
  pingRounds: number;
  pingWarmupRounds: number;
  repetitions: number;
  pointTimeoutMs: number;
}

function settings(mode: BenchMode): Settings {
  const mib = 1024 * 1024;
  return {
    smallMessageTotalBytes: param('netfront_small_mib', { smoke: 1, real: 16 }, mode) * mib,
    totalBytes: param('netfront_mib', { smoke: 1, real: 256 }, mode) * mib,
    pingRounds: param('netfront_pings', { smoke: 50, real: 2000 }, mode),
    pingWarmupRounds: param('netfront_ping_warmup', { smoke: 5, real: 100 }, mode),
    repetitions: param('netfront_repetitions', { smoke: 1, real: 3 }, mode),
    pointTimeoutMs: param('netfront_timeout_s', { smoke: 60, real: 600 }, mode) * 1000,
  };
}

// ---- the netfront path ------------------------------------------------------------------------

type DomainView = DomainSummary & { stats: { programs: { stats: NetbenchStats }[] } | null };

/** Creates the domains of one point and deletes them afterwards; numbers their names and IPs. */
class PointRunner {
  private pointIndex = 0;

  constructor(
    private readonly hosts: { h1: LocalHost; h2: LocalHost },
    private readonly timeoutMs: number,
  ) {}

  /**
   * Runs a listener (`sink` or `echo`) and a connector (`source` or `ping`) to the end and
   * returns both programs' final statistics.
   */
  async run(
    placement: Placement,
    listener: NetbenchParams,
    connector: Omit<NetbenchParams, 'peerIp'>,
  ): Promise<{ listener: NetbenchStats; connector: NetbenchStats }> {
    this.pointIndex++;
    // Fresh names and IPs per point: a deleted domain's route may linger on the other host.
    const listenerName = `nb-l${this.pointIndex}`;
    const connectorName = `nb-c${this.pointIndex}`;
    const listenerIp = `10.77.8.${2 * this.pointIndex - 1}`;
    const connectorIp = `10.77.8.${2 * this.pointIndex}`;
    if (2 * this.pointIndex > 254) throw new Error('netfront bench: out of IPs in 10.77.8.0/24');
    const { h1, h2 } = this.hosts;
    let listenerHost = h1;
    await createNetbench(
      h1,
      { name: listenerName, ip: listenerIp, memory: DOMAIN_MEMORY },
      listener,
    );
    try {
      if (placement === 'cross-host') {
        const record = await migrateAndWait(h1, listenerName, h2.link);
        if (record.status !== 'completed')
          throw new Error(`migrating ${listenerName} to h2 failed: ${record.error?.message}`);
        listenerHost = h2;
      }
      await createNetbench(
        h1,
        { name: connectorName, ip: connectorIp, memory: DOMAIN_MEMORY },
        { ...connector, peerIp: listenerIp },
      );
      try {
        // The side that measures: the sink (last byte) or the ping (last round trip).
        if (connector.role === 'source') await this.waitFinished(listenerHost, listenerName);
        else await this.waitFinished(h1, connectorName);
        return {
          listener: await netbenchStats(listenerHost, listenerName),
          connector: await netbenchStats(h1, connectorName),
        };
      } finally {
        await h1.client.delete(`/v1/domains/${connectorName}`);
      }
    } finally {
      await listenerHost.client.delete(`/v1/domains/${listenerName}`);
    }
  }

  private async waitFinished(host: LocalHost, name: string): Promise<void> {
    const deadline = performance.now() + this.timeoutMs;
    for (;;) {
      const stats = await netbenchStats(host, name);
      if (stats.errors > 0) throw new Error(`${name} (${stats.role}) failed: ${stats.lastError}`);
      if (stats.finished) return;
      if (performance.now() > deadline)
        throw new Error(`${name} (${stats.role}) did not finish: ${JSON.stringify(stats)}`);
      await sleepMs(POLL_INTERVAL_MS);
    }
  }
}

async function netbenchStats(host: LocalHost, name: string): Promise<NetbenchStats> {
  const view = await host.client.get<DomainView>(`/v1/domains/${name}`);
  const stats = view.stats?.programs[0]?.stats;
  if (!stats) throw new Error(`${name} on ${host.name} reports no netbench (${view.status})`);
  return stats;
}

/** Netfront throughput in bytes/s for one placement and message size. */
async function measureNetfrontRate(
  runner: PointRunner,
  placement: Placement,
  messageBytes: number,
  bytes: number,
): Promise<number> {
  const result = await runner.run(
    placement,
    { role: 'sink', port: PORT },
    { role: 'source', port: PORT, bytes, messageBytes },
  );
  if (result.listener.bytesReceived !== bytes)
    throw new Error(`netfront sink got ${result.listener.bytesReceived} of ${bytes} B`);
  return result.listener.throughputBytesPerSec;
}

/** Netfront ping-pong: median and p99 round trip in ms. */
async function measureNetfrontRoundTrips(
  runner: PointRunner,
  placement: Placement,
  s: Settings,
): Promise<{ medianMs: number; p99Ms: number }> {
  const result = await runner.run(
    placement,
    { role: 'echo', port: PORT },
    {
      role: 'ping',
      port: PORT,
      messageBytes: PING_MESSAGE_BYTES,
      rounds: s.pingRounds,
      warmupRounds: s.pingWarmupRounds,
    },
  );
  return { medianMs: result.connector.rttMedianMs, p99Ms: result.connector.rttP99Ms };
}

// ---- the benchmark ----------------------------------------------------------------------------

/**
 * Netfront-path throughput and latency, co-resident and cross-host unshaped, against kernel TCP
 * loopback between two worker threads; reported without a target (issue 3).
 */
export const netfrontThroughput: Benchmark = {
  id: 'netfront-path',
  title:
    'netfront path throughput (64 B-1 MiB) and 64 B latency, co-resident and cross-host ' +
    'unshaped, vs kernel TCP loopback between worker threads',
  async run(mode) {
    const s = settings(mode);
    const figures: BenchFigure[] = [];
    const placements = ['co-resident', 'cross-host'] as const;
    const cluster = await LocalCluster.start({ hostNames: ['h1', 'h2'], link: 'unlimited' });
    try {
      const runner = new PointRunner(
        { h1: cluster.host('h1'), h2: cluster.host('h2') },
        s.pointTimeoutMs,
      );
      // Samples interleave (baseline, co-resident, cross-host, then again), so that a change
      // in the machine's load during the run hits every series alike.
      const sizes = mode === 'smoke' ? SMOKE_MESSAGE_SIZES_BYTES : MESSAGE_SIZES_BYTES;
      for (const messageBytes of sizes) {
        const bytes = totalBytesFor(messageBytes, s);
        const tcpRates: number[] = [];
        const rates = { 'co-resident': [] as number[], 'cross-host': [] as number[] };
        for (let rep = 0; rep < s.repetitions; rep++) {
          tcpRates.push(await tcpThroughput(messageBytes, bytes));
          for (const placement of placements)
            rates[placement].push(
              await measureNetfrontRate(runner, placement, messageBytes, bytes),
            );
        }
        const baseline = median(tcpRates) / 1e6;
        for (const placement of placements) {
          const value = median(rates[placement]) / 1e6;
          const samples = (list: number[]): string =>
            list.map((r) => (r / 1e6).toFixed(1)).join(', ');
          figures.push({
            name: `netfront ${placement} ${sizeLabel(messageBytes)} messages / kernel TCP loopback`,
            value,
            baseline,
            unit: 'MB/s',
            ratio: value / baseline,
            target: 'none (reported)',
            pass: null,
            checksum: `${s.repetitions} x ${bytes} B delivered`,
            notes: `samples MB/s: ${samples(rates[placement])}; baseline ${samples(tcpRates)}`,
          });
        }
      }
      const tcpRtts = await tcpRoundTrips(s.pingRounds, s.pingWarmupRounds, PING_MESSAGE_BYTES);
      const tcpRtt = { medianMs: median(tcpRtts), p99Ms: quantile(tcpRtts, 0.99) };
      for (const placement of placements) {
        const rtt = await measureNetfrontRoundTrips(runner, placement, s);
        for (const [label, valueMs, baselineMs] of [
          ['median', rtt.medianMs, tcpRtt.medianMs],
          ['p99', rtt.p99Ms, tcpRtt.p99Ms],
        ] as const) {
          const value = (valueMs / 2) * 1000;
          const baseline = (baselineMs / 2) * 1000;
          figures.push({
            name: `netfront ${placement} 64 B one-way latency (${label} RTT/2) / kernel TCP`,
            value,
            baseline,
            unit: 'µs',
            ratio: value / baseline,
            target: 'none (reported)',
            pass: null,
            checksum: `${s.pingRounds} round trips after ${s.pingWarmupRounds} warm-up`,
          });
        }
      }
      return figures;
    } finally {
      await cluster.stop();
    }
  },
};
