/**
 * The disk under a guest's page cache: files on shared storage, read and written in place,
 * synchronously, as a blkfront request served by Dom0's blkback would be. The guest kernel
 * calls it from inside one event, so there are no promises here.
 *
 * Shared storage. In the paper a third machine serves the VMs' disks over NFS, so a migration
 * moves memory only. `DirectoryDisk` is that: a host directory every host process can reach.
 * The source host stops writing before the target starts (the domain is paused between), so
 * nothing here locks; but the two processes do use the same files one after the other, which
 * is why `DirectoryDisk` never caches file contents or sizes, only open file descriptors.
 *
 * Durability. `write` hands bytes to the host kernel; `flush` is the durability point (fsync
 * of every file written and every directory whose entries changed since the last flush), as
 * the guest's fsync turns into a FLUSH request to the backend.
 *
 * Non-goals: sector alignment and request batching (a request here is any byte range), file
 * locking, permissions, and more than one writer at a time.
 */
import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { InputError, TestbedError } from '../core/errors.ts';

/** The disk as the page cache sees it: byte ranges of named files, synchronous. */
export interface BlockStore {
  /**
   * Reads up to `target.length` bytes at `offset` into `target`; returns the bytes read
   * (fewer at the end of the file, 0 past it or if the file does not exist).
   */
  read(file: string, offset: number, target: Uint8Array): number;
  /** Writes `bytes` at `offset`, creating the file if needed; a gap before it reads as zeros. */
  write(file: string, offset: number, bytes: Uint8Array): void;
  /** Sets the file's size to `size` bytes (zeros when it grows), creating the file if needed. */
  truncate(file: string, size: number): void;
  /** The file's size in bytes; 0 if it does not exist. */
  size(file: string): number;
  /** Deletes the file; nothing happens if it does not exist. */
  remove(file: string): void;
  /** Every file, by relative name, sorted. */
  list(): string[];
  /** Makes every write since the last flush durable (fsync): the guest's FLUSH request. */
  flush(): void;
}

/**
 * - `DISK_IO_FAILED`: the host refused a read, write, truncate, remove or fsync (full disk,
 *   a directory where a file was expected, lost shared storage); `cause` has the errno.
 */
export type DiskErrorCode = 'DISK_IO_FAILED';

export class DiskError extends TestbedError<DiskErrorCode> {
  constructor(code: DiskErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'DiskError';
  }
}

/** Longest file name: room for `mail/<user>.mbox` and `spool/<id>` with any sane user name. */
export const FILE_NAME_LENGTH_MAX = 200;

/**
 * Largest file offset or size accepted: 1 TiB, far beyond any mailbox the workloads build.
 * It keeps byte offsets exact in doubles and page numbers (2^28) small integers.
 */
export const FILE_SIZE_BYTES_MAX = 2 ** 40;

/**
 * Open descriptors a `DirectoryDisk` keeps, least recently used closed first. A mail server
 * touches its spool file and one mailbox per delivery; 64 covers a busy working set while
 * staying far below the process's descriptor limit (1024 by default) with several domains.
 */
export const DISK_OPEN_FILES_MAX = 64;

const SEGMENT = /^[A-Za-z0-9._-]+$/;

/**
 * Returns `file` if it is a valid relative file name, else throws `InputError`: 1 to 200
 * characters, segments of `[A-Za-z0-9._-]+` separated by `/`, no `.` or `..` segment, no
 * leading, trailing or doubled `/`. So a name can never leave the disk's directory.
 */
export function checkFileName(file: string): string {
  if (typeof file !== 'string' || file.length < 1 || file.length > FILE_NAME_LENGTH_MAX) {
    throw new InputError(
      `file name must be 1 to ${FILE_NAME_LENGTH_MAX} characters; got ${describeName(file)}`,
    );
  }
  for (const segment of file.split('/')) {
    if (!SEGMENT.test(segment) || segment === '.' || segment === '..') {
      throw new InputError(
        `file name ${describeName(file)} must be segments of [A-Za-z0-9._-] separated by '/', ` +
          `without '.' or '..' segments or a leading '/'`,
      );
    }
  }
  return file;
}

function describeName(file: unknown): string {
  const text = JSON.stringify(file) ?? String(file);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Throws `InputError` unless `value` is an integer in [0, FILE_SIZE_BYTES_MAX]. */
export function checkFileOffset(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0 || value > FILE_SIZE_BYTES_MAX) {
    throw new InputError(
      `${what} must be an integer from 0 to ${FILE_SIZE_BYTES_MAX}; got ${value}`,
    );
  }
  return value;
}

function checkRange(offset: number, length: number, what: string): void {
  checkFileOffset(offset, `${what} offset`);
  if (offset + length > FILE_SIZE_BYTES_MAX) {
    throw new InputError(
      `${what} of ${length} B at ${offset} ends beyond the largest file (${FILE_SIZE_BYTES_MAX} B)`,
    );
  }
}

// ---- In memory ----------------------------------------------------------------------------

interface MemoryFile {
  /** Capacity grows by doubling, so appending MBs in small writes stays linear. */
  bytes: Uint8Array;
  size: number;
}

/** A `BlockStore` in a Map, for tests. It counts its calls so tests can see the I/O. */
export class MemoryDisk implements BlockStore {
  private readonly files = new Map<string, MemoryFile>();
  /** Calls that reached the disk, by kind. */
  readonly calls = { reads: 0, writes: 0, truncates: 0, removes: 0, flushes: 0 };

  read(file: string, offset: number, target: Uint8Array): number {
    checkFileName(file);
    checkFileOffset(offset, 'read offset');
    this.calls.reads++;
    const entry = this.files.get(file);
    if (entry === undefined || offset >= entry.size) return 0;
    const count = Math.min(target.byteLength, entry.size - offset);
    target.set(entry.bytes.subarray(offset, offset + count));
    return count;
  }

  write(file: string, offset: number, bytes: Uint8Array): void {
    checkFileName(file);
    checkRange(offset, bytes.byteLength, 'write');
    this.calls.writes++;
    const entry = this.entry(file);
    const end = offset + bytes.byteLength;
    this.reserve(entry, end);
    entry.bytes.set(bytes, offset);
    entry.size = Math.max(entry.size, end);
  }

  truncate(file: string, size: number): void {
    checkFileName(file);
    checkFileOffset(size, 'truncate size');
    this.calls.truncates++;
    const entry = this.entry(file);
    if (size < entry.size) entry.bytes.fill(0, size, entry.size);
    else this.reserve(entry, size);
    entry.size = size;
  }

  size(file: string): number {
    checkFileName(file);
    return this.files.get(file)?.size ?? 0;
  }

  remove(file: string): void {
    checkFileName(file);
    this.calls.removes++;
    this.files.delete(file);
  }

  list(): string[] {
    return [...this.files.keys()].sort();
  }

  flush(): void {
    this.calls.flushes++;
  }

  /** A copy of the file's bytes (empty if absent). */
  contents(file: string): Uint8Array {
    const entry = this.files.get(checkFileName(file));
    return entry === undefined ? new Uint8Array(0) : entry.bytes.slice(0, entry.size);
  }

  private entry(file: string): MemoryFile {
    let entry = this.files.get(file);
    if (entry === undefined) {
      entry = { bytes: new Uint8Array(0), size: 0 };
      this.files.set(file, entry);
    }
    return entry;
  }

  private reserve(entry: MemoryFile, sizeBytes: number): void {
    if (sizeBytes <= entry.bytes.byteLength) return;
    const grown = new Uint8Array(Math.max(sizeBytes, entry.bytes.byteLength * 2, 4096));
    grown.set(entry.bytes.subarray(0, entry.size));
    entry.bytes = grown;
  }
}

// ---- On shared storage --------------------------------------------------------------------

export interface DirectoryDiskInit {
  /** Open descriptors kept; the least recently used beyond it is closed. @default 64 */
  openFilesMax?: number;
}

/**
 * Files under a host directory on shared storage, with node:fs synchronous calls at explicit
 * offsets (pread/pwrite). Sub-directories are created as needed.
 *
 * Only descriptors are cached (in least-recently-used order: a Map's insertion order, an entry
 * re-inserted on each use). Sizes come from fstat every time, so a second process that wrote
 * the same file before us is always seen. Call `close` when the domain leaves this host: a
 * descriptor kept across another host's `remove` and re-create would name the old file.
 */
export class DirectoryDisk implements BlockStore {
  readonly rootDir: string;
  private readonly openFilesMax: number;
  /** Open descriptors by file name, least recently used first. */
  private readonly openFiles = new Map<string, number>();
  /** Files written or truncated since the last flush. */
  private readonly unflushedFiles = new Set<string>();
  /** Directories whose entries changed (a file created or removed) since the last flush. */
  private readonly unflushedDirs = new Set<string>();

  constructor(rootDir: string, init: DirectoryDiskInit = {}) {
    const openFilesMax = init.openFilesMax ?? DISK_OPEN_FILES_MAX;
    if (!Number.isInteger(openFilesMax) || openFilesMax < 1) {
      throw new InputError(`openFilesMax must be a positive integer; got ${openFilesMax}`);
    }
    this.rootDir = resolve(rootDir);
    this.openFilesMax = openFilesMax;
    this.attempt(`create the disk directory ${rootDir}`, () =>
      mkdirSync(this.rootDir, { recursive: true }),
    );
  }

  /** How many descriptors are open now (at most `openFilesMax`). */
  get openFileCount(): number {
    return this.openFiles.size;
  }

  read(file: string, offset: number, target: Uint8Array): number {
    checkFileName(file);
    checkFileOffset(offset, 'read offset');
    const fd = this.open(file, false);
    if (fd === undefined) return 0;
    let done = 0;
    // pread may return fewer bytes than asked before the end of the file (NFS, signals).
    while (done < target.byteLength) {
      const count = this.attempt(`read ${file} at ${offset + done}`, () =>
        readSync(fd, target, done, target.byteLength - done, offset + done),
      );
      if (count === 0) break;
      done += count;
    }
    return done;
  }

  write(file: string, offset: number, bytes: Uint8Array): void {
    checkFileName(file);
    checkRange(offset, bytes.byteLength, 'write');
    const fd = this.open(file, true)!;
    let done = 0;
    while (done < bytes.byteLength) {
      done += this.attempt(`write ${bytes.byteLength} B to ${file} at ${offset}`, () =>
        writeSync(fd, bytes, done, bytes.byteLength - done, offset + done),
      );
    }
    this.unflushedFiles.add(file);
  }

  truncate(file: string, size: number): void {
    checkFileName(file);
    checkFileOffset(size, 'truncate size');
    const fd = this.open(file, true)!;
    this.attempt(`truncate ${file} to ${size} B`, () => ftruncateSync(fd, size));
    this.unflushedFiles.add(file);
  }

  size(file: string): number {
    checkFileName(file);
    const fd = this.openFiles.get(file);
    const stats = this.attempt(`stat ${file}`, () =>
      fd === undefined ? statSync(this.pathOf(file), { throwIfNoEntry: false }) : fstatSync(fd),
    );
    if (stats === undefined) return 0;
    if (!stats.isFile()) {
      throw new DiskError('DISK_IO_FAILED', `${file} on ${this.rootDir} is not a regular file`);
    }
    return stats.size;
  }

  remove(file: string): void {
    checkFileName(file);
    this.closeFile(file);
    const path = this.pathOf(file);
    this.attempt(`remove ${file}`, () => {
      try {
        unlinkSync(path);
      } catch (error) {
        if (errorCode(error) !== 'ENOENT') throw error;
        return;
      }
      this.unflushedDirs.add(dirname(path));
    });
    this.unflushedFiles.delete(file);
  }

  list(): string[] {
    const names: string[] = [];
    const visit = (dir: string): void => {
      const entries = this.attempt(`list ${dir}`, () => readdirSync(dir, { withFileTypes: true }));
      for (const entry of entries) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) visit(path);
        else if (entry.isFile()) names.push(relative(this.rootDir, path).split(sep).join('/'));
      }
    };
    visit(this.rootDir);
    return names.sort();
  }

  flush(): void {
    for (const file of [...this.unflushedFiles]) {
      const fd = this.open(file, false);
      if (fd !== undefined) this.attempt(`fsync ${file}`, () => fsyncSync(fd));
      this.unflushedFiles.delete(file);
    }
    // A created or removed file is durable only once its directory entry is (fsync(2)).
    for (const dir of [...this.unflushedDirs]) {
      this.attempt(`fsync directory ${dir}`, () => {
        let fd: number;
        try {
          fd = openSync(dir, constants.O_RDONLY);
        } catch (error) {
          if (errorCode(error) === 'ENOENT') return;
          throw error;
        }
        try {
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
      });
      this.unflushedDirs.delete(dir);
    }
  }

  /**
   * Closes every open descriptor. Does not flush (call `flush` first for durability); the disk
   * stays usable and reopens files on demand.
   */
  close(): void {
    for (const file of [...this.openFiles.keys()]) this.closeFile(file);
  }

  private pathOf(file: string): string {
    return join(this.rootDir, ...file.split('/'));
  }

  /** The file's descriptor, opened read-write; `undefined` if absent and `create` is false. */
  private open(file: string, create: boolean): number | undefined {
    const cached = this.openFiles.get(file);
    if (cached !== undefined) {
      this.openFiles.delete(file);
      this.openFiles.set(file, cached);
      return cached;
    }
    const path = this.pathOf(file);
    const fd = this.attempt(`open ${file}`, (): number | undefined => {
      try {
        return openSync(path, constants.O_RDWR);
      } catch (error) {
        if (errorCode(error) !== 'ENOENT') throw error;
      }
      if (!create) return undefined;
      this.makeParents(path);
      const created = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644);
      this.unflushedDirs.add(dirname(path));
      return created;
    });
    if (fd === undefined) return undefined;
    this.openFiles.set(file, fd);
    if (this.openFiles.size > this.openFilesMax) {
      const [oldest] = this.openFiles.keys();
      this.closeFile(oldest!);
    }
    return fd;
  }

  private makeParents(path: string): void {
    const parent = dirname(path);
    const firstCreated = mkdirSync(parent, { recursive: true });
    if (firstCreated === undefined) return;
    // Each new directory's entry in its parent must reach the disk too.
    for (let dir = parent; dir.length >= firstCreated.length; dir = dirname(dir)) {
      this.unflushedDirs.add(dirname(dir));
    }
  }

  private closeFile(file: string): void {
    const fd = this.openFiles.get(file);
    if (fd === undefined) return;
    this.openFiles.delete(file);
    this.attempt(`close ${file}`, () => closeSync(fd));
  }

  /** Runs one host call, wrapping a host error as `DISK_IO_FAILED` (with the errno as cause). */
  private attempt<T>(what: string, call: () => T): T {
    try {
      return call();
    } catch (error) {
      if (error instanceof TestbedError) throw error;
      const reason = error instanceof Error ? error.message : String(error);
      throw new DiskError('DISK_IO_FAILED', `cannot ${what} on ${this.rootDir}: ${reason}`, {
        cause: error,
      });
    }
  }
}

function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}
