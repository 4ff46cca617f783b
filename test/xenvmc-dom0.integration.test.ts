/**
 * Goal: the Dom0 side of XENVMC is wired into real host processes: `--xenvmc-mode` reaches the
 * host and its statistics, the VM State Publisher posts notices as domains come and go, the
 * migration record names the mode, and no grant or event channel is left behind.
 * Method: `xenvmc host` processes on loopback with idle dirtier domains (no stream traffic, so
 * no guest ever asks for a channel: this test does not depend on the guest's module).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { LocalCluster, type LocalHost } from '../src/experiments/local-cluster.ts';
import type { XenvmcHostView } from '../src/hypervisor/host.ts';
import { createDirtier, domainStatus, migrateAndWait } from './support/hosts.ts';

async function xenvmcView(host: LocalHost): Promise<XenvmcHostView> {
  const view = await host.client.get<{ xenvmc: XenvmcHostView }>('/v1/host');
  return view.xenvmc;
}

function assertNoLeaks(view: XenvmcHostView, label: string): void {
  assert.equal(view.grantsLive, 0, `${label}: no grant is live`);
  assert.equal(view.evtchnsLive, 0, `${label}: no event channel is live`);
  assert.equal(view.grantsCreated, view.grantsReleased, `${label}: every grant made was released`);
}

describe('XENVMC Dom0 services in host processes', () => {
  let cluster: LocalCluster;
  let h1: LocalHost;
  let h2: LocalHost;

  before(async () => {
    cluster = await LocalCluster.start({
      hostNames: ['h1', 'h2'],
      link: 'unlimited',
      xenvmcMode: 'xenvmc',
    });
    h1 = cluster.host('h1');
    h2 = cluster.host('h2');
  });
  after(() => cluster.stop());

  it('reports the mode and an empty grant table before any domain exists', async () => {
    const view = await xenvmcView(h1);
    assert.equal(view.mode, 'xenvmc', 'the host runs in the mode it was started with');
    assert.equal(view.grantsCreated, 0, 'no grant was made');
    assert.equal(view.evtchnsCreated, 0, 'no event channel was made');
    assertNoLeaks(view, 'fresh host');
  });

  it('publishes co-residency as domains are created, migrated and destroyed', async () => {
    const posted0 = (await xenvmcView(h1)).noticesPosted;
    await createDirtier(h1, 'x1', { memory: '16MiB' });
    const posted1 = (await xenvmcView(h1)).noticesPosted;
    assert.equal(posted1 - posted0, 1, 'the first domain gets a snapshot, nobody else to tell');
    await createDirtier(h1, 'x2', { memory: '16MiB' });
    const posted2 = (await xenvmcView(h1)).noticesPosted;
    // Dirtiers have no IP, so neither is listed as the other's peer: each hears only of itself.
    assert.equal(posted2 - posted1, 1, 'the second domain gets its snapshot');

    const record = await migrateAndWait(h1, 'x2', h2.link);
    assert.equal(record.status, 'completed', JSON.stringify(record.error));
    assert.equal(record.mode, 'xenvmc', 'the migration record names the mode');
    assert.equal(record.channelsCancelled, null, 'only xenvmc-suspend cancels at the pause');
    assert.equal(await domainStatus(h2, 'x2'), 'running', 'x2 runs on the target');
    const target = await xenvmcView(h2);
    assert.equal(target.noticesPosted, 2, 'the arriving domain gets a snapshot and the end');
    const source = await xenvmcView(h1);
    assert.ok(source.noticesPosted > posted2, 'the source told the migrating domain it started');

    await h1.client.delete('/v1/domains/x1');
    await h2.client.delete('/v1/domains/x2');
    assertNoLeaks(await xenvmcView(h1), 'source after tear-down');
    assertNoLeaks(await xenvmcView(h2), 'target after tear-down');
  });
});

describe('a host started without --xenvmc-mode', () => {
  let cluster: LocalCluster;

  before(async () => {
    cluster = await LocalCluster.start({ hostNames: ['h3'], link: 'unlimited' });
  });
  after(() => cluster.stop());

  it('runs in mode off and publishes nothing', async () => {
    const h3 = cluster.host('h3');
    await createDirtier(h3, 'quiet', { memory: '16MiB' });
    const view = await xenvmcView(h3);
    assert.equal(view.mode, 'off', 'off is the default mode');
    assert.equal(view.noticesPosted, 0, 'mode off runs no publisher');
    await h3.client.delete('/v1/domains/quiet');
  });
});
