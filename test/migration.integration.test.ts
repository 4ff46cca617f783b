/**
 * Goal: pre-copy live migration between two real host processes on loopback does what the
 * paper and the foundation issue say: memory identical at the pause, an idle domain in one
 * round plus a tiny final one, a fast dirtier stopped by the round cap, each policy stopping
 * by its rule. Method: `xenvmc host` processes, the control API, small domains (32 MiB).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { LocalCluster, type LocalHost } from '../src/experiments/local-cluster.ts';
import { createDirtier, domainStatus, migrateAndWait, pagesWritten } from './support/hosts.ts';

describe('pre-copy migration between host processes', () => {
  let cluster: LocalCluster;
  let h1: LocalHost;
  let h2: LocalHost;

  before(async () => {
    cluster = await LocalCluster.start({ hostNames: ['h1', 'h2'], link: '1gbit' });
    h1 = cluster.host('h1');
    h2 = cluster.host('h2');
  });
  after(() => cluster.stop());

  it('leaves target memory identical to the source at the pause while a dirtier runs', async () => {
    await createDirtier(h1, 'busy', { dirtyRatePagesPerSec: 4000 });
    const record = await migrateAndWait(h1, 'busy', h2.link);
    assert.equal(record.status, 'completed', JSON.stringify(record.error));
    const stats = record.stats!;
    assert.equal(stats.memoryVerified, true);
    assert.ok(stats.pagesSent >= stats.vmemPages, 'round 1 sends every page');
    assert.ok(stats.rounds.length >= 3, 'a running dirtier needs more than one pre-copy round');
    assert.ok(stats.rounds.slice(1, -1).every((row) => row.pagesSent > 0));
    assert.equal(await domainStatus(h2, 'busy'), 'running');
    assert.equal(await domainStatus(h1, 'busy'), null, 'the source copy is destroyed');
    const before = await pagesWritten(h2, 'busy');
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.ok((await pagesWritten(h2, 'busy')) > before, 'the guest keeps dirtying on the target');
  });

  it('migrates an idle domain in one full round plus a tiny final one', async () => {
    await createDirtier(h1, 'idle', { dirtyRatePagesPerSec: 0 });
    const record = await migrateAndWait(h1, 'idle', h2.link);
    assert.equal(record.status, 'completed', JSON.stringify(record.error));
    const stats = record.stats!;
    assert.equal(stats.rounds.length, 2);
    assert.equal(stats.rounds[0]!.pagesSent, stats.vmemPages);
    assert.ok(
      stats.rounds[1]!.pagesSent <= 16,
      `final round sent ${stats.rounds[1]!.pagesSent} pages`,
    );
    assert.ok(stats.zeroPages > 0, 'zero pages travel as flags');
    assert.equal(stats.memoryVerified, true);
    // And back again: the domain keeps its name and state.
    const back = await migrateAndWait(h2, 'idle', h1.link);
    assert.equal(back.status, 'completed', JSON.stringify(back.error));
    assert.equal(await domainStatus(h1, 'idle'), 'running');
  });

  it('stops a dirtier faster than the link at the xen round cap and still completes', async () => {
    // 100 000 pages/s (~400 MB/s) of uniform writes over ~20 MiB: far above what a round drains.
    await createDirtier(h1, 'fast', { dirtyRatePagesPerSec: 100_000 });
    const record = await migrateAndWait(h1, 'fast', h2.link, { policy: 'xen' });
    assert.equal(record.status, 'completed', JSON.stringify(record.error));
    const stats = record.stats!;
    assert.equal(stats.rounds.filter((row) => row.phase === 'precopy').length, 5);
    assert.match(stats.stopReason, /5/);
    assert.equal(stats.memoryVerified, true);
  });

  it("stops at the paper policy's caps (rounds or 3x memory) for a dirtier the link cannot outrun", async () => {
    await createDirtier(h1, 'fast2', { dirtyRatePagesPerSec: 100_000 });
    const record = await migrateAndWait(h1, 'fast2', h2.link, { policy: 'paper' });
    assert.equal(record.status, 'completed', JSON.stringify(record.error));
    const stats = record.stats!;
    const precopy = stats.rounds.filter((row) => row.phase === 'precopy');
    const last = precopy.at(-1)!;
    assert.ok(last.pagesDirtied * 4096 >= 256 * 1024, 'it never converged below 256 KiB');
    assert.ok(
      precopy.length === 29 ||
        stats.pagesSent - stats.rounds.at(-1)!.pagesSent <= 3 * stats.vmemPages,
    );
    assert.equal(stats.memoryVerified, true);
  });

  it('refuses bad requests with a clear error and keeps the domain', async () => {
    await createDirtier(h1, 'keep', { dirtyRatePagesPerSec: 100 });
    await assert.rejects(
      h1.client.post('/v1/domains/keep/migrate', { to: 'nowhere' }),
      /host:port/,
    );
    await assert.rejects(
      h1.client.post('/v1/domains/ghost/migrate', { to: h2.link }),
      /no domain named ghost/,
    );
    await assert.rejects(
      h1.client.post('/v1/domains', { name: 'x', memory: '1MiB' }),
      /at least 4096 pages/,
    );
    await assert.rejects(
      h1.client.post('/v1/domains', { name: 'keep', memory: '16MiB' }),
      /already exists/,
    );
    await assert.rejects(h1.client.post('/v1/domains', { name: 'y' }), /memory/);
    assert.equal(await domainStatus(h1, 'keep'), 'running');
  });
});
