/**
 * One run of the paper's experiment on running hosts: the mail server domain (VM1) and the
 * Mclient domain (VM2) are created co-resident on one host, Mclient starts its n x n mails, VM1
 * is live-migrated to another host after a warm-up while the mails flow, and the run ends when
 * Mclient has had an answer for every mail. Then the mailboxes on shared storage are checked
 * mail by mail, and every figure of the run is collected from the hosts.
 *
 * Used by `xenvmc demo mail` (one run) and by the experiment runner (every point). Whatever
 * happens, the run's domains are destroyed before it returns.
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import type { ControlClient } from '../cli/control-client.ts';
import { followMigration } from '../cli/migrate-command.ts';
import { sleepMs } from '../core/clock.ts';
import { describeError, TestbedError } from '../core/errors.ts';
import type { MigrationProgress, MigrationStats } from '../migration/stats.ts';
import type { LinkSample } from '../net/sampler.ts';
import { checkMailboxes, type MailboxReport } from '../workloads/mail/mailbox-check.ts';
import { MAIL_DOMAIN_DEFAULT } from '../workloads/mail/message.ts';
import type { XenvmcCounters } from '../xenvmc/module.ts';
import type { MailLatency, VolumeSample } from './results.ts';

/** How often the run polls Mclient's progress. */
const POLL_MS = 200;
/** Link samples kept from before the migrate command, for the volume chart's baseline. */
const VOLUME_LEAD_MS = 2000;

export interface RunHost {
  name: string;
  /** Its link address, the target of migrations. */
  link: string;
  client: ControlClient;
}

export interface RunDomain {
  name: string;
  memoryBytes: number;
  ip: string;
  tenant: string;
  /** Programs besides the role's own. */
  programs: { kind: string; params: Record<string, unknown> }[];
}

export interface MailRunSpec {
  server: RunDomain;
  client: RunDomain;
  /** Where both domains start. */
  from: RunHost;
  /** Where VM1 goes; null: no migration (a baseline). */
  to: RunHost | null;
  /** The shared storage directory, as this process sees it (the disk is `storage/<server>`). */
  storageDir: string;
  n: number;
  fileSizeBytes: number;
  seed: number;
  pacingMs: number;
  warmupMs: number;
  policy: string;
  timeoutMs: number;
  onMigrationProgress?: (progress: MigrationProgress) => void;
  onMails?: (answered: number, expected: number) => void;
}

export interface MailRunResult {
  ok: boolean;
  failure: string | null;
  migration: MigrationStats | null;
  mailbox: MailboxReport;
  mailsSent: number;
  mailsFailed: number;
  mailLatencies: MailLatency[];
  volume: VolumeSample[];
  migrationStartMs: number | null;
  workloadDurationMs: number | null;
  channelBytes: number;
  netfrontBytes: number;
  clientErrors: string[];
  /** The server program's counters (sessions, messages stored, ...). */
  serverStats: Record<string, unknown> | null;
}

/** What Mclient reports (see src/workloads/mail/mclient.ts). */
interface MclientView {
  mailsExpected: number;
  mailsSent: number;
  mailsFailed: number;
  finished: boolean;
  errors: number;
  lastError: string;
  bytesSent: number;
  latenciesMs: number[];
  mailStartMs: number[];
  startedMs: number;
}

interface DomainView {
  status: string;
  stats: {
    guestTimeMs: number;
    programs: { kind: string; stats: Record<string, unknown> }[];
    xenvmc: { counters: XenvmcCounters } | null;
  } | null;
}

async function domainView(host: RunHost, name: string): Promise<DomainView> {
  return host.client.get<DomainView>(`/v1/domains/${encodeURIComponent(name)}`);
}

function programStats(view: DomainView, kind: string): Record<string, unknown> | null {
  return view.stats?.programs.find((p) => p.kind === kind)?.stats ?? null;
}

/** The host's sampler time now: the end of its latest closed interval (within one interval). */
async function samplerNowMs(host: RunHost): Promise<number> {
  const series = await host.client.get<LinkSample[]>('/v1/link-samples?since=0');
  const last = series.at(-1);
  return last ? last.tMs + last.intervalMs : 0;
}

export async function runMailRun(spec: MailRunSpec): Promise<MailRunResult> {
  const { server, client, from } = spec;
  const diskDir = path.join(spec.storageDir, server.name);
  rmSync(diskDir, { recursive: true, force: true });
  let serverHost = from;
  const created: [RunHost, string][] = [];
  let failure: string | null = null;
  let migration: MigrationStats | null = null;
  let migrationStartMs: number | null = null;
  let workloadDurationMs: number | null = null;
  let mclient: MclientView | null = null;
  let serverStats: Record<string, unknown> | null = null;
  let channelBytes = 0;
  let volume: VolumeSample[] = [];
  try {
    // The source's egress series is kept from here on: a reused host's earlier runs are not ours.
    const runStartSamplerMs = await samplerNowMs(from);
    await from.client.post('/v1/domains', {
      name: server.name,
      memory: server.memoryBytes,
      ip: server.ip,
      tenant: server.tenant,
      // The mail server keeps its state in the GuestState and its mail in the page cache: a
      // few pages of program memory are enough, the rest is for the scenario's programs.
      programs: [{ kind: 'mail-server', params: {}, dataPages: 16 }, ...server.programs],
    });
    created.push([from, server.name]);
    await from.client.post('/v1/domains', {
      name: client.name,
      memory: client.memoryBytes,
      ip: client.ip,
      tenant: client.tenant,
      programs: [
        {
          kind: 'mclient',
          params: {
            serverIp: server.ip,
            n: spec.n,
            fileSizeBytes: spec.fileSizeBytes,
            seed: spec.seed,
            pacingMs: spec.pacingMs,
            domain: MAIL_DOMAIN_DEFAULT,
          },
        },
        ...client.programs,
      ],
    });
    created.push([from, client.name]);
    const startedAt = performance.now();
    const since = (): number => performance.now() - startedAt;
    const deadline = startedAt + spec.timeoutMs;

    const pollClient = async (): Promise<MclientView> => {
      const stats = programStats(await domainView(from, client.name), 'mclient');
      if (!stats) throw new TestbedError('RUN_FAILED', `${client.name} reports no mclient`);
      const view = stats as unknown as MclientView;
      spec.onMails?.(view.mailsSent + view.mailsFailed, view.mailsExpected);
      return view;
    };

    if (spec.to) {
      await sleepMs(spec.warmupMs);
      const to = spec.to;
      const reference = await samplerNowMs(from);
      migrationStartMs = since();
      try {
        migration = await followMigration(
          from.client,
          server.name,
          { to: to.link, policy: spec.policy },
          { update: (progress) => spec.onMigrationProgress?.(progress), stop: () => {} },
        );
        serverHost = to;
        created[0] = [to, server.name];
      } catch (error) {
        failure = `migration failed: ${describeError(error)}`;
      }
      const samples = await from.client.get<LinkSample[]>(
        `/v1/link-samples?since=${Math.max(runStartSamplerMs, reference - VOLUME_LEAD_MS)}`,
      );
      volume = samples.map((sample) => ({
        tMs: sample.tMs - reference,
        intervalMs: sample.intervalMs,
        bytesPerSec: sample.bytesPerSec,
      }));
    }

    for (;;) {
      mclient = await pollClient();
      if (mclient.finished) break;
      if (performance.now() > deadline) {
        failure ??= `Mclient answered ${mclient.mailsSent + mclient.mailsFailed} of ${mclient.mailsExpected} mails within ${spec.timeoutMs / 1000} s`;
        break;
      }
      await sleepMs(POLL_MS);
    }
    workloadDurationMs = since();
    const serverView = await domainView(serverHost, server.name);
    const clientView = await domainView(from, client.name);
    serverStats = programStats(serverView, 'mail-server');
    channelBytes =
      (serverView.stats?.xenvmc?.counters.channelBytesReceived ?? 0) +
      (clientView.stats?.xenvmc?.counters.channelBytesReceived ?? 0);
  } catch (error) {
    failure ??= describeError(error);
  } finally {
    for (const [host, name] of created.reverse()) {
      await host.client.delete(`/v1/domains/${encodeURIComponent(name)}`).catch(() => {});
    }
  }
  const mailbox = await checkMailboxes(diskDir, {
    n: spec.n,
    fileSizeBytes: spec.fileSizeBytes,
    seed: spec.seed,
    domain: MAIL_DOMAIN_DEFAULT,
  });
  if (failure === null) {
    if (mailbox.mailsDuplicated > 0) failure = `${mailbox.mailsDuplicated} mails stored twice`;
    else if (mailbox.mailsDelivered < mailbox.mailsExpected)
      failure = `${mailbox.mailsExpected - mailbox.mailsDelivered} of ${mailbox.mailsExpected} mails missing from the mailboxes${mclient?.lastError ? ` (Mclient: ${mclient.lastError})` : ''}`;
    else if (mailbox.mailsIntact < mailbox.mailsDelivered)
      failure = `${mailbox.mailsDelivered - mailbox.mailsIntact} mails damaged: ${mailbox.problems[0]}`;
  }
  const latencies = mclient?.latenciesMs ?? [];
  const starts = mclient?.mailStartMs ?? [];
  const migrationEndMs =
    migrationStartMs !== null && migration
      ? migrationStartMs + migration.setupTimeMs + migration.totalMigrationTimeMs
      : null;
  // Mclient's times are guest ms; place them on the run's clock by its own start.
  const guestStart = mclient?.startedMs ?? 0;
  const mailLatencies: MailLatency[] = latencies.map((latencyMs, index) => {
    const startMs = (starts[index] ?? guestStart) - guestStart;
    return {
      mail: index + 1,
      startMs,
      latencyMs,
      duringMigration:
        migrationStartMs !== null &&
        migrationEndMs !== null &&
        startMs + Math.max(0, latencyMs) >= migrationStartMs &&
        startMs <= migrationEndMs,
    };
  });
  return {
    ok: failure === null,
    failure,
    migration,
    mailbox,
    mailsSent: mclient?.mailsSent ?? 0,
    mailsFailed: mclient?.mailsFailed ?? 0,
    mailLatencies,
    volume,
    migrationStartMs,
    workloadDurationMs,
    channelBytes,
    netfrontBytes: Math.max(0, (mclient?.bytesSent ?? 0) - channelBytes),
    clientErrors: mclient?.lastError ? [mclient.lastError] : [],
    serverStats,
  };
}
