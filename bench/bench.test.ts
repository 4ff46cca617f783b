/**
 * Goal: every benchmark runs end to end in its smoke mode (tiny parameters) and reports
 * finite figures. Speed is not checked here; `npm run bench` measures it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { logDirtyCost } from './memory/log-dirty.bench.ts';
import { preCopyModel } from './migration/model.bench.ts';
import { migrationThroughput } from './migration/throughput.bench.ts';
import { channelVsNetfront } from './net/channel.bench.ts';
import { netfrontThroughput } from './net/netfront.bench.ts';
import { soak } from './soak/soak.bench.ts';

describe('benchmarks in smoke mode', () => {
  for (const bench of [
    logDirtyCost,
    migrationThroughput,
    preCopyModel,
    netfrontThroughput,
    channelVsNetfront,
    soak,
  ]) {
    it(`${bench.id} runs and reports finite figures`, async () => {
      const figures = await bench.run('smoke');
      assert.ok(figures.length > 0);
      for (const figure of figures) {
        assert.ok(
          Number.isFinite(figure.value) && figure.value > 0,
          `${figure.name}: value ${figure.value}`,
        );
        assert.ok(
          Number.isFinite(figure.baseline) && figure.baseline > 0,
          `${figure.name}: baseline`,
        );
        assert.ok(Number.isFinite(figure.ratio), `${figure.name}: ratio`);
      }
    });
  }
});
