/**
 * Guest write throughput with log-dirty on vs off, in one process: whole 4 KiB pages in random
 * order (the shape of the target), and 64-byte stamps (the dirtier's writes).
 * Target (issue 2): <= 15 % slowdown for page writes.
 */
import { Random } from '../../src/core/random.ts';
import { GuestMemory } from '../../src/memory/guest-memory.ts';
import { defaultLayout } from '../../src/memory/layout.ts';
import { type BenchFigure, type Benchmark, median, param } from '../harness.ts';

function timeWrites(
  memory: GuestMemory,
  order: Uint32Array,
  source: Uint8Array,
  stride: number,
): number {
  const start = performance.now();
  for (let i = 0; i < order.length; i++)
    memory.write(order[i]! * 4096 + ((i * stride) & 4032), source);
  return performance.now() - start;
}

export const logDirtyCost: Benchmark = {
  id: 'log-dirty-cost',
  title: 'guest write throughput, log-dirty on vs off',
  async run(mode) {
    const memoryMiB = param('memory_mib', { smoke: 16, real: 256 }, mode);
    const repetitions = param('repetitions', { smoke: 1, real: 7 }, mode);
    const memory = GuestMemory.create(defaultLayout((memoryMiB * 1024 * 1024) / 4096));
    memory.pretouch();
    const random = new Random(1);
    const order = Uint32Array.from({ length: memory.pageCount }, () =>
      random.nextInt(memory.pageCount),
    );
    const figures: BenchFigure[] = [];
    for (const [label, size, target] of [
      ['4 KiB page writes', 4096, 0.15],
      ['64 B stamp writes', 64, null],
    ] as const) {
      const source = new Uint8Array(size).fill(0x5a);
      const stride = size === 4096 ? 0 : 64;
      const off: number[] = [];
      const on: number[] = [];
      for (let rep = 0; rep < repetitions; rep++) {
        memory.setLogDirty(false);
        off.push(timeWrites(memory, order, source, stride));
        memory.setLogDirty(true);
        on.push(timeWrites(memory, order, source, stride));
        memory.peekAndClean();
      }
      const offRate = (order.length * 1000) / median(off);
      const onRate = (order.length * 1000) / median(on);
      const slowdown = 1 - onRate / offRate;
      figures.push({
        name: `${label}: slowdown with log-dirty on`,
        value: onRate / 1e6,
        baseline: offRate / 1e6,
        unit: 'M writes/s',
        ratio: slowdown,
        target: target === null ? 'none (reported)' : `<= ${target}`,
        pass: target === null ? null : slowdown <= target,
        checksum: `${order.length} writes x ${repetitions}`,
      });
    }
    memory.setLogDirty(false);
    return figures;
  },
};
