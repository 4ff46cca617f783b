/**
 * Goal: the page cache returns what was written, writes it all back by `sync`, keeps every
 * file byte it holds in 'pagecache' guest pages that log-dirty sees, works with a cache far
 * smaller than its files, and continues seamlessly from a state saved on another "host".
 * Method: fixed cases; a fast-check model test (random writes, appends, copies, truncates,
 * removes, reads, syncs and migrations on a 4 to 16 slot cache against a Map of byte arrays);
 * a migration through a real `DirectoryDisk` with the state passed through v8 serialisation.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { deserialize, serialize } from 'node:v8';
import fc from 'fast-check';
import { isTestbedError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout, type Region } from '../memory/layout.ts';
import { PageCache, type PageCacheState, SLOT_DIRTY } from './page-cache.ts';
import { type BlockStore, DirectoryDisk, MemoryDisk } from './shared-disk.ts';

const PAGE = PAGE_SIZE_BYTES;

let scratchRoot = '';
before(() => {
  scratchRoot = mkdtempSync(join(tmpdir(), 'xenvmc-pagecache-'));
});
after(() => {
  rmSync(scratchRoot, { recursive: true, force: true });
});

function newMemory(): GuestMemory {
  return GuestMemory.create(defaultLayout(4096));
}

/** The first `slotCount` pages of the 'pagecache' region. */
function smallRegion(memory: GuestMemory, slotCount: number): Region {
  const region = memory.region('pagecache');
  assert(slotCount <= region.pageCount, 'test region fits');
  return { name: 'pagecache', firstPage: region.firstPage, pageCount: slotCount };
}

/** Deterministic bytes that differ per position and per `seed`. */
function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + seed * 17 + (i >>> 12)) & 0xff;
  return bytes;
}

function diskBytes(disk: BlockStore, file: string): Uint8Array {
  const bytes = new Uint8Array(disk.size(file));
  disk.read(file, 0, bytes);
  return bytes;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.byteLength, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

describe('PageCache', () => {
  it('reads back what it wrote and writes it to the disk at sync', () => {
    const memory = newMemory();
    const disk = new MemoryDisk();
    const cache = PageCache.create(memory, memory.region('pagecache'), disk);
    const mail = pattern(3 * PAGE + 100, 1);
    assert.equal(cache.append('mail/u.mbox', mail), 0, 'first append at 0');
    assert.equal(cache.append('mail/u.mbox', Uint8Array.of(1, 2)), mail.byteLength, 'offset');
    assert.equal(cache.size('mail/u.mbox'), mail.byteLength + 2, 'logical size');
    assert.equal(disk.size('mail/u.mbox'), 0, 'nothing on disk before sync (write-back)');
    assert.deepEqual(cache.read('mail/u.mbox', 0, mail.byteLength), mail, 'read back');
    assert.equal(cache.dirtyPages(), 4, 'four dirty pages');
    assert.equal(cache.sync('mail/u.mbox'), 4, 'four pages written back');
    assert.equal(disk.calls.writes, 1, 'one coalesced disk write for contiguous slots');
    assert.equal(disk.calls.flushes, 1, 'sync flushes');
    assert.deepEqual(diskBytes(disk, 'mail/u.mbox'), concat(mail, Uint8Array.of(1, 2)), 'disk');
    assert.equal(cache.dirtyPages(), 0, 'clean after sync');
    assert.equal(cache.sync(), 0, 'nothing left to write back');
  });

  it('reads are short at the end of file, into a caller buffer if given', () => {
    const memory = newMemory();
    const cache = PageCache.create(memory, smallRegion(memory, 4), new MemoryDisk());
    cache.write('f', 0, pattern(5000, 2));
    const target = new Uint8Array(PAGE);
    const got = cache.read('f', 4990, 100, target);
    assert.equal(got.byteLength, 10, 'short at the end');
    assert.equal(got.buffer, target.buffer, 'a view of the caller buffer');
    assert.deepEqual(got, pattern(5000, 2).subarray(4990), 'tail bytes');
    assert.equal(cache.read('f', 5000, 10).byteLength, 0, 'empty at the end');
    assert.equal(cache.read('absent', 0, 10).byteLength, 0, 'empty for an absent file');
    assert.equal(cache.size('absent'), 0, 'absent file has size 0');
  });

  it('reads a partly written page in from the disk first, but not a page past the end', () => {
    const memory = newMemory();
    const disk = new MemoryDisk();
    const old = pattern(2 * PAGE + 50, 3);
    disk.write('f', 0, old);
    const cache = PageCache.create(memory, smallRegion(memory, 8), disk);
    cache.write('f', PAGE + 10, Uint8Array.of(9, 9, 9));
    assert.equal(cache.counters.diskReads, 1, 'read-modify-write of page 1');
    cache.write('f', 2 * PAGE, new Uint8Array(60).fill(4));
    assert.equal(
      cache.counters.diskReads,
      1,
      'a write covering all file bytes of page 2 reads none',
    );
    cache.write('f', 5 * PAGE + 7, Uint8Array.of(8));
    assert.equal(cache.counters.diskReads, 1, 'page 5 is wholly past the old end: zero-filled');
    const expected = new Uint8Array(5 * PAGE + 8);
    expected.set(old);
    expected.set([9, 9, 9], PAGE + 10);
    expected.fill(4, 2 * PAGE, 2 * PAGE + 60);
    expected[5 * PAGE + 7] = 8;
    assert.deepEqual(cache.read('f', 0, expected.byteLength), expected, 'cache view');
    cache.sync();
    assert.deepEqual(diskBytes(disk, 'f'), expected, 'disk after sync');
  });

  it('works with 8 slots and a 1 MiB file, evicting dirty pages to the disk', () => {
    const memory = newMemory();
    const disk = new MemoryDisk();
    const cache = PageCache.create(memory, smallRegion(memory, 8), disk);
    const body = pattern(1 << 20, 5);
    for (let offset = 0; offset < body.byteLength; offset += 10_007) {
      cache.append('mail/big.mbox', body.subarray(offset, offset + 10_007));
    }
    assert.equal(cache.size('mail/big.mbox'), body.byteLength, 'size');
    assert.ok(cache.counters.evictions >= 256 - 8, 'evicted as it went');
    assert.ok(cache.dirtyPages() <= 8, 'at most the slots are dirty');
    assert.deepEqual(cache.read('mail/big.mbox', 0, body.byteLength), body, 'read back');
    cache.write('mail/big.mbox', 12_345, Uint8Array.of(1, 2, 3));
    body.set([1, 2, 3], 12_345);
    cache.sync();
    assert.deepEqual(diskBytes(disk, 'mail/big.mbox'), body, 'disk after sync');
    assert.equal(cache.cachedPages(), 8, 'all slots in use');
  });

  it('dirties pagecache guest pages when writing, none when reading a cached page', () => {
    const memory = newMemory();
    const region = memory.region('pagecache');
    const cache = PageCache.create(memory, region, new MemoryDisk());
    memory.setLogDirty(true);
    cache.write('mail/u.mbox', 100, pattern(2 * PAGE, 6));
    const pages = memory.peekAndClean();
    assert.equal(pages.length, 3, 'three pages touched');
    assert.deepEqual(
      memory.countByRegion(pages),
      { kernel: 0, sockbuf: 0, pagecache: 3, program: 0 },
      'all in pagecache',
    );
    assert.ok(
      [...pages].every((page) => page >= region.firstPage && page < region.firstPage + 3),
      'the first three slots',
    );
    cache.read('mail/u.mbox', 0, 2 * PAGE);
    cache.sync();
    assert.equal(memory.peekDirtyCount(), 0, 'cached reads and write-back dirty nothing');
  });

  it('marks a page read in from the disk dirty for log-dirty (its bytes changed)', () => {
    const memory = newMemory();
    const disk = new MemoryDisk();
    disk.write('f', 0, pattern(PAGE, 7));
    const cache = PageCache.create(memory, smallRegion(memory, 2), disk);
    memory.setLogDirty(true);
    assert.deepEqual(cache.read('f', 0, PAGE), pattern(PAGE, 7), 'read');
    assert.equal(memory.peekDirtyCount(), 1, 'the slot page is in the log');
    assert.equal(cache.dirtyPages(), 0, 'but clean with respect to the disk');
  });

  it('truncate drops pages past the end and zeroes the rest of the last page', () => {
    const memory = newMemory();
    const disk = new MemoryDisk();
    const cache = PageCache.create(memory, smallRegion(memory, 8), disk);
    cache.write('f', 0, new Uint8Array(3 * PAGE).fill(0xff));
    cache.truncate('f', PAGE + 4);
    assert.equal(cache.size('f'), PAGE + 4, 'size');
    assert.equal(cache.cachedPages(), 2, 'page 2 dropped');
    assert.equal(disk.size('f'), PAGE + 4, 'disk truncated at once');
    cache.write('f', 2 * PAGE, Uint8Array.of(1));
    const tail = cache.read('f', PAGE, PAGE + 1);
    assert.ok(
      tail.subarray(0, 4).every((b) => b === 0xff),
      'kept bytes',
    );
    assert.ok(
      tail.subarray(4, PAGE).every((b) => b === 0),
      'zeros after the old end',
    );
    cache.sync();
    assert.deepEqual(diskBytes(disk, 'f'), cache.read('f', 0, 2 * PAGE + 1), 'disk = cache');
    cache.truncate('f', 0);
    assert.equal(cache.cachedPages(), 0, 'no page left');
    assert.deepEqual(cache.state.files, [], 'the entry is gone');
    assert.equal(cache.size('f'), 0, 'empty');
  });

  it('remove drops dirty pages without writing them back', () => {
    const memory = newMemory();
    const disk = new MemoryDisk();
    const cache = PageCache.create(memory, smallRegion(memory, 4), disk);
    cache.write('spool/1', 0, pattern(2 * PAGE, 8));
    cache.sync();
    cache.write('spool/1', 0, pattern(PAGE, 9));
    cache.remove('spool/1');
    assert.equal(disk.calls.writes, 1, 'the dirty page was not written back');
    assert.deepEqual(disk.list(), [], 'removed from the disk');
    assert.equal(cache.dirtyPages(), 0, 'no dirty page');
    assert.equal(cache.size('spool/1'), 0, 'gone');
  });

  it('appendFrom copies a range through the cache, also within one file', () => {
    const memory = newMemory();
    const disk = new MemoryDisk();
    const cache = PageCache.create(memory, smallRegion(memory, 4), disk);
    const spool = pattern(5 * PAGE + 321, 10);
    cache.write('spool/9', 0, spool);
    cache.append('mail/u.mbox', Uint8Array.of(70, 114));
    assert.equal(cache.appendFrom('mail/u.mbox', 'spool/9', 100, spool.byteLength - 100), 2, 'at');
    const expected = concat(Uint8Array.of(70, 114), spool.subarray(100));
    assert.deepEqual(cache.read('mail/u.mbox', 0, expected.byteLength), expected, 'copied');
    const before = expected.byteLength;
    assert.equal(cache.appendFrom('mail/u.mbox', 'mail/u.mbox', 0, before), before, 'self');
    assert.deepEqual(cache.read('mail/u.mbox', 0, 2 * before), concat(expected, expected), 'x2');
    assert.throws(
      () => cache.appendFrom('mail/u.mbox', 'spool/9', 1, spool.byteLength),
      (error) => isTestbedError(error, 'INPUT_INVALID'),
      'range beyond the source',
    );
    cache.sync();
    assert.deepEqual(diskBytes(disk, 'mail/u.mbox'), concat(expected, expected), 'disk');
  });

  it('refuses bad names, offsets and lengths with InputError', () => {
    const memory = newMemory();
    const cache = PageCache.create(memory, smallRegion(memory, 4), new MemoryDisk());
    const calls: [string, () => unknown][] = [
      ['write name', () => cache.write('../x', 0, Uint8Array.of(1))],
      ['empty write name', () => cache.write('/x', 0, new Uint8Array(0))],
      ['read name', () => cache.read('a//b', 0, 1)],
      ['size name', () => cache.size('')],
      ['truncate name', () => cache.truncate('..', 0)],
      ['remove name', () => cache.remove('a/')],
      ['sync name', () => cache.sync('a b')],
      ['negative offset', () => cache.write('f', -1, Uint8Array.of(1))],
      ['fractional offset', () => cache.read('f', 0.5, 1)],
      ['negative length', () => cache.read('f', 0, -1)],
      ['small target', () => cache.read('f', 0, 10, new Uint8Array(5))],
      ['huge offset', () => cache.write('f', 2 ** 41, Uint8Array.of(1))],
    ];
    for (const [what, call] of calls) {
      assert.throws(call, (error) => isTestbedError(error, 'INPUT_INVALID'), what);
    }
    assert.equal(cache.cachedPages(), 0, 'nothing cached');
  });

  it('continues on another host from the saved state, memory and the shared directory', () => {
    const dir = join(scratchRoot, 'migrate');
    const sourceMemory = newMemory();
    const region = sourceMemory.region('pagecache');
    const small: Region = { ...region, pageCount: 6 };
    const sourceDisk = new DirectoryDisk(dir);
    const source = PageCache.create(sourceMemory, small, sourceDisk);
    const mailbox = pattern(9 * PAGE + 77, 11);
    source.append('mail/u.mbox', mailbox.subarray(0, 4 * PAGE));
    source.sync();
    source.append('mail/u.mbox', mailbox.subarray(4 * PAGE));
    source.write('spool/3', 0, pattern(PAGE + 1, 12));
    assert.ok(source.dirtyPages() > 0, 'dirty pages travel in memory, not on the disk');
    // Stop-and-copy: the state as v8 serialises it in the GuestState, every page copied.
    const saved = deserialize(serialize(source.state)) as PageCacheState;
    const targetMemory = newMemory();
    for (let page = 0; page < sourceMemory.pageCount; page++) {
      targetMemory.loadPage(page, sourceMemory.page(page));
    }
    sourceDisk.close();
    const targetDisk = new DirectoryDisk(dir);
    const target = PageCache.restore(targetMemory, small, targetDisk, saved);
    assert.deepEqual(target.counters, source.counters, 'counters travel');
    assert.equal(target.dirtyPages(), source.dirtyPages(), 'same dirty pages');
    assert.deepEqual(target.read('mail/u.mbox', 0, mailbox.byteLength), mailbox, 'mailbox');
    target.append('mail/u.mbox', Uint8Array.of(1, 2, 3));
    target.appendFrom('mail/u.mbox', 'spool/3', 0, PAGE + 1);
    target.remove('spool/3');
    target.sync();
    const expected = concat(mailbox, Uint8Array.of(1, 2, 3), pattern(PAGE + 1, 12));
    assert.deepEqual(diskBytes(targetDisk, 'mail/u.mbox'), expected, 'disk after sync');
    assert.deepEqual(targetDisk.list(), ['mail/u.mbox'], 'spool removed');
    targetDisk.close();
  });

  it('state is plain data: a structured clone of it restores an equal cache', () => {
    const memory = newMemory();
    const cache = PageCache.create(memory, smallRegion(memory, 16), new MemoryDisk());
    cache.write('a', 0, pattern(3 * PAGE, 13));
    cache.write('b', PAGE, pattern(10, 14));
    const clone = structuredClone(cache.state);
    assert.deepEqual(clone, cache.state, 'survives structuredClone unchanged');
    assert.equal(clone.slotFile.length, 16, 'one entry per slot');
    const flags = clone.slotFlags.filter((f) => (f & SLOT_DIRTY) !== 0).length;
    assert.equal(flags, cache.dirtyPages(), 'dirty flags in the state');
  });

  it('state serialises at a few bytes per slot, also after a restore (packed arrays)', () => {
    const memory = newMemory();
    const region = memory.region('pagecache');
    const disk = new MemoryDisk();
    const cache = PageCache.create(memory, region, disk);
    const slotCount = region.pageCount;
    for (let page = 0; page < slotCount; page++) {
      cache.write(`mail/u${page % 7}.mbox`, Math.floor(page / 7) * PAGE, Uint8Array.of(1));
    }
    const bytes = serialize(cache.state);
    // Three numbers per slot at 2 to 3 bytes each; a holey array would take 5.5 per number.
    assert.ok(bytes.byteLength < 3 * 3 * slotCount + 1024, `${bytes.byteLength} B serialised`);
    const restored = PageCache.restore(memory, region, disk, deserialize(bytes));
    assert.equal(serialize(restored.state).byteLength, bytes.byteLength, 'same size after restore');
  });

  it('restore refuses a state that does not fit the region or contradicts itself', () => {
    const memory = newMemory();
    const disk = new MemoryDisk();
    const region = smallRegion(memory, 8);
    const cache = PageCache.create(memory, region, disk);
    cache.write('a', 0, pattern(2 * PAGE, 15));
    const good = cache.state;
    const broken: [string, (s: PageCacheState) => void, Region][] = [
      ['other slot count', () => {}, smallRegion(memory, 7)],
      ['other first page', () => {}, { ...region, firstPage: region.firstPage + 1 }],
      ['bad version', (s) => Object.assign(s, { version: 2 }), region],
      ['dangling file index', (s) => (s.slotFile[5] = 3), region],
      ['page cached twice', (s) => (s.slotPage[1] = 0), region],
      ['page past the end', (s) => (s.files[0]!.sizeBytes = 10), region],
      ['bad file name', (s) => (s.files[0]!.name = '../etc'), region],
      ['hand out of range', (s) => (s.hand = 8), region],
      ['bad flags', (s) => (s.slotFlags[0] = 9), region],
      ['file without pages', (s) => s.files.push({ name: 'z', sizeBytes: 1 }), region],
    ];
    for (const [what, corrupt, where] of broken) {
      const state = structuredClone(good);
      corrupt(state);
      assert.throws(
        () => PageCache.restore(memory, where, disk, state),
        (error) => isTestbedError(error, 'PAGE_CACHE_STATE_INVALID'),
        what,
      );
    }
    assert.doesNotThrow(() => PageCache.restore(memory, region, disk, structuredClone(good)));
  });

  it('matches a Map model over random operations, syncs and migrations', () => {
    const files = ['mail/a.mbox', 'mail/b.mbox', 'spool/1'];
    const file = fc.constantFrom(...files);
    const offset = fc.oneof(
      fc.nat({ max: 6 * PAGE }),
      fc.constantFrom(0, PAGE - 1, PAGE, 2 * PAGE),
    );
    const length = fc.oneof(fc.nat({ max: 3 * PAGE }), fc.constantFrom(1, PAGE, PAGE + 1));
    const op = fc.oneof(
      fc.record({ kind: fc.constant('write' as const), file, offset, length, seed: fc.nat(255) }),
      fc.record({ kind: fc.constant('append' as const), file, length, seed: fc.nat(255) }),
      fc.record({
        kind: fc.constant('appendFrom' as const),
        file,
        source: file,
        from: fc.double({ min: 0, max: 1, noNaN: true }),
        part: fc.double({ min: 0, max: 1, noNaN: true }),
      }),
      fc.record({ kind: fc.constant('truncate' as const), file, size: offset }),
      fc.record({ kind: fc.constant('read' as const), file, offset, length }),
      fc.record({ kind: fc.constant('sync' as const), file: fc.option(file) }),
      fc.record({ kind: fc.constant('remove' as const), file }),
      fc.record({ kind: fc.constant('migrate' as const) }),
    );
    // One memory for every run (16 MiB each would dominate): the cache zero-fills its slots.
    const memory = newMemory();
    fc.assert(
      fc.property(
        fc.integer({ min: 4, max: 16 }),
        fc.array(op, { maxLength: 40 }),
        (slots, ops) => {
          const region = smallRegion(memory, slots);
          const disk = new MemoryDisk();
          let cache = PageCache.create(memory, region, disk);
          const model = new Map<string, Uint8Array>();
          const put = (name: string, at: number, bytes: Uint8Array): void => {
            const old = model.get(name) ?? new Uint8Array(0);
            const next = new Uint8Array(Math.max(old.byteLength, at + bytes.byteLength));
            next.set(old);
            next.set(bytes, at);
            model.set(name, next);
          };
          memory.setLogDirty(true);
          for (const step of ops) {
            const current =
              model.get(step.kind === 'migrate' ? '' : (step.file ?? '')) ?? new Uint8Array(0);
            switch (step.kind) {
              case 'write': {
                const bytes = pattern(step.length, step.seed);
                cache.write(step.file, step.offset, bytes);
                put(step.file, step.offset, bytes);
                break;
              }
              case 'append': {
                const bytes = pattern(step.length, step.seed);
                assert.equal(cache.append(step.file, bytes), current.byteLength, 'append offset');
                put(step.file, current.byteLength, bytes);
                break;
              }
              case 'appendFrom': {
                const source = model.get(step.source) ?? new Uint8Array(0);
                const from = Math.floor(step.from * source.byteLength);
                const count = Math.floor(step.part * (source.byteLength - from));
                const copied = source.slice(from, from + count);
                const at = cache.appendFrom(step.file, step.source, from, count);
                assert.equal(at, current.byteLength, 'appendFrom offset');
                if (count > 0 || model.has(step.file)) put(step.file, at, copied);
                break;
              }
              case 'truncate': {
                cache.truncate(step.file, step.size);
                const next = new Uint8Array(step.size);
                next.set(current.subarray(0, step.size));
                model.set(step.file, next);
                break;
              }
              case 'read': {
                const got = cache.read(step.file, step.offset, step.length);
                const want = current.subarray(step.offset, step.offset + step.length);
                assert.deepEqual(got, want, `read ${step.file} ${step.offset}+${step.length}`);
                break;
              }
              case 'sync': {
                cache.sync(step.file ?? undefined);
                const synced = step.file === null ? files : [step.file];
                for (const name of synced) {
                  const want = model.get(name) ?? new Uint8Array(0);
                  assert.deepEqual(diskBytes(disk, name), want, `disk ${name} after sync`);
                }
                break;
              }
              case 'remove': {
                cache.remove(step.file);
                model.delete(step.file);
                break;
              }
              case 'migrate': {
                // Same memory (its pages as migrated), the state through v8, a new object.
                const saved = deserialize(serialize(cache.state)) as PageCacheState;
                cache = PageCache.restore(memory, region, disk, saved);
                break;
              }
            }
            assert.ok(cache.dirtyPages() <= cache.cachedPages(), 'dirty pages are cached');
            assert.ok(cache.state.files.length <= slots, 'state is O(slots)');
            for (const name of files) {
              const want = model.get(name)?.byteLength ?? 0;
              assert.equal(cache.size(name), want, `size of ${name}`);
            }
          }
          for (const name of files) {
            const want = model.get(name) ?? new Uint8Array(0);
            assert.deepEqual(cache.read(name, 0, want.byteLength + 1), want, `final read ${name}`);
          }
          cache.sync();
          assert.equal(cache.dirtyPages(), 0, 'all clean after sync');
          for (const name of files) {
            const want = model.get(name) ?? new Uint8Array(0);
            assert.deepEqual(diskBytes(disk, name), want, `final disk ${name}`);
          }
          const touched = memory.peekAndClean();
          assert.ok(
            touched.every((page) => page >= region.firstPage && page < region.firstPage + slots),
            'only the cache slots were written',
          );
        },
      ),
      { seed: 20_240_611, numRuns: 300 },
    );
  });
});
