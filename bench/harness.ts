/**
 * The benchmark harness: every benchmark reports figures as ratios against a baseline measured
 * in the same run, with the target the issue sets, so a result reads the same on any machine.
 * Each benchmark has a smoke mode (tiny parameters, run by `npm test` to prove it works, its
 * figures meaningless) and a real mode (`npm run bench`). Parameters are named and can be
 * overridden through the environment (`BENCH_<NAME>`).
 */
import os from 'node:os';

export type BenchMode = 'smoke' | 'real';

export interface BenchFigure {
  /** What is compared, e.g. "full-round migration throughput / raw TCP". */
  name: string;
  value: number;
  baseline: number;
  unit: string;
  /** value / baseline (or the figure itself where there is no baseline). */
  ratio: number;
  /** The target, in words, e.g. ">= 0.8". */
  target: string;
  /** Whether the ratio meets the target; null where the figure has no target. */
  pass: boolean | null;
  /** A checksum or count of what was moved, so a run can be checked for having done work. */
  checksum?: string;
  notes?: string;
}

export interface Benchmark {
  id: string;
  title: string;
  run(mode: BenchMode): Promise<BenchFigure[]>;
}

/** A numeric parameter: the env override `BENCH_<NAME>`, else the mode's default. */
export function param(name: string, defaults: Record<BenchMode, number>, mode: BenchMode): number {
  const override = process.env[`BENCH_${name.toUpperCase()}`];
  if (override !== undefined) {
    const value = Number(override);
    if (!Number.isFinite(value))
      throw new Error(`BENCH_${name.toUpperCase()}='${override}' is not a number`);
    return value;
  }
  return defaults[mode];
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

export function machine(): Record<string, string | number> {
  return {
    node: process.version,
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryBytes: os.totalmem(),
    platform: `${os.platform()} ${os.release()}`,
  };
}
