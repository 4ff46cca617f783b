/**
 * The pages of a domain's XENVMC channel regions, for migrations that model real Xen's grant
 * behaviour (`--migrate-channel-pages`): those regions are pages of the granter's memory, and
 * a page written through a grant mapping is marked dirty when the mapping is removed.
 *
 * Method: a channel page counts as dirty when its bytes differ from what was last sent (a
 * CRC-32C per page; the regions are small, a few hundred KiB per channel). Round 1 sends every
 * page, the final round sends every page again (the mappings are removed at the pause, which
 * marks them all dirty).
 */
import { crc32c } from '../core/checksum.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';

export interface ChannelPagesSource {
  /** Copies of the pages to send now: the changed ones, or all of them when `final`. */
  take(final: boolean): Uint8Array[];
}

export class ChannelPagesTracker implements ChannelPagesSource {
  private readonly regions: () => SharedArrayBuffer[];
  private readonly lastSent = new Map<SharedArrayBuffer, Float64Array>();

  constructor(regions: () => SharedArrayBuffer[]) {
    this.regions = regions;
  }

  take(final: boolean): Uint8Array[] {
    const pages: Uint8Array[] = [];
    for (const region of this.regions()) {
      const pageCount = Math.ceil(region.byteLength / PAGE_SIZE_BYTES);
      let sent = this.lastSent.get(region);
      if (!sent) {
        sent = new Float64Array(pageCount);
        this.lastSent.set(region, sent);
      }
      const bytes = new Uint8Array(region);
      for (let page = 0; page < pageCount; page++) {
        const copy = new Uint8Array(PAGE_SIZE_BYTES);
        copy.set(bytes.subarray(page * PAGE_SIZE_BYTES, (page + 1) * PAGE_SIZE_BYTES));
        // +1 so that a never-sent page (0 in the table) always differs.
        const crc = crc32c(copy) + 1;
        if (final || sent[page] !== crc) {
          pages.push(copy);
          sent[page] = crc;
        }
      }
    }
    return pages;
  }
}
