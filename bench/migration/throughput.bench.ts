/**
 * Full-round migration throughput of a paused domain full of random bytes over unshaped
 * loopback, against raw TCP between the same two host processes (a link test), measured in
 * the same run. Target (issue 2): >= 0.8 of raw TCP.
 *
 * Method: paired trials. Each trial runs a link test and a migration in the same direction
 * between the same two processes, one right after the other (which goes first alternates),
 * and gives one ratio; the figure is the median ratio over the trials, with their min-max.
 * Why: on a 2-core machine shared with other work a single pair swung from 0.5 to 0.97; a
 * pair measured back to back sees about the same load, and the median of pairs ignores the
 * odd trial where a neighbour took a core during one half only.
 */
import type { LocalHost } from '../../src/experiments/local-cluster.ts';
import { LocalCluster } from '../../src/experiments/local-cluster.ts';
import type { LinkTestResult } from '../../src/hypervisor/link-test.ts';
import type { MigrationStats } from '../../src/migration/stats.ts';
import { migrateAndWait } from '../../test/support/hosts.ts';
import { type BenchFigure, type Benchmark, median, param } from '../harness.ts';

/** QEMU 7.2, 1 GiB random, paused, loopback, single channel (reference/machine-limits.md §6). */
const QEMU_REFERENCE_SECONDS = 4.68;

export const migrationThroughput: Benchmark = {
  id: 'migration-throughput',
  title:
    'full-round migration throughput vs raw TCP (paused domain, random bytes, unshaped loopback)',
  async run(mode) {
    const memoryMiB = param('memory_mib', { smoke: 16, real: 1024 }, mode);
    const trials = param('repetitions', { smoke: 1, real: 9 }, mode);
    const pageCount = (memoryMiB * 1024 * 1024) / 4096;
    const cluster = await LocalCluster.start({ hostNames: ['h1', 'h2'], link: 'unlimited' });
    try {
      const hosts = [cluster.host('h1'), cluster.host('h2')] as const;
      // Every page random: a domain whose program region is all of memory but three pages.
      await hosts[0].client.post('/v1/domains', {
        name: 'cold',
        memory: `${memoryMiB}MiB`,
        regionPages: { kernel: 1, sockbuf: 1, pagecache: 1, program: pageCount - 3 },
        programs: [{ kind: 'dirtier', params: { dirtyRatePagesPerSec: 0, fill: 'random' } }],
      });
      await hosts[0].client.post('/v1/domains/cold/pause');
      const migrationRates: number[] = [];
      const rawRates: number[] = [];
      const ratios: number[] = [];
      const migrationSeconds: number[] = [];
      let where = 0;
      for (let trial = 0; trial < trials; trial++) {
        const [source, target] = [hosts[where]!, hosts[1 - where]!] as [LocalHost, LocalHost];
        const linkTest = () =>
          source.client.post<LinkTestResult>('/v1/link-test', {
            to: target.link,
            bytes: pageCount * 4096,
          });
        const rawFirst = trial % 2 === 0;
        const rawBefore = rawFirst ? await linkTest() : null;
        const record = await migrateAndWait(source, 'cold', target.link);
        if (record.status !== 'completed')
          throw new Error(`migration failed: ${record.error?.message}`);
        const raw = rawBefore ?? (await linkTest());
        const stats = record.stats as MigrationStats;
        if (!stats.memoryVerified) throw new Error('memory not verified');
        const first = stats.rounds[0]!;
        const migrationRate = (first.pagesSent * 4096 * 1000) / first.durationMs;
        rawRates.push(raw.bytesPerSec);
        migrationRates.push(migrationRate);
        ratios.push(migrationRate / raw.bytesPerSec);
        migrationSeconds.push(stats.totalMigrationTimeMs / 1000);
        where = 1 - where;
      }
      const ratio = median(ratios);
      const spread = `${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)}`;
      const figures: BenchFigure[] = [
        {
          name: `round-1 migration throughput / raw TCP link test (median of ${trials} paired trials, ratios ${spread})`,
          value: median(migrationRates) / 1e9,
          baseline: median(rawRates) / 1e9,
          unit: 'GB/s',
          ratio,
          target: '>= 0.8',
          pass: ratio >= 0.8,
          checksum: `${trials} migrations of ${pageCount} pages, memory verified`,
          notes:
            `ratio is the median of per-trial ratios (value and baseline are medians of ` +
            `their own); ratios: ${ratios.map((r) => r.toFixed(3)).join(', ')}`,
        },
      ];
      if (mode === 'real') {
        const seconds = median(migrationSeconds) * (1024 / memoryMiB);
        figures.push({
          name: 'QEMU 7.2 time / xenvmc time, 1 GiB paused random (QEMU figure from reference/machine-limits.md, not this run)',
          value: seconds,
          baseline: QEMU_REFERENCE_SECONDS,
          unit: 's',
          ratio: QEMU_REFERENCE_SECONDS / seconds,
          target: '> 1 (xenvmc faster)',
          pass: QEMU_REFERENCE_SECONDS / seconds > 1,
        });
      }
      return figures;
    } finally {
      await cluster.stop();
    }
  },
};
