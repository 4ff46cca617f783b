/**
 * The analytical pre-copy model of Liu, Xu, Jin, Gong, Liao, "Performance and energy modeling
 * for live migration of virtual machines", HPDC 2011 (reference/migration-engines.md §4.3), to
 * set beside measured runs: round i sends what the guest dirtied while round i-1 was sent,
 *
 * ```
 * V_i = Vmem x L^i,   T_i = V_i / R,   L = D / R             (i = 0 .. n)
 * Tmig = Vmem / R x (1 - L^(n+1)) / (1 - L)                  (n + 1 x Vmem / R when L = 1)
 * Vmig = Vmem x (1 - L^(n+1)) / (1 - L)
 * ```
 *
 * with Vmem the memory size, R the link rate, D the dirty rate and n the index of the last
 * round (the stop-and-copy). Round 0 of the model is the full copy, our round 1.
 *
 * Non-goals: the model's refinements (writable working set, resume time, energy); it assumes a
 * uniform dirty rate over distinct pages, which real guests only approach.
 */
import { InputError } from '../core/errors.ts';

/** Inputs of `liuModel`. */
export interface LiuModelInput {
  /** Vmem: the domain's memory, in bytes. */
  vmemBytes: number;
  /** R: the link's transfer rate, in bytes per second. */
  linkBytesPerSec: number;
  /** D: the rate at which the guest dirties distinct memory, in bytes per second. */
  dirtyBytesPerSec: number;
  /** n: the index of the last round; the model sums rounds 0..n (n + 1 transfers). */
  rounds: number;
}

/** One round of the model. */
export interface LiuModelRound {
  /** Round index i, 0-based as in the paper (0 is the full copy). */
  round: number;
  /** V_i = Vmem x L^i, in bytes. */
  bytes: number;
  /** T_i = V_i / R, in ms. */
  ms: number;
}

/** Outputs of `liuModel`. */
export interface LiuModelResult {
  /** Total migration time, in ms. */
  tmigMs: number;
  /** Total bytes sent. */
  vmigBytes: number;
  /** L = D / R; at or above 1 pre-copy does not converge. */
  lambda: number;
  /** One row per round, 0..n. */
  perRound: LiuModelRound[];
}

/** Sum of L^i for i = 0..n: (1 - L^(n+1)) / (1 - L), or n + 1 when L = 1. */
function geometricSum(lambda: number, rounds: number): number {
  // Near L = 1 the closed form divides two tiny differences and loses digits (about 1e-16 /
  // |1 - L| relative); there a direct sum is exact enough, and it gives n + 1 at L = 1.
  if (Math.abs(1 - lambda) < 1e-6) {
    let sum = 0;
    for (let round = 0; round <= rounds; round++) sum += lambda ** round;
    return sum;
  }
  return (1 - lambda ** (rounds + 1)) / (1 - lambda);
}

/**
 * Liu et al.'s pre-copy model: migration time, bytes sent and per-round figures for a domain of
 * `vmemBytes` over a link of `linkBytesPerSec` while the guest dirties `dirtyBytesPerSec`.
 * Throws `InputError` for sizes or rates that are not positive, or rounds not an integer >= 0.
 */
export function liuModel(input: LiuModelInput): LiuModelResult {
  const { vmemBytes, linkBytesPerSec, dirtyBytesPerSec, rounds } = input;
  if (!(vmemBytes > 0 && linkBytesPerSec > 0 && Number.isFinite(linkBytesPerSec))) {
    throw new InputError(
      `model needs memory and link rate above 0; got vmemBytes ${vmemBytes}, ` +
        `linkBytesPerSec ${linkBytesPerSec}`,
    );
  }
  if (!(dirtyBytesPerSec >= 0 && Number.isFinite(dirtyBytesPerSec))) {
    throw new InputError(`model needs a dirty rate >= 0; got ${dirtyBytesPerSec}`);
  }
  if (!Number.isSafeInteger(rounds) || rounds < 0) {
    throw new InputError(`model needs rounds as an integer >= 0; got ${rounds}`);
  }
  const lambda = dirtyBytesPerSec / linkBytesPerSec;
  const msPerByte = 1000 / linkBytesPerSec;
  const perRound: LiuModelRound[] = [];
  for (let round = 0; round <= rounds; round++) {
    const bytes = vmemBytes * lambda ** round;
    perRound.push({ round, bytes, ms: bytes * msPerByte });
  }
  const sum = geometricSum(lambda, rounds);
  return {
    tmigMs: vmemBytes * msPerByte * sum,
    vmigBytes: vmemBytes * sum,
    lambda,
    perRound,
  };
}
