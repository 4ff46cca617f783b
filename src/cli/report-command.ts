/**
 * `xenvmc report DIR`: re-renders the report of an experiment from `DIR/results.json` into
 * `DIR/report.html`, `DIR/report.md` and `DIR/results.csv`, and prints the paths written (or
 * `{ "files": [...] }` with --json). A missing or invalid results file is one clear error
 * naming the file (`REPORT_RESULTS_MISSING`, `REPORT_RESULTS_INVALID`).
 */
import { writeReport } from '../report/render.ts';

export async function reportCommand(dir: string, options: { json: boolean }): Promise<void> {
  const { files } = await writeReport(dir);
  if (options.json) {
    process.stdout.write(`${JSON.stringify({ files }, null, 2)}\n`);
    return;
  }
  for (const file of files) process.stdout.write(`${file}\n`);
}
