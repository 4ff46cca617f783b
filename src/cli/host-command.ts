/**
 * `xenvmc host`: runs one host (Dom0 + its domains) until SIGINT/SIGTERM or /v1/shutdown.
 * Prints one JSON ready line on stdout (what the demos and runners wait for) and its log on
 * stderr.
 */
import { randomBytes } from 'node:crypto';
import { accessSync, constants, statSync } from 'node:fs';
import path from 'node:path';
import { realClock } from '../core/clock.ts';
import { InputError } from '../core/errors.ts';
import { formatBandwidth, parseBandwidth, parseBytes } from '../core/units.ts';
import { startControlApi } from '../hypervisor/control-api.ts';
import { Host } from '../hypervisor/host.ts';
import { parseAddress } from '../hypervisor/peer-link.ts';
import { XENVMC_MODES, type XenvmcMode } from '../xenvmc/protocol.ts';
import { parseDurationMs } from './demo-migrate.ts';

export interface HostCommandOptions {
  name: string;
  listen: string;
  control: string;
  link: string;
  memoryLimit?: string;
  stallTimeout?: string;
  dom0Ip?: string;
  /** `off`, `xenvmc`, `xenvmc-suspend` or `advance`. @default 'off' */
  xenvmcMode?: string;
  /** Other hosts' link addresses (their --listen), told where our domains are. */
  peer?: string[];
  /** Send XENVMC channel pages with a migrating domain (real Xen's behaviour). */
  migrateChannelPages?: boolean;
  /** Shared storage directory holding domains' disks (the same on every host). */
  storage?: string;
}

/** Checks a `--xenvmc-mode` value. */
export function parseXenvmcMode(text: string, flag: string): XenvmcMode {
  const mode = XENVMC_MODES.find((candidate) => candidate === text);
  if (mode === undefined) {
    throw new InputError(`${flag} is one of ${XENVMC_MODES.join(', ')}; got '${text}'`);
  }
  return mode;
}

/** `--storage` must be an existing directory this process may write: say so before any domain boots. */
function checkStorageDir(dir: string): string {
  const absolute = path.resolve(dir);
  try {
    if (!statSync(absolute).isDirectory()) throw new Error('not a directory');
    accessSync(absolute, constants.W_OK);
  } catch (error) {
    throw new InputError(
      `--storage ${dir}: ${(error as Error).message}; give a writable directory every host reaches (shared storage)`,
    );
  }
  return absolute;
}

export async function runHost(options: HostCommandOptions): Promise<void> {
  const clusterKeyText = process.env.XENVMC_CLUSTER_KEY;
  if (!clusterKeyText || clusterKeyText.length < 16) {
    throw new InputError(
      'set XENVMC_CLUSTER_KEY (at least 16 characters, the same on every host of the cluster): hosts only accept migrations from hosts that prove they hold it',
    );
  }
  const token = process.env.XENVMC_TOKEN ?? randomBytes(24).toString('hex');
  const control = parseAddress(options.control, '--control');
  const log = (line: string): void => {
    process.stderr.write(`${new Date().toISOString()} [${options.name}] ${line}\n`);
  };
  const host = new Host(
    { clock: realClock },
    {
      name: options.name,
      linkListen: parseAddress(options.listen, '--listen'),
      clusterKey: Buffer.from(clusterKeyText, 'utf8'),
      linkBytesPerSec: parseBandwidth(options.link, '--link'),
      memoryLimitBytes: options.memoryLimit
        ? parseBytes(options.memoryLimit, '--memory-limit')
        : undefined,
      stallTimeoutMs: options.stallTimeout
        ? parseDurationMs(options.stallTimeout, '--stall-timeout')
        : undefined,
      xenvmcMode: parseXenvmcMode(options.xenvmcMode ?? 'off', '--xenvmc-mode'),
      dom0Ip: options.dom0Ip,
      migrateChannelPages: Boolean(options.migrateChannelPages),
      storageDir: options.storage === undefined ? undefined : checkStorageDir(options.storage),
      log,
    },
  );
  const link = await host.listen();
  if (options.peer?.length) host.addPeers(options.peer);
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log('shutting down');
    await api.app.close();
    await host.close();
    process.exit(0);
  };
  const api = await startControlApi(host, {
    token,
    host: control.host,
    port: control.port,
    onShutdown: () => void stop(),
  });
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
  log(
    `link ${link.host}:${link.port} at ${formatBandwidth(host.linkBytesPerSec)}, ` +
      `control ${api.url}, XENVMC mode ${host.xenvmcMode}`,
  );
  const ready = {
    event: 'ready',
    name: options.name,
    link: `${link.host}:${link.port}`,
    control: api.url,
    ...(process.env.XENVMC_TOKEN ? {} : { token }),
  };
  process.stdout.write(`${JSON.stringify(ready)}\n`);
}
