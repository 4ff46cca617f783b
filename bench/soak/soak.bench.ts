/**
 * Soak (issue 8): many domains on a host, streams between pairs of them, and migrations back
 * and forth between two hosts in a loop for a bounded time. Figures: migrations completed and
 * failed, streams intact at the end, and the peak resident memory of the host processes
 * against what their domains hold (so a leak shows as a ratio that grows with the duration).
 *
 * Not covered yet: 1000 concurrent guest connections (a domain's socket slots come from its
 * sockbuf region: 16 per 64 MiB domain with the default 256 KiB buffers).
 */
import { readFileSync } from 'node:fs';
import { sleepMs } from '../../src/core/clock.ts';
import { LocalCluster, type LocalHost } from '../../src/experiments/local-cluster.ts';
import type { StreamerStats } from '../../src/workloads/streamer.ts';
import { domainStatus, migrateAndWait } from '../../test/support/hosts.ts';
import { type BenchFigure, type Benchmark, param } from '../harness.ts';

const DOMAIN_MIB = 16;

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

export const soak: Benchmark = {
  id: 'soak',
  title: 'soak: domains streaming in pairs, migrations back and forth, host memory bounded',
  async run(mode) {
    const pairs = param('soak_pairs', { smoke: 2, real: 16 }, mode);
    const seconds = param('soak_seconds', { smoke: 4, real: 120 }, mode);
    const streamBytes = param('soak_stream_mib', { smoke: 4, real: 256 }, mode) * 2 ** 20;
    // Advance mode: channels are set up, kept through migrations and finished, over and over.
    const cluster = await LocalCluster.start({
      hostNames: ['h1', 'h2'],
      link: 'unlimited',
      xenvmcMode: 'advance',
    });
    try {
      const [h1, h2] = [cluster.host('h1'), cluster.host('h2')];
      const where = new Map<string, LocalHost>();
      for (let p = 0; p < pairs; p++) {
        const common = { memory: `${DOMAIN_MIB}MiB`, tenant: `t${p % 4}` };
        const port = 6000 + p;
        await h1.client.post('/v1/domains', {
          ...common,
          name: `s${p}`,
          ip: `10.78.${p}.1`,
          programs: [{ kind: 'streamer', params: { role: 'server', port, bytes: streamBytes } }],
        });
        await h1.client.post('/v1/domains', {
          ...common,
          name: `c${p}`,
          ip: `10.78.${p}.2`,
          programs: [
            {
              kind: 'streamer',
              params: { role: 'client', port, peerIp: `10.78.${p}.1`, bytes: streamBytes },
            },
          ],
        });
        where.set(`s${p}`, h1);
        where.set(`c${p}`, h1);
      }
      let completed = 0;
      let failed = 0;
      let peakRss = 0;
      const names = [...where.keys()];
      const deadline = performance.now() + seconds * 1000;
      for (let k = 0; performance.now() < deadline; k++) {
        const name = names[k % names.length]!;
        const from = where.get(name)!;
        const to = from === h1 ? h2 : h1;
        const record = await migrateAndWait(from, name, to.link);
        if (record.status === 'completed') {
          completed++;
          where.set(name, to);
        } else failed++;
        for (const host of [h1, h2])
          peakRss = Math.max(peakRss, residentBytes(host.process.pid).peak);
      }
      // Let the streams finish, then check every direction's digest.
      let intact = 0;
      const streamDeadline = performance.now() + 120_000;
      for (let p = 0; p < pairs; p++) {
        for (;;) {
          const stats = await Promise.all(
            [`s${p}`, `c${p}`].map(async (name) => {
              const view = await where
                .get(name)!
                .client.get<{ stats: { programs: { stats: StreamerStats }[] } }>(
                  `/v1/domains/${name}`,
                );
              return view.stats.programs[0]!.stats;
            }),
          );
          const [server, client] = stats as [StreamerStats, StreamerStats];
          if ((server.finished && client.finished) || performance.now() > streamDeadline) {
            if (
              server.receiveCrc === client.sendCrc &&
              client.receiveCrc === server.sendCrc &&
              server.bytesReceived === streamBytes &&
              client.bytesReceived === streamBytes
            )
              intact++;
            break;
          }
          await sleepMs(100);
        }
      }
      for (const name of names) {
        if ((await domainStatus(where.get(name)!, name)) !== 'running') failed++;
      }
      const domainBytes = pairs * 2 * DOMAIN_MIB * 2 ** 20;
      const figures: BenchFigure[] = [
        {
          name: `migrations completed in ${seconds} s (${pairs * 2} domains)`,
          value: completed,
          baseline: 1,
          unit: 'migrations',
          ratio: completed,
          target: 'all, none failed',
          pass: failed === 0 && completed > 0,
          notes: `${failed} failed`,
        },
        {
          name: 'stream pairs intact at the end (both directions, CRC-32)',
          value: intact,
          baseline: pairs,
          unit: 'pairs',
          ratio: intact / pairs,
          target: '= 1',
          pass: intact === pairs,
        },
        {
          name: 'peak host RSS / memory of the domains (both hosts, each)',
          value: peakRss / 2 ** 20,
          baseline: domainBytes / 2 ** 20,
          unit: 'MiB',
          ratio: peakRss / domainBytes,
          target: 'bounded (about 1 + runtime overhead; must not grow with the duration)',
          pass: null,
        },
      ];
      return figures;
    } finally {
      await cluster.stop();
    }
  },
};
