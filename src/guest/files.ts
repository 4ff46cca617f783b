/**
 * What a guest program sees of files: a handful of synchronous calls on the guest's page cache
 * (`page-cache.ts`), whose pages live in the domain's `pagecache` region and are written back
 * to the domain's disk on shared storage. Synchronous, as a guest's `write(2)` to the page cache
 * is: the kernel runs one program event at a time and never pauses inside one.
 */
import { TestbedError } from '../core/errors.ts';

export interface GuestFiles {
  /** Bytes in the file (0 if it does not exist). */
  size(file: string): number;
  write(file: string, offset: number, bytes: Uint8Array): void;
  /** Appends; returns the offset written at. */
  append(file: string, bytes: Uint8Array): number;
  /** Up to `length` bytes from `offset` (short at the end of the file). */
  read(file: string, offset: number, length: number, target?: Uint8Array): Uint8Array;
  /** Appends a byte range of `source` to `file` through the cache; returns the offset written at. */
  appendFrom(file: string, source: string, sourceOffset: number, length: number): number;
  truncate(file: string, size: number): void;
  remove(file: string): void;
  /** Writes back the file's dirty pages (every file's without an argument) and flushes the disk. */
  sync(file?: string): number;
}

function noDisk(): never {
  throw new TestbedError(
    'GUEST_NO_DISK',
    'this domain has no disk: start its host with --storage DIR (shared storage every host reaches)',
  );
}

/** The `files` of a domain without a disk: every call says so. */
export const NO_FILES: GuestFiles = {
  size: noDisk,
  write: noDisk,
  append: noDisk,
  read: noDisk,
  appendFrom: noDisk,
  truncate: noDisk,
  remove: noDisk,
  sync: noDisk,
};
