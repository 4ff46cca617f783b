/**
 * Goal: the report's three files say what the runs measured and nothing else: a
 * self-contained HTML with a chart per figure, a Markdown row per (table, n, mode) with the
 * right median, failed runs listed and kept out of medians, a CSV that parses back, and a clear
 * error for a missing or foreign results file.
 * Method: synthetic results (test data, see `test-results.ts`) rendered in memory and to a
 * temporary directory.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isTestbedError } from '../core/errors.ts';
import type { ResultsFile } from '../experiments/results.ts';
import { csvField, renderCsv, renderMarkdown, renderReport, writeReport } from './render.ts';
import { fixtureResults, repetitionOffsetMs, tmigMsFor } from './test-results.ts';

const MIB = 1 << 20;

/** A small RFC 4180 reader for the test: quoted fields, doubled quotes, CRLF. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\r' && text[i + 1] === '\n') {
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
      i++;
    } else field += c;
  }
  assert.equal(field, '', 'the CSV ends with a line end');
  return rows;
}

/** Test data: 3 repetitions, one failed run that would move the median if averaged in. */
function resultsWithFailure(): ResultsFile {
  const results = fixtureResults({
    nValues: [4, 8],
    repetitions: 3,
    failures: { 'table1/advance/n8/r1': 'mails missing: 63 of 64 delivered, "mbox", locked' },
  });
  const failed = results.runs.find((run) => run.id === 'table1/advance/n8/r1')!;
  failed.totalMigrationTimeMs = 999_999;
  return results;
}

describe('renderReport', () => {
  let html = '';
  let markdown = '';
  let csv = '';
  let results: ResultsFile;

  before(async () => {
    results = resultsWithFailure();
    ({ html, markdown, csv } = await renderReport(results));
  });

  it('writes a self-contained HTML with an SVG per chart and nothing to fetch', () => {
    assert.equal(html.match(/<svg/g)?.length, 5, 'five inline SVG charts');
    assert.ok(!/<script/i.test(html), 'no script');
    assert.ok(!/\ssrc\s*=/i.test(html), 'no src attribute');
    assert.ok(!/href\s*=\s*["']?(https?:)?\/\//i.test(html), 'no link out');
    assert.ok(!/<link/i.test(html), 'no stylesheet link');
    assert.ok(html.includes('<style>'), 'inline CSS');
    assert.ok(html.includes('TEST DATA: synthetic, not measured.'), 'scaled labels shown');
    assert.ok(html.includes('Test CPU, 2 cores'), 'machine shown');
    assert.ok(html.includes('loopback'), 'runner shown');
    assert.ok(html.includes('table1/advance/n8/r1'), 'failed run listed');
    assert.ok(html.includes('&quot;mbox&quot;'), 'failure text escaped');
  });

  it('gives a Markdown row per (table, n, mode) with the median of successful runs', () => {
    const summaryPart = markdown.slice(0, markdown.indexOf('## Advance'));
    const rows = summaryPart.split('\n').filter((line) => /^\| table\d /.test(line));
    assert.equal(rows.length, 2 * 2 * 4, 'tables x points x modes');
    const cells = (line: string): string[] => line.split('|').map((c) => c.trim());
    const row = (table: string, n: number, mode: string): string[] => {
      const found = rows.find((line) => {
        const c = cells(line);
        return c[1] === table && c[2] === String(n) && c[4] === mode;
      });
      assert.ok(found, `row ${table} ${n} ${mode}`);
      return cells(found);
    };
    // Successful runs r1..r3 = base + 0, 1000, 2000 ms: median base + 1000.
    const base = tmigMsFor('xenvmc', 16, MIB);
    const xenvmc = row('table1', 4, 'xenvmc');
    assert.equal(
      xenvmc[6],
      `${((base + 1000) / 1000).toFixed(2)} [${(base / 1000).toFixed(2)}–${((base + 2000) / 1000).toFixed(2)}]`,
      'Tmig median [min–max] in s',
    );
    // advance n = 8: r1 failed, so the median is over r2 and r3.
    const advanceBase = tmigMsFor('advance', 64, MIB);
    const advance = row('table1', 8, 'advance');
    const expectedMedianMs = advanceBase + (repetitionOffsetMs(2) + repetitionOffsetMs(3)) / 2;
    assert.equal(advance[5], '2/3', 'two of three runs ok');
    assert.ok(
      advance[6]?.startsWith(`${(expectedMedianMs / 1000).toFixed(2)} [`),
      `the failed run is not averaged in: ${advance[6]}`,
    );
    assert.equal(advance[11], '191/192', 'mails delivered/expected over all runs');
    // The improvement over xenvmc at n = 4, on medians.
    const advanceN4 = tmigMsFor('advance', 16, MIB) + 1000;
    const expected = `${((1 - advanceN4 / (base + 1000)) * 100).toFixed(1)} %`;
    assert.equal(xenvmc[12], expected, 'advance improvement over xenvmc');
  });

  it('lists failed runs with their causes, the scaled labels first, and the paper beside', () => {
    const failedSection = markdown.slice(markdown.indexOf('## Failed runs'));
    assert.match(failedSection, /table1\/advance\/n8\/r1 \| mails missing: 63 of 64/, 'cause');
    const scaledAt = markdown.indexOf('TEST DATA: synthetic');
    assert.ok(scaledAt > 0 && scaledAt < markdown.indexOf('## table1'), 'scaled labels on top');
    assert.match(markdown, /up to 50\.0 %/, "the paper's 50 %");
    assert.match(markdown, /about 245 s/, "the paper's 245 s");
    assert.match(markdown, /about 350 s/, "the paper's 350 s");
    assert.match(markdown, /graphs only/, 'says the paper has no per-point numbers');
  });

  it('writes a CSV with a header and one line per run that parses back', () => {
    const rows = parseCsv(csv);
    assert.equal(rows.length, 1 + results.runs.length, 'header + one row per run');
    const header = rows[0]!;
    assert.ok(header.length > 20, 'flat columns');
    assert.ok(
      rows.every((row) => row.length === header.length),
      'every row has every column',
    );
    const failureColumn = header.indexOf('failure');
    const idColumn = header.indexOf('id');
    const failed = rows.find((row) => row[idColumn] === 'table1/advance/n8/r1');
    assert.equal(
      failed?.[failureColumn],
      'mails missing: 63 of 64 delivered, "mbox", locked',
      'a field with commas and quotes survives',
    );
    assert.equal(failed?.[header.indexOf('ok')], 'false', 'ok column');
    assert.ok(!header.includes('roundRows'), 'per-round rows left out');
  });

  it('quotes CSV fields only when needed', () => {
    assert.equal(csvField('plain'), 'plain', 'plain');
    assert.equal(csvField('a,b'), '"a,b"', 'comma');
    assert.equal(csvField('say "hi"'), '"say ""hi"""', 'quotes doubled');
    assert.equal(csvField('two\nlines'), '"two\nlines"', 'line feed');
    assert.equal(csvField(null), '', 'null is empty');
    assert.equal(renderCsv({ ...results, runs: [] }).split('\r\n').length, 2, 'header only');
  });

  it('renders Markdown without charts synchronously', () => {
    assert.equal(renderMarkdown(results), markdown, 'same Markdown as renderReport');
  });
});

describe('writeReport', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'xenvmc-report-test-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('fails with a clear error naming the file when results.json is missing', async () => {
    const path = join(dir, 'results.json');
    await assert.rejects(
      writeReport(dir),
      (error: unknown) =>
        isTestbedError(error, 'REPORT_RESULTS_MISSING') && error.message.includes(path),
      'REPORT_RESULTS_MISSING naming the path',
    );
  });

  it('fails naming the file and the schema when results.json is of another schema', async () => {
    const path = join(dir, 'results.json');
    await writeFile(path, JSON.stringify({ schema: 'other/9', runs: [] }));
    await assert.rejects(
      writeReport(dir),
      (error: unknown) =>
        isTestbedError(error, 'REPORT_RESULTS_INVALID') &&
        error.message.includes(path) &&
        error.message.includes('"other/9"'),
      'REPORT_RESULTS_INVALID naming the path and the schema',
    );
    await writeFile(path, '{ not json');
    await assert.rejects(
      writeReport(dir),
      (error: unknown) => isTestbedError(error, 'REPORT_RESULTS_INVALID'),
      'invalid JSON',
    );
    const broken = fixtureResults({ nValues: [4], modes: ['advance'] }) as unknown as {
      runs: Record<string, unknown>[];
    };
    delete broken.runs[1]!.mode;
    await writeFile(path, JSON.stringify(broken));
    await assert.rejects(
      writeReport(dir),
      (error: unknown) =>
        isTestbedError(error, 'REPORT_RESULTS_INVALID') && error.message.includes('runs[1].mode'),
      'names the field',
    );
  });

  it('writes report.html, report.md and results.csv beside results.json', async () => {
    await writeFile(join(dir, 'results.json'), JSON.stringify(fixtureResults({ nValues: [4] })));
    const { files } = await writeReport(dir);
    assert.deepEqual(
      files,
      ['report.html', 'report.md', 'results.csv'].map((name) => join(dir, name)),
      'three files',
    );
    const html = await readFile(files[0]!, 'utf8');
    assert.ok(html.startsWith('<!doctype html>'), 'an HTML document');
  });
});
