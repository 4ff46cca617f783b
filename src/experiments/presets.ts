/**
 * The built-in scenarios. `paper` is the paper's experiment as stated (section 11): VM1 with
 * 1 GiB on a 1 Gbit/s link, Table 1 (n = 4..20, 1 MB attachments) and Table 2 (3 MB), every
 * mode, VM1 migrated while Mclient runs. `quick` keeps that shape, scaled down to finish in a
 * few minutes on two cores; every scaled parameter is listed in its `scaled`, which every output
 * repeats.
 */
import { InputError } from '../core/errors.ts';
import { parseScenario, type Scenario } from './scenario.ts';

/**
 * VM1's resident memory: a booted guest's memory is mostly not zero (kernel, libraries, the
 * MTA, caches), and zero pages cost nothing to migrate, so VM1's program memory is filled with
 * random bytes at boot and then left alone (the `idle` behaviour).
 */
const IMAGE = { kind: 'dirtier', params: { behaviour: 'idle' } };

const PAPER = {
  name: 'paper',
  description:
    "The paper's experiment: Mclient in VM2 sends n x n mails with an attachment to the mail server in VM1 while VM1 is live-migrated; Table 1 (1 MB) and Table 2 (3 MB), n = 4, 8, 12, 16, 20.",
  hosts: ['h1', 'h2'],
  link: { bandwidth: '1gbit' },
  policy: 'paper',
  repetitions: 3,
  seed: 1,
  domains: [
    {
      name: 'vm1',
      memory: '1GiB',
      ip: '10.77.0.1',
      tenant: 'lab',
      role: 'mail-server',
      programs: [IMAGE],
    },
    { name: 'vm2', memory: '256MiB', ip: '10.77.0.2', tenant: 'lab', role: 'mclient' },
  ],
  migrate: { domain: 'vm1', from: 'h1', to: 'h2', warmupMs: 2000 },
  tables: [
    { name: 'table1', fileSize: '1MB', n: [4, 8, 12, 16, 20] },
    { name: 'table2', fileSize: '3MB', n: [4, 8, 12, 16, 20] },
  ],
  scaled: [],
};

const QUICK = {
  ...PAPER,
  name: 'quick',
  description:
    "The paper's experiment scaled down to a few minutes on two cores: same shape (two tables, every mode, VM1 migrated while Mclient runs), smaller VM, fewer and smaller mails, two repetitions.",
  repetitions: 2,
  domains: [
    {
      name: 'vm1',
      memory: '128MiB',
      ip: '10.77.0.1',
      tenant: 'lab',
      role: 'mail-server',
      programs: [IMAGE],
    },
    { name: 'vm2', memory: '32MiB', ip: '10.77.0.2', tenant: 'lab', role: 'mclient' },
  ],
  migrate: { domain: 'vm1', from: 'h1', to: 'h2', warmupMs: 200 },
  tables: [
    { name: 'table1', fileSize: '128KB', n: [2, 3] },
    { name: 'table2', fileSize: '384KB', n: [2, 3] },
  ],
  scaled: [
    'quick preset: VM1 has 128 MiB (paper preset: 1 GiB).',
    'quick preset: n = 2 and 3 (4 and 9 mails; the paper: n = 4..20, 16 to 400 mails).',
    'quick preset: attachments of 128 KB and 384 KB (the paper: 1 MB and 3 MB), an eighth.',
    'quick preset: 2 repetitions per point; migration after 200 ms of mail (paper preset: 3 and 2 s).',
  ],
};

export const PRESETS: Record<string, unknown> = { paper: PAPER, quick: QUICK };

export function presetScenario(name: string): Scenario {
  const preset = PRESETS[name];
  if (!preset) {
    throw new InputError(
      `no preset '${name}' (presets: ${Object.keys(PRESETS).join(', ')}); or give a scenario file (.yaml, .json)`,
    );
  }
  return parseScenario(preset, `preset ${name}`);
}
