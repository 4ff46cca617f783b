/**
 * Soak (issue 8): many domains on a host holding many concurrent guest connections, and
 * migrations back and forth between two hosts in a loop for a bounded time. Real mode: 32
 * domains of 32 MiB on h1 (16 server/client pairs), 64 connections per pair (1024 in all),
 * each carrying a paced, checked byte stream both ways for the whole soak (the `conn-swarm`
 * program, src/workloads/conn-swarm.ts), while every domain in turn migrates to the other host.
 *
 * Figures: migrations completed and failed; connections open at the peak and at the lowest
 * sample during the loop (all must stay open); bytes verified against bytes expected, with
 * bytes lost or duplicated (any is a failure: the bench throws after printing its figures);
 * each host's peak resident memory (VmHWM) against the most domain memory it held; XENVMC
 * grants and event channels released against created once every stream ended (any left live
 * is a leak); and both hosts' resident memory at the end of the loop against its start (a
 * leak shows as a ratio that grows with the duration).
 *
 * Domains ask for 16 KiB socket buffers (`socketBufferBytes`, as Linux's initial TCP buffers):
 * with the default 256 KiB a 32 MiB domain has 8 socket slots, with 16 KiB 128.
 *
 * Parameters (`BENCH_<NAME>`): soak_pairs, soak_connections_per_pair, soak_seconds,
 * soak_rate_bytes (per connection and direction, per second), soak_tail_seconds (pace kept
 * beyond the loop so connections outlive it), soak_sample_seconds; and BENCH_SOAK_MODE, the
 * hosts' XENVMC mode (default advance; `off`, `xenvmc` and `xenvmc-suspend` run the same soak).
 * Smoke mode (CI): 2 pairs of 16 MiB domains, 4 connections each, a 3 s loop.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { sleepMs } from '../../src/core/clock.ts';
import { LocalCluster, type LocalHost } from '../../src/experiments/local-cluster.ts';
import type { ConnSwarmStats } from '../../src/workloads/conn-swarm.ts';
import { XENVMC_MODES, type XenvmcMode } from '../../src/xenvmc/protocol.ts';
import { domainStatus, migrateAndWait } from '../../test/support/hosts.ts';
import { type BenchFigure, type BenchMode, type Benchmark, param } from '../harness.ts';

const MIB = 2 ** 20;
/** Small socket buffers so one domain holds 64 connections and more (see the header). */
const SOCKET_BUFFER_BYTES = 16 * 1024;
/** Pacing period of the swarm: five small writes a second per connection and direction. */
const TICK_MS = 200;
/** Longest wait for every connection to open, and for every stream to finish after the loop. */
const OPEN_WAIT_MS = 120_000;
const FINISH_WAIT_EXTRA_MS = 120_000;

/** Resident set of a process now and its peak (VmHWM), in bytes; 0 if unreadable. */
function residentBytes(pid: number | undefined): { now: number; peak: number } {
  if (pid === undefined) return { now: 0, peak: 0 };
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
    return { now: kib('VmRSS') * 1024, peak: kib('VmHWM') * 1024 };
  } catch {
    return { now: 0, peak: 0 };
  }
}

/** Peak RSS among the samples of the middle and of the last third of [startMs, endMs]. */
function rssThirds(
  series: readonly { atMs: number; bytes: number }[],
  startMs: number,
  endMs: number,
): { middle: number; last: number } {
  const third = (endMs - startMs) / 3;
  const peakBetween = (from: number, to: number) =>
    Math.max(0, ...series.filter((s) => s.atMs >= from && s.atMs <= to).map((s) => s.bytes));
  return {
    middle: peakBetween(startMs + third, startMs + 2 * third),
    last: peakBetween(startMs + 2 * third, endMs),
  };
}

function soakMode(): XenvmcMode {
  const mode = process.env.BENCH_SOAK_MODE ?? 'advance';
  if (!(XENVMC_MODES as readonly string[]).includes(mode))
    throw new Error(`BENCH_SOAK_MODE='${mode}' is not one of ${XENVMC_MODES.join(', ')}`);
  return mode as XenvmcMode;
}

interface HostView {
  memoryUsedBytes: number;
  xenvmc: {
    grantsLive: number;
    grantsCreated: number;
    grantsReleased: number;
    evtchnsLive: number;
    evtchnsCreated: number;
    evtchnsReleased: number;
  };
}

/** How long the channels of finished streams may take to be torn down after the soak. */
const TEARDOWN_WAIT_MS = 20_000;

/** Sums of the swarms' figures over a set of domains. */
function total(stats: ConnSwarmStats[], key: keyof ConnSwarmStats): number {
  return stats.reduce((sum, s) => sum + Number(s[key]), 0);
}

export const soak: Benchmark = {
  id: 'soak',
  title:
    'soak: 32 domains, 1000+ concurrent checked guest connections, migrations back and forth, host memory bounded',
  async run(mode: BenchMode) {
    const pairs = param('soak_pairs', { smoke: 2, real: 16 }, mode);
    const perPair = param('soak_connections_per_pair', { smoke: 4, real: 64 }, mode);
    const seconds = param('soak_seconds', { smoke: 3, real: 180 }, mode);
    const rate = param('soak_rate_bytes', { smoke: 4096, real: 2048 }, mode);
    const tailSeconds = param('soak_tail_seconds', { smoke: 5, real: 120 }, mode);
    const sampleSeconds = param('soak_sample_seconds', { smoke: 1, real: 10 }, mode);
    const domainMib = mode === 'smoke' ? 16 : 32;
    // Each connection is paced to last `seconds + tailSeconds` from its opening: the tail covers
    // booting the clients and opening every connection (over a minute on a loaded machine).
    const bytesPerConnection = rate * (seconds + tailSeconds);
    const xenvmcMode = soakMode();
    const cluster = await LocalCluster.start({
      hostNames: ['h1', 'h2'],
      link: 'unlimited',
      xenvmcMode,
    });
    try {
      const [h1, h2] = [cluster.host('h1'), cluster.host('h2')];
      const where = new Map<string, LocalHost>();
      const swarm = (role: 'server' | 'client', p: number) => ({
        kind: 'conn-swarm',
        params: {
          role,
          port: 6000 + p,
          ...(role === 'client' ? { peerIp: `10.78.${p}.1`, connectTriesMax: 600 } : {}),
          connections: perPair,
          bytesPerConnection,
          bytesPerSecond: rate,
          tickMs: TICK_MS,
          seed: p + 1,
        },
      });
      const create = (name: string, p: number, role: 'server' | 'client') => {
        where.set(name, h1);
        return h1.client.post('/v1/domains', {
          name,
          memory: `${domainMib}MiB`,
          tenant: `t${p % 4}`,
          ip: `10.78.${p}.${role === 'server' ? 1 : 2}`,
          socketBufferBytes: SOCKET_BUFFER_BYTES,
          programs: [swarm(role, p)],
        });
      };
      const range = Array.from({ length: pairs }, (_, p) => p);
      const setupStart = performance.now();
      await Promise.all(range.map((p) => create(`s${p}`, p, 'server')));
      // No connection opens before this, so none closes before `lifetimeEndsAt`.
      const clientsStart = performance.now();
      await Promise.all(range.map((p) => create(`c${p}`, p, 'client')));
      const names = range.flatMap((p) => [`s${p}`, `c${p}`]);

      const swarmStats = (name: string): Promise<ConnSwarmStats> =>
        where
          .get(name)!
          .client.get<{ stats: { programs: { stats: ConnSwarmStats }[] } }>(`/v1/domains/${name}`)
          .then((view) => view.stats.programs[0]!.stats);
      const allStats = () => Promise.all(names.map(swarmStats));
      const clientsOpen = async () =>
        total(await Promise.all(range.map((p) => swarmStats(`c${p}`))), 'open');

      // Every connection open before the loop starts.
      const wanted = pairs * perPair;
      const openDeadline = performance.now() + OPEN_WAIT_MS;
      for (let open = 0, k = 0; open < wanted && performance.now() < openDeadline; k++) {
        open = await clientsOpen();
        if (k % 20 === 0)
          process.stderr.write(
            `  soak: ${((performance.now() - setupStart) / 1000).toFixed(0)} s, ${open}/${wanted} connections open\n`,
          );
        await sleepMs(500);
      }
      const setupSeconds = (performance.now() - setupStart) / 1000;

      let completed = 0;
      let failed = 0;
      let openMin = Number.POSITIVE_INFINITY;
      let openPeak = 0;
      const heldPeak = new Map<LocalHost, number>([
        [h1, 0],
        [h2, 0],
      ]);
      let grantsPeak = 0;
      const rssBoth = () => residentBytes(h1.process.pid).now + residentBytes(h2.process.pid).now;
      // Both hosts' RSS at every sample of the loop, to compare its thirds (a leak grows on).
      const rssSeries: { atMs: number; bytes: number }[] = [];
      const sample = async () => {
        const open = await clientsOpen();
        openMin = Math.min(openMin, open);
        openPeak = Math.max(openPeak, open);
        let grants = 0;
        for (const host of [h1, h2]) {
          const view = await host.client.get<HostView>('/v1/host');
          heldPeak.set(host, Math.max(heldPeak.get(host)!, view.memoryUsedBytes));
          grants += view.xenvmc.grantsLive;
        }
        grantsPeak = Math.max(grantsPeak, grants);
        const rss = rssBoth();
        rssSeries.push({ atMs: performance.now(), bytes: rss });
        process.stderr.write(
          `  soak: ${((performance.now() - setupStart) / 1000).toFixed(0)} s, ${completed} migrations (${failed} failed), ${open}/${wanted} connections open, ${grants} channel grants, RSS of both hosts ${(rss / MIB).toFixed(0)} MiB\n`,
        );
      };
      await sample();
      const rssAtStart = rssBoth();
      const loopStart = performance.now();
      // The loop ends before the first connection may end (a quarter of the tail to spare for
      // the last migration and sample), so the set-up time shortens the loop if it outgrew the tail.
      const lifetimeEndsAt = clientsStart + (seconds + tailSeconds * 0.75) * 1000;
      const deadline = Math.min(loopStart + seconds * 1000, lifetimeEndsAt);
      let nextSample = loopStart + sampleSeconds * 1000;
      // The first sample past the loop's middle: growth from there on is what a leak shows
      // (the first half also fills both hosts with domains and channels).
      let rssAtMiddle: number | null = null;
      const failures: string[] = [];
      for (let k = 0; performance.now() < deadline; k++) {
        const name = names[k % names.length]!;
        const from = where.get(name)!;
        const to = from === h1 ? h2 : h1;
        const record = await migrateAndWait(from, name, to.link);
        if (record.status === 'completed') {
          completed++;
          where.set(name, to);
        } else {
          failed++;
          failures.push(`${name}: ${record.error?.code ?? '?'}: ${record.error?.message ?? ''}`);
        }
        if (performance.now() >= nextSample) {
          await sample();
          nextSample = performance.now() + sampleSeconds * 1000;
          if (rssAtMiddle === null && performance.now() >= (loopStart + deadline) / 2) {
            rssAtMiddle = rssBoth();
          }
        }
      }
      await sample();
      const rssAtEnd = rssBoth();
      const loopSeconds = (performance.now() - loopStart) / 1000;
      const thirds = rssThirds(rssSeries, loopStart, performance.now());

      // Let every connection carry its last bytes, then check both directions of each.
      const finishDeadline =
        performance.now() + tailSeconds * 1000 + setupSeconds * 1000 + FINISH_WAIT_EXTRA_MS;
      let stats = await allStats();
      while (!stats.every((s) => s.finished) && performance.now() < finishDeadline) {
        await sleepMs(1000);
        stats = await allStats();
      }
      for (const name of names) {
        if ((await domainStatus(where.get(name)!, name)) !== 'running') failed++;
      }
      // Every stream ended and closed its socket: every channel's grant and event channel must
      // be released on both hosts (a leak shows here, and as grants growing during the loop).
      const held = async () => {
        const sum = { grants: 0, evtchns: 0, created: 0, released: 0 };
        for (const host of [h1, h2]) {
          const { xenvmc } = await host.client.get<HostView>('/v1/host');
          sum.grants += xenvmc.grantsLive;
          sum.evtchns += xenvmc.evtchnsLive;
          sum.created += xenvmc.grantsCreated + xenvmc.evtchnsCreated;
          sum.released += xenvmc.grantsReleased + xenvmc.evtchnsReleased;
        }
        return sum;
      };
      let left = await held();
      const teardownDeadline = performance.now() + TEARDOWN_WAIT_MS;
      while (left.grants + left.evtchns > 0 && performance.now() < teardownDeadline) {
        await sleepMs(500);
        left = await held();
      }
      const expected = 2 * wanted * bytesPerConnection;
      const verified = total(stats, 'bytesVerified');
      const mismatched = total(stats, 'mismatchedBytes');
      const excess = total(stats, 'excessBytes');
      const short = total(stats, 'shortBytes');
      const connectionsFailed = total(stats, 'failed');
      const lostOrDuplicated = expected - verified + excess;
      const peaks = [h1, h2].map((host) => residentBytes(host.process.pid).peak);
      const load = os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(' ');
      const figures: BenchFigure[] = [
        {
          name: `migrations completed in ${loopSeconds.toFixed(0)} s (${names.length} domains, ${xenvmcMode})`,
          value: completed,
          baseline: 1,
          unit: 'migrations',
          ratio: completed,
          target: 'all, none failed',
          pass: failed === 0 && completed > 0,
          notes: `${failed} failed${failures.length ? ` (${failures.slice(0, 3).join('; ')})` : ''}; every domain migrated ${(completed / names.length).toFixed(1)} times on average; set-up (boots, every connection open) ${setupSeconds.toFixed(0)} s; load average ${load}`,
        },
        {
          name: 'guest connections open: lowest sample during the loop / wanted',
          value: openMin,
          baseline: wanted,
          unit: 'connections',
          ratio: openMin / wanted,
          target: '= 1 (all held open for the whole soak)',
          pass: openMin === wanted,
          notes: `peak ${openPeak}; ${connectionsFailed} connection ends failed; ${rate} B/s per connection and direction`,
        },
        {
          name: 'stream bytes verified / expected (every connection, both directions)',
          value: verified,
          baseline: expected,
          unit: 'B',
          ratio: verified / expected,
          target: '= 1, none lost or duplicated',
          pass: lostOrDuplicated === 0 && mismatched === 0,
          checksum: `${expected} B expected over ${wanted} connections`,
          notes: `lost or duplicated ${lostOrDuplicated} B (mismatched ${mismatched}, short ${short}, excess ${excess})`,
        },
        ...[h1, h2].map(
          (host, i): BenchFigure => ({
            name: `${host.name} peak RSS / most domain memory it held`,
            value: peaks[i]! / MIB,
            baseline: heldPeak.get(host)! / MIB,
            unit: 'MiB',
            ratio: peaks[i]! / heldPeak.get(host)!,
            target: 'bounded (domain memory + runtime + channel FIFOs)',
            pass: null,
            notes: `up to ${grantsPeak} live channel grants on both hosts (2 FIFOs of 1 MiB each, outside domain memory)`,
          }),
        ),
        {
          name: 'channel grants + event channels released / created, after every stream ended',
          // Mode off creates none: shown as 1 of 1.
          value: Math.max(left.released, left.created === 0 ? 1 : 0),
          baseline: Math.max(left.created, 1),
          unit: 'entries',
          ratio: left.created === 0 ? 1 : left.released / left.created,
          target: '= 1 (none left live)',
          pass: left.grants + left.evtchns === 0,
          notes: `${left.grants} grants and ${left.evtchns} event channels still live on both hosts; up to ${grantsPeak} grants live during the loop`,
        },
        {
          name: 'RSS of both hosts: end of the loop / start of the loop',
          value: rssAtEnd / MIB,
          baseline: rssAtStart / MIB,
          unit: 'MiB',
          ratio: rssAtEnd / rssAtStart,
          target: 'reported (the loop fills both hosts)',
          pass: null,
        },
        {
          name: 'RSS of both hosts: end of the loop / its middle',
          value: rssAtEnd / MIB,
          baseline: (rssAtMiddle ?? rssAtEnd) / MIB,
          unit: 'MiB',
          ratio: rssAtEnd / (rssAtMiddle ?? rssAtEnd),
          target: 'about 1 (must not grow with the duration)',
          pass: null,
          notes: rssAtMiddle === null ? 'no sample past the middle: loop too short' : undefined,
        },
        {
          name: 'RSS of both hosts: peak in the last third of the loop / peak in its middle third',
          value: thirds.last / MIB,
          baseline: thirds.middle / MIB,
          unit: 'MiB',
          ratio: thirds.middle === 0 ? 0 : thirds.last / thirds.middle,
          target: 'about 1 (a leak keeps growing)',
          pass: null,
          notes:
            thirds.middle === 0
              ? 'no sample in the middle third: loop too short for the sample period'
              : `samples (MiB, every ${sampleSeconds} s): ${rssSeries.map((s) => (s.bytes / MIB).toFixed(0)).join(' ')}`,
        },
      ];
      if (lostOrDuplicated !== 0 || mismatched !== 0) {
        process.stderr.write(`${JSON.stringify(figures, null, 2)}\n`);
        throw new Error(
          `soak: ${lostOrDuplicated} stream bytes lost or duplicated, ${mismatched} mismatched (figures above)`,
        );
      }
      return figures;
    } catch (error) {
      // A host that died or stopped answering: its exit and last log lines say why.
      for (const host of cluster.hosts) {
        const { exitCode, signalCode } = host.process;
        process.stderr.write(
          `soak: ${host.name} exit ${exitCode ?? '-'} signal ${signalCode ?? '-'}; last log lines:\n${host.log.slice(-40).join('\n')}\n`,
        );
      }
      throw error;
    } finally {
      await cluster.stop();
    }
  },
};
