/**
 * Goal: guest connections between real host processes survive the live migration of either
 * end, co-resident or cross-host: every byte arrives once and in order, both ways, and no
 * program sees an error; bad connects are refused like ECONNREFUSED / EHOSTUNREACH.
 * Method: `xenvmc host` processes on loopback; streamer programs keep running CRC-32s of what
 * they sent and received; fast-check (fixed seed, a few runs: each is a real migration)
 * picks sizes, placements, which end moves and when.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { sleepMs } from '../src/core/clock.ts';
import { LocalCluster, type LocalHost } from '../src/experiments/local-cluster.ts';
import type { DomainSummary } from '../src/hypervisor/host.ts';
import type { StreamerStats } from '../src/workloads/streamer.ts';
import { migrateAndWait } from './support/hosts.ts';

async function streamerStats(host: LocalHost, name: string): Promise<StreamerStats> {
  const view = await host.client.get<
    DomainSummary & { stats: { programs: { stats: StreamerStats }[] } }
  >(`/v1/domains/${name}`);
  return view.stats.programs[0]!.stats;
}

async function waitFinished(
  where: Map<string, LocalHost>,
  timeoutMs: number,
): Promise<Map<string, StreamerStats>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stats = new Map<string, StreamerStats>();
    for (const [name, host] of where) stats.set(name, await streamerStats(host, name));
    if ([...stats.values()].every((s) => s.finished || s.errors > 0) || Date.now() > deadline)
      return stats;
    await sleepMs(50);
  }
}

describe('guest streams between host processes', () => {
  let cluster: LocalCluster;
  let h1: LocalHost;
  let h2: LocalHost;
  let run = 0;

  before(async () => {
    cluster = await LocalCluster.start({ hostNames: ['h1', 'h2'], link: '1gbit' });
    h1 = cluster.host('h1');
    h2 = cluster.host('h2');
  });
  after(() => cluster.stop());

  it('delivers every byte once and in order both ways when either end migrates at a random moment', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          bytes: fc.integer({ min: 1, max: 6 * 1024 * 1024 }),
          chunkBytes: fc.constantFrom(1000, 4096, 65536, 1 << 20),
          coResident: fc.boolean(),
          moving: fc.constantFrom('server', 'client'),
          delayMs: fc.integer({ min: 0, max: 300 }),
        }),
        async ({ bytes, chunkBytes, coResident, moving, delayMs }) => {
          run++;
          const server = `s${run}`;
          const client = `c${run}`;
          const serverIp = `10.77.1.${run}`;
          const where = new Map<string, LocalHost>([
            [server, h1],
            [client, coResident ? h1 : h2],
          ]);
          await h1.client.post('/v1/domains', {
            name: server,
            memory: '16MiB',
            ip: serverIp,
            programs: [
              {
                kind: 'streamer',
                params: { role: 'server', port: 7000, bytes, chunkBytes, seed: run },
              },
            ],
          });
          await where.get(client)!.client.post('/v1/domains', {
            name: client,
            memory: '16MiB',
            ip: `10.77.2.${run}`,
            programs: [
              {
                kind: 'streamer',
                params: {
                  role: 'client',
                  port: 7000,
                  peerIp: serverIp,
                  bytes,
                  chunkBytes,
                  seed: run + 100,
                },
              },
            ],
          });
          await sleepMs(delayMs);
          const name = moving === 'server' ? server : client;
          const from = where.get(name)!;
          const to = from === h1 ? h2 : h1;
          const record = await migrateAndWait(from, name, to.link);
          assert.equal(record.status, 'completed', JSON.stringify(record.error));
          where.set(name, to);
          const stats = await waitFinished(where, 60_000);
          const [s, c] = [stats.get(server)!, stats.get(client)!];
          const context = JSON.stringify({ bytes, chunkBytes, coResident, moving, delayMs, s, c });
          assert.equal(s.errors + c.errors, 0, `no program saw an error: ${context}`);
          assert.ok(s.finished && c.finished, `both finished: ${context}`);
          assert.equal(s.bytesReceived, bytes, `client -> server bytes: ${context}`);
          assert.equal(c.bytesReceived, bytes, `server -> client bytes: ${context}`);
          assert.equal(s.receiveCrc, c.sendCrc, `client -> server digest: ${context}`);
          assert.equal(c.receiveCrc, s.sendCrc, `server -> client digest: ${context}`);
          for (const [domain, host] of where) await host.client.delete(`/v1/domains/${domain}`);
        },
      ),
      { seed: 77, numRuns: 4 },
    );
  });

  it('relays a real TCP client through port forwarding, also after the domain migrated away', async () => {
    const bytes = 3 * 1024 * 1024;
    await h1.client.post('/v1/domains', {
      name: 'served',
      memory: '16MiB',
      ip: '10.77.4.1',
      programs: [{ kind: 'streamer', params: { role: 'server', port: 2525, bytes, seed: 5 } }],
    });
    const forward = await h1.client.post<{ listen: string }>('/v1/forwards', {
      domain: 'served',
      port: 2525,
    });
    const [host, port] = forward.listen.split(':') as [string, string];
    const payload = randomBytes(2 * 1024 * 1024);
    // Half-open: the guest may finish sending before this client has sent everything.
    const socket = net.connect({ port: Number(port), host, allowHalfOpen: true });
    let received = 0;
    let receivedCrc = 0;
    const done = new Promise<void>((resolve, reject) => {
      socket.on('data', (chunk: Buffer) => {
        received += chunk.byteLength;
        receivedCrc = crc32(chunk, receivedCrc);
      });
      socket.on('end', () => resolve());
      socket.on('error', reject);
    });
    // Half the payload, a migration of the server domain to h2, then the rest.
    socket.write(payload.subarray(0, payload.byteLength / 2));
    const record = await migrateAndWait(h1, 'served', h2.link);
    assert.equal(record.status, 'completed', JSON.stringify(record.error));
    const flushed = new Promise((resolve) =>
      socket.end(payload.subarray(payload.byteLength / 2), () => resolve(null)),
    );
    await Promise.all([done, flushed]);
    const stats = await waitFinished(new Map([['served', h2]]), 30_000);
    socket.destroy();
    const server = stats.get('served')!;
    assert.equal(received, bytes, 'the client received every byte the guest sent');
    assert.equal(receivedCrc, server.sendCrc, 'and the same bytes');
    const forwards = await h1.client.get('/v1/forwards');
    assert.equal(
      server.bytesReceived,
      payload.byteLength,
      `the guest received every byte the client sent: ${JSON.stringify({ server, forwards })}`,
    );
    assert.equal(server.receiveCrc, crc32(payload), 'and the same bytes');
    assert.equal(server.errors, 0, `no error in the guest: ${server.lastError}`);
  });

  it('connects a fresh domain on one host to a fresh domain on another (no migration first)', async () => {
    await h1.client.post('/v1/domains', {
      name: 'far-server',
      memory: '16MiB',
      ip: '10.77.5.1',
      programs: [
        { kind: 'streamer', params: { role: 'server', port: 80, bytes: 1 << 20, seed: 1 } },
      ],
    });
    await h2.client.post('/v1/domains', {
      name: 'far-client',
      memory: '16MiB',
      ip: '10.77.5.2',
      programs: [
        {
          kind: 'streamer',
          params: { role: 'client', port: 80, peerIp: '10.77.5.1', bytes: 1 << 20, seed: 2 },
        },
      ],
    });
    const stats = await waitFinished(
      new Map([
        ['far-server', h1],
        ['far-client', h2],
      ]),
      30_000,
    );
    const [s, c] = [stats.get('far-server')!, stats.get('far-client')!];
    assert.equal(s.errors + c.errors, 0, `no error: ${s.lastError} ${c.lastError}`);
    assert.equal(s.receiveCrc, c.sendCrc, 'client -> server digest');
    assert.equal(c.receiveCrc, s.sendCrc, 'server -> client digest');
  });

  it('refuses a connect to a closed port (ECONNREFUSED) and to an unknown IP (EHOSTUNREACH)', async () => {
    await h1.client.post('/v1/domains', {
      name: 'lonely',
      memory: '16MiB',
      ip: '10.77.3.1',
      programs: [],
    });
    for (const [name, peerIp, code] of [
      ['refused', '10.77.3.1', 'ECONNREFUSED'],
      ['unreachable', '10.77.99.99', 'EHOSTUNREACH'],
    ] as const) {
      await h1.client.post('/v1/domains', {
        name,
        memory: '16MiB',
        ip: name === 'refused' ? '10.77.3.2' : '10.77.3.3',
        programs: [
          {
            kind: 'streamer',
            params: { role: 'client', port: 9, peerIp, bytes: 1, connectTriesMax: 1 },
          },
        ],
      });
      let stats = await streamerStats(h1, name);
      for (let i = 0; i < 100 && stats.errors === 0; i++) {
        await sleepMs(20);
        stats = await streamerStats(h1, name);
      }
      assert.match(stats.lastError, new RegExp(code), `${name}: ${JSON.stringify(stats)}`);
    }
  });
});
