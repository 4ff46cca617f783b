/**
 * The report's charts: Vega-Lite specifications built from a results file (pure), and their
 * rendering to SVG strings in Node (`vega-lite` compiles, `vega` renders headless with
 * `renderer: 'none'`; SVG output needs no canvas, text widths are estimated).
 *
 * Charts, in report order:
 * 1. `tmig`: total migration time vs mails per mode, one panel per table (the paper's Figures
 *    10 and 12): the median over successful runs, with min-max error bars.
 * 2. `volume`: the source host's egress (migration + inter-VM bytes/s) vs seconds since the
 *    migrate command, per mode (Figure 11), at the focus point.
 * 3. `rounds`: pages sent in, and dirtied during, each pre-copy round, per mode, focus point.
 * 4. `regions`: pages sent by memory region, stacked, per mode, focus point.
 * 5. `latency`: mail latency vs the mail's start, with the migration window shaded, per mode,
 *    focus point.
 *
 * The focus point is one run per mode (largest n of `table1`, repetition 1 by default; see
 * `focusRuns` for what happens when that run failed): per-run series such as the volume over
 * time cannot be averaged over repetitions without inventing a time base.
 *
 * Every chart has a title, axis titles with units, and a subtitle naming the point and, when
 * the results say anything was scaled or simulated, those lines too.
 */
import { parse, View } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { formatBytes } from '../core/units.ts';
import type { ResultsFile, RunRecord } from '../experiments/results.ts';
import { REGION_NAMES } from '../memory/layout.ts';
import {
  chooseFocusPoint,
  type FocusPoint,
  type FocusRun,
  focusRuns,
  migrationTrafficEndMs,
  type Summary,
  summarize,
} from './summary.ts';

/** A chart before rendering: its Vega-Lite specification and the words around it. */
export interface ChartSpec {
  /** Stable id, also the HTML anchor: `tmig`, `volume`, `rounds`, `regions`, `latency`. */
  id: string;
  title: string;
  /** One or more sentences shown under the chart: what is drawn and what is missing. */
  caption: string;
  spec: TopLevelSpec;
}

/** A rendered chart. */
export interface Chart {
  id: string;
  title: string;
  caption: string;
  /** A standalone `<svg>` element. */
  svg: string;
}

export interface ChartOptions {
  /** The point of the per-run charts; default the largest n of `table1`, repetition 1. */
  focus?: Partial<FocusPoint>;
}

/** Subtitle lines wrap at this many characters: charts are about 600-800 px wide. */
const SUBTITLE_LINE_CHARS = 110;
/** Panel sizes, px. */
const PANEL_WIDTH = 360;
const WIDE_WIDTH = 640;
const PANEL_HEIGHT = 260;
/** Shared look: system fonts, a white background, a colour per mode. */
const CHART_CONFIG = {
  font: 'system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif',
  background: 'white',
  title: { anchor: 'start', fontSize: 15, subtitleFontSize: 11, subtitleColor: '#555' },
  axis: { labelFontSize: 11, titleFontSize: 12 },
  legend: { labelFontSize: 11, titleFontSize: 12 },
} as const;

/** Splits `text` into lines of at most `width` characters at spaces. */
export function wrapText(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter((w) => w.length > 0)) {
    if (line.length > 0 && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line.length > 0 ? `${line} ${word}` : word;
    }
  }
  if (line.length > 0) lines.push(line);
  return lines;
}

/** The subtitle lines every chart carries: what it shows, then what was scaled. */
export function subtitleLines(first: string | null, scaled: readonly string[]): string[] {
  const lines = first ? wrapText(first, SUBTITLE_LINE_CHARS) : [];
  if (scaled.length > 0) {
    lines.push(
      ...wrapText(
        `Scaled or simulated: ${scaled.map((line) => line.replace(/[.\s]+$/, '')).join('; ')}.`,
        SUBTITLE_LINE_CHARS,
      ),
    );
  }
  return lines;
}

function titleOf(text: string, subtitle: string[]): { text: string; subtitle?: string[] } {
  return subtitle.length > 0 ? { text, subtitle } : { text };
}

/** One colour per mode in every chart: the domain is every mode of the results, so a mode
 *  missing from one chart (its runs failed) does not shift the others' colours. */
function modeColor(modes: readonly string[]) {
  return {
    field: 'mode',
    type: 'nominal',
    title: 'Mode',
    sort: [...modes],
    scale: { domain: [...modes] },
  } as const;
}

/** An attachment size as a scenario would give it: `1 MiB`, `3 MB`, else `formatBytes`. */
export function formatFileSize(bytes: number): string {
  if (bytes > 0 && bytes % 2 ** 20 === 0) return `${bytes / 2 ** 20} MiB`;
  if (bytes > 0 && bytes % 1e6 === 0) return `${bytes / 1e6} MB`;
  return formatBytes(bytes);
}

function tableLabel(summary: Summary, table: string): string {
  const point = summary.points.find((p) => p.table === table);
  return point ? `${table}: ${formatFileSize(point.fileSizeBytes)} attachments` : table;
}

/** Chart 1: Tmig vs mails per mode, a panel per table (Figures 10 and 12). */
export function tmigChartSpec(summary: Summary, scaled: readonly string[]): ChartSpec {
  const values = summary.points
    .filter((p) => p.totalMigrationTimeMs !== null)
    .map((p) => ({
      table: tableLabel(summary, p.table),
      mode: p.mode,
      mails: p.mails,
      n: p.n,
      medianS: p.totalMigrationTimeMs!.median / 1000,
      minS: p.totalMigrationTimeMs!.min / 1000,
      maxS: p.totalMigrationTimeMs!.max / 1000,
      runs: `${p.totalMigrationTimeMs!.count} of ${p.runCount}`,
    }));
  const missing = summary.points.filter((p) => p.totalMigrationTimeMs === null);
  const x = { field: 'mails', type: 'quantitative', title: 'Mails (n × n)' } as const;
  const color = modeColor(summary.modes);
  const title = 'Total migration time vs mails (paper Figures 10 and 12)';
  const spec = {
    title: titleOf(title, subtitleLines('Median over successful runs; bars: min to max.', scaled)),
    data: { values },
    facet: {
      column: {
        field: 'table',
        type: 'nominal',
        title: null,
        sort: summary.tables.map((t) => tableLabel(summary, t)),
      },
    },
    spec: {
      width: PANEL_WIDTH,
      height: PANEL_HEIGHT,
      layer: [
        {
          mark: { type: 'line', point: true },
          encoding: {
            x,
            y: { field: 'medianS', type: 'quantitative', title: 'Total migration time (s)' },
            color,
          },
        },
        {
          mark: { type: 'errorbar', ticks: true },
          encoding: {
            x,
            y: { field: 'minS', type: 'quantitative', title: 'Total migration time (s)' },
            y2: { field: 'maxS' },
            color,
          },
        },
      ],
    },
    config: CHART_CONFIG,
  } satisfies TopLevelSpec;
  const caption = [
    'Tmig runs from the start of round 1 to the target resuming the domain (setup excluded).',
    missing.length > 0
      ? `No successful run, not drawn: ${missing.map((p) => `${p.table} n=${p.n} ${p.mode}`).join(', ')}.`
      : '',
  ]
    .filter((s) => s.length > 0)
    .join(' ');
  return { id: 'tmig', title, caption, spec };
}

function focusLine(focus: FocusPoint, runs: readonly FocusRun[]): string {
  const sample = runs.find((r) => r.run !== null)?.run;
  const mails = sample ? ` (${sample.mails} mails of ${formatFileSize(sample.fileSizeBytes)})` : '';
  return `${focus.table}, n = ${focus.n}${mails}, repetition ${focus.repetition}, one run per mode.`;
}

function focusCaption(runs: readonly FocusRun[], base: string): string {
  const notes = runs.map((r) => r.note).filter((note): note is string => note !== null);
  return notes.length > 0 ? `${base} Substitutions: ${notes.join('; ')}.` : base;
}

/** Chart 2: source egress (migration + inter-VM) over time per mode (Figure 11). */
export function volumeChartSpec(
  focus: FocusPoint,
  runs: readonly FocusRun[],
  modes: readonly string[],
  scaled: readonly string[],
): ChartSpec {
  const values: Record<string, unknown>[] = [];
  for (const { mode, run } of runs) {
    if (!run) continue;
    for (const sample of run.volume) {
      const bytesPerSec = sample.bytesPerSec.migration + sample.bytesPerSec.intervm;
      values.push({
        kind: 'sample',
        mode,
        tS: (sample.tMs + sample.intervalMs / 2) / 1000,
        megabytesPerSec: bytesPerSec / 1e6,
      });
    }
    const endMs = migrationTrafficEndMs(run);
    if (endMs !== null) values.push({ kind: 'end', mode, tS: endMs / 1000 });
  }
  const color = modeColor(modes);
  const x = {
    field: 'tS',
    type: 'quantitative',
    title: 'Time since the migrate command (s)',
  } as const;
  const title = 'Network volume during migration (paper Figure 11)';
  const spec = {
    title: titleOf(title, subtitleLines(focusLine(focus, runs), scaled)),
    width: WIDE_WIDTH,
    // Tall enough for the y title: without a canvas, vega estimates text widths generously.
    height: 300,
    data: { values },
    layer: [
      {
        transform: [{ filter: "datum.kind === 'sample'" }],
        mark: { type: 'line', interpolate: 'monotone' },
        encoding: {
          x,
          y: {
            field: 'megabytesPerSec',
            type: 'quantitative',
            title: 'Migration + inter-VM (MB/s)',
          },
          color,
        },
      },
      {
        transform: [{ filter: "datum.kind === 'end'" }],
        mark: { type: 'rule', strokeDash: [4, 3] },
        encoding: { x, color },
      },
      { mark: { type: 'rule', color: '#999' }, encoding: { x: { datum: 0 } } },
    ],
    config: CHART_CONFIG,
  } satisfies TopLevelSpec;
  const caption = focusCaption(
    runs,
    'Bytes per second leaving the source host, migration and inter-VM classes summed, at the ' +
      'midpoint of each sampling interval. Grey line: the migrate command; dashed lines: the ' +
      'end of the last interval carrying migration traffic, per mode (the paper reads 245 s vs ' +
      '350 s off its Figure 11).',
  );
  return { id: 'volume', title, caption, spec };
}

/** Chart 3: pages sent in, and dirtied during, each pre-copy round, per mode. */
export function roundsChartSpec(
  focus: FocusPoint,
  runs: readonly FocusRun[],
  modes: readonly string[],
  scaled: readonly string[],
): ChartSpec {
  const values: Record<string, unknown>[] = [];
  for (const { mode, run } of runs) {
    if (!run) continue;
    for (const row of run.roundRows) {
      const round = row.phase === 'stopCopy' ? `${row.round} (stop)` : String(row.round);
      values.push({
        mode,
        round,
        roundIndex: row.round,
        measure: 'Sent in the round',
        pages: row.pagesSent,
      });
      values.push({
        mode,
        round,
        roundIndex: row.round,
        measure: 'Dirtied while it ran',
        pages: row.pagesDirtied,
      });
    }
  }
  const title = 'Pages per pre-copy round';
  const spec = {
    title: titleOf(title, subtitleLines(focusLine(focus, runs), scaled)),
    data: { values },
    facet: {
      row: {
        field: 'measure',
        type: 'nominal',
        title: null,
        sort: ['Sent in the round', 'Dirtied while it ran'],
      },
    },
    spec: {
      width: WIDE_WIDTH,
      height: 180,
      mark: 'bar',
      encoding: {
        x: {
          field: 'round',
          type: 'ordinal',
          title: 'Round (the last is stop-and-copy)',
          sort: { field: 'roundIndex' },
          axis: { labelAngle: 0 },
        },
        xOffset: { field: 'mode', type: 'nominal', sort: [...modes] },
        y: {
          field: 'pages',
          type: 'quantitative',
          title: 'Pages (4 KiB)',
        },
        color: modeColor(modes),
      },
    },
    resolve: { scale: { y: 'independent' } },
    config: CHART_CONFIG,
  } satisfies TopLevelSpec;
  const caption = focusCaption(
    runs,
    'Top: pages sent in each round (round 1 sends all memory; later rounds resend what was ' +
      'dirtied). Bottom: pages the guest dirtied while the round ran. Each panel has its own ' +
      'y scale.',
  );
  return { id: 'rounds', title, caption, spec };
}

/** Chart 4: pages sent by memory region, stacked, per mode. */
export function regionsChartSpec(
  focus: FocusPoint,
  runs: readonly FocusRun[],
  modes: readonly string[],
  scaled: readonly string[],
): ChartSpec {
  const values: Record<string, unknown>[] = [];
  for (const { mode, run } of runs) {
    if (!run?.sentByRegion) continue;
    for (const region of REGION_NAMES) {
      values.push({
        mode,
        region,
        regionIndex: REGION_NAMES.indexOf(region),
        pages: run.sentByRegion[region],
      });
    }
  }
  const title = 'Pages sent by memory region (Vmig split)';
  const spec = {
    title: titleOf(title, subtitleLines(focusLine(focus, runs), scaled)),
    width: 420,
    height: PANEL_HEIGHT,
    data: { values },
    mark: 'bar',
    encoding: {
      x: {
        field: 'mode',
        type: 'nominal',
        title: 'Mode',
        sort: [...modes],
        axis: { labelAngle: 0 },
      },
      y: { field: 'pages', type: 'quantitative', title: 'Pages sent (4 KiB)', stack: 'zero' },
      color: { field: 'region', type: 'nominal', title: 'Region', sort: [...REGION_NAMES] },
      order: { field: 'regionIndex' },
    },
    config: CHART_CONFIG,
  } satisfies TopLevelSpec;
  const caption = focusCaption(
    runs,
    'kernel: netfront rings and control; sockbuf: socket buffers; pagecache: mailbox files; ' +
      'program: the guest programs. Traffic over the netfront path dirties kernel and sockbuf ' +
      'pages that pre-copy must resend.',
  );
  return { id: 'regions', title, caption, spec };
}

function migrationWindowEndMs(run: RunRecord): number | null {
  if (run.totalMigrationTimeMs === null) return null;
  return (run.migration?.setupTimeMs ?? 0) + run.totalMigrationTimeMs;
}

/** Chart 5: mail latency vs the mail's start, the migration window shaded, a panel per mode. */
export function latencyChartSpec(
  focus: FocusPoint,
  runs: readonly FocusRun[],
  modes: readonly string[],
  scaled: readonly string[],
): ChartSpec {
  const values: Record<string, unknown>[] = [];
  const noWindow: string[] = [];
  for (const { mode, run } of runs) {
    if (!run) continue;
    const originMs = run.migrationStartMs ?? 0;
    const endMs = migrationWindowEndMs(run);
    if (run.migrationStartMs !== null && endMs !== null) {
      values.push({ kind: 'window', mode, startS: 0, endS: endMs / 1000 });
    } else {
      noWindow.push(mode);
    }
    for (const mail of run.mailLatencies) {
      values.push({
        kind: 'mail',
        mode,
        tS: (mail.startMs - originMs) / 1000,
        latencyMs: mail.latencyMs,
        when: mail.duringMigration ? 'during migration' : 'outside migration',
      });
    }
  }
  const title = 'Mail latency during migration';
  const spec = {
    title: titleOf(title, subtitleLines(focusLine(focus, runs), scaled)),
    data: { values },
    facet: { row: { field: 'mode', type: 'nominal', title: null, sort: [...modes] } },
    spec: {
      width: WIDE_WIDTH,
      height: 120,
      layer: [
        {
          transform: [{ filter: "datum.kind === 'window'" }],
          mark: { type: 'rect', color: '#f2c14e', opacity: 0.25 },
          encoding: {
            x: {
              field: 'startS',
              type: 'quantitative',
              title: 'Mail start, seconds since the migrate command (s)',
            },
            x2: { field: 'endS' },
          },
        },
        {
          transform: [{ filter: "datum.kind === 'mail'" }],
          mark: { type: 'point', filled: true, size: 16, opacity: 0.7 },
          encoding: {
            x: {
              field: 'tS',
              type: 'quantitative',
              title: 'Mail start, seconds since the migrate command (s)',
            },
            y: { field: 'latencyMs', type: 'quantitative', title: 'Latency (ms)' },
            color: {
              field: 'when',
              type: 'nominal',
              title: 'Mail started',
              sort: ['outside migration', 'during migration'],
              scale: { range: ['#4c78a8', '#e45756'] },
            },
          },
        },
      ],
    },
    config: CHART_CONFIG,
  } satisfies TopLevelSpec;
  const base =
    'Each dot is one mail: from connect to the server accepting its data. Shaded: from the ' +
    'migrate command to the target resuming the domain (setup + Tmig).' +
    (noWindow.length > 0 ? ` No migration window recorded for: ${noWindow.join(', ')}.` : '');
  return { id: 'latency', title, caption: focusCaption(runs, base), spec };
}

/** The five charts' specifications for a results file (pure). */
export function chartSpecs(results: ResultsFile, options: ChartOptions = {}): ChartSpec[] {
  const summary = summarize(results.runs);
  const scaled = results.scaled;
  const specs = [tmigChartSpec(summary, scaled)];
  const focus = chooseFocusPoint(results.runs, options.focus);
  if (focus) {
    const runs = focusRuns(results.runs, focus);
    specs.push(
      volumeChartSpec(focus, runs, summary.modes, scaled),
      roundsChartSpec(focus, runs, summary.modes, scaled),
      regionsChartSpec(focus, runs, summary.modes, scaled),
      latencyChartSpec(focus, runs, summary.modes, scaled),
    );
  }
  return specs;
}

/** Compiles a Vega-Lite spec and renders it to an SVG string, headless. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const vegaSpec = compile(spec).spec;
  const view = new View(parse(vegaSpec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Every chart of the report, rendered to SVG. */
export async function renderCharts(
  results: ResultsFile,
  options: ChartOptions = {},
): Promise<Chart[]> {
  const charts: Chart[] = [];
  for (const { id, title, caption, spec } of chartSpecs(results, options)) {
    charts.push({ id, title, caption, svg: await renderSvg(spec) });
  }
  return charts;
}
