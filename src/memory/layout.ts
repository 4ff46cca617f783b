/**
 * The regions of a guest's pseudo-physical memory. Every page belongs to exactly one region,
 * so every dirtied and every sent page can be attributed to what dirtied it (principle 5).
 *
 * ```
 * page 0                                                               pageCount
 * | kernel (rings, control) | sockbuf | pagecache | program data ............... |
 * ```
 */
import { InputError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';

export const REGION_NAMES = ['kernel', 'sockbuf', 'pagecache', 'program'] as const;
/** kernel: netfront rings and kernel control data; sockbuf: socket send/receive buffers;
 *  pagecache: file pages (mailboxes); program: guest programs' own data. */
export type RegionName = (typeof REGION_NAMES)[number];

export interface Region {
  name: RegionName;
  firstPage: number;
  pageCount: number;
}

export interface MemoryLayout {
  pageCount: number;
  regions: Region[];
}

/** A count per region, e.g. dirty pages or pages sent. */
export type RegionCounts = Record<RegionName, number>;

export function emptyRegionCounts(): RegionCounts {
  return { kernel: 0, sockbuf: 0, pagecache: 0, program: 0 };
}

/** Smallest domain we build: the kernel region alone needs 4 MiB. */
export const MIN_DOMAIN_PAGES = 4096;
/** 2^24 pages = 64 GiB; far above what this 24 GiB machine can hold, a bound for the wire. */
export const MAX_DOMAIN_PAGES = 1 << 24;

/**
 * The default split: 4 MiB kernel (two netfront rings of 256 x 4 KiB slots plus control),
 * socket buffers up to 8 MiB (Linux autotunes TCP buffers to a few MiB per connection),
 * page cache up to 64 MiB or a quarter of memory, and the rest for programs.
 */
export function defaultLayout(
  pageCount: number,
  sizes: Partial<Record<RegionName, number>> = {},
): MemoryLayout {
  if (!Number.isInteger(pageCount) || pageCount < MIN_DOMAIN_PAGES) {
    throw new InputError(
      `a domain needs at least ${MIN_DOMAIN_PAGES} pages (${(MIN_DOMAIN_PAGES * PAGE_SIZE_BYTES) / 2 ** 20} MiB); got ${pageCount}`,
    );
  }
  if (pageCount > MAX_DOMAIN_PAGES) {
    throw new InputError(`a domain may have at most ${MAX_DOMAIN_PAGES} pages; got ${pageCount}`);
  }
  const kernel = sizes.kernel ?? 1024;
  const sockbuf = sizes.sockbuf ?? Math.min(2048, Math.floor(pageCount / 8));
  const pagecache = sizes.pagecache ?? Math.min(16384, Math.floor(pageCount / 4));
  const program = sizes.program ?? pageCount - kernel - sockbuf - pagecache;
  const counts: RegionCounts = { kernel, sockbuf, pagecache, program };
  const total = kernel + sockbuf + pagecache + program;
  if (REGION_NAMES.some((name) => counts[name] < 1) || total !== pageCount) {
    throw new InputError(
      `region sizes ${JSON.stringify(counts)} (pages) must each be at least 1 and add up to ${pageCount}`,
    );
  }
  let firstPage = 0;
  const regions = REGION_NAMES.map((name) => {
    const region = { name, firstPage, pageCount: counts[name] };
    firstPage += counts[name];
    return region;
  });
  return { pageCount, regions };
}

export function regionByName(layout: MemoryLayout, name: RegionName): Region {
  const region = layout.regions.find((r) => r.name === name);
  if (!region) throw new Error(`layout has no region ${name}`);
  return region;
}
