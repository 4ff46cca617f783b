/**
 * What the network benchmarks share: message-size labels, how many bytes a point moves, and
 * creating a netbench domain on a host.
 */
import type { LocalHost } from '../../src/experiments/local-cluster.ts';
import type { DomainSummary } from '../../src/hypervisor/host.ts';
import type { NetbenchParams } from '../../src/workloads/netbench.ts';

export type { NetbenchStats } from '../../src/workloads/netbench.ts';

/** `65536` -> `64 KiB`. */
export function sizeLabel(bytes: number): string {
  if (bytes >= 1024 * 1024) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes >= 1024) return `${bytes / 1024} KiB`;
  return `${bytes} B`;
}

/** Small messages are slow per byte: their points move fewer bytes. */
export function totalBytesFor(
  messageBytes: number,
  settings: { smallMessageTotalBytes: number; totalBytes: number },
): number {
  return messageBytes < 4096 ? settings.smallMessageTotalBytes : settings.totalBytes;
}

/** A domain running one netbench program. */
export function createNetbench(
  host: LocalHost,
  domain: { name: string; ip: string; memory: string },
  params: NetbenchParams,
): Promise<DomainSummary> {
  return host.client.post<DomainSummary>('/v1/domains', {
    name: domain.name,
    memory: domain.memory,
    ip: domain.ip,
    tenant: 'bench',
    programs: [{ kind: 'netbench', params }],
  });
}
