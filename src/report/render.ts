/**
 * The experiment's report from its results file: `report.html` (self-contained: inline SVG
 * charts and CSS, no scripts, fonts or links to fetch), `report.md` (the summary table, for a
 * terminal or a README) and `results.csv` (one flat row per run).
 *
 * Method: `summarize` gives every figure (medians over successful runs only; failed runs
 * listed, never averaged in), `charts` renders the SVGs, and the functions here only lay them
 * out. Every output starts with what was scaled or simulated against the paper's testbed.
 *
 * `renderReport` is async because vega renders asynchronously (`View.toSVG` returns a
 * promise); the Markdown and CSV are also available synchronously (`renderMarkdown`,
 * `renderCsv`). `writeReport` is the only function here that touches the file system.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestbedError } from '../core/errors.ts';
import { formatBytes } from '../core/units.ts';
import { RESULTS_SCHEMA, type ResultsFile, type RunRecord } from '../experiments/results.ts';
import { REGION_NAMES } from '../memory/layout.ts';
import { type Chart, type ChartOptions, renderCharts } from './charts.ts';
import {
  PAPER_BASE_MODE,
  PAPER_LARGER_FILES,
  PAPER_METHOD_NOTES,
  PAPER_PER_POINT_NOTE,
  PAPER_PROPOSED_MODE,
  PAPER_TMIG_REDUCTION_MAX,
  PAPER_TRANSFER_END_BASE_S,
  PAPER_TRANSFER_END_PROPOSED_S,
} from './paper.ts';
import {
  chooseFocusPoint,
  focusRuns,
  migrationTrafficEndMs,
  type PointSummary,
  PROPOSED_MODE,
  type Spread,
  type Summary,
  spreadOf,
  summarize,
} from './summary.ts';
import { markdownTable } from './table.ts';

export type ReportErrorCode = 'REPORT_RESULTS_MISSING' | 'REPORT_RESULTS_INVALID';

/** The three outputs of a report, as text. */
export interface RenderedReport {
  html: string;
  markdown: string;
  csv: string;
}

/** The file names `writeReport` reads and writes inside the results directory. */
export const REPORT_FILES = {
  results: 'results.json',
  html: 'report.html',
  markdown: 'report.md',
  csv: 'results.csv',
} as const;

// ---------------------------------------------------------------------------------------------
// Numbers as text.

function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : 'n/a';
}

/** Ms as seconds with two decimals: `12345` -> `12.35`. */
function seconds(ms: number): string {
  return fixed(ms / 1000, 2);
}

/** `12.35 [11.90–13.02]`, or `n/a` when no run succeeded. */
function secondsSpread(spread: Spread | null): string {
  if (!spread) return 'n/a';
  return `${seconds(spread.median)} [${seconds(spread.min)}–${seconds(spread.max)}]`;
}

function median(spread: Spread | null, format: (value: number) => string): string {
  return spread ? format(spread.median) : 'n/a';
}

/** A fraction as a percentage: `0.375` -> `37.5 %`. */
function percent(fraction: number): string {
  return Number.isFinite(fraction) ? `${(fraction * 100).toFixed(1)} %` : 'n/a';
}

function integer(value: number): string {
  return Number.isFinite(value) ? String(Math.round(value)) : 'n/a';
}

// ---------------------------------------------------------------------------------------------
// The summary table, shared by Markdown and HTML.

/** Column titles of the summary table. */
export const SUMMARY_HEADER = [
  'table',
  'n',
  'mails',
  'mode',
  'runs ok',
  'Tmig s, median [min–max]',
  'setup s',
  'downtime ms',
  'Vmig pages',
  'Rd',
  'mails delivered/expected',
  'advance improvement over this mode',
];

function improvementCell(summary: Summary, point: PointSummary): string {
  if (point.mode === PROPOSED_MODE) return '—';
  const found = summary.improvements.find(
    (i) => i.table === point.table && i.n === point.n && i.otherMode === point.mode,
  );
  return found ? percent(found.improvement) : 'n/a';
}

/** One row per (table, n, mode), in report order. */
export function summaryRows(summary: Summary): string[][] {
  return summary.points.map((p) => [
    p.table,
    String(p.n),
    String(p.mails),
    p.mode,
    `${p.okCount}/${p.runCount}`,
    secondsSpread(p.totalMigrationTimeMs),
    median(p.setupTimeMs, seconds),
    median(p.downtimeMs, (v) => fixed(v, 1)),
    median(p.pagesSent, integer),
    median(p.overheadRatio, (v) => fixed(v, 2)),
    `${p.mailsDelivered}/${p.mailsExpected}`,
    improvementCell(summary, p),
  ]);
}

/** Largest improvement per table and other mode. */
function maximaRows(summary: Summary): string[][] {
  return summary.improvementMaxima.map((m) => [
    m.table,
    m.otherMode,
    percent(m.improvementMax),
    String(m.n),
    String(m.pointCount),
  ]);
}

const MAXIMA_HEADER = ['table', 'advance vs', 'max improvement', 'at n', 'points compared'];

// ---------------------------------------------------------------------------------------------
// Beside the paper.

/** The paper's figures and ours, one row each: [what, paper, ours]. */
export function paperComparisonRows(
  results: ResultsFile,
  summary: Summary,
  options: ChartOptions = {},
): string[][] {
  const rows: string[][] = [];
  const maxima = summary.improvementMaxima.filter((m) => m.otherMode === PAPER_BASE_MODE);
  rows.push([
    `Tmig reduction, ${PAPER_PROPOSED_MODE} vs ${PAPER_BASE_MODE} (max over points)`,
    `up to ${percent(PAPER_TMIG_REDUCTION_MAX.value!)}, more as mails grow`,
    maxima.length > 0
      ? maxima.map((m) => `${m.table}: ${percent(m.improvementMax)} (n = ${m.n})`).join('; ')
      : 'n/a (no point with successful runs in both modes)',
  ]);
  const focus = chooseFocusPoint(results.runs, options.focus);
  if (focus) {
    const byMode = new Map(focusRuns(results.runs, focus).map((f) => [f.mode, f.run]));
    const endS = (mode: string): number | null => {
      const run = byMode.get(mode);
      const endMs = run ? migrationTrafficEndMs(run) : null;
      return endMs === null ? null : endMs / 1000;
    };
    const proposedS = endS(PAPER_PROPOSED_MODE);
    const baseS = endS(PAPER_BASE_MODE);
    const at = `after the migrate command (${focus.table}, n = ${focus.n})`;
    rows.push([
      PAPER_TRANSFER_END_PROPOSED_S.label,
      `about ${PAPER_TRANSFER_END_PROPOSED_S.value} s`,
      proposedS === null ? 'n/a' : `${fixed(proposedS, 1)} s ${at}`,
    ]);
    rows.push([
      PAPER_TRANSFER_END_BASE_S.label,
      `about ${PAPER_TRANSFER_END_BASE_S.value} s`,
      baseS === null ? 'n/a' : `${fixed(baseS, 1)} s ${at}`,
    ]);
    rows.push([
      'Transfer end, proposed / base',
      fixed(PAPER_TRANSFER_END_PROPOSED_S.value! / PAPER_TRANSFER_END_BASE_S.value!, 2),
      proposedS === null || baseS === null || baseS <= 0 ? 'n/a' : fixed(proposedS / baseS, 2),
    ]);
  }
  rows.push([
    PAPER_LARGER_FILES.label,
    'longer for both; proposed still better',
    largerFiles(summary),
  ]);
  return rows;
}

/** Median Tmig of table2 over table1 per mode at the largest n both have. */
function largerFiles(summary: Summary): string {
  const tmig = (table: string, n: number, mode: string): number | null =>
    summary.points.find((p) => p.table === table && p.n === n && p.mode === mode)
      ?.totalMigrationTimeMs?.median ?? null;
  const common = summary.points
    .filter((p) => p.table === 'table1')
    .map((p) => p.n)
    .filter((n) => summary.points.some((p) => p.table === 'table2' && p.n === n));
  if (common.length === 0) return 'n/a (needs table1 and table2)';
  const n = Math.max(...common);
  const parts: string[] = [];
  for (const mode of summary.modes) {
    const one = tmig('table1', n, mode);
    const three = tmig('table2', n, mode);
    if (one !== null && three !== null && one > 0) parts.push(`${mode} ×${fixed(three / one, 2)}`);
  }
  const table2 = summary.points.filter(
    (p) => p.table === 'table2' && p.n === n && p.totalMigrationTimeMs,
  );
  const fastest = table2.sort(
    (a, b) => a.totalMigrationTimeMs!.median - b.totalMigrationTimeMs!.median,
  )[0];
  const winner = fastest ? `; fastest in table2: ${fastest.mode}` : '';
  return parts.length > 0 ? `n = ${n}, table2/table1 Tmig: ${parts.join(', ')}${winner}` : 'n/a';
}

const PAPER_HEADER = ['figure', 'paper', 'ours'];

// ---------------------------------------------------------------------------------------------
// Markdown.

function failedRows(summary: Summary): string[][] {
  return summary.failed.map((f) => [f.id, f.failure]);
}

/** `report.md`: scaled labels, the summary table per table, the paper beside ours, failures. */
export function renderMarkdown(results: ResultsFile, options: ChartOptions = {}): string {
  const summary = summarize(results.runs);
  const out: string[] = [];
  out.push(`# xenvmc experiment: ${results.scenarioName}`, '');
  out.push('**Scaled or simulated** against the paper’s testbed:', '');
  if (results.scaled.length === 0) out.push('- nothing declared');
  for (const line of results.scaled) out.push(`- ${line}`);
  out.push('');
  const m = results.machine;
  out.push(
    `Runner: ${results.runner}. Machine: ${m.cpuModel} (${m.cpus} CPUs), ${formatBytes(m.memoryBytes)}, ` +
      `Node ${m.node}, ${m.platform}, commit ${m.commit ?? 'unknown'}. ` +
      `Ran ${results.startedAt} to ${results.finishedAt}; ${results.runs.length} runs, ` +
      `${summary.failed.length} failed.`,
    '',
  );
  out.push(
    'Medians over successful runs only (failed runs are listed below and never averaged in). ' +
      'Tmig: round 1 to the target resuming; setup is apart. Improvement: 1 − advance/other, ' +
      'median Tmig.',
    '',
  );
  const rows = summaryRows(summary);
  for (const table of summary.tables) {
    out.push(`## ${table}`, '');
    out.push(
      markdownTable(
        SUMMARY_HEADER,
        rows.filter((row) => row[0] === table),
      ),
      '',
    );
  }
  if (summary.improvementMaxima.length > 0) {
    out.push('## Advance’s largest improvement in Tmig', '');
    out.push(markdownTable(MAXIMA_HEADER, maximaRows(summary)), '');
  }
  out.push('## Beside the paper', '');
  out.push(markdownTable(PAPER_HEADER, paperComparisonRows(results, summary, options)), '');
  out.push(PAPER_PER_POINT_NOTE, '');
  for (const note of PAPER_METHOD_NOTES) out.push(`- ${note}`);
  out.push('');
  out.push('## Failed runs', '');
  if (summary.failed.length === 0) out.push('None.');
  else out.push(markdownTable(['run', 'cause'], failedRows(summary)));
  out.push('');
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------
// CSV.

/** Quotes a CSV field when it must (RFC 4180): commas, quotes, CR or LF. */
export function csvField(value: string | number | boolean | null | undefined): string {
  if (value === null || value === undefined) return '';
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

type CsvValue = string | number | boolean | null | undefined;

/** The flat columns of `results.csv`, one per run; per-round rows and series are left out. */
const CSV_COLUMNS: readonly [string, (run: RunRecord) => CsvValue][] = [
  ['id', (r) => r.id],
  ['table', (r) => r.table],
  ['mode', (r) => r.mode],
  ['n', (r) => r.n],
  ['mails', (r) => r.mails],
  ['fileSizeBytes', (r) => r.fileSizeBytes],
  ['repetition', (r) => r.repetition],
  ['seed', (r) => r.seed],
  ['ok', (r) => r.ok],
  ['failure', (r) => r.failure],
  ['totalMigrationTimeMs', (r) => r.totalMigrationTimeMs],
  ['setupTimeMs', (r) => r.migration?.setupTimeMs],
  ['downtimeMs', (r) => r.downtimeMs],
  ['pagesSent', (r) => r.pagesSent],
  ['vmemPages', (r) => r.vmemPages],
  ['overheadRatio', (r) => r.overheadRatio],
  ['rounds', (r) => r.rounds],
  ['bytesOnWire', (r) => r.bytesOnWire],
  ...REGION_NAMES.map((region): [string, (run: RunRecord) => CsvValue] => [
    `sentPages_${region}`,
    (r) => r.sentByRegion?.[region],
  ]),
  ['mailsExpected', (r) => r.mailsExpected],
  ['mailsDelivered', (r) => r.mailsDelivered],
  ['mailsIntact', (r) => r.mailsIntact],
  ['mailsDuplicated', (r) => r.mailsDuplicated],
  ['mailLatencyMsMedian', (r) => spreadOf(r.mailLatencies.map((m) => m.latencyMs))?.median],
  ['mailLatencyMsMax', (r) => spreadOf(r.mailLatencies.map((m) => m.latencyMs))?.max],
  ['migrationStartMs', (r) => r.migrationStartMs],
  ['migrationTrafficEndMs', (r) => migrationTrafficEndMs(r)],
  ['workloadDurationMs', (r) => r.workloadDurationMs],
  ['channelBytes', (r) => r.channelBytes],
  ['netfrontBytes', (r) => r.netfrontBytes],
  ['policy', (r) => r.migration?.policy],
  ['stopReason', (r) => r.migration?.stopReason],
  ['memoryVerified', (r) => r.migration?.memoryVerified],
];

/** `results.csv`: a header and one row per run, CRLF line ends (RFC 4180). */
export function renderCsv(results: ResultsFile): string {
  const lines = [CSV_COLUMNS.map(([name]) => csvField(name)).join(',')];
  for (const run of results.runs) {
    lines.push(CSV_COLUMNS.map(([, pick]) => csvField(pick(run))).join(','));
  }
  return `${lines.join('\r\n')}\r\n`;
}

// ---------------------------------------------------------------------------------------------
// HTML.

/** Escapes text for HTML element content and double-quoted attributes. */
export function escapeHtml(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function htmlTable(header: readonly string[], rows: readonly string[][], className = ''): string {
  const head = header.map((h) => `<th>${escapeHtml(h)}</th>`).join('');
  const body = rows
    .map((row) => `<tr>${row.map((cell) => `<td>${escapeHtml(cell)}</td>`).join('')}</tr>`)
    .join('\n');
  const cls = className ? ` class="${className}"` : '';
  return `<table${cls}><thead><tr>${head}</tr></thead>\n<tbody>\n${body}\n</tbody></table>`;
}

const STYLE = `
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  color: #222; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.scaled { background: #fff6dd; border: 1px solid #e8c964; padding: 0.6rem 1rem; border-radius: 4px; }
.scaled strong { display: block; }
dl.machine { display: grid; grid-template-columns: max-content 1fr; gap: 0.1rem 1rem; }
dl.machine dt { font-weight: 600; } dl.machine dd { margin: 0; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } tbody tr:nth-child(even) { background: #fafafa; }
tr.failed td { color: #a40000; }
figure { margin: 1.5rem 0; overflow-x: auto; } figcaption { color: #555; max-width: 900px; }
nav a { margin-right: 0.8rem; } .note { color: #555; }
`;

function machineHtml(results: ResultsFile): string {
  const m = results.machine;
  const items: [string, string][] = [
    ['Scenario', results.scenarioName],
    ['Runner', results.runner],
    ['CPU', `${m.cpuModel} (${m.cpus} CPUs)`],
    ['Memory', formatBytes(m.memoryBytes)],
    ['Node', m.node],
    ['Platform', m.platform],
    ['Commit', m.commit ?? 'unknown'],
    ['Started', results.startedAt],
    ['Finished', results.finishedAt],
    ['Runs', String(results.runs.length)],
  ];
  return `<dl class="machine">${items
    .map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`)
    .join('')}</dl>`;
}

function scaledHtml(scaled: readonly string[]): string {
  const items =
    scaled.length > 0
      ? scaled.map((line) => `<li>${escapeHtml(line)}</li>`).join('')
      : '<li>nothing declared</li>';
  return `<div class="scaled"><strong>Scaled or simulated against the paper’s testbed:</strong><ul>${items}</ul></div>`;
}

const RUN_HEADER = [
  'run',
  'ok',
  'Tmig s',
  'setup s',
  'downtime ms',
  'Vmig pages',
  'Rd',
  'rounds',
  'mails delivered/expected',
  'channel bytes',
  'netfront bytes',
  'failure',
];

function runRow(run: RunRecord): string[] {
  const value = (v: number | null | undefined, f: (x: number) => string): string =>
    typeof v === 'number' ? f(v) : 'n/a';
  return [
    run.id,
    run.ok ? 'yes' : 'FAILED',
    value(run.totalMigrationTimeMs, seconds),
    value(run.migration?.setupTimeMs, seconds),
    value(run.downtimeMs, (v) => fixed(v, 1)),
    value(run.pagesSent, integer),
    value(run.overheadRatio, (v) => fixed(v, 2)),
    value(run.rounds, integer),
    `${run.mailsDelivered}/${run.mailsExpected}`,
    String(run.channelBytes),
    String(run.netfrontBytes),
    run.failure ?? '',
  ];
}

function runsTableHtml(runs: readonly RunRecord[]): string {
  const head = RUN_HEADER.map((h) => `<th>${escapeHtml(h)}</th>`).join('');
  const body = runs
    .map((run) => {
      const cells = runRow(run)
        .map((cell) => `<td>${escapeHtml(cell)}</td>`)
        .join('');
      return run.ok ? `<tr>${cells}</tr>` : `<tr class="failed">${cells}</tr>`;
    })
    .join('\n');
  return `<table><thead><tr>${head}</tr></thead>\n<tbody>\n${body}\n</tbody></table>`;
}

function chartHtml(chart: Chart): string {
  return (
    `<figure id="${escapeHtml(chart.id)}">\n${chart.svg}\n` +
    `<figcaption>${escapeHtml(chart.caption)}</figcaption></figure>`
  );
}

/** `report.html`: everything in one file, charts as inline SVG, no script and no link out. */
export function renderHtml(
  results: ResultsFile,
  charts: readonly Chart[],
  options: ChartOptions = {},
): string {
  const summary = summarize(results.runs);
  const rows = summaryRows(summary);
  const parts: string[] = [];
  parts.push(
    '<!doctype html>',
    '<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>xenvmc experiment: ${escapeHtml(results.scenarioName)}</title>`,
    `<style>${STYLE}</style></head><body>`,
    `<h1>xenvmc experiment: ${escapeHtml(results.scenarioName)}</h1>`,
    '<p class="note">Advance-XENVMC vs XENVMC during pre-copy live migration: the paper’s ' +
      'Tables 1–2 and Figures 10–12, every mode side by side. Every figure is measured in ' +
      'this testbed.</p>',
    scaledHtml(results.scaled),
    machineHtml(results),
    `<nav>${charts.map((c) => `<a href="#${escapeHtml(c.id)}">${escapeHtml(c.title)}</a>`).join('')}</nav>`,
    '<h2>Summary</h2>',
    '<p class="note">Medians over successful runs only; failed runs are listed below and never ' +
      'averaged in. Tmig runs from round 1 to the target resuming the domain; setup is ' +
      'reported apart. Improvement: 1 − advance/other, median Tmig.</p>',
  );
  for (const table of summary.tables) {
    parts.push(`<h3>${escapeHtml(table)}</h3>`);
    parts.push(
      htmlTable(
        SUMMARY_HEADER,
        rows.filter((row) => row[0] === table),
      ),
    );
  }
  if (summary.improvementMaxima.length > 0) {
    parts.push('<h3>Advance’s largest improvement in Tmig</h3>');
    parts.push(htmlTable(MAXIMA_HEADER, maximaRows(summary)));
  }
  parts.push('<h2>Beside the paper</h2>');
  parts.push(htmlTable(PAPER_HEADER, paperComparisonRows(results, summary, options)));
  parts.push(`<p class="note">${escapeHtml(PAPER_PER_POINT_NOTE)}</p>`);
  parts.push(
    `<ul class="note">${PAPER_METHOD_NOTES.map((n) => `<li>${escapeHtml(n)}</li>`).join('')}</ul>`,
  );
  parts.push('<h2>Charts</h2>');
  for (const chart of charts) parts.push(chartHtml(chart));
  parts.push('<h2>Failed runs</h2>');
  parts.push(
    summary.failed.length === 0
      ? '<p>None.</p>'
      : htmlTable(['run', 'cause'], failedRows(summary), 'failed'),
  );
  parts.push('<h2>Every run</h2>');
  parts.push(runsTableHtml(results.runs));
  parts.push('</body></html>', '');
  return parts.join('\n');
}

/** The HTML (with charts), Markdown and CSV of a results file. */
export async function renderReport(
  results: ResultsFile,
  options: ChartOptions = {},
): Promise<RenderedReport> {
  const charts = await renderCharts(results, options);
  return {
    html: renderHtml(results, charts, options),
    markdown: renderMarkdown(results, options),
    csv: renderCsv(results),
  };
}

// ---------------------------------------------------------------------------------------------
// Reading results.json back.

function invalid(path: string, what: string): TestbedError<ReportErrorCode> {
  return new TestbedError(
    'REPORT_RESULTS_INVALID',
    `${path} is not a results file xenvmc can report on: ${what}`,
  );
}

const RUN_FIELDS: readonly [keyof RunRecord, 'string' | 'number' | 'boolean' | 'array'][] = [
  ['id', 'string'],
  ['table', 'string'],
  ['mode', 'string'],
  ['n', 'number'],
  ['mails', 'number'],
  ['fileSizeBytes', 'number'],
  ['repetition', 'number'],
  ['ok', 'boolean'],
  ['mailsExpected', 'number'],
  ['mailsDelivered', 'number'],
  ['roundRows', 'array'],
  ['mailLatencies', 'array'],
  ['volume', 'array'],
];

function hasType(value: unknown, type: 'string' | 'number' | 'boolean' | 'array'): boolean {
  return type === 'array' ? Array.isArray(value) : typeof value === type;
}

/**
 * Checks that `value` (parsed from `path`) is a results file of the schema this report reads,
 * with the fields it relies on; throws `REPORT_RESULTS_INVALID` naming the file and the field.
 */
export function validateResults(value: unknown, path: string): ResultsFile {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(path, 'expected a JSON object');
  }
  const record = value as Record<string, unknown>;
  if (record.schema !== RESULTS_SCHEMA) {
    const found =
      record.schema === undefined ? 'no "schema" field' : `schema ${JSON.stringify(record.schema)}`;
    throw invalid(path, `${found}; expected "${RESULTS_SCHEMA}"`);
  }
  if (!Array.isArray(record.runs)) throw invalid(path, '"runs" must be an array');
  if (!Array.isArray(record.scaled) || !record.scaled.every((s) => typeof s === 'string')) {
    throw invalid(path, '"scaled" must be an array of strings');
  }
  for (const field of ['scenarioName', 'runner', 'startedAt', 'finishedAt'] as const) {
    if (typeof record[field] !== 'string') throw invalid(path, `"${field}" must be a string`);
  }
  if (typeof record.machine !== 'object' || record.machine === null) {
    throw invalid(path, '"machine" must be an object');
  }
  record.runs.forEach((run: unknown, index: number) => {
    if (typeof run !== 'object' || run === null)
      throw invalid(path, `runs[${index}] must be an object`);
    for (const [field, type] of RUN_FIELDS) {
      if (!hasType((run as Record<string, unknown>)[field], type)) {
        throw invalid(
          path,
          `runs[${index}].${field} must be ${type === 'array' ? 'an array' : `a ${type}`}`,
        );
      }
    }
  });
  return value as ResultsFile;
}

/** Reads and validates `dir/results.json`. */
export async function readResults(dir: string): Promise<ResultsFile> {
  const path = join(dir, REPORT_FILES.results);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new TestbedError(
        'REPORT_RESULTS_MISSING',
        `no results file at ${path}: give the directory an experiment wrote (its --out), ` +
          'which holds results.json',
        { cause: error },
      );
    }
    throw new TestbedError('REPORT_RESULTS_INVALID', `cannot read ${path}: ${String(error)}`, {
      cause: error,
    });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw invalid(path, `not valid JSON (${(error as Error).message})`);
  }
  return validateResults(parsed, path);
}

/**
 * Renders the report of `dir/results.json` into `dir`: `report.html`, `report.md` and
 * `results.csv`. Returns the paths written.
 */
export async function writeReport(
  dir: string,
  options: ChartOptions = {},
): Promise<{ files: string[] }> {
  const results = await readResults(dir);
  const report = await renderReport(results, options);
  const outputs: [string, string][] = [
    [join(dir, REPORT_FILES.html), report.html],
    [join(dir, REPORT_FILES.markdown), report.markdown],
    [join(dir, REPORT_FILES.csv), report.csv],
  ];
  for (const [path, text] of outputs) await writeFile(path, text, 'utf8');
  return { files: outputs.map(([path]) => path) };
}
