/**
 * Goal: XENVMC and Advance-XENVMC between real host processes: the co-residency tables follow
 * creations, destructions and migrations; channels carry co-resident streams of one tenant
 * only; every byte arrives once whatever the mode and whichever end migrates; after a
 * migration in advance mode the migrating domain sends fewer pages than in mode off (page
 * counts, not times); no grant or event channel is left once the peers are apart.
 * Method: `xenvmc host --xenvmc-mode ...` processes on loopback, streamer programs, the control
 * API's domain and host statistics.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { sleepMs } from '../src/core/clock.ts';
import { LocalCluster, type LocalHost } from '../src/experiments/local-cluster.ts';
import type { DomainSummary } from '../src/hypervisor/host.ts';
import type { MigrationStats } from '../src/migration/stats.ts';
import type { StreamerStats } from '../src/workloads/streamer.ts';
import type { XenvmcMode } from '../src/xenvmc/protocol.ts';
import { migrateAndWait } from './support/hosts.ts';

interface XenvmcStats {
  mode: string;
  counters: { channelsSetUp: number; channelBytesReceived: number; finishMigBytes: number };
  coResidents: { ip: number; connections: string[] }[];
}

type View = DomainSummary & {
  stats: { programs: { stats: StreamerStats }[]; xenvmc: XenvmcStats };
};

const clusters: LocalCluster[] = [];
after(() => Promise.all(clusters.map((c) => c.stop())));

async function cluster(
  mode: XenvmcMode,
  extraArgs: string[] = [],
): Promise<[LocalHost, LocalHost]> {
  const started = await LocalCluster.start({
    hostNames: ['h1', 'h2'],
    link: '1gbit',
    xenvmcMode: mode,
    hostArgs: { h1: extraArgs, h2: extraArgs },
  });
  clusters.push(started);
  return [started.host('h1'), started.host('h2')];
}

async function view(host: LocalHost, name: string): Promise<View> {
  return host.client.get<View>(`/v1/domains/${name}`);
}

/** A server and a client streamer on `serverHost` / `clientHost`; returns their names. */
async function pair(
  serverHost: LocalHost,
  clientHost: LocalHost,
  options: { tag: string; bytes: number; tenantClient?: string; memory?: string },
): Promise<{ server: string; client: string }> {
  const server = `s-${options.tag}`;
  const client = `c-${options.tag}`;
  const serverIp = `10.77.${options.tag.length}.${options.tag.charCodeAt(0)}`;
  const memory = options.memory ?? '16MiB';
  await serverHost.client.post('/v1/domains', {
    name: server,
    memory,
    ip: serverIp,
    tenant: 'mail',
    programs: [
      { kind: 'streamer', params: { role: 'server', port: 25, bytes: options.bytes, seed: 3 } },
    ],
  });
  await clientHost.client.post('/v1/domains', {
    name: client,
    memory,
    ip: `10.77.${options.tag.length}.${options.tag.charCodeAt(0) + 100}`,
    tenant: options.tenantClient ?? 'mail',
    programs: [
      {
        kind: 'streamer',
        params: { role: 'client', port: 25, peerIp: serverIp, bytes: options.bytes, seed: 4 },
      },
    ],
  });
  return { server, client };
}

async function waitFinished(where: [LocalHost, string][]): Promise<View[]> {
  for (let i = 0; i < 600; i++) {
    const views = await Promise.all(where.map(([host, name]) => view(host, name)));
    if (
      views.every(
        (v) => v.stats.programs[0]!.stats.finished || v.stats.programs[0]!.stats.errors > 0,
      )
    )
      return views;
    await sleepMs(50);
  }
  throw new Error('streams did not finish in 30 s');
}

function assertExactlyOnce(server: View, client: View, bytes: number): void {
  const [s, c] = [server.stats.programs[0]!.stats, client.stats.programs[0]!.stats];
  const context = JSON.stringify({ s, c });
  assert.equal(s.errors + c.errors, 0, `no program saw an error: ${context}`);
  assert.equal(s.bytesReceived, bytes, `client -> server bytes: ${context}`);
  assert.equal(c.bytesReceived, bytes, `server -> client bytes: ${context}`);
  assert.equal(s.receiveCrc, c.sendCrc, `client -> server digest: ${context}`);
  assert.equal(c.receiveCrc, s.sendCrc, `server -> client digest: ${context}`);
}

async function hostXenvmc(
  host: LocalHost,
): Promise<{ grantsLive: number; evtchnsLive: number; mode: string }> {
  const info = await host.client.get<{
    xenvmc: { grantsLive: number; evtchnsLive: number; mode: string };
  }>('/v1/host');
  return info.xenvmc;
}

describe('XENVMC between host processes', () => {
  it('keeps each co-residency table right through create, migrate out, migrate in and destroy', async () => {
    const [h1, h2] = await cluster('xenvmc');
    const ipOf = (n: number) => ((10 << 24) | (77 << 16) | (9 << 8) | n) >>> 0;
    for (const [host, name, n] of [
      [h1, 'a', 1],
      [h1, 'b', 2],
      [h2, 'c', 3],
    ] as const) {
      await host.client.post('/v1/domains', {
        name,
        memory: '16MiB',
        ip: `10.77.9.${n}`,
        programs: [],
      });
    }
    const peersOf = async (host: LocalHost, name: string) =>
      (await view(host, name)).stats.xenvmc.coResidents.map((p) => p.ip).sort((x, y) => x - y);
    assert.deepEqual(await peersOf(h1, 'a'), [ipOf(2)], 'a sees b');
    assert.deepEqual(await peersOf(h2, 'c'), [], 'c is alone');
    const moved = await migrateAndWait(h1, 'b', h2.link);
    assert.equal(moved.status, 'completed', JSON.stringify(moved.error));
    assert.deepEqual(await peersOf(h1, 'a'), [], 'b left a');
    assert.deepEqual(await peersOf(h2, 'c'), [ipOf(2)], 'b arrived next to c');
    assert.deepEqual(await peersOf(h2, 'b'), [ipOf(3)], 'b sees c');
    await h2.client.delete('/v1/domains/c');
    await sleepMs(50);
    assert.deepEqual(await peersOf(h2, 'b'), [], 'c is gone for b');
  });

  for (const mode of ['xenvmc', 'xenvmc-suspend', 'advance'] as const) {
    it(`carries every byte once in mode ${mode} while either end migrates, then leaves no grant behind`, async () => {
      const [h1, h2] = await cluster(mode);
      const bytes = 64 * 1024 * 1024;
      for (const moving of ['server', 'client'] as const) {
        const { server, client } = await pair(h1, h1, { tag: `${mode}${moving}`, bytes });
        // Long enough for the channel to be set up, short of the streams' end.
        await sleepMs(400);
        const record = await migrateAndWait(h1, moving === 'server' ? server : client, h2.link);
        assert.equal(record.status, 'completed', JSON.stringify(record.error));
        const where: [LocalHost, string][] = [
          [moving === 'server' ? h2 : h1, server],
          [moving === 'client' ? h2 : h1, client],
        ];
        const [s, c] = await waitFinished(where);
        assertExactlyOnce(s!, c!, bytes);
        const channel =
          s!.stats.xenvmc.counters.channelBytesReceived +
          c!.stats.xenvmc.counters.channelBytesReceived;
        assert.ok(
          channel > 0,
          `${mode}: the channel carried bytes before the migration (${channel}): ${JSON.stringify([s!.stats.xenvmc, c!.stats.xenvmc])}`,
        );
        // The peers are apart now: nobody lists a connection with the other, and the source
        // host holds no grant or event channel for them any more (finish_mig or tear-down).
        for (const v of [s!, c!]) {
          const listed = v.stats.xenvmc.coResidents.flatMap((peer) => peer.connections);
          assert.deepEqual(listed, [], `${v.name} lists no connection with its departed peer`);
        }
        const source = await hostXenvmc(h1);
        assert.equal(
          source.grantsLive + source.evtchnsLive,
          0,
          `nothing left on h1: ${JSON.stringify(source)}`,
        );
        for (const [host, name] of where) await host.client.delete(`/v1/domains/${name}`);
      }
      await sleepMs(100);
      for (const host of [h1, h2]) {
        const x = await hostXenvmc(host);
        assert.equal(x.mode, mode, 'the host reports its mode');
        assert.equal(x.grantsLive, 0, `no grant left on ${host.name}`);
        assert.equal(x.evtchnsLive, 0, `no event channel left on ${host.name}`);
      }
    });
  }

  it('never gives a channel to domains of different tenants', async () => {
    const [h1] = await cluster('advance');
    const { server, client } = await pair(h1, h1, {
      tag: 'tenants',
      bytes: 2 * 1024 * 1024,
      tenantClient: 'other',
    });
    const [s, c] = await waitFinished([
      [h1, server],
      [h1, client],
    ]);
    assertExactlyOnce(s!, c!, 2 * 1024 * 1024);
    assert.equal(
      s!.stats.xenvmc.counters.channelsSetUp + c!.stats.xenvmc.counters.channelsSetUp,
      0,
      'no channel',
    );
  });

  it('sends fewer pages of the migrating domain in advance mode than in mode off', async () => {
    const pagesSent: Record<string, number> = {};
    const laterSockbufPages: Record<string, number> = {};
    for (const mode of ['off', 'advance'] as const) {
      const [h1, h2] = await cluster(mode);
      // Steady traffic: far more bytes than the migration takes to run.
      const { server } = await pair(h1, h1, {
        tag: `pages${mode}`,
        bytes: 1 << 30,
        memory: '32MiB',
      });
      await sleepMs(300);
      const record = await migrateAndWait(h1, server, h2.link);
      assert.equal(record.status, 'completed', JSON.stringify(record.error));
      const stats = record.stats as MigrationStats;
      pagesSent[mode] = stats.pagesSent;
      // Round 1 sends every page; what follows is what the traffic dirtied meanwhile.
      laterSockbufPages[mode] = stats.rounds
        .slice(1)
        .reduce((sum, row) => sum + row.sentByRegion.sockbuf, 0);
    }
    const context = JSON.stringify({ pagesSent, laterSockbufPages });
    assert.ok(pagesSent.advance! < pagesSent.off!, `advance sends fewer pages: ${context}`);
    assert.ok(
      laterSockbufPages.advance! < laterSockbufPages.off!,
      `and fewer socket-buffer pages: ${context}`,
    );
  });

  it('sends the channel pages the domain granted with it only when told to (real Xen grants)', async () => {
    const [h1, h2] = await cluster('advance', ['--migrate-channel-pages']);
    const { client } = await pair(h1, h1, { tag: 'grants', bytes: 1 << 30, memory: '32MiB' });
    await sleepMs(400);
    // The client offered the channel, so it granted the region: its pages go with it.
    const record = await migrateAndWait(h1, client, h2.link);
    assert.equal(record.status, 'completed', JSON.stringify(record.error));
    const stats = record.stats as MigrationStats;
    assert.equal(stats.migrateChannelPages, true, 'the statistics say channel pages were migrated');
    assert.ok(stats.channelPagesSent > 0, `channel pages sent: ${stats.channelPagesSent}`);
    assert.ok(
      stats.pagesSent >= stats.vmemPages + stats.channelPagesSent,
      'and they count in Vmig',
    );
  });

  for (const mode of ['xenvmc', 'advance'] as const) {
    it(`sets up a new channel when the two peers are co-resident again (${mode})`, async () => {
      const [h1, h2] = await cluster(mode);
      const { server, client } = await pair(h1, h1, { tag: `again${mode}`, bytes: 1 << 30 });
      await sleepMs(400);
      for (const name of [server, client]) {
        const record = await migrateAndWait(h1, name, h2.link);
        assert.equal(record.status, 'completed', JSON.stringify(record.error));
      }
      // Both on h2 now: the client's analyzer offers a fresh channel over there.
      let setUp = 0;
      for (let i = 0; i < 100 && setUp < 2; i++) {
        await sleepMs(50);
        setUp = (await view(h2, client)).stats.xenvmc.counters.channelsSetUp;
      }
      assert.equal(setUp, 2, 'one channel on h1, a new one on h2');
      const table = (await view(h2, client)).stats.xenvmc.coResidents;
      assert.equal(table.length, 1, "the server is the client's co-resident again");
      assert.equal(table[0]!.connections.length, 1, 'with the new connection in its table');
      for (const name of [server, client]) await h2.client.delete(`/v1/domains/${name}`);
    });
  }
});
