/**
 * `xenvmc experiment [SCENARIO]`: runs a scenario (a preset name or a YAML/JSON file) on a
 * testbed, shows which point runs and how far it is, writes results and the report to
 * `--out`, and prints the summary table. `npm start` is `xenvmc experiment quick`.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import { InputError } from '../core/errors.ts';
import { formatBytes } from '../core/units.ts';
import { presetScenario } from '../experiments/presets.ts';
import type { ResultsFile } from '../experiments/results.ts';
import { type ExperimentProgress, runExperiment } from '../experiments/runner.ts';
import { loadScenarioFile, planRuns, type Scenario } from '../experiments/scenario.ts';
import type { TestbedKind } from '../experiments/testbed.ts';
import { writeReport } from '../report/render.ts';
import { XENVMC_MODES } from '../xenvmc/protocol.ts';

export interface ExperimentCommandOptions {
  out?: string;
  netns?: boolean;
  remote?: boolean;
  modes?: string;
  repetitions?: string;
  json: boolean;
  quiet: boolean;
  verbose?: boolean;
}

/** A preset name, or a path to a scenario file. */
export function resolveScenario(spec: string): Scenario {
  return /[./\\]/.test(spec) ? loadScenarioFile(spec) : presetScenario(spec);
}

function timestamp(): string {
  return new Date().toISOString().replace(/[:]/g, '-').replace(/\..*$/, '');
}

export async function experimentCommand(
  scenarioSpec: string,
  options: ExperimentCommandOptions,
): Promise<ResultsFile> {
  let scenario = resolveScenario(scenarioSpec);
  if (options.modes) {
    const modes = options.modes.split(',').map((m) => m.trim());
    const bad = modes.filter((m) => !(XENVMC_MODES as readonly string[]).includes(m));
    if (bad.length) {
      throw new InputError(`--modes: ${bad.join(', ')} not one of ${XENVMC_MODES.join(', ')}`);
    }
    scenario = { ...scenario, modes: modes as Scenario['modes'] };
  }
  if (options.repetitions) {
    const repetitions = Number(options.repetitions);
    if (!Number.isInteger(repetitions) || repetitions < 1 || repetitions > 50) {
      throw new InputError(
        `--repetitions '${options.repetitions}' must be an integer from 1 to 50`,
      );
    }
    scenario = { ...scenario, repetitions };
  }
  if (options.netns && options.remote)
    throw new InputError('--netns and --remote exclude each other');
  const testbed: TestbedKind = options.netns ? 'netns' : options.remote ? 'remote' : 'loopback';
  const outDir = path.resolve(
    options.out ?? path.join('results', `${scenario.name}-${timestamp()}`),
  );
  const total = planRuns(scenario).length;
  const say = (line: string): void => {
    if (!options.quiet) process.stderr.write(`${line}\n`);
  };
  say(
    `xenvmc experiment ${scenario.name}: ${total} runs (${scenario.modes.join(', ')}; ${scenario.tables.map((t) => `${t.name}: n=${t.n.join(',')} with ${formatBytes(t.fileSize)}`).join('; ')}; ${scenario.repetitions} repetitions) on ${testbed} hosts`,
  );
  say(`results go to ${outDir}`);
  const display = new ExperimentDisplay(total, !options.quiet);
  let results: ResultsFile;
  try {
    results = await runExperiment({
      scenario,
      testbed,
      outDir,
      onProgress: (event) => display.update(event),
      onHostLog: options.verbose
        ? (host, line) => process.stderr.write(`[${host}] ${line}\n`)
        : undefined,
    });
  } finally {
    display.stop();
  }
  const report = await writeReport(outDir);
  const failed = results.runs.filter((r) => !r.ok);
  if (options.json) {
    process.stdout.write(
      `${JSON.stringify({ outDir, files: report.files, runs: results.runs.length, failed: failed.length, scaled: results.scaled }, null, 2)}\n`,
    );
  } else {
    process.stdout.write(`${readFileSync(path.join(outDir, 'report.md'), 'utf8')}\n`);
    process.stdout.write(
      `\n${results.runs.length} runs, ${failed.length} failed. Written: ${report.files.join(', ')}\n`,
    );
  }
  return results;
}

/** One progress bar over the runs; on a pipe, a line per run instead. */
class ExperimentDisplay {
  private readonly bar: cliProgress.SingleBar | null;
  private readonly enabled: boolean;
  private current = '';
  private mails = '';
  private migration = '';

  constructor(total: number, enabled: boolean) {
    this.enabled = enabled;
    this.bar =
      enabled && process.stderr.isTTY
        ? new cliProgress.SingleBar(
            {
              format: 'run {value}/{total} [{bar}] {run} | {mails} | {migration}',
              hideCursor: true,
              stream: process.stderr,
            },
            cliProgress.Presets.shades_classic,
          )
        : null;
    this.bar?.start(total, 0, { run: '', mails: '', migration: '' });
  }

  update(event: ExperimentProgress): void {
    if (!this.enabled) return;
    switch (event.type) {
      case 'testbed':
        if (!this.bar) process.stderr.write(`${event.message}\n`);
        break;
      case 'run-start':
        this.current = event.run.id;
        this.mails = '';
        this.migration = '';
        if (!this.bar)
          process.stderr.write(`run ${event.index}/${event.total} ${event.run.id} ...\n`);
        break;
      case 'mails':
        this.mails = `mails ${event.answered}/${event.expected}`;
        break;
      case 'migration':
        this.migration = `migration ${event.progress.phase} round ${event.progress.round}`;
        break;
      case 'run-end': {
        const r = event.record;
        if (!this.bar) {
          process.stderr.write(
            r.ok
              ? `  ok: Tmig ${r.totalMigrationTimeMs?.toFixed(0)} ms, downtime ${r.downtimeMs?.toFixed(1)} ms, Vmig ${r.pagesSent} pages, mails ${r.mailsIntact}/${r.mailsExpected}\n`
              : `  FAILED: ${r.failure}\n`,
          );
        } else {
          // A failed run shows as FAILED in the bar; its cause is in the report.
          this.bar.update(event.index, {
            run: this.current,
            mails: this.mails,
            migration: r.ok ? 'ok' : 'FAILED',
          });
        }
        return;
      }
    }
    this.bar?.update({ run: this.current, mails: this.mails, migration: this.migration });
  }

  stop(): void {
    this.bar?.stop();
  }
}
