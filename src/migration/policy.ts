/**
 * Pre-copy stop policies: after each round, decide whether to iterate again, stop the guest
 * and copy the rest (stop-and-copy), or abort. Pure functions of the round's figures, in the
 * shape of Xen 4.10's pluggable `precopy_policy` callback (continue / stop-and-copy / abort),
 * so the sender is the same whatever policy is plugged in and a simulator can replay them.
 *
 * Three policies, each a faithful copy of a real engine's rule (reference/migration-engines.md):
 * - `paper`: legacy Xen (<= 4.5, `xc_domain_save`), the paper's engine: at most 29 rounds, stop
 *   when the last round dirtied under 256 KiB, never send more than 3x the domain's memory.
 * - `xen`: Xen 4.6+ `simple_precopy_policy`: stop after 5 rounds or under 50 dirty pages.
 * - `qemu`: QEMU switches over when the pending bytes fit in the downtime limit at the
 *   measured bandwidth; it has no cap of its own, so we add one and abort there.
 *
 * Non-goals: bandwidth shaping or guest throttling (auto-converge); those act on the guest or
 * the link, not on the decision.
 */
import assert from 'node:assert/strict';
import { InputError } from '../core/errors.ts';
import { formatBytes, PAGE_SIZE_BYTES } from '../core/units.ts';

/** The figures of the pre-copy round that just finished. */
export interface PolicyInput {
  /** The pre-copy round just finished, 1-based (round 1 sent every page). */
  round: number;
  /** Pages sent in all rounds so far. */
  pagesSentTotal: number;
  /** Pages dirtied during that round: the pages the next round (or stop-and-copy) sends. */
  dirtyPageCount: number;
  /** The domain's memory, in pages. */
  vmemPages: number;
  /** Pages sent in the round just finished. */
  lastRoundPagesSent: number;
  /** Wall-clock length of the round just finished, in ms. */
  lastRoundDurationMs: number;
}

/** What the sender does next. */
export type PolicyDecision =
  | { kind: 'continue' }
  | { kind: 'stopAndCopy'; reason: string }
  | { kind: 'abort'; reason: string };

/** The policies we implement. */
export type PolicyName = 'paper' | 'xen' | 'qemu';

/** Valid policy names, for CLI help and error messages. */
export const POLICY_NAMES: readonly PolicyName[] = ['paper', 'xen', 'qemu'];

/** A pluggable pre-copy stop policy; `decide` is pure. */
export interface StopPolicy {
  readonly name: PolicyName;
  /** One sentence with the rule and its parameters, for reports. */
  readonly description: string;
  decide(input: PolicyInput): PolicyDecision;
}

/** Options of `paperPolicy`. */
export interface PaperPolicyOptions {
  /**
   * Stop-and-copy after this round (legacy Xen `DEF_MAX_ITERS`, "limit us to 30 times round
   * loop": 29 pre-copy rounds, then the final one).
   * @default 29
   */
  maxRounds?: number;
  /**
   * Stop-and-copy when the last round dirtied fewer bytes than this (the paper's 256 KiB).
   * @default 262144 (256 KiB)
   */
  dirtyThresholdBytes?: number;
  /**
   * Stop-and-copy when continuing would send more than this many times the domain's memory
   * (legacy Xen `DEF_MAX_FACTOR`).
   * @default 3
   */
  maxSentFactor?: number;
}

/** Options of `xenPolicy`. */
export interface XenPolicyOptions {
  /** Stop-and-copy after this round (`SPP_MAX_ITERATIONS`). @default 5 */
  maxRounds?: number;
  /** Stop-and-copy under this many dirty pages (`SPP_TARGET_DIRTY_COUNT`). @default 50 */
  dirtyThresholdPages?: number;
}

/** Options of `qemuPolicy`. */
export interface QemuPolicyOptions {
  /** The longest pause allowed (QEMU `downtime-limit`), in ms. @default 300 */
  downtimeLimitMs?: number;
  /**
   * Abort after this round if still not converged. QEMU itself would iterate forever; its
   * management layer (libvirt, nova) cancels instead, and so do we.
   * @default 1000
   */
  maxRounds?: number;
}

/** The union of all policies' options, for `policyByName`. */
export type PolicyOptions = PaperPolicyOptions & XenPolicyOptions & QemuPolicyOptions;

function checkPositive(policy: PolicyName, option: string, value: number, integer: boolean): void {
  const valid = integer ? Number.isSafeInteger(value) && value >= 1 : value > 0;
  if (!valid || !Number.isFinite(value)) {
    throw new InputError(
      `${policy} policy: ${option} must be ${integer ? 'an integer >= 1' : 'above 0'}; got ${value}`,
    );
  }
}

function checkInput(input: PolicyInput): void {
  assert(Number.isSafeInteger(input.round) && input.round >= 1, `round ${input.round}`);
  assert(input.dirtyPageCount >= 0 && input.pagesSentTotal >= 0, 'page counts must be >= 0');
  assert(input.vmemPages >= 1, `vmemPages ${input.vmemPages}`);
  assert(input.lastRoundDurationMs >= 0, `lastRoundDurationMs ${input.lastRoundDurationMs}`);
}

function pagesAndBytes(pages: number): string {
  return `${pages} pages (${formatBytes(pages * PAGE_SIZE_BYTES)})`;
}

/**
 * Legacy Xen (`xc_domain_save`, Xen <= 4.5), the engine the paper ran: stop-and-copy when the
 * round dirtied less than `dirtyThresholdBytes`, or at round `maxRounds`, or when sending the
 * dirty pages would bring the total above `maxSentFactor` x the domain's memory.
 */
export function paperPolicy(options: PaperPolicyOptions = {}): StopPolicy {
  const maxRounds = options.maxRounds ?? 29;
  const dirtyThresholdBytes = options.dirtyThresholdBytes ?? 256 * 1024;
  const maxSentFactor = options.maxSentFactor ?? 3;
  checkPositive('paper', 'maxRounds', maxRounds, true);
  checkPositive('paper', 'dirtyThresholdBytes', dirtyThresholdBytes, true);
  checkPositive('paper', 'maxSentFactor', maxSentFactor, false);
  return {
    name: 'paper',
    description:
      `legacy Xen: stop-and-copy when a round dirties less than ` +
      `${formatBytes(dirtyThresholdBytes)}, after ${maxRounds} rounds, or before sending more ` +
      `than ${maxSentFactor}x the domain's memory`,
    decide(input) {
      checkInput(input);
      const { round, dirtyPageCount, pagesSentTotal, vmemPages } = input;
      const dirtyBytes = dirtyPageCount * PAGE_SIZE_BYTES;
      if (dirtyBytes < dirtyThresholdBytes) {
        return {
          kind: 'stopAndCopy',
          reason:
            `round ${round} dirtied ${pagesAndBytes(dirtyPageCount)} < ` +
            formatBytes(dirtyThresholdBytes),
        };
      }
      if (round >= maxRounds) {
        return {
          kind: 'stopAndCopy',
          reason: `round ${round} reached the limit of ${maxRounds} rounds`,
        };
      }
      const sentLimitPages = maxSentFactor * vmemPages;
      if (pagesSentTotal + dirtyPageCount > sentLimitPages) {
        return {
          kind: 'stopAndCopy',
          reason:
            `${pagesSentTotal} pages sent plus ${dirtyPageCount} dirty would exceed ` +
            `${maxSentFactor} x the domain's ${vmemPages} pages (${sentLimitPages})`,
        };
      }
      return { kind: 'continue' };
    },
  };
}

/**
 * Xen 4.6+ `simple_precopy_policy` (xg_sr_save.c), what `xl migrate` uses: stop-and-copy when
 * the round dirtied fewer than `dirtyThresholdPages` pages or at round `maxRounds`.
 */
export function xenPolicy(options: XenPolicyOptions = {}): StopPolicy {
  const maxRounds = options.maxRounds ?? 5;
  const dirtyThresholdPages = options.dirtyThresholdPages ?? 50;
  checkPositive('xen', 'maxRounds', maxRounds, true);
  checkPositive('xen', 'dirtyThresholdPages', dirtyThresholdPages, true);
  return {
    name: 'xen',
    description:
      `Xen 4.6+ simple_precopy_policy: stop-and-copy when a round dirties fewer than ` +
      `${dirtyThresholdPages} pages or after ${maxRounds} rounds`,
    decide(input) {
      checkInput(input);
      const { round, dirtyPageCount } = input;
      if (dirtyPageCount < dirtyThresholdPages) {
        return {
          kind: 'stopAndCopy',
          reason:
            `round ${round} dirtied ${pagesAndBytes(dirtyPageCount)}, fewer than ` +
            `${dirtyThresholdPages} pages`,
        };
      }
      if (round >= maxRounds) {
        return {
          kind: 'stopAndCopy',
          reason: `round ${round} reached the limit of ${maxRounds} rounds`,
        };
      }
      return { kind: 'continue' };
    },
  };
}

/**
 * The bytes the link moved per ms in the last round. A round of zero duration that sent pages
 * counts as infinitely fast (the pending pages surely fit); one that sent nothing as zero.
 */
function measuredBytesPerMs(input: PolicyInput): number {
  const bytes = input.lastRoundPagesSent * PAGE_SIZE_BYTES;
  if (input.lastRoundDurationMs > 0) return bytes / input.lastRoundDurationMs;
  return bytes > 0 ? Number.POSITIVE_INFINITY : 0;
}

/**
 * QEMU's convergence rule (`migration_iteration_run`): switch over when the pending bytes
 * (`dirtyPageCount` x 4 KiB) are at most `threshold = bandwidth x downtimeLimitMs`, with the
 * bandwidth measured over the last round. At round `maxRounds` without converging it aborts:
 * the guest dirties memory faster than the link can carry it.
 */
export function qemuPolicy(options: QemuPolicyOptions = {}): StopPolicy {
  const downtimeLimitMs = options.downtimeLimitMs ?? 300;
  const maxRounds = options.maxRounds ?? 1000;
  checkPositive('qemu', 'downtimeLimitMs', downtimeLimitMs, false);
  checkPositive('qemu', 'maxRounds', maxRounds, true);
  return {
    name: 'qemu',
    description:
      `QEMU: stop-and-copy when the dirty pages fit in ${downtimeLimitMs} ms at the bandwidth ` +
      `measured over the last round; abort after ${maxRounds} rounds`,
    decide(input) {
      checkInput(input);
      const { round, dirtyPageCount } = input;
      const bytesPerMs = measuredBytesPerMs(input);
      const thresholdBytes = bytesPerMs * downtimeLimitMs;
      const pendingBytes = dirtyPageCount * PAGE_SIZE_BYTES;
      const rate = `${((bytesPerMs * 1000) / 1e6).toFixed(1)} MB/s`;
      if (pendingBytes <= thresholdBytes) {
        return {
          kind: 'stopAndCopy',
          reason:
            `round ${round} left ${pagesAndBytes(dirtyPageCount)}, which fit in ` +
            `${downtimeLimitMs} ms at the measured ${rate} (${formatBytes(thresholdBytes)})`,
        };
      }
      if (round >= maxRounds) {
        return {
          kind: 'abort',
          reason:
            `after ${round} rounds the guest still dirtied ${pagesAndBytes(dirtyPageCount)} ` +
            `in a round, more than the ${formatBytes(thresholdBytes)} the link moves in ` +
            `${downtimeLimitMs} ms at ${rate}: the guest dirties memory faster than the link ` +
            'sends it (QEMU would iterate forever); raise the downtime limit, slow the guest ' +
            'or use a faster link',
        };
      }
      return { kind: 'continue' };
    },
  };
}

/**
 * The policy called `name`, built with the options that apply to it (others are ignored).
 * Throws `InputError` for an unknown name.
 */
export function policyByName(name: string, options: PolicyOptions = {}): StopPolicy {
  switch (name) {
    case 'paper':
      return paperPolicy({
        maxRounds: options.maxRounds,
        dirtyThresholdBytes: options.dirtyThresholdBytes,
        maxSentFactor: options.maxSentFactor,
      });
    case 'xen':
      return xenPolicy({
        maxRounds: options.maxRounds,
        dirtyThresholdPages: options.dirtyThresholdPages,
      });
    case 'qemu':
      return qemuPolicy({
        downtimeLimitMs: options.downtimeLimitMs,
        maxRounds: options.maxRounds,
      });
    default:
      throw new InputError(
        `unknown migration policy '${name}': use one of ${POLICY_NAMES.join(', ')}`,
      );
  }
}
