/**
 * `xenvmc migrate <domain> --to <host:port>`: asks the source host to migrate a domain and
 * follows it to the end, showing progress; prints the statistics (or JSON).
 */

import { sleepMs } from '../core/clock.ts';
import { TestbedError } from '../core/errors.ts';
import type { MigrationRecordView } from '../hypervisor/host.ts';
import type { MigrationStats } from '../migration/stats.ts';
import type { ControlClient } from './control-client.ts';
import type { MigrationProgressDisplay } from './progress.ts';

/** How often the CLI polls a running migration. */
const POLL_INTERVAL_MS = 100;

export async function followMigration(
  source: ControlClient,
  domain: string,
  request: { to: string; policy?: string },
  display: Pick<MigrationProgressDisplay, 'update' | 'stop'>,
): Promise<MigrationStats> {
  let record = await source.post<MigrationRecordView>(
    `/v1/domains/${encodeURIComponent(domain)}/migrate`,
    request,
  );
  try {
    while (record.status === 'running') {
      await sleepMs(POLL_INTERVAL_MS);
      record = await source.get<MigrationRecordView>(`/v1/migrations/${record.id}`);
      if (record.progress) display.update(record.progress);
    }
  } finally {
    display.stop();
  }
  if (record.status === 'failed' || !record.stats) {
    throw new TestbedError(
      record.error?.code ?? 'MIGRATION_FAILED',
      record.error?.message ?? 'migration failed',
    );
  }
  return record.stats;
}
