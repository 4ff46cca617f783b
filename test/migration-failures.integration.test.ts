/**
 * Goal: any failure before the target resumes leaves the domain running on the source,
 * unharmed, with a clear error naming the cause; the target keeps no partial copy.
 * Method: real host processes on loopback, faults injected by killing the target process and
 * by a relay (FaultProxy) that cuts, stalls, corrupts or truncates the stream mid-round.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { FaultProxy, type LinkFault } from '../src/experiments/fault-proxy.ts';
import { LocalCluster, type LocalHost } from '../src/experiments/local-cluster.ts';
import { parseAddress } from '../src/hypervisor/peer-link.ts';
import { createDirtier, domainStatus, migrateAndWait, pagesWritten } from './support/hosts.ts';

describe('a failed migration', () => {
  let cluster: LocalCluster;
  let h1: LocalHost;
  let h2: LocalHost;

  before(async () => {
    // 200 Mbit/s: a 32 MiB round takes over a second, time to hit it in the middle.
    cluster = await LocalCluster.start({
      hostNames: ['h1', 'h2', 'small', 'victim'],
      link: '200mbit',
      // Above the target's reservation time (thread boot + pre-touch) even on a loaded machine.
      stallTimeout: '3s',
      hostArgs: { small: ['--memory-limit', '16MiB'] },
    });
    h1 = cluster.host('h1');
    h2 = cluster.host('h2');
    await createDirtier(h1, 'vm', { dirtyRatePagesPerSec: 2000 });
  });
  after(() => cluster.stop());

  /** The domain is running on h1, still dirtying, and not on `target`. */
  async function assertRunsOnSourceOnly(target: LocalHost): Promise<void> {
    assert.equal(await domainStatus(h1, 'vm'), 'running');
    const before = await pagesWritten(h1, 'vm');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.ok((await pagesWritten(h1, 'vm')) > before, 'the guest still runs on the source');
    assert.equal(await domainStatus(target, 'vm'), null, 'the target keeps no copy');
  }

  for (const [name, fault, cause] of [
    [
      'the link is cut mid-round',
      { kind: 'cut', afterBytes: 8 << 20 },
      /LINK_CLOSED|closed|reset|EPIPE/i,
    ],
    ['a page batch is corrupted', { kind: 'corrupt', afterBytes: 6 << 20 }, /STREAM_CHECKSUM|CRC/],
    [
      'the stream is truncated',
      { kind: 'truncate', afterBytes: 5 << 20 },
      /TRUNCATED|closed|reset|EPIPE/i,
    ],
    // Either end may give up first: the source's write times out, or the target's read does
    // and it closes the link.
    [
      'the link stalls past the timeout',
      { kind: 'stall', afterBytes: 4 << 20 },
      /TIMEOUT|no data|closed/i,
    ],
  ] as [string, LinkFault, RegExp][]) {
    it(`keeps the domain on the source when ${name}`, async () => {
      const proxy = await FaultProxy.start(parseAddress(h2.link), fault);
      try {
        const record = await migrateAndWait(h1, 'vm', proxy.address);
        assert.equal(record.status, 'failed');
        assert.ok(proxy.faultFired, `the fault was injected (${JSON.stringify(record.error)})`);
        assert.match(`${record.error!.code} ${record.error!.message}`, cause);
        assert.match(record.error!.message, /keeps running on h1/);
        await new Promise((resolve) => setTimeout(resolve, fault.kind === 'stall' ? 4000 : 300));
        await assertRunsOnSourceOnly(h2);
      } finally {
        await proxy.close();
      }
    });
  }

  it('keeps the domain on the source when the target refuses the memory', async () => {
    const record = await migrateAndWait(h1, 'vm', cluster.host('small').link);
    assert.equal(record.status, 'failed');
    assert.equal(record.error!.code, 'MIGRATION_REFUSED');
    assert.match(record.error!.message, /cannot hold vm/);
    await assertRunsOnSourceOnly(cluster.host('small'));
  });

  it('keeps the domain on the source when the target host is unknown', async () => {
    const record = await migrateAndWait(h1, 'vm', '127.0.0.1:1');
    assert.equal(record.status, 'failed');
    assert.match(record.error!.message, /cannot reach host at 127\.0\.0\.1:1/);
    assert.equal(await domainStatus(h1, 'vm'), 'running');
  });

  it('keeps the domain on the source when the target process is killed mid-round', async () => {
    const victim = cluster.host('victim');
    let killed = false;
    const record = await migrateAndWait(h1, 'vm', victim.link, {
      onProgress: (r) => {
        if (!killed && (r.progress?.pagesSentTotal ?? 0) > 1024) {
          killed = true;
          cluster.kill('victim');
        }
      },
    });
    assert.ok(killed, 'the target was killed during round 1');
    assert.equal(record.status, 'failed');
    assert.match(record.error!.code, /LINK|MIGRATION/);
    assert.equal(await domainStatus(h1, 'vm'), 'running');
  });

  it('refuses a host that does not hold the cluster key', async () => {
    const stranger = await LocalCluster.start({ hostNames: ['stranger'] });
    try {
      const record = await migrateAndWait(h1, 'vm', stranger.host('stranger').link);
      assert.equal(record.status, 'failed');
      assert.equal(record.error!.code, 'LINK_AUTH_FAILED');
      await assertRunsOnSourceOnly(stranger.host('stranger'));
    } finally {
      await stranger.stop();
    }
  });

  it('still migrates the same domain cleanly after all those failures', async () => {
    const record = await migrateAndWait(h1, 'vm', h2.link);
    assert.equal(record.status, 'completed', JSON.stringify(record.error));
    assert.equal(record.stats!.memoryVerified, true);
    assert.equal(await domainStatus(h2, 'vm'), 'running');
  });

  it('completes, and runs the domain only on the target, when the resumed notice is lost', async () => {
    // The relay forwards the whole stream, then cuts the link as the target's notice comes back:
    // the source must ask the target instead of resuming its own copy (never both).
    const proxy = await FaultProxy.start(parseAddress(h1.link), {
      kind: 'cut-reply',
      afterBytes: 1 << 20,
    });
    try {
      const record = await migrateAndWait(h2, 'vm', proxy.address);
      assert.ok(proxy.faultFired, `the notice was cut off (${JSON.stringify(record.error)})`);
      assert.equal(record.status, 'completed', JSON.stringify(record.error));
      assert.equal(record.stats!.memoryVerified, true, 'the digest came with the answer');
      assert.equal(await domainStatus(h1, 'vm'), 'running', 'the domain runs on the target');
      assert.equal(await domainStatus(h2, 'vm'), null, 'and not on the source');
    } finally {
      await proxy.close();
    }
  });

  it('keeps the source copy paused through a partition at the end, then completes', async () => {
    // The target gets the whole stream and resumes the domain; then the hosts cannot talk for
    // 6 s, longer than the stall timeout. The source must not resume its copy (the target runs
    // it), and must complete once the target can answer again.
    const proxy = await FaultProxy.start(parseAddress(h2.link), {
      kind: 'partition',
      afterBytes: 1 << 20,
      healAfterMs: 6000,
    });
    const sourceStatuses = new Set<string>();
    let askedInDoubt = false;
    try {
      const record = await migrateAndWait(h1, 'vm', proxy.address, {
        onProgress: (r) => {
          askedInDoubt ||= r.progress?.phase === 'inDoubt';
        },
        whilePolling: async () => {
          if (proxy.partitioned) sourceStatuses.add(String(await domainStatus(h1, 'vm')));
        },
      });
      assert.ok(proxy.faultFired, `the partition began (${JSON.stringify(record.error)})`);
      assert.ok(sourceStatuses.size > 0, 'the source was watched during the partition');
      assert.ok(
        !sourceStatuses.has('running'),
        `the source copy never ran during the partition (seen: ${[...sourceStatuses]})`,
      );
      assert.ok(askedInDoubt, 'the migration reported that it was in doubt');
      assert.equal(record.status, 'completed', JSON.stringify(record.error));
      assert.equal(record.stats!.memoryVerified, true, 'the digest came with the answer');
      assert.equal(await domainStatus(h2, 'vm'), 'running', 'the domain runs on the target');
      assert.equal(await domainStatus(h1, 'vm'), null, 'and not on the source');
    } finally {
      await proxy.close();
    }
  });
});
