/**
 * Brings up hosts as real processes on loopback (`xenvmc host`), the way the demos, the
 * integration tests and the experiment runner need them, and tears them down even on failure.
 * The cluster key and control token are fresh random values handed over in the environment
 * (never on the command line, where `ps` would show them).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { ControlClient } from '../cli/control-client.ts';
import { TestbedError } from '../core/errors.ts';
import type { XenvmcMode } from '../xenvmc/protocol.ts';

const BIN = fileURLToPath(new URL('../../bin/xenvmc.js', import.meta.url));
/** Loading the TypeScript sources through tsx takes a few seconds on a cold cache. */
const HOST_START_TIMEOUT_MS = 30_000;

export interface LocalHost {
  name: string;
  /** `host:port` other hosts use to reach this one (migration target address). */
  link: string;
  client: ControlClient;
  process: ChildProcess;
  /** Lines the host wrote to stderr (its log), newest last, bounded. */
  log: string[];
}

export interface LocalClusterInit {
  hostNames: string[];
  /** Link rate for every host, as `xenvmc host --link` takes it. @default '1gbit' */
  link?: string;
  /** Print host logs to this function as they come. */
  onLog?: (host: string, line: string) => void;
  /** More `xenvmc host` flags per host name, e.g. `{ h2: ['--memory-limit', '16MiB'] }`. */
  hostArgs?: Record<string, string[]>;
  /** Every host's `--stall-timeout`. @default '30s' */
  stallTimeout?: string;
  /** Every host's `--xenvmc-mode`. @default 'off' (the host's own default) */
  xenvmcMode?: XenvmcMode;
  /** Every host's `--storage`: the shared storage directory of domain disks. */
  storageDir?: string;
  /**
   * Where a host runs, by name: a command prefix (e.g. `ip netns exec xv-h1`) and the address
   * it binds its link and control API to. @default this network namespace, 127.0.0.1
   */
  placement?: Record<string, { wrap: string[]; ip: string }>;
}

export class LocalCluster {
  readonly hosts: LocalHost[];

  private constructor(hosts: LocalHost[]) {
    this.hosts = hosts;
  }

  static async start(init: LocalClusterInit): Promise<LocalCluster> {
    const clusterKey = randomBytes(32).toString('hex');
    const token = randomBytes(24).toString('hex');
    const started: LocalHost[] = [];
    try {
      for (const name of init.hostNames) {
        const extra = [
          ...(init.hostArgs?.[name] ?? []),
          '--stall-timeout',
          init.stallTimeout ?? '30s',
          ...(init.xenvmcMode ? ['--xenvmc-mode', init.xenvmcMode] : []),
          ...(init.storageDir ? ['--storage', init.storageDir] : []),
        ];
        started.push(
          await startHost(name, {
            clusterKey,
            token,
            link: init.link ?? '1gbit',
            onLog: init.onLog,
            extra,
            placement: init.placement?.[name] ?? { wrap: [], ip: '127.0.0.1' },
          }),
        );
      }
      // Every host learns the others, as hosts on one switch would.
      const links = started.map((host) => host.link);
      for (const host of started) await host.client.post('/v1/peers', { links });
    } catch (error) {
      await new LocalCluster(started).stop();
      throw error;
    }
    return new LocalCluster(started);
  }

  host(name: string): LocalHost {
    const host = this.hosts.find((h) => h.name === name);
    if (!host) throw new Error(`no host ${name} in this cluster`);
    return host;
  }

  /** Kills one host process at once (fault injection). */
  kill(name: string): void {
    this.host(name).process.kill('SIGKILL');
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.hosts.map(
        (host) =>
          new Promise<void>((resolve) => {
            if (host.process.exitCode !== null || host.process.signalCode !== null)
              return resolve();
            const timer = setTimeout(() => host.process.kill('SIGKILL'), 3000);
            host.process.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            host.process.kill('SIGTERM');
          }),
      ),
    );
  }
}

async function startHost(
  name: string,
  init: {
    clusterKey: string;
    token: string;
    link: string;
    extra: string[];
    onLog?: (host: string, line: string) => void;
    placement: { wrap: string[]; ip: string };
  },
): Promise<LocalHost> {
  const { wrap, ip } = init.placement;
  const command = [
    ...wrap,
    process.execPath,
    BIN,
    'host',
    '--name',
    name,
    '--listen',
    `${ip}:0`,
    '--control',
    `${ip}:0`,
    '--link',
    init.link,
    ...init.extra,
  ];
  const child = spawn(command[0]!, command.slice(1), {
    env: { ...process.env, XENVMC_CLUSTER_KEY: init.clusterKey, XENVMC_TOKEN: init.token },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (line) => {
    log.push(line);
    if (log.length > 500) log.shift();
    init.onLog?.(name, line);
  });
  const ready = await new Promise<{ link: string; control: string }>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new TestbedError(
          'HOST_START_FAILED',
          `host ${name} did not start within ${HOST_START_TIMEOUT_MS} ms: ${log.slice(-5).join(' | ')}`,
        ),
      );
    }, HOST_START_TIMEOUT_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(
        new TestbedError(
          'HOST_START_FAILED',
          `host ${name} exited with code ${code} before it was ready: ${log.slice(-5).join(' | ')}`,
        ),
      );
    });
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const event = JSON.parse(line) as { event?: string; link?: string; control?: string };
        if (event.event === 'ready' && event.link && event.control) {
          clearTimeout(timer);
          resolve({ link: event.link, control: event.control });
        }
      } catch {
        // Not the ready line: hosts print only JSON on stdout, but be lenient.
      }
    });
  });
  return {
    name,
    link: ready.link,
    client: new ControlClient({ url: ready.control, token: init.token }),
    process: child,
    log,
  };
}
