/**
 * `npm run bench`: runs every benchmark in real mode, one at a time (two cores cannot host
 * two busy benchmarks), prints one table of ratios with their targets and writes it as JSON to
 * bench/results/latest.json. `BENCH_ONLY=id,id` runs a subset; `BENCH_MODE=smoke` runs tiny.
 */
import { execSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { textTable } from '../src/report/table.ts';
import { type BenchFigure, type BenchMode, type Benchmark, machine } from './harness.ts';
import { logDirtyCost } from './memory/log-dirty.bench.ts';
import { preCopyModel } from './migration/model.bench.ts';
import { migrationThroughput } from './migration/throughput.bench.ts';
import { channelVsNetfront } from './net/channel.bench.ts';
import { netfrontThroughput } from './net/netfront.bench.ts';
import { soak } from './soak/soak.bench.ts';

export const BENCHMARKS: Benchmark[] = [
  logDirtyCost,
  migrationThroughput,
  preCopyModel,
  netfrontThroughput,
  channelVsNetfront,
  soak,
];

const mode = (process.env.BENCH_MODE ?? 'real') as BenchMode;
const only = process.env.BENCH_ONLY?.split(',');
const results: { id: string; title: string; figures: BenchFigure[]; error?: string }[] = [];
for (const bench of BENCHMARKS.filter((b) => !only || only.includes(b.id))) {
  process.stderr.write(`running ${bench.id}: ${bench.title}...\n`);
  try {
    results.push({ id: bench.id, title: bench.title, figures: await bench.run(mode) });
  } catch (error) {
    results.push({
      id: bench.id,
      title: bench.title,
      figures: [],
      error: (error as Error).message,
    });
    process.stderr.write(`  failed: ${(error as Error).message}\n`);
  }
}
const rows = results.flatMap((r) =>
  r.figures.map((f) => [
    r.id,
    f.name,
    `${f.value.toFixed(3)} ${f.unit}`,
    `${f.baseline.toFixed(3)} ${f.unit}`,
    f.ratio.toFixed(3),
    f.target,
    f.pass === null ? '-' : f.pass ? 'yes' : 'NO',
  ]),
);
process.stdout.write(
  `${textTable(['bench', 'figure', 'value', 'baseline', 'ratio', 'target', 'met'], rows)}\n`,
);
let commit = 'unknown';
try {
  commit = execSync('git rev-parse --short HEAD', { encoding: 'utf8' }).trim();
} catch {
  // Not a git checkout: the commit stays unknown.
}
mkdirSync(new URL('./results/', import.meta.url), { recursive: true });
const out = new URL('./results/latest.json', import.meta.url);
writeFileSync(
  out,
  `${JSON.stringify({ mode, commit, machine: machine(), at: new Date().toISOString(), results }, null, 2)}\n`,
);
process.stderr.write(`wrote ${out.pathname}\n`);
if (results.some((r) => r.error)) process.exitCode = 1;
