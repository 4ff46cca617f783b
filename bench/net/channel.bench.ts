/**
 * The XENVMC shared-memory channel against the netfront path, Node's kernel TCP loopback and a
 * plain in-process memcpy, all measured in the same run (issue 4, "Benchmarks"): throughput for
 * 64 B, 4 KiB, 64 KiB and 1 MiB messages and one-way latency for 64 B (round trip / 2).
 * Targets for 64 KiB messages: the channel at >= 8x the netfront path (the paper's XENVMC
 * claim), above kernel TCP loopback, and at least half of a memcpy's bandwidth; every other
 * figure is reported only.
 *
 * Method. Two host processes: `ha` in XENVMC mode `advance`, `hoff` in mode `off`. A point is a
 * co-resident `netbench` pair (src/workloads/netbench.ts) on one of them: the same program and
 * parameters, so on `ha` the stream gets a shared-memory channel a few ms after connect and on
 * `hoff` it stays on netfront. Throughput is timed by the sink over its first-to-last arrival
 * interval (guest time, real time here); kernel TCP is timed the same way in its sink worker
 * (bench/net/tcp-baseline.ts). The sink reads with `readSocketInto` into one reused array, as
 * a bulk reader would (a new array per read cost the channel's reader as much as the copy); the
 * same program reads the same way on every path. The memcpy baseline copies 64 KiB messages
 * with `TypedArray.set` from a 64 KiB source into successive slots of a 256 KiB destination
 * (the issue's figure), plain ArrayBuffers, in this thread; its size is fixed here and no longer
 * follows the FIFO's (it had silently become 1 MiB when the FIFO grew). What a two-thread
 * SharedArrayBuffer ring can reach against the same baseline is measured apart by
 * bench/net/ring-ceiling.ts. `BENCH_CHANNEL_SIZE_KIB=64` runs one message size only (for
 * profiling). Samples interleave (kernel TCP, channel,
 * netfront, memcpy, then again) so that a change in the machine's load hits every series alike;
 * figures are medians. Latency: a `netbench` ping against an echo, median and p99 after warm-up.
 *
 * Check: a channel point must have moved at least `CHANNEL_SHARE_MIN` of its bytes over the
 * channel (the sink's `stats.xenvmc.counters.channelBytesReceived`), else the benchmark throws;
 * for the latency point both sides must have received at least the measured rounds' bytes over
 * the channel (once up, a channel stays up, so then every measured round used it). A netfront
 * point must have moved none.
 */
import { sleepMs } from '../../src/core/clock.ts';
import { LocalCluster, type LocalHost } from '../../src/experiments/local-cluster.ts';
import type { DomainSummary } from '../../src/hypervisor/host.ts';
import type { NetbenchParams } from '../../src/workloads/netbench.ts';
import type { XenvmcCounters } from '../../src/xenvmc/module.ts';
import { type BenchFigure, type BenchMode, type Benchmark, median, param } from '../harness.ts';
import { createNetbench, type NetbenchStats, sizeLabel, totalBytesFor } from './netbench-points.ts';
import { quantile, tcpRoundTrips, tcpThroughput } from './tcp-baseline.ts';

/** Message sizes of the throughput figures (issue 4: 64 B to 1 MiB). */
const MESSAGE_SIZES_BYTES = [64, 4096, 64 * 1024, 1024 * 1024] as const;
/** Smoke mode: the target size and the slowest one; every point boots two domains (~1 s each). */
const SMOKE_MESSAGE_SIZES_BYTES = [64, 64 * 1024] as const;
/** The message size the targets are about. */
const TARGET_MESSAGE_BYTES = 64 * 1024;
/** Message size of the latency figures. */
const PING_MESSAGE_BYTES = 64;
/** The memcpy baseline's destination: 256 KiB, as the issue specifies (in cache). */
const MEMCPY_DESTINATION_BYTES = 256 * 1024;
/** Least share of a channel point's bytes the channel must have carried. */
const CHANNEL_SHARE_MIN = 0.9;
const PORT = 7200;
/** Every domain's memory: 16384 pages, a 36 MiB program region, room for a 1 MiB message. */
const DOMAIN_MEMORY = '64MiB';
/** Pause between two polls of a domain's statistics. */
const POLL_INTERVAL_MS = 100;
/** Domain IPs: two per point, fresh per point (a deleted domain's route may linger). */
const IP_PREFIX = '10.77.9.';

type Path = 'channel' | 'netfront';

/** The host of each path: the XENVMC mode decides whether a co-resident stream gets a channel. */
const HOST_OF_PATH: Record<Path, { name: string; mode: 'advance' | 'off' }> = {
  channel: { name: 'ha', mode: 'advance' },
  netfront: { name: 'hoff', mode: 'off' },
};

interface Settings {
  /**
   * Bytes per throughput point with 64 B messages (slow per byte), and with larger ones. Even
   * smoke mode moves MiBs: the first 0.5-1 MiB of a stream goes over netfront before the channel
   * is up (more, now and then), and the channel must carry `CHANNEL_SHARE_MIN` of every point.
   * Real mode moves 1 GiB per point, the same on every path: each point boots two fresh
   * domains, whose JavaScript is still being compiled (TurboFan, on the same two vCPUs) during
   * the first few hundred MiB; 256 MiB channel points ran at 412 and 814 MB/s where 2 GiB
   * points of the same run reached 1051 and 1518. Kernel TCP, native code, is barely affected.
   */
  smallMessageTotalBytes: number;
  totalBytes: number;
  /** Bytes one memcpy sample copies. */
  memcpyBytes: number;
  pingRounds: number;
  pingWarmupRounds: number;
  repetitions: number;
  pointTimeoutMs: number;
  /** Only this message size, in KiB (0: every size); for profiling one point. */
  onlySizeKib: number;
}

function settings(mode: BenchMode): Settings {
  const mib = 1024 * 1024;
  return {
    smallMessageTotalBytes: param('channel_small_mib', { smoke: 16, real: 16 }, mode) * mib,
    totalBytes: param('channel_mib', { smoke: 32, real: 1024 }, mode) * mib,
    memcpyBytes: param('channel_memcpy_mib', { smoke: 16, real: 4096 }, mode) * mib,
    pingRounds: param('channel_pings', { smoke: 50, real: 2000 }, mode),
    pingWarmupRounds: param('channel_ping_warmup', { smoke: 200, real: 500 }, mode),
    repetitions: param('channel_repetitions', { smoke: 1, real: 3 }, mode),
    pointTimeoutMs: param('channel_timeout_s', { smoke: 60, real: 600 }, mode) * 1000,
    onlySizeKib: param('channel_size_kib', { smoke: 0, real: 0 }, mode),
  };
}

// ---- memcpy -----------------------------------------------------------------------------------

/**
 * In-process memcpy bandwidth in bytes/s: `bytes` copied as `messageBytes` messages with
 * `TypedArray.set`, from one source message into successive slots of a 256 KiB destination
 * ring, after one warm-up pass.
 */
function memcpyRate(messageBytes: number, bytes: number): { rate: number; checksum: number } {
  const source = new Uint8Array(messageBytes);
  for (let i = 0; i < messageBytes; i++) source[i] = i & 0xff;
  const slots = Math.max(1, Math.floor(MEMCPY_DESTINATION_BYTES / messageBytes));
  const destination = new Uint8Array(slots * messageBytes);
  const copies = Math.max(1, Math.floor(bytes / messageBytes));
  for (let slot = 0; slot < slots; slot++) destination.set(source, slot * messageBytes);
  const startMs = performance.now();
  for (let i = 0; i < copies; i++) destination.set(source, (i % slots) * messageBytes);
  const elapsedMs = performance.now() - startMs;
  // A sum over the destination proves the copies happened (and keeps them observable).
  let checksum = 0;
  for (let i = 0; i < destination.length; i += 4093) checksum += destination[i]!;
  return { rate: (copies * messageBytes * 1000) / elapsedMs, checksum };
}

// ---- netbench points --------------------------------------------------------------------------

type DomainView = DomainSummary & {
  stats: {
    programs: { stats: NetbenchStats }[];
    xenvmc: { mode: string; counters: XenvmcCounters };
  } | null;
};

/** One side of a finished point: its program's statistics and its XENVMC counters. */
interface SideResult {
  program: NetbenchStats;
  counters: XenvmcCounters;
  mode: string;
}

/** Creates the two co-resident domains of one point and deletes them afterwards. */
class PointRunner {
  private pointIndex = 0;

  constructor(
    private readonly hosts: Record<Path, LocalHost>,
    private readonly timeoutMs: number,
  ) {}

  /**
   * Runs a listener (`sink` or `echo`) and a connector (`source` or `ping`) on the path's host
   * to the end and returns both sides' final statistics.
   */
  async run(
    path: Path,
    listener: NetbenchParams,
    connector: Omit<NetbenchParams, 'peerIp'>,
  ): Promise<{ listener: SideResult; connector: SideResult }> {
    this.pointIndex++;
    if (2 * this.pointIndex > 254) throw new Error(`channel bench: out of IPs in ${IP_PREFIX}0/24`);
    const host = this.hosts[path];
    const listenerName = `ch-l${this.pointIndex}`;
    const connectorName = `ch-c${this.pointIndex}`;
    const listenerIp = `${IP_PREFIX}${2 * this.pointIndex - 1}`;
    const connectorIp = `${IP_PREFIX}${2 * this.pointIndex}`;
    await createNetbench(
      host,
      { name: listenerName, ip: listenerIp, memory: DOMAIN_MEMORY },
      listener,
    );
    try {
      await createNetbench(
        host,
        { name: connectorName, ip: connectorIp, memory: DOMAIN_MEMORY },
        { ...connector, peerIp: listenerIp },
      );
      try {
        // The side that measures: the sink (last byte) or the ping (last round trip).
        const measuring = connector.role === 'source' ? listenerName : connectorName;
        await this.waitFinished(host, measuring);
        return {
          listener: await sideResult(host, listenerName),
          connector: await sideResult(host, connectorName),
        };
      } finally {
        await host.client.delete(`/v1/domains/${connectorName}`);
      }
    } finally {
      await host.client.delete(`/v1/domains/${listenerName}`);
    }
  }

  private async waitFinished(host: LocalHost, name: string): Promise<void> {
    const deadline = performance.now() + this.timeoutMs;
    for (;;) {
      const { program, counters } = await sideResult(host, name);
      if (program.errors > 0)
        throw new Error(`${name} (${program.role}) failed: ${program.lastError}`);
      if (program.finished) return;
      if (performance.now() > deadline)
        throw new Error(
          `${name} (${program.role}) on ${host.name} did not finish in ${this.timeoutMs} ms: ` +
            `${JSON.stringify(program)}; XENVMC counters ${JSON.stringify(counters)}`,
        );
      await sleepMs(POLL_INTERVAL_MS);
    }
  }
}

async function sideResult(host: LocalHost, name: string): Promise<SideResult> {
  const view = await host.client.get<DomainView>(`/v1/domains/${name}`);
  const program = view.stats?.programs[0]?.stats;
  const xenvmc = view.stats?.xenvmc;
  if (!program || !xenvmc)
    throw new Error(`${name} on ${host.name} reports no netbench or XENVMC stats (${view.status})`);
  return { program, counters: xenvmc.counters, mode: xenvmc.mode };
}

/**
 * Throughput of one path in bytes/s; throws unless the sink got every byte and the channel
 * carried (channel path) at least `CHANNEL_SHARE_MIN` of them, or (netfront path) none.
 */
async function measureRate(
  runner: PointRunner,
  path: Path,
  messageBytes: number,
  bytes: number,
): Promise<{ rate: number; channelBytes: number }> {
  const { listener } = await runner.run(
    path,
    { role: 'sink', port: PORT },
    { role: 'source', port: PORT, bytes, messageBytes },
  );
  const label = `${path} ${sizeLabel(messageBytes)} point (host mode ${listener.mode})`;
  if (listener.program.bytesReceived !== bytes)
    throw new Error(`${label}: the sink got ${listener.program.bytesReceived} of ${bytes} B`);
  const channelBytes = listener.counters.channelBytesReceived;
  if (path === 'channel' && channelBytes < CHANNEL_SHARE_MIN * bytes)
    throw new Error(
      `${label}: the channel carried only ${channelBytes} of ${bytes} B ` +
        `(< ${CHANNEL_SHARE_MIN * 100} %): ${JSON.stringify(listener.counters)}`,
    );
  if (path === 'netfront' && channelBytes !== 0)
    throw new Error(`${label}: ${channelBytes} B went over a channel, expected none`);
  return { rate: listener.program.throughputBytesPerSec, channelBytes };
}

/**
 * Ping-pong of one path: median and p99 round trip in ms. On the channel path both sides must
 * have received at least the measured rounds' bytes over the channel.
 */
async function measureRoundTrips(
  runner: PointRunner,
  path: Path,
  s: Settings,
): Promise<{ medianMs: number; p99Ms: number; channelBytes: number }> {
  const { listener, connector } = await runner.run(
    path,
    { role: 'echo', port: PORT },
    {
      role: 'ping',
      port: PORT,
      messageBytes: PING_MESSAGE_BYTES,
      rounds: s.pingRounds,
      warmupRounds: s.pingWarmupRounds,
    },
  );
  const measuredBytes = s.pingRounds * PING_MESSAGE_BYTES;
  const channelBytes = Math.min(
    listener.counters.channelBytesReceived,
    connector.counters.channelBytesReceived,
  );
  if (path === 'channel' && channelBytes < measuredBytes)
    throw new Error(
      `channel ping point: the channel carried ${channelBytes} B one way, fewer than the ` +
        `${measuredBytes} B of the measured rounds: ` +
        JSON.stringify([listener.counters, connector.counters]),
    );
  if (path === 'netfront' && channelBytes !== 0)
    throw new Error(`netfront ping point: ${channelBytes} B went over a channel, expected none`);
  return {
    medianMs: connector.program.rttMedianMs,
    p99Ms: connector.program.rttP99Ms,
    channelBytes,
  };
}

// ---- the benchmark ----------------------------------------------------------------------------

/** A throughput figure of the channel against one baseline, with the target at 64 KiB. */
function rateFigure(
  messageBytes: number,
  against: string,
  value: number[],
  baseline: number[],
  target: { text: string; met: (ratio: number) => boolean } | null,
  checksum: string,
): BenchFigure {
  const valueMBs = median(value) / 1e6;
  const baselineMBs = median(baseline) / 1e6;
  const ratio = valueMBs / baselineMBs;
  const samples = (list: number[]): string => list.map((r) => (r / 1e6).toFixed(1)).join(', ');
  return {
    name: `channel ${sizeLabel(messageBytes)} messages / ${against}`,
    value: valueMBs,
    baseline: baselineMBs,
    unit: 'MB/s',
    ratio,
    target: target?.text ?? 'none (reported)',
    pass: target ? target.met(ratio) : null,
    checksum,
    notes: `samples MB/s: ${samples(value)}; baseline ${samples(baseline)}`,
  };
}

/**
 * XENVMC channel throughput (64 B-1 MiB) and 64 B latency against the netfront path, kernel TCP
 * loopback and memcpy, with the targets at 64 KiB.
 */
export const channelVsNetfront: Benchmark = {
  id: 'xenvmc-channel',
  title:
    'XENVMC shared-memory channel vs netfront path vs kernel TCP loopback (64 B-1 MiB) ' +
    'and vs memcpy (64 KiB); 64 B latency',
  async run(mode) {
    const s = settings(mode);
    const figures: BenchFigure[] = [];
    const paths = ['channel', 'netfront'] as const;
    const cluster = await LocalCluster.start({
      hostNames: paths.map((path) => HOST_OF_PATH[path].name),
      link: 'unlimited',
      hostArgs: Object.fromEntries(
        paths.map((path) => [HOST_OF_PATH[path].name, ['--xenvmc-mode', HOST_OF_PATH[path].mode]]),
      ),
    });
    try {
      const runner = new PointRunner(
        {
          channel: cluster.host(HOST_OF_PATH.channel.name),
          netfront: cluster.host(HOST_OF_PATH.netfront.name),
        },
        s.pointTimeoutMs,
      );
      const sizes = (mode === 'smoke' ? SMOKE_MESSAGE_SIZES_BYTES : MESSAGE_SIZES_BYTES).filter(
        (size) => s.onlySizeKib === 0 || size === s.onlySizeKib * 1024,
      );
      for (const messageBytes of sizes) {
        const bytes = totalBytesFor(messageBytes, s);
        const isTarget = messageBytes === TARGET_MESSAGE_BYTES;
        const tcpRates: number[] = [];
        const memcpyRates: number[] = [];
        const rates: Record<Path, number[]> = { channel: [], netfront: [] };
        let channelBytes = 0;
        let memcpyChecksum = 0;
        for (let rep = 0; rep < s.repetitions; rep++) {
          tcpRates.push(await tcpThroughput(messageBytes, bytes));
          for (const path of paths) {
            const point = await measureRate(runner, path, messageBytes, bytes);
            rates[path].push(point.rate);
            if (path === 'channel') channelBytes += point.channelBytes;
          }
          if (isTarget) {
            const copy = memcpyRate(messageBytes, s.memcpyBytes);
            memcpyRates.push(copy.rate);
            memcpyChecksum += copy.checksum;
          }
        }
        const checksum =
          `${s.repetitions} x ${bytes} B delivered per path; ` +
          `${channelBytes} B over the channel`;
        figures.push(
          rateFigure(
            messageBytes,
            'netfront path',
            rates.channel,
            rates.netfront,
            isTarget ? { text: '>= 8', met: (ratio) => ratio >= 8 } : null,
            checksum,
          ),
          rateFigure(
            messageBytes,
            'kernel TCP loopback',
            rates.channel,
            tcpRates,
            isTarget ? { text: '> 1', met: (ratio) => ratio > 1 } : null,
            checksum,
          ),
        );
        if (isTarget)
          figures.push(
            rateFigure(
              messageBytes,
              'memcpy (TypedArray.set, 64 KiB copies)',
              rates.channel,
              memcpyRates,
              { text: '>= 0.5', met: (ratio) => ratio >= 0.5 },
              `${checksum}; memcpy ${s.repetitions} x ${s.memcpyBytes} B, sum ${memcpyChecksum}`,
            ),
          );
      }
      const tcpRtts = await tcpRoundTrips(s.pingRounds, s.pingWarmupRounds, PING_MESSAGE_BYTES);
      const tcpRtt = { medianMs: median(tcpRtts), p99Ms: quantile(tcpRtts, 0.99) };
      const channelRtt = await measureRoundTrips(runner, 'channel', s);
      const netfrontRtt = await measureRoundTrips(runner, 'netfront', s);
      for (const [label, pick] of [
        ['median', (r: { medianMs: number }) => r.medianMs],
        ['p99', (r: { p99Ms: number }) => r.p99Ms],
      ] as const) {
        const value = (pick(channelRtt) / 2) * 1000;
        for (const [against, baselineMs] of [
          ['netfront path', pick(netfrontRtt)],
          ['kernel TCP loopback', pick(tcpRtt)],
        ] as const) {
          const baseline = (baselineMs / 2) * 1000;
          figures.push({
            name: `channel 64 B one-way latency (${label} RTT/2) / ${against}`,
            value,
            baseline,
            unit: 'µs',
            ratio: value / baseline,
            target: 'none (reported)',
            pass: null,
            checksum:
              `${s.pingRounds} round trips after ${s.pingWarmupRounds} warm-up; ` +
              `${channelRtt.channelBytes} B each way over the channel`,
          });
        }
      }
      return figures;
    } finally {
      await cluster.stop();
    }
  },
};
