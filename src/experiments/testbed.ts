/**
 * How an experiment gets its hosts, three ways:
 * - `loopback` (default): `xenvmc host` processes on this machine, the link shaped in-process;
 * - `netns` (root, iproute2): each host process in its own network namespace, joined to a
 *   bridge by a veth pair whose egress `tc tbf` shapes to the scenario's rate, so migration
 *   and inter-host traffic cross a real kernel link (this kernel has no netem: no delay);
 * - `remote`: the `xenvmc host` daemons the scenario lists by address, already running on other
 *   machines with the same cluster key, the token in XENVMC_TOKEN and shared storage mounted
 *   where the scenario's `storage` says.
 * Whatever fails while setting up, what was set up is torn down.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { ControlClient } from '../cli/control-client.ts';
import { InputError, TestbedError } from '../core/errors.ts';
import { LocalCluster } from './local-cluster.ts';
import type { RunHost } from './mail-run.ts';
import { hostName, type Scenario, type XenvmcMode } from './scenario.ts';

export const TESTBED_KINDS = ['loopback', 'netns', 'remote'] as const;
export type TestbedKind = (typeof TESTBED_KINDS)[number];

export interface Testbed {
  host(name: string): RunHost;
  storageDir: string;
  stop(): Promise<void>;
}

export interface TestbedInit {
  kind: TestbedKind;
  scenario: Scenario;
  mode: XenvmcMode;
  storageDir: string;
  onLog?: (host: string, line: string) => void;
}

export async function startTestbed(init: TestbedInit): Promise<Testbed> {
  const { scenario } = init;
  const remote = scenario.hosts.some((h) => typeof h !== 'string');
  if (init.kind === 'remote' || remote) {
    if (init.kind !== 'remote' || !remote) {
      throw new InputError(
        remote
          ? `scenario ${scenario.name} lists running hosts by address: run it with --remote`
          : `--remote needs a scenario whose hosts are running daemons ({ name, control, link })`,
      );
    }
    return startRemote(init);
  }
  if (init.kind === 'loopback' && scenario.link.latencyMs > 0) {
    throw new InputError(
      `link.latencyMs ${scenario.link.latencyMs}: the loopback testbed cannot add delay (its shaper is a token bucket, and this kernel has no netem); set it to 0`,
    );
  }
  mkdirSync(init.storageDir, { recursive: true });
  const names = scenario.hosts.map(hostName);
  if (init.kind === 'netns') return startNetns(init, names);
  const cluster = await LocalCluster.start({
    hostNames: names,
    link: scenario.link.bandwidth,
    xenvmcMode: init.mode,
    storageDir: init.storageDir,
    onLog: init.onLog,
  });
  return {
    host: (name) => cluster.host(name),
    storageDir: init.storageDir,
    stop: () => cluster.stop(),
  };
}

async function startRemote(init: TestbedInit): Promise<Testbed> {
  const token = process.env.XENVMC_TOKEN;
  if (!token) {
    throw new InputError(
      'set XENVMC_TOKEN to the control token the remote hosts were started with',
    );
  }
  if (!init.scenario.storage) {
    throw new InputError(
      'a remote scenario needs `storage`: the shared storage directory as this machine mounts it (the hosts must have it as their --storage)',
    );
  }
  const hosts = new Map<string, RunHost>();
  for (const entry of init.scenario.hosts) {
    if (typeof entry === 'string') continue;
    const client = new ControlClient({ url: entry.control, token });
    const view = await client.get<{ name: string; xenvmc: { mode: string } }>('/v1/host');
    if (view.xenvmc.mode !== init.mode) {
      throw new TestbedError(
        'TESTBED_MODE',
        `host ${entry.name} (${entry.control}) runs XENVMC mode ${view.xenvmc.mode}, this run needs ${init.mode}: restart it with --xenvmc-mode ${init.mode}, or list only mode ${view.xenvmc.mode} in the scenario`,
      );
    }
    hosts.set(entry.name, { name: entry.name, link: entry.link, client });
  }
  return {
    host: (name) => {
      const host = hosts.get(name);
      if (!host) throw new InputError(`no host ${name} in the scenario`);
      return host;
    },
    storageDir: init.scenario.storage,
    stop: async () => {},
  };
}

/** The bridge and addresses of the netns testbed: a private /24 no real network uses. */
const BRIDGE = 'xvbr0';
const SUBNET = '10.99.0';

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function netnsName(host: string): string {
  return `xv-${host}`;
}

function tearDownNetns(names: string[]): void {
  for (const name of names) {
    try {
      ip(['netns', 'del', netnsName(name)]);
    } catch {}
  }
  try {
    ip(['link', 'del', BRIDGE]);
  } catch {}
}

async function startNetns(init: TestbedInit, names: string[]): Promise<Testbed> {
  if (process.getuid?.() !== 0) {
    throw new InputError(
      '--netns needs root (it creates network namespaces, veth pairs and tc qdiscs)',
    );
  }
  const rate = init.scenario.link.bandwidth;
  if (rate === 'unlimited') {
    throw new InputError('--netns shapes the veth link with tc tbf: give link.bandwidth a rate');
  }
  if (init.scenario.link.latencyMs > 0) {
    throw new InputError(
      'link.latencyMs: this kernel has no netem (sch_netem), so the netns testbed cannot add delay; set it to 0',
    );
  }
  // Leftovers of an interrupted run would make every `add` below fail.
  tearDownNetns(names);
  const placement: Record<string, { wrap: string[]; ip: string }> = {};
  try {
    ip(['link', 'add', BRIDGE, 'type', 'bridge']);
    ip(['addr', 'add', `${SUBNET}.254/24`, 'dev', BRIDGE]);
    ip(['link', 'set', BRIDGE, 'up']);
    names.forEach((name, index) => {
      const ns = netnsName(name);
      const address = `${SUBNET}.${index + 1}`;
      const outside = `${ns}-a`.slice(0, 15);
      const inside = `${ns}-b`.slice(0, 15);
      ip(['netns', 'add', ns]);
      ip(['link', 'add', outside, 'type', 'veth', 'peer', 'name', inside]);
      ip(['link', 'set', inside, 'netns', ns]);
      ip(['link', 'set', outside, 'master', BRIDGE, 'up']);
      ip(['-n', ns, 'addr', 'add', `${address}/24`, 'dev', inside]);
      ip(['-n', ns, 'link', 'set', inside, 'up']);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      // Each host's egress onto the link is shaped: a full-duplex link of the scenario's rate.
      execFileSync(
        'ip',
        [
          'netns',
          'exec',
          ns,
          'tc',
          'qdisc',
          'add',
          'dev',
          inside,
          'root',
          'tbf',
          'rate',
          tcRate(rate),
          'burst',
          '256kb',
          'latency',
          '50ms',
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      placement[name] = { wrap: ['ip', 'netns', 'exec', ns], ip: address };
    });
  } catch (error) {
    tearDownNetns(names);
    throw new TestbedError(
      'TESTBED_NETNS',
      `could not build the netns testbed: ${(error as { stderr?: Buffer }).stderr?.toString().trim() || (error as Error).message}`,
    );
  }
  let cluster: LocalCluster;
  try {
    cluster = await LocalCluster.start({
      hostNames: names,
      link: 'unlimited',
      xenvmcMode: init.mode,
      storageDir: init.storageDir,
      onLog: init.onLog,
      placement,
    });
  } catch (error) {
    tearDownNetns(names);
    throw error;
  }
  return {
    host: (name) => cluster.host(name),
    storageDir: init.storageDir,
    stop: async () => {
      await cluster.stop();
      tearDownNetns(names);
    },
  };
}

/** `1gbit` → `1gbit`, `100mbit` → `100mbit`: tc takes the same units our parser does. */
function tcRate(rate: string): string {
  const match = /^(\d+(?:\.\d+)?)\s*(gbit|mbit|kbit)$/i.exec(rate.trim());
  if (!match) {
    throw new InputError(`--netns needs link.bandwidth in gbit, mbit or kbit; got ${rate}`);
  }
  return `${match[1]}${match[2]!.toLowerCase()}`;
}
