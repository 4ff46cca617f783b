/**
 * Per-page CRC-32C tables and their digest: how the source and the target agree, without
 * sending memory back, that the target's pages equal the source's at the pause.
 */
import { createHash } from 'node:crypto';
import { crc32c } from '../core/checksum.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';

/** CRC-32C of every page of `memory`. */
export function pageCrcTable(memory: Uint8Array): Uint32Array {
  const pageCount = memory.byteLength / PAGE_SIZE_BYTES;
  const table = new Uint32Array(pageCount);
  for (let page = 0; page < pageCount; page++) {
    const offset = page * PAGE_SIZE_BYTES;
    table[page] = crc32c(memory.subarray(offset, offset + PAGE_SIZE_BYTES));
  }
  return table;
}

/** SHA-256 of a CRC table, hex. */
export function digestCrcTable(table: Uint32Array): string {
  return createHash('sha256')
    .update(new Uint8Array(table.buffer, table.byteOffset, table.byteLength))
    .digest('hex');
}
