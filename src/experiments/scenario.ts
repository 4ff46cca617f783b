/**
 * Scenarios: what an experiment runs, as a file (YAML or JSON) or a named preset. Validated
 * with zod, so a bad file is refused before anything starts, with the field's path in the
 * message (`tables.1.n.2: ...`).
 *
 * A scenario is the paper's experiment (section 11) made explicit: two or more hosts joined by
 * a link, a mail server domain and an Mclient domain co-resident on the first, a migration of
 * the mail server while Mclient runs, for every mode and every point (n, attachment size) of
 * one or more tables, repeated.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { InputError } from '../core/errors.ts';
import { IPV4 } from '../core/ipv4.ts';
import { parseBandwidth, parseBytes } from '../core/units.ts';
import { XENVMC_MODES, type XenvmcMode } from '../xenvmc/protocol.ts';

const NAME = /^[a-z][a-z0-9-]{0,31}$/;

/** A size such as `1GiB`, `3MB` or a number of bytes. */
const size = z.union([z.number().int().nonnegative(), z.string()]).transform((value, context) => {
  if (typeof value === 'number') return value;
  try {
    return parseBytes(value);
  } catch (error) {
    context.addIssue({ code: 'custom', message: (error as Error).message });
    return z.NEVER;
  }
});

const bandwidth = z.string().refine(
  (text) => {
    try {
      parseBandwidth(text);
      return true;
    } catch {
      return false;
    }
  },
  { message: 'a link rate such as 1gbit, 100mbit or unlimited' },
);

const program = z.strictObject({
  kind: z.string().min(1),
  params: z.record(z.string(), z.unknown()).default({}),
});

const domain = z.strictObject({
  name: z.string().regex(NAME, 'a lower-case name: a letter, then letters, digits or -'),
  memory: size,
  ip: z.string().regex(IPV4, 'an IPv4 address such as 10.77.0.1'),
  tenant: z.string().min(1).max(64).default('lab'),
  /** What the runner puts in it: the mail server, Mclient, or only `programs`. */
  role: z.enum(['mail-server', 'mclient', 'other']),
  /** Programs besides the role's, e.g. a dirtier for background load. */
  programs: z.array(program).default([]),
});

/** A host the runner starts (loopback, netns) or one already running elsewhere (remote). */
const host = z.union([
  z.string().regex(NAME, 'a lower-case host name'),
  z.strictObject({
    name: z.string().regex(NAME, 'a lower-case host name'),
    /** Control API URL of a running `xenvmc host`, e.g. http://10.0.0.1:7101. */
    control: z.url(),
    /** Its link address (`--listen`), e.g. 10.0.0.1:7001. */
    link: z.string().regex(/^[^:]+:\d{1,5}$/, 'host:port'),
  }),
]);

const table = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/),
  /** Size of the file Mclient attaches to each mail. */
  fileSize: size,
  /** Mclient's n: n x n mails per run. */
  n: z.array(z.number().int().min(1).max(100)).min(1),
});

export const scenarioSchema = z
  .strictObject({
    name: z.string().min(1).max(64),
    description: z.string().default(''),
    hosts: z.array(host).min(2),
    link: z
      .strictObject({
        bandwidth: bandwidth.default('1gbit'),
        /** One-way delay added by `tc` on the veth pair; needs `--netns`. */
        latencyMs: z.number().min(0).max(1000).default(0),
      })
      .prefault({}),
    /** Shared storage every host reaches: the mail server's disk lives here, never migrated. */
    storage: z.string().optional(),
    policy: z.enum(['paper', 'xen', 'qemu']).default('paper'),
    modes: z
      .array(z.enum(XENVMC_MODES))
      .min(1)
      .default([...XENVMC_MODES]),
    repetitions: z.number().int().min(1).max(50).default(3),
    seed: z.number().int().min(0).max(0xffffffff).default(1),
    domains: z.array(domain).min(2),
    migrate: z.strictObject({
      domain: z.string().regex(NAME),
      from: z.string().regex(NAME),
      to: z.string().regex(NAME),
      /** How long Mclient runs before the migrate command. */
      warmupMs: z.number().int().min(0).max(600_000).default(1000),
    }),
    tables: z.array(table).min(1),
    mclient: z
      .strictObject({
        /** Pause between two mails (0: the next one at once, as the paper's shell loop). */
        pacingMs: z.number().int().min(0).max(60_000).default(0),
      })
      .prefault({}),
    /** Give up on one run after this long. */
    runTimeoutMs: z.number().int().min(1000).max(3_600_000).default(600_000),
    /** What this scenario scales down or simulates against the paper's testbed, said in every output. */
    scaled: z.array(z.string()).default([]),
  })
  .superRefine((scenario, context) => {
    const hostNames = scenario.hosts.map((h) => (typeof h === 'string' ? h : h.name));
    const domainNames = scenario.domains.map((d) => d.name);
    const issue = (path: (string | number)[], message: string): void =>
      context.addIssue({ code: 'custom', path, message });
    if (new Set(hostNames).size !== hostNames.length) issue(['hosts'], 'host names must differ');
    if (new Set(domainNames).size !== domainNames.length)
      issue(['domains'], 'domain names must differ');
    const ips = scenario.domains.map((d) => d.ip);
    if (new Set(ips).size !== ips.length) issue(['domains'], 'domain IPs must differ');
    const kinds = new Set(scenario.hosts.map((h) => typeof h));
    if (kinds.size > 1)
      issue(['hosts'], 'list either host names (started here) or running hosts, not both');
    for (const role of ['mail-server', 'mclient'] as const) {
      const count = scenario.domains.filter((d) => d.role === role).length;
      if (count !== 1) issue(['domains'], `exactly one domain must have role ${role}; ${count} do`);
    }
    if (!domainNames.includes(scenario.migrate.domain))
      issue(['migrate', 'domain'], `no domain named ${scenario.migrate.domain}`);
    for (const key of ['from', 'to'] as const) {
      if (!hostNames.includes(scenario.migrate[key]))
        issue(['migrate', key], `no host named ${scenario.migrate[key]}`);
    }
    if (scenario.migrate.from === scenario.migrate.to)
      issue(['migrate', 'to'], 'must differ from migrate.from');
    const tableNames = scenario.tables.map((t) => t.name);
    if (new Set(tableNames).size !== tableNames.length)
      issue(['tables'], 'table names must differ');
  });

export type Scenario = z.output<typeof scenarioSchema>;
export type ScenarioDomain = Scenario['domains'][number];
export type ScenarioHost = Scenario['hosts'][number];

/** Turns zod's issues into one message that names every bad field. */
function describeIssues(error: z.ZodError, source: string): string {
  const lines = error.issues.slice(0, 8).map((issue) => {
    const path = issue.path.length ? issue.path.join('.') : '(top level)';
    return `${path}: ${issue.message}`;
  });
  const more = error.issues.length > 8 ? ` (and ${error.issues.length - 8} more)` : '';
  return `scenario ${source} is not valid: ${lines.join('; ')}${more}`;
}

/** Validates a parsed scenario (from a file or a preset). */
export function parseScenario(value: unknown, source: string): Scenario {
  const result = scenarioSchema.safeParse(value);
  if (!result.success) throw new InputError(describeIssues(result.error, source));
  return result.data;
}

/** Reads and validates a scenario file (`.yaml`, `.yml` or `.json`). */
export function loadScenarioFile(path: string): Scenario {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new InputError(`cannot read scenario ${path}: ${(error as Error).message}`);
  }
  let value: unknown;
  try {
    value = path.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (error) {
    throw new InputError(`scenario ${path} is not valid YAML/JSON: ${(error as Error).message}`);
  }
  return parseScenario(value, path);
}

/** One run: a mode, a point of a table, a repetition. */
export interface RunPoint {
  id: string;
  table: string;
  mode: XenvmcMode;
  n: number;
  fileSizeBytes: number;
  repetition: number;
  /** Seeds Mclient's attachments; differs per repetition so repetitions are not copies. */
  seed: number;
}

/**
 * The runs of a scenario, grouped by mode (hosts are started once per mode, since the mode is
 * a host setting), and inside a mode repetition-major, so an interrupted experiment still has
 * one full sweep of every point.
 */
export function planRuns(scenario: Scenario): RunPoint[] {
  const runs: RunPoint[] = [];
  for (const mode of scenario.modes) {
    for (let repetition = 1; repetition <= scenario.repetitions; repetition++) {
      for (const table of scenario.tables) {
        for (const n of table.n) {
          runs.push({
            id: `${table.name}/${mode}/n${n}/r${repetition}`,
            table: table.name,
            mode,
            n,
            fileSizeBytes: table.fileSize,
            repetition,
            seed: (scenario.seed + repetition * 7919) >>> 0,
          });
        }
      }
    }
  }
  return runs;
}

export function hostName(host: ScenarioHost): string {
  return typeof host === 'string' ? host : host.name;
}

export function domainWithRole(scenario: Scenario, role: ScenarioDomain['role']): ScenarioDomain {
  return scenario.domains.find((d) => d.role === role)!;
}

export type { XenvmcMode };
