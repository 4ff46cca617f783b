/**
 * Plain-text and Markdown tables from rows of cells (pure). Numbers are right-aligned.
 */
export type Cell = string | number;

function cellText(cell: Cell): string {
  return typeof cell === 'number' ? String(cell) : cell;
}

/** A fixed-width table for a terminal. */
export function textTable(header: Cell[], rows: Cell[][]): string {
  const all = [header, ...rows].map((row) => row.map(cellText));
  const widths = header.map((_, column) =>
    Math.max(...all.map((row) => (row[column] ?? '').length)),
  );
  const numeric = header.map(
    (_, column) => rows.length > 0 && rows.every((row) => typeof row[column] === 'number'),
  );
  const line = (row: string[]): string =>
    row
      .map((text, column) =>
        numeric[column] ? text.padStart(widths[column]!) : text.padEnd(widths[column]!),
      )
      .join('  ')
      .trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(all[0]!), rule, ...all.slice(1).map(line)].join('\n');
}

/** A GitHub-flavoured Markdown table. */
export function markdownTable(header: Cell[], rows: Cell[][]): string {
  const escapeCell = (text: string): string => text.replace(/\|/g, '\\|');
  const line = (row: Cell[]): string =>
    `| ${row.map((c) => escapeCell(cellText(c))).join(' | ')} |`;
  const align = header.map((_, column) =>
    rows.length > 0 && rows.every((row) => typeof row[column] === 'number') ? '---:' : '---',
  );
  return [line(header), `| ${align.join(' | ')} |`, ...rows.map(line)].join('\n');
}
