/**
 * `xenvmc demo faults`: seeded fault-injection runs (src/experiments/fault-runs.ts). Prints the
 * seed first, so any run can be replayed with `--seed`, then one line per run and the totals.
 */
import { InputError } from '../core/errors.ts';
import {
  FAULT_KINDS,
  type FaultKind,
  type FaultReport,
  runFaults,
} from '../experiments/fault-runs.ts';

export interface DemoFaultsOptions {
  seed?: string;
  runs: string;
  /** Only these fault kinds, comma-separated. */
  only?: string;
  json: boolean;
  quiet: boolean;
}

export async function runDemoFaults(options: DemoFaultsOptions): Promise<FaultReport> {
  const seed =
    options.seed === undefined ? Math.floor(Math.random() * 2 ** 32) : Number(options.seed);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)
    throw new InputError(`--seed '${options.seed}' must be an unsigned 32-bit integer`);
  const runs = Number(options.runs);
  if (!Number.isInteger(runs) || runs < 1 || runs > 1000)
    throw new InputError(`--runs '${options.runs}' must be an integer from 1 to 1000`);
  const kinds = (options.only?.split(',').map((k) => k.trim()) ?? [...FAULT_KINDS]) as FaultKind[];
  const unknown = kinds.filter((k) => !(FAULT_KINDS as readonly string[]).includes(k));
  if (unknown.length)
    throw new InputError(`--only: ${unknown.join(', ')} not one of ${FAULT_KINDS.join(', ')}`);
  const say = (line: string): void => {
    if (!options.quiet) process.stderr.write(`${line}\n`);
  };
  say(`xenvmc demo faults: seed ${seed} (replay with --seed ${seed}), ${runs} runs`);
  return runFaults(seed, runs, say, kinds);
}

export function printFaultReport(report: FaultReport): void {
  const lines: [string, string | number][] = [
    ['seed', report.seed],
    ['faults injected', report.faultsInjected],
    ['migrations completed', report.migrationsCompleted],
    ['migrations rolled back', report.migrationsRolledBack],
    ['domains lost (must be 0)', report.domainsLost],
    ['domains duplicated (must be 0)', report.domainsDuplicated],
    ['stream bytes checked', report.bytesChecked],
    ['stream bytes lost (must be 0)', report.bytesLost],
  ];
  const width = Math.max(...lines.map(([k]) => k.length));
  for (const [key, value] of lines) process.stdout.write(`${key.padEnd(width)}  ${value}\n`);
  const problems = report.runs.flatMap((r) =>
    r.problems.map((p) => `run ${r.run} (${r.fault}): ${p}`),
  );
  for (const problem of problems) process.stdout.write(`PROBLEM ${problem}\n`);
}
