/**
 * Units and their parsing. Sizes are in bytes, rates in bytes per second, times in
 * milliseconds unless a name says otherwise (`downtimeMs`, `bandwidthBytesPerSec`).
 */
import { InputError } from './errors.ts';

/** Xen's and x86's small page: every guest memory figure counts these. */
export const PAGE_SIZE_BYTES = 4096;
export const PAGE_SHIFT = 12;

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
};

/**
 * Parses a size such as `256MiB`, `1GiB`, `4MB`, `64k` or `4096`. Binary units (KiB, MiB, GiB
 * and the bare K, M, G) are powers of 1024; decimal units (KB, MB, GB) powers of 1000, the way
 * `mail -a` file sizes and link rates are usually quoted.
 */
export function parseBytes(text: string, what = 'size'): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = match ? SIZE_UNITS[match[2]!.toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new InputError(
      `${what} '${text}' is not a size: use a number with an optional unit, e.g. 256MiB, 1GiB, 4MB`,
    );
  }
  const bytes = Math.round(Number(match[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new InputError(`${what} '${text}' is too large`);
  return bytes;
}

const RATE_UNITS: Record<string, number> = {
  bit: 1 / 8,
  kbit: 1e3 / 8,
  mbit: 1e6 / 8,
  gbit: 1e9 / 8,
  bps: 1 / 8,
  kbps: 1e3 / 8,
  mbps: 1e6 / 8,
  gbps: 1e9 / 8,
  'b/s': 1,
  'kb/s': 1e3,
  'mb/s': 1e6,
  'gb/s': 1e9,
  'mib/s': 1024 ** 2,
  'gib/s': 1024 ** 3,
};

/**
 * Parses a link rate: `1gbit`, `100mbit`, `125MB/s`, or `unlimited` (returns `null`).
 * Bits are decimal, as network rates are quoted (1 Gbit/s = 125,000,000 bytes/s).
 */
export function parseBandwidth(text: string, what = 'link rate'): number | null {
  if (/^\s*(unlimited|none|off)\s*$/i.test(text)) return null;
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z/]+)\s*$/.exec(text);
  const unit = match ? RATE_UNITS[match[2]!.toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new InputError(
      `${what} '${text}' is not a rate: use e.g. 1gbit, 100mbit, 125MB/s or unlimited`,
    );
  }
  const bytesPerSec = Number(match[1]) * unit;
  if (!(bytesPerSec > 0)) throw new InputError(`${what} '${text}' must be above zero`);
  return bytesPerSec;
}

/** `268435456` -> `256 MiB`. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)} ${units[unit]}`;
}

/** Bytes per second as Mbit/s or Gbit/s, the way links are quoted. */
export function formatBandwidth(bytesPerSec: number | null): string {
  if (bytesPerSec === null) return 'unlimited';
  const bitsPerSec = bytesPerSec * 8;
  if (bitsPerSec >= 1e9) return `${(bitsPerSec / 1e9).toFixed(2)} Gbit/s`;
  return `${(bitsPerSec / 1e6).toFixed(1)} Mbit/s`;
}

/** Pages needed to hold `bytes`, rounded up. */
export function pagesFor(bytes: number): number {
  return Math.ceil(bytes / PAGE_SIZE_BYTES);
}
