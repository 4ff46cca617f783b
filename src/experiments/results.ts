/**
 * What an experiment writes (`results.json`) and the report reads back: one `RunRecord` per
 * run (a mode, a point of a table, a repetition), the scenario as given, what was scaled or
 * simulated, and the machine. Every figure in a run is measured in that run; a run that failed
 * (mails missing, migration failed) keeps `ok: false` and its cause, and reports never average
 * it in.
 */
import type { RegionCounts } from '../memory/layout.ts';
import type { MigrationStats, RoundStats } from '../migration/stats.ts';
import type { TrafficClass } from '../net/shaper.ts';

export const RESULTS_SCHEMA = 'xenvmc-results/1';

/** One mail as Mclient saw it, for the latency-during-migration chart. */
export interface MailLatency {
  /** 1-based mail number in Mclient's i/j loop order. */
  mail: number;
  /** When Mclient started the mail, ms after the workload started (wall clock of the runner). */
  startMs: number;
  /** From connect to the server's 250 after the data, in guest ms. */
  latencyMs: number;
  /** The mail was in flight at some moment between the migrate command and the target's resumed notice. */
  duringMigration: boolean;
}

/** One interval of the source host's egress (the NMON-like series behind Figure 11). */
export interface VolumeSample {
  /** Start of the interval, ms after the migrate command (negative: before it). */
  tMs: number;
  intervalMs: number;
  bytesPerSec: Record<TrafficClass, number>;
}

export interface RunRecord {
  /** Stable id, e.g. `table1/advance/n4/r1`. */
  id: string;
  /** Which group of points this run belongs to (`table1`, `table2`, or a scenario's own name). */
  table: string;
  mode: string;
  n: number;
  /** n x n. */
  mails: number;
  fileSizeBytes: number;
  /** 1-based. */
  repetition: number;
  seed: number;
  /** True only if the migration completed and every mail arrived once and intact. */
  ok: boolean;
  /** Why the run failed, in one line; null when ok. */
  failure: string | null;
  totalMigrationTimeMs: number | null;
  downtimeMs: number | null;
  /** Vmig, pages. */
  pagesSent: number | null;
  /** Vmem, pages. */
  vmemPages: number | null;
  /** Rd = Vmig / Vmem. */
  overheadRatio: number | null;
  rounds: number | null;
  /** Per pre-copy round: pages sent and dirtied, by region. */
  roundRows: RoundStats[];
  sentByRegion: RegionCounts | null;
  bytesOnWire: number | null;
  mailsExpected: number;
  /** Distinct mails found in the mailboxes after the run. */
  mailsDelivered: number;
  /** Delivered mails whose attachment digest matched what Mclient sent. */
  mailsIntact: number;
  /** Mails stored more than once (must be 0). */
  mailsDuplicated: number;
  mailLatencies: MailLatency[];
  volume: VolumeSample[];
  /** When the migrate command was given, ms after the workload started. */
  migrationStartMs: number | null;
  /** Wall-clock ms from the workload's start until every mail was answered. */
  workloadDurationMs: number | null;
  /** Bytes carried by XENVMC channels / by the netfront path (both domains, both directions). */
  channelBytes: number;
  netfrontBytes: number;
  migration: MigrationStats | null;
}

export interface MachineInfo {
  node: string;
  platform: string;
  cpuModel: string;
  cpus: number;
  memoryBytes: number;
  /** `git rev-parse HEAD` of the xenvmc that ran, or null outside a git checkout. */
  commit: string | null;
}

export interface ResultsFile {
  schema: typeof RESULTS_SCHEMA;
  /** The scenario as run (after defaults), so a report can be re-run from its results. */
  scenario: unknown;
  scenarioName: string;
  /** How the hosts ran: `loopback`, `netns` or `remote`. */
  runner: string;
  /** Every parameter scaled down or simulated against the paper's testbed, one line each. */
  scaled: string[];
  machine: MachineInfo;
  startedAt: string;
  finishedAt: string;
  runs: RunRecord[];
}
