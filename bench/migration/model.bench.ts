/**
 * Measured Tmig of a constant-rate dirtier next to the analytical pre-copy model of Liu et al.
 * (HPDC 2011): Tmig = Vmem/R * (1 - L^(n+1)) / (1 - L), L = D/R. R is the link rate measured
 * in round 1 of the same migration, D the dirtier's rate, n the measured number of rounds
 * after the first. No target: the model assumes every write dirties a new page, so for a
 * uniform dirtier over a finite working set it overestimates D and the ratio shows by how much.
 */
import { LocalCluster } from '../../src/experiments/local-cluster.ts';
import { liuModel } from '../../src/migration/model.ts';
import type { MigrationStats } from '../../src/migration/stats.ts';
import { createDirtier, migrateAndWait } from '../../test/support/hosts.ts';
import { type BenchFigure, type Benchmark, param } from '../harness.ts';

export const preCopyModel: Benchmark = {
  id: 'precopy-model',
  title: 'measured Tmig vs the Liu et al. pre-copy model (1 Gbit/s link)',
  async run(mode) {
    const memoryMiB = param('memory_mib', { smoke: 16, real: 256 }, mode);
    const rates = mode === 'smoke' ? [1000] : [0, 2000, 8000, 16000];
    const cluster = await LocalCluster.start({ hostNames: ['h1', 'h2'], link: '1gbit' });
    const figures: BenchFigure[] = [];
    try {
      const [h1, h2] = [cluster.host('h1'), cluster.host('h2')];
      for (const rate of rates) {
        const name = `d${rate}`;
        await createDirtier(h1, name, { memory: `${memoryMiB}MiB`, dirtyRatePagesPerSec: rate });
        await new Promise((resolve) => setTimeout(resolve, 500));
        const record = await migrateAndWait(h1, name, h2.link);
        if (record.status !== 'completed')
          throw new Error(`migration failed: ${record.error?.message}`);
        const stats = record.stats as MigrationStats;
        const first = stats.rounds[0]!;
        const linkBytesPerSec = (first.bytesOnWire * 1000) / first.durationMs;
        const model = liuModel({
          vmemBytes: stats.vmemPages * 4096,
          linkBytesPerSec,
          dirtyBytesPerSec: rate * 4096,
          rounds: stats.rounds.length - 1,
        });
        figures.push({
          name: `Tmig measured / model, dirtier ${rate} pages/s, ${stats.rounds.length} rounds`,
          value: stats.totalMigrationTimeMs,
          baseline: model.tmigMs,
          unit: 'ms',
          ratio: stats.totalMigrationTimeMs / model.tmigMs,
          target: 'none (reported)',
          pass: null,
          checksum: `Vmig ${stats.pagesSent} pages (model ${Math.round(model.vmigBytes / 4096)})`,
        });
        await h2.client.delete(`/v1/domains/${name}`);
      }
      return figures;
    } finally {
      await cluster.stop();
    }
  },
};
