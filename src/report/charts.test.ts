/**
 * Goal: every chart renders to an SVG in Node (no canvas, no DOM), with its title, axis titles
 * and the scaled labels, and failed runs are never drawn as results; rendering a 40-run report
 * stays fast.
 * Method: synthetic results (test data, see `test-results.ts`), rendered through vega.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  chartSpecs,
  formatFileSize,
  renderCharts,
  renderSvg,
  subtitleLines,
  wrapText,
} from './charts.ts';
import { fixtureResults } from './test-results.ts';

const CHART_IDS = ['tmig', 'volume', 'rounds', 'regions', 'latency'];

describe('charts', () => {
  it('renders all five charts of a 40-run results file to SVG, well under a few seconds', async () => {
    const results = fixtureResults();
    assert.equal(results.runs.length, 40, 'the fixture has 40 runs');
    const startMs = performance.now();
    const charts = await renderCharts(results);
    const elapsedMs = performance.now() - startMs;
    assert.deepEqual(
      charts.map((c) => c.id),
      CHART_IDS,
      'the five charts, in report order',
    );
    for (const chart of charts) {
      assert.match(chart.svg, /^<svg[\s>]/, `${chart.id} is an SVG element`);
      assert.ok(
        chart.svg.includes(chart.title.replace(/&/g, '&amp;')),
        `${chart.id} has its title`,
      );
      assert.ok(chart.svg.includes('Scaled or simulated: TEST DATA'), `${chart.id} says scaled`);
      assert.ok(!/<script/i.test(chart.svg), `${chart.id} has no script`);
      assert.ok(chart.caption.length > 0, `${chart.id} has a caption`);
    }
    // Axis titles with units.
    const svgOf = (id: string): string => charts.find((c) => c.id === id)?.svg ?? '';
    assert.ok(svgOf('tmig').includes('Total migration time (s)'), 'Tmig axis in seconds');
    assert.ok(svgOf('volume').includes('(MB/s)'), 'volume axis in MB/s');
    assert.ok(svgOf('latency').includes('Latency (ms)'), 'latency axis in ms');
    process.stderr.write(`# rendered 5 charts of 40 runs in ${elapsedMs.toFixed(0)} ms\n`);
    // About 0.8 s on an idle 2-core machine, 2-3 s at load 11; the bound only catches a blow-up.
    assert.ok(elapsedMs < 10_000, `rendering took ${elapsedMs.toFixed(0)} ms`);
  });

  it('draws no point from a failed run and names it in the caption', () => {
    const results = fixtureResults({
      tables: [{ table: 'table1', fileSizeBytes: 1 << 20 }],
      nValues: [4, 8],
      failures: { 'table1/xenvmc/n8/r1': 'migration failed', 'table1/advance/n8/r1': 'mails lost' },
    });
    const specs = chartSpecs(results);
    const tmig = specs.find((s) => s.id === 'tmig');
    assert.ok(tmig, 'the Tmig chart exists');
    const values = (tmig.spec as { data: { values: { mode: string; n: number }[] } }).data.values;
    assert.ok(
      !values.some((v) => v.n === 8 && (v.mode === 'xenvmc' || v.mode === 'advance')),
      'failed points are not drawn',
    );
    assert.match(tmig.caption, /table1 n=8 xenvmc/, 'the caption names the missing point');
    const volume = specs.find((s) => s.id === 'volume');
    assert.match(volume?.caption ?? '', /advance: no successful run/, 'the focus caption says so');
  });

  it('renders charts of an empty results file without throwing', async () => {
    const results = fixtureResults({ nValues: [] });
    const specs = chartSpecs(results);
    assert.deepEqual(
      specs.map((s) => s.id),
      ['tmig'],
      'no focus point, Tmig chart only',
    );
    const svg = await renderSvg(specs[0]!.spec);
    assert.match(svg, /^<svg/, 'still an SVG');
  });

  it('wraps subtitles and lists the scaled lines once', () => {
    assert.deepEqual(wrapText('aa bb cc', 5), ['aa bb', 'cc'], 'wraps at spaces');
    assert.deepEqual(
      subtitleLines('Point.', ['One.', 'Two']),
      ['Point.', 'Scaled or simulated: One; Two.'],
      'scaled lines joined',
    );
    assert.deepEqual(subtitleLines(null, []), [], 'nothing scaled, no subtitle');
  });

  it('names attachment sizes as a scenario gives them', () => {
    assert.equal(formatFileSize(3 * 2 ** 20), '3 MiB', 'binary');
    assert.equal(formatFileSize(1_000_000), '1 MB', 'decimal');
    assert.equal(formatFileSize(1536), '1.50 KiB', 'other');
  });
});
