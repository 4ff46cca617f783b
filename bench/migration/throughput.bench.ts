/**
 * Full-round migration throughput of a paused domain full of random bytes over unshaped
 * loopback, against raw TCP between the same two host processes (a link test), measured in
 * the same run. Target (issue 2): >= 0.8 of raw TCP.
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
    const repetitions = param('repetitions', { smoke: 1, real: 3 }, mode);
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
      const migrationSeconds: number[] = [];
      let where = 0;
      for (let rep = 0; rep < repetitions; rep++) {
        const [source, target] = [hosts[where]!, hosts[1 - where]!] as [LocalHost, LocalHost];
        const raw = await source.client.post<LinkTestResult>('/v1/link-test', {
          to: target.link,
          bytes: pageCount * 4096,
        });
        rawRates.push(raw.bytesPerSec);
        const record = await migrateAndWait(source, 'cold', target.link);
        if (record.status !== 'completed')
          throw new Error(`migration failed: ${record.error?.message}`);
        const stats = record.stats as MigrationStats;
        if (!stats.memoryVerified) throw new Error('memory not verified');
        const first = stats.rounds[0]!;
        migrationRates.push((first.pagesSent * 4096 * 1000) / first.durationMs);
        migrationSeconds.push(stats.totalMigrationTimeMs / 1000);
        where = 1 - where;
      }
      const migration = median(migrationRates);
      const raw = median(rawRates);
      const figures: BenchFigure[] = [
        {
          name: 'round-1 migration throughput / raw TCP link test',
          value: migration / 1e9,
          baseline: raw / 1e9,
          unit: 'GB/s',
          ratio: migration / raw,
          target: '>= 0.8',
          pass: migration / raw >= 0.8,
          checksum: `${repetitions} migrations of ${pageCount} pages, memory verified`,
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
