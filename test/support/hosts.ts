/**
 * Helpers for integration tests that run real host processes on loopback.
 */
import { sleepMs } from '../../src/core/clock.ts';
import type { LocalHost } from '../../src/experiments/local-cluster.ts';
import type { DomainSummary, MigrationRecordView } from '../../src/hypervisor/host.ts';

export interface DirtierOptions {
  memory?: string;
  dirtyRatePagesPerSec?: number;
  pattern?: string;
  workingSetPages?: number;
}

/** Creates a domain running a dirtier. Test domains are small (16-64 MiB). */
export function createDirtier(
  host: LocalHost,
  name: string,
  options: DirtierOptions = {},
): Promise<DomainSummary> {
  return host.client.post<DomainSummary>('/v1/domains', {
    name,
    memory: options.memory ?? '32MiB',
    programs: [
      {
        kind: 'dirtier',
        params: {
          dirtyRatePagesPerSec: options.dirtyRatePagesPerSec ?? 0,
          pattern: options.pattern ?? 'uniform',
          seed: 7,
          ...(options.workingSetPages ? { workingSetPages: options.workingSetPages } : {}),
        },
      },
    ],
  });
}

/** Starts a migration and polls it to its end; `onProgress` sees every poll. */
export async function migrateAndWait(
  source: LocalHost,
  domain: string,
  to: string,
  options: {
    policy?: string;
    onProgress?: (record: MigrationRecordView) => void;
    /** Runs before each poll of the migration's record. */
    whilePolling?: () => Promise<void>;
  } = {},
): Promise<MigrationRecordView> {
  let record = await source.client.post<MigrationRecordView>(`/v1/domains/${domain}/migrate`, {
    to,
    ...(options.policy ? { policy: options.policy } : {}),
  });
  while (record.status === 'running') {
    await sleepMs(50);
    await options.whilePolling?.();
    record = await source.client.get<MigrationRecordView>(`/v1/migrations/${record.id}`);
    options.onProgress?.(record);
  }
  return record;
}

/** The dirtier's pages written so far (proves the guest is running). */
export async function pagesWritten(host: LocalHost, domain: string): Promise<number> {
  const view = await host.client.get<
    DomainSummary & { stats: { programs: { stats: { pagesWritten: number } }[] } }
  >(`/v1/domains/${domain}`);
  return view.stats.programs[0]!.stats.pagesWritten;
}

export async function domainStatus(host: LocalHost, domain: string): Promise<string | null> {
  const view = await host.client.get<DomainSummary>(`/v1/domains/${domain}`).catch(() => null);
  return view?.status ?? null;
}
