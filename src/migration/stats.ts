/**
 * Migration statistics as the paper defines them (section 6) and as QEMU's `query-migrate`
 * reports them. Every figure is counted where it happens (principle 5), never estimated.
 *
 * - `pagesSent` = Vmig = sum over rounds of the pages sent in that round (zero pages count:
 *   they are sent, as a flag);
 * - `totalMigrationTimeMs` = Tmig, from turning log-dirty on (the start of round 1) until the
 *   target's notice that the domain runs there; `setupTimeMs` (connect, authenticate, target
 *   reserves and pre-touches memory) is reported apart, because first-touch faults cost
 *   3.6 s/GiB on this machine and would otherwise swamp Tmig;
 * - `downtimeMs`, measured on the source's clock alone, from the pause request until the
 *   target's resumed notice arrives (so it includes that notice's one-way trip);
 * - `overheadRatio` = Rd = Vmig / Vmem.
 */
import type { RegionCounts } from '../memory/layout.ts';
import type { PolicyName } from './policy.ts';

export type RoundPhase = 'precopy' | 'stopCopy';

export interface RoundStats {
  round: number;
  phase: RoundPhase;
  pagesSent: number;
  zeroPages: number;
  bytesOnWire: number;
  /** Pages the guest dirtied while this round ran (sent by the next round). */
  pagesDirtied: number;
  durationMs: number;
  rateBytesPerSec: number;
  sentByRegion: RegionCounts;
  dirtiedByRegion: RegionCounts;
  /** Pages of XENVMC channel regions sent in this round (only with `--migrate-channel-pages`). */
  channelPagesSent: number;
}

export interface MigrationStats {
  domain: string;
  sourceHost: string;
  targetHost: string;
  policy: PolicyName;
  /** The source host's XENVMC mode during the migration (off, xenvmc, xenvmc-suspend, advance). */
  xenvmcMode: string;
  stopReason: string;
  linkBytesPerSec: number | null;
  totalMigrationTimeMs: number;
  setupTimeMs: number;
  downtimeMs: number;
  pagesSent: number;
  vmemPages: number;
  overheadRatio: number;
  zeroPages: number;
  bytesOnWire: number;
  roundCount: number;
  rounds: RoundStats[];
  sentByRegion: RegionCounts;
  /**
   * Whether the channel regions the domain granted were sent with it, as real Xen would (a page
   * written through a grant mapping is marked dirty when the mapping is removed); off by
   * default, the paper's premise that channel memory is not migrated.
   */
  migrateChannelPages: boolean;
  /** Pages of channel regions sent, all rounds (included in `pagesSent`). */
  channelPagesSent: number;
  guestStateBytes: number;
  /** Every page's CRC-32C on the target at resume equals the source's at the pause. */
  memoryVerified: boolean;
  /** Wall-clock ISO time at which the migration command started. */
  startedAt: string;
}

/** What a progress display shows while a migration runs. */
export interface MigrationProgress {
  /** `inDoubt`: the resumed notice did not come; the source asks the target, its copy paused. */
  phase: 'setup' | RoundPhase | 'inDoubt' | 'verify';
  round: number;
  pagesInRound: number;
  pagesSentInRound: number;
  pagesSentTotal: number;
  bytesOnWire: number;
  elapsedMs: number;
}
