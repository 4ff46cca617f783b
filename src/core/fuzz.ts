/**
 * Run counts and seeds of the fuzz tests: fixed in CI, raised for longer opt-in runs.
 * `XENVMC_FUZZ_RUNS=N` raises every fuzz test to at least N runs; `XENVMC_FUZZ_SEED=S` replays
 * one seed everywhere.
 */
const FUZZ_RUNS = Number(process.env.XENVMC_FUZZ_RUNS ?? 0);
const SEED_OVERRIDE = process.env.XENVMC_FUZZ_SEED;

/** `base` runs, or more when XENVMC_FUZZ_RUNS asks for a longer run. */
export function fuzzRuns(base: number): number {
  return Number.isSafeInteger(FUZZ_RUNS) && FUZZ_RUNS > base ? FUZZ_RUNS : base;
}

/** `fixed`, unless XENVMC_FUZZ_SEED replays another seed. */
export function fuzzSeed(fixed: number): number {
  return SEED_OVERRIDE === undefined ? fixed : Number(SEED_OVERRIDE);
}
