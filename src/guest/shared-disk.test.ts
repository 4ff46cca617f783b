/**
 * Goal: both `BlockStore`s behave the same (one compliance suite, run on each), names that
 * could leave the disk's directory are refused, and `DirectoryDisk` keeps no state that would
 * hide another process's writes. Method: fixed cases, a fast-check run of random operations
 * against a Map model, and two `DirectoryDisk`s over one fresh temporary directory.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { isTestbedError } from '../core/errors.ts';
import {
  type BlockStore,
  checkFileName,
  DirectoryDisk,
  FILE_NAME_LENGTH_MAX,
  MemoryDisk,
} from './shared-disk.ts';

let scratchRoot = '';
let diskCount = 0;

before(() => {
  scratchRoot = mkdtempSync(join(tmpdir(), 'xenvmc-disk-'));
});

after(() => {
  rmSync(scratchRoot, { recursive: true, force: true });
});

function freshDir(): string {
  return join(scratchRoot, `disk-${diskCount++}`);
}

function bytesOf(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

function readAll(disk: BlockStore, file: string): Uint8Array {
  const target = new Uint8Array(disk.size(file));
  assert.equal(disk.read(file, 0, target), target.byteLength, `whole ${file} read`);
  return target;
}

const implementations: { name: string; make: () => BlockStore & { close?: () => void } }[] = [
  { name: 'MemoryDisk', make: () => new MemoryDisk() },
  { name: 'DirectoryDisk', make: () => new DirectoryDisk(freshDir()) },
];

for (const { name, make } of implementations) {
  describe(`${name} (BlockStore compliance)`, () => {
    it('reads nothing from a file that does not exist, and sizes it 0', () => {
      const disk = make();
      assert.equal(disk.read('spool/1', 0, new Uint8Array(10)), 0, 'read of absent file');
      assert.equal(disk.size('spool/1'), 0, 'size of absent file');
      assert.deepEqual(disk.list(), [], 'nothing listed');
      disk.close?.();
    });

    it('writes create the file and its directories; reads are short at the end', () => {
      const disk = make();
      disk.write('mail/u1.mbox', 0, bytesOf('hello, world'));
      assert.equal(disk.size('mail/u1.mbox'), 12, 'size after write');
      const target = new Uint8Array(20).fill(7);
      assert.equal(disk.read('mail/u1.mbox', 7, target), 5, 'short read at the end');
      assert.deepEqual(target.subarray(0, 5), bytesOf('world'), 'bytes read');
      assert.equal(target[5], 7, 'target untouched past the bytes read');
      assert.equal(disk.read('mail/u1.mbox', 12, target), 0, 'nothing at the end');
      assert.equal(disk.read('mail/u1.mbox', 1000, target), 0, 'nothing past the end');
      disk.close?.();
    });

    it('a write past the end leaves a hole of zeros', () => {
      const disk = make();
      disk.write('f', 0, bytesOf('ab'));
      disk.write('f', 5000, bytesOf('cd'));
      const all = readAll(disk, 'f');
      assert.equal(all.byteLength, 5002, 'size covers the far write');
      assert.deepEqual(all.subarray(0, 2), bytesOf('ab'), 'first write');
      assert.ok(
        all.subarray(2, 5000).every((b) => b === 0),
        'hole reads as zeros',
      );
      assert.deepEqual(all.subarray(5000), bytesOf('cd'), 'far write');
      disk.close?.();
    });

    it('truncate shrinks and grows with zeros, creating the file if needed', () => {
      const disk = make();
      disk.write('f', 0, bytesOf('abcdef'));
      disk.truncate('f', 2);
      assert.deepEqual(readAll(disk, 'f'), bytesOf('ab'), 'shrunk');
      disk.truncate('f', 4);
      assert.deepEqual(readAll(disk, 'f'), Uint8Array.of(97, 98, 0, 0), 'grown with zeros');
      disk.truncate('new/file', 3);
      assert.equal(disk.size('new/file'), 3, 'truncate creates');
      disk.close?.();
    });

    it('remove deletes a file, and removing an absent one does nothing', () => {
      const disk = make();
      disk.write('spool/17', 0, bytesOf('x'));
      disk.remove('spool/17');
      assert.equal(disk.size('spool/17'), 0, 'gone');
      assert.deepEqual(disk.list(), [], 'not listed');
      disk.remove('spool/17');
      disk.remove('never/there');
      disk.close?.();
    });

    it('lists files by relative name, sorted', () => {
      const disk = make();
      for (const file of ['spool/2', 'mail/b.mbox', 'mail/a.mbox', 'top', 'spool/10']) {
        disk.write(file, 0, bytesOf(file));
      }
      assert.deepEqual(
        disk.list(),
        ['mail/a.mbox', 'mail/b.mbox', 'spool/10', 'spool/2', 'top'],
        'sorted list',
      );
      disk.flush();
      disk.close?.();
    });

    it('accepts a view of a SharedArrayBuffer (guest memory) to write and read', () => {
      const disk = make();
      const shared = new Uint8Array(new SharedArrayBuffer(8192));
      shared.fill(5, 4096);
      disk.write('f', 10, shared.subarray(4090, 4100));
      const into = new Uint8Array(new SharedArrayBuffer(16));
      assert.equal(disk.read('f', 10, into), 10, 'read into shared memory');
      assert.deepEqual([...into.subarray(0, 10)], [0, 0, 0, 0, 0, 0, 5, 5, 5, 5], 'bytes');
      disk.close?.();
    });

    it('refuses bad names with InputError on every call', () => {
      const disk = make();
      for (const bad of ['', '/etc/passwd', '../x', 'a/../../x', 'a//b', 'a/', 'a b']) {
        const calls: [string, () => unknown][] = [
          ['read', () => disk.read(bad, 0, new Uint8Array(1))],
          ['write', () => disk.write(bad, 0, new Uint8Array(1))],
          ['truncate', () => disk.truncate(bad, 0)],
          ['size', () => disk.size(bad)],
          ['remove', () => disk.remove(bad)],
        ];
        for (const [call, run] of calls) {
          assert.throws(run, (error) => isTestbedError(error, 'INPUT_INVALID'), `${call} ${bad}`);
        }
      }
      assert.throws(
        () => disk.write('f', -1, new Uint8Array(1)),
        (error) => isTestbedError(error, 'INPUT_INVALID'),
        'negative offset',
      );
      assert.deepEqual(disk.list(), [], 'nothing created');
      disk.close?.();
    });

    it('matches a Map model over random operations', () => {
      const files = ['a', 'd/b', 'd/e/c'];
      const op = fc.oneof(
        fc.record({
          kind: fc.constant('write' as const),
          file: fc.constantFrom(...files),
          offset: fc.nat({ max: 10_000 }),
          length: fc.nat({ max: 6000 }),
          fill: fc.integer({ min: 1, max: 255 }),
        }),
        fc.record({
          kind: fc.constant('truncate' as const),
          file: fc.constantFrom(...files),
          size: fc.nat({ max: 12_000 }),
        }),
        fc.record({ kind: fc.constant('remove' as const), file: fc.constantFrom(...files) }),
        fc.record({
          kind: fc.constant('read' as const),
          file: fc.constantFrom(...files),
          offset: fc.nat({ max: 12_000 }),
          length: fc.nat({ max: 6000 }),
        }),
      );
      fc.assert(
        fc.property(fc.array(op, { maxLength: 25 }), (ops) => {
          const disk = make();
          const model = new Map<string, Uint8Array>();
          for (const step of ops) {
            const old = model.get(step.file) ?? new Uint8Array(0);
            if (step.kind === 'write') {
              const bytes = new Uint8Array(step.length).fill(step.fill);
              disk.write(step.file, step.offset, bytes);
              const next = new Uint8Array(Math.max(old.byteLength, step.offset + step.length));
              next.set(old);
              next.set(bytes, step.offset);
              model.set(step.file, next);
            } else if (step.kind === 'truncate') {
              disk.truncate(step.file, step.size);
              const next = new Uint8Array(step.size);
              next.set(old.subarray(0, step.size));
              model.set(step.file, next);
            } else if (step.kind === 'remove') {
              disk.remove(step.file);
              model.delete(step.file);
            } else {
              const target = new Uint8Array(step.length);
              const count = disk.read(step.file, step.offset, target);
              const expected = old.subarray(step.offset, step.offset + step.length);
              assert.deepEqual(target.subarray(0, count), expected, 'read matches the model');
            }
          }
          disk.flush();
          assert.deepEqual(disk.list(), [...model.keys()].sort(), 'same files');
          for (const [file, bytes] of model) {
            assert.deepEqual(readAll(disk, file), bytes, `${file} matches the model`);
          }
          disk.close?.();
        }),
        { seed: 4242, numRuns: name === 'DirectoryDisk' ? 60 : 200 },
      );
    });
  });
}

describe('checkFileName', () => {
  it('accepts relative names of safe segments', () => {
    for (const good of ['a', 'mail/test1.user.mbox', 'spool/17', 'a-b_c.d/e', '.hidden', 'a..b']) {
      assert.equal(checkFileName(good), good, `${good} accepted`);
    }
    assert.equal(checkFileName('x'.repeat(FILE_NAME_LENGTH_MAX)).length, 200, 'longest name');
  });

  it('refuses empty, absolute, dotted, doubled, long and non-ASCII names', () => {
    const bad = [
      '',
      '/a',
      'a/',
      'a//b',
      '.',
      '..',
      'a/./b',
      'a/..',
      'a b',
      'a\\b',
      'é',
      'a\0b',
      'x'.repeat(FILE_NAME_LENGTH_MAX + 1),
    ];
    for (const name of bad) {
      assert.throws(
        () => checkFileName(name),
        (error) => isTestbedError(error, 'INPUT_INVALID'),
        `${JSON.stringify(name)} refused`,
      );
    }
  });
});

describe('DirectoryDisk', () => {
  it('keeps at most openFilesMax descriptors, reopening on demand', () => {
    const disk = new DirectoryDisk(freshDir(), { openFilesMax: 4 });
    for (let i = 0; i < 10; i++) disk.write(`spool/${i}`, 0, bytesOf(`mail ${i}`));
    assert.equal(disk.openFileCount, 4, 'bounded');
    for (let i = 0; i < 10; i++) {
      assert.deepEqual(readAll(disk, `spool/${i}`), bytesOf(`mail ${i}`), `spool/${i}`);
    }
    disk.flush();
    disk.close();
    assert.equal(disk.openFileCount, 0, 'close closes all');
    assert.deepEqual(readAll(disk, 'spool/3'), bytesOf('mail 3'), 'usable after close');
    disk.close();
  });

  it('sees what another process wrote to the same directory (no cached sizes)', () => {
    const dir = freshDir();
    const source = new DirectoryDisk(dir);
    const target = new DirectoryDisk(dir);
    source.write('mail/u.mbox', 0, bytesOf('From a\n'));
    assert.equal(target.size('mail/u.mbox'), 7, 'target sees the size');
    target.write('mail/u.mbox', 7, bytesOf('From b\n'));
    assert.equal(source.size('mail/u.mbox'), 14, 'source sees the append on its open fd');
    assert.deepEqual(readAll(source, 'mail/u.mbox'), bytesOf('From a\nFrom b\n'), 'contents');
    source.close();
    target.remove('mail/u.mbox');
    assert.equal(source.size('mail/u.mbox'), 0, 'source sees the removal after close');
    target.close();
  });

  it('stores files as plain files under the root, readable by anyone', () => {
    const dir = freshDir();
    const disk = new DirectoryDisk(dir);
    disk.write('mail/u.mbox', 3, bytesOf('xyz'));
    disk.flush();
    assert.deepEqual(
      new Uint8Array(readFileSync(join(dir, 'mail', 'u.mbox'))),
      Uint8Array.of(0, 0, 0, 120, 121, 122),
      'file on the host',
    );
    writeFileSync(join(dir, 'outside'), 'seed');
    assert.deepEqual(readAll(disk, 'outside'), bytesOf('seed'), 'a file written by the host');
    disk.close();
  });

  it('wraps host errors as DISK_IO_FAILED with the errno as cause', () => {
    const dir = freshDir();
    const disk = new DirectoryDisk(dir);
    mkdirSync(join(dir, 'adir'));
    assert.throws(
      () => disk.write('adir', 0, bytesOf('x')),
      (error) =>
        isTestbedError(error, 'DISK_IO_FAILED') &&
        (error.cause as NodeJS.ErrnoException).code === 'EISDIR',
      'a directory is not a file',
    );
    assert.throws(
      () => disk.size('adir'),
      (error) => isTestbedError(error, 'DISK_IO_FAILED'),
      'size of a directory',
    );
    disk.write('plain', 0, bytesOf('x'));
    assert.throws(
      () => disk.write('plain/under', 0, bytesOf('x')),
      (error) => isTestbedError(error, 'DISK_IO_FAILED'),
      'a file is not a directory',
    );
    disk.close();
  });
});
