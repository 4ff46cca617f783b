/**
 * The `xenvmc` command (commander). The only place besides the host runner that reads
 * `process.*`. Every failure ends as one clear line on stderr (and a JSON error object with
 * --json), never a stack trace; set XENVMC_DEBUG=1 to see one.
 */
import { Command, Option } from 'commander';
import { describeError, isTestbedError } from '../core/errors.ts';
import { parseBytes } from '../core/units.ts';
import type { DomainSummary } from '../hypervisor/host.ts';
import { textTable } from '../report/table.ts';
import { XENVMC_MODES } from '../xenvmc/protocol.ts';
import { ControlClient } from './control-client.ts';
import { printFaultReport, runDemoFaults } from './demo-faults.ts';
import { printMailResult, runDemoMail } from './demo-mail.ts';
import { printMigrationStats, runDemoMigrate } from './demo-migrate.ts';
import { printStreamResult, runDemoStream, STREAM_MODES } from './demo-stream.ts';
import { experimentCommand } from './experiment-command.ts';
import { runHost } from './host-command.ts';
import { followMigration } from './migrate-command.ts';
import { MigrationProgressDisplay } from './progress.ts';
import { reportCommand } from './report-command.ts';

let jsonErrors = false;

function client(options: { host?: string; token?: string }): ControlClient {
  const url = options.host ?? process.env.XENVMC_HOST;
  const token = options.token ?? process.env.XENVMC_TOKEN;
  if (!url || !token) {
    throw new Error(
      "say which host to talk to: --host URL --token TOKEN (or XENVMC_HOST and XENVMC_TOKEN), as printed in the host's ready line",
    );
  }
  return new ControlClient({ url, token });
}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

const jsonOption = (): Option => new Option('--json', 'print the result as JSON on stdout');
const quietOption = (): Option => new Option('--quiet', 'no progress on stderr');
const policyOption = (): Option =>
  new Option('--policy <policy>', 'stop policy').choices(['paper', 'xen', 'qemu']).default('paper');

/** Commander leaves an absent flag undefined; the commands take booleans. */
function withFlags<T extends { json?: boolean; quiet?: boolean }>(
  options: T,
): T & { json: boolean; quiet: boolean } {
  return { ...options, json: Boolean(options.json), quiet: Boolean(options.quiet) };
}

/** A demo's last step: its result as JSON, or printed with its notes; a failed check exits 1. */
function finishDemo<R extends { notes: string[] }>(
  result: R,
  json: boolean | undefined,
  print: (result: R) => void,
  passed: boolean,
): void {
  if (json) printJson(result);
  else {
    print(result);
    process.stdout.write(`\n${result.notes.map((n) => `note: ${n}`).join('\n')}\n`);
  }
  if (!passed) process.exitCode = 1;
}

const program = new Command();
program
  .name('xenvmc')
  .description(
    'XENVMC and Advance-XENVMC testbed: Xen-like hosts, guest domains with real memory, pre-copy live migration over real TCP',
  )
  .showHelpAfterError()
  // Errors come as JSON too when the command was asked for JSON.
  .hook('preAction', (_program, action) => {
    jsonErrors = Boolean(action.opts().json);
  });

program
  .command('host')
  .description('run one host (Dom0 and its domains); needs XENVMC_CLUSTER_KEY in the environment')
  .requiredOption('--name <name>', 'host name')
  .option(
    '--listen <addr>',
    'address other hosts reach this one at (migration streams)',
    '127.0.0.1:7001',
  )
  .option(
    '--control <addr>',
    'control API address (keep it on loopback unless you mean it)',
    '127.0.0.1:7101',
  )
  .option(
    '--link <rate>',
    'egress link rate towards other hosts, e.g. 1gbit, 100mbit, unlimited',
    '1gbit',
  )
  .option('--memory-limit <size>', 'guest memory this host may hold (default 75% of RAM)')
  .option(
    '--stall-timeout <duration>',
    'a migration link that moves no data this long has failed',
    '30s',
  )
  .option(
    '--dom0-ip <ip>',
    "Dom0's own IP on the testbed network (port forwarding); unique per host",
  )
  .option(
    '--migrate-channel-pages',
    "send the XENVMC channel pages a domain granted with it, as real Xen would (default: not, the paper's premise)",
  )
  .option(
    '--storage <dir>',
    'shared storage: domain NAME gets the disk DIR/NAME (the same directory on every host; never migrated)',
  )
  .option(
    '--peer <addr>',
    "another host's link address (repeat for each); guests here can then reach its domains",
    (value: string, previous: string[] = []) => [...previous, value],
  )
  .addOption(
    new Option(
      '--xenvmc-mode <mode>',
      'XENVMC mode: off (netfront only), xenvmc (channels cancelled when a migration ' +
        'starts), xenvmc-suspend (cancelled at the final pause), advance (kept throughout)',
    )
      .choices(XENVMC_MODES)
      .default('off'),
  )
  .action(async (options) => runHost(options));

const controlOptions = (command: Command): Command =>
  command
    .option('--host <url>', "the host's control API URL (or XENVMC_HOST)")
    .option('--token <token>', "the host's control token (or XENVMC_TOKEN)")
    .option('--json', 'print JSON');

const domain = program
  .command('domain')
  .description('create, list, pause, resume and destroy domains on a host');
controlOptions(
  domain
    .command('create <name>')
    .description('create a domain')
    .requiredOption('--memory <size>', 'guest memory, e.g. 256MiB')
    .option('--ip <ip>', "the domain's IPv4 address inside the testbed")
    .option('--tenant <tenant>', 'tenant label', 'default')
    .option('--dirty-rate <pages>', 'run a dirtier at this many pages/s')
    .option(
      '--pattern <pattern>',
      'dirtier access pattern: sequential, uniform, hotcold, zipf',
      'uniform',
    ),
).action(async (name: string, options) => {
  const programs =
    options.dirtyRate === undefined
      ? []
      : [
          {
            kind: 'dirtier',
            params: { dirtyRatePagesPerSec: Number(options.dirtyRate), pattern: options.pattern },
          },
        ];
  const summary = await client(options).post<DomainSummary>('/v1/domains', {
    name,
    memory: parseBytes(options.memory, '--memory'),
    ip: options.ip ?? null,
    tenant: options.tenant,
    programs,
  });
  if (options.json) printJson(summary);
  else
    process.stdout.write(
      `created dom${summary.domId} ${summary.name} (${summary.pageCount} pages)\n`,
    );
});
controlOptions(domain.command('list').description('list domains')).action(async (options) => {
  const domains = await client(options).get<DomainSummary[]>('/v1/domains');
  if (options.json) return printJson(domains);
  const rows = domains.map((d) => [d.domId, d.name, d.ip ?? '-', d.tenant, d.status, d.pageCount]);
  process.stdout.write(
    `${textTable(['domid', 'name', 'ip', 'tenant', 'status', 'pages'], rows)}\n`,
  );
});
for (const verb of ['pause', 'resume'] as const) {
  controlOptions(domain.command(`${verb} <name>`).description(`${verb} a domain`)).action(
    async (name: string, options) => {
      const summary = await client(options).post<DomainSummary>(
        `/v1/domains/${encodeURIComponent(name)}/${verb}`,
      );
      if (options.json) printJson(summary);
      else process.stdout.write(`${summary.name} is ${summary.status}\n`);
    },
  );
}
controlOptions(domain.command('destroy <name>').description('destroy a domain')).action(
  async (name: string, options) => {
    await client(options).delete(`/v1/domains/${encodeURIComponent(name)}`);
    if (options.json) printJson({ destroyed: name });
    else process.stdout.write(`destroyed ${name}\n`);
  },
);

controlOptions(
  program
    .command('migrate <domain>')
    .description('live-migrate a domain (pre-copy) from the host given by --host to another host')
    .requiredOption('--to <addr>', "the target host's link address (host:port, its --listen)")
    .addOption(policyOption()),
).action(async (name: string, options) => {
  const stats = await followMigration(
    client(options),
    name,
    { to: options.to, policy: options.policy },
    new MigrationProgressDisplay({ enabled: !options.json }),
  );
  if (options.json) printJson(stats);
  else printMigrationStats(stats);
});

controlOptions(
  program
    .command('forward <domain> <port>')
    .description(
      'relay a port of this machine to a port of a domain (by name or IP), e.g. for a real SMTP client',
    )
    .option('--listen <addr>', 'where to listen on this machine', '127.0.0.1:0'),
).action(async (domainName: string, port: string, options) => {
  const view = await client(options).post<{ listen: string; targetIp: string; targetPort: number }>(
    '/v1/forwards',
    {
      domain: domainName,
      port: Number(port),
      listen: options.listen,
    },
  );
  if (options.json) printJson(view);
  else process.stdout.write(`forwarding ${view.listen} -> ${view.targetIp}:${view.targetPort}\n`);
});

const demo = program.command('demo').description('self-contained demonstrations on local hosts');
demo
  .command('migrate')
  .description(
    'two hosts on loopback, a dirtier domain, one pre-copy live migration, verified and measured',
  )
  .option('--memory <size>', 'guest memory of the domain', '256MiB')
  .option('--dirty-rate <pages>', 'pages per second the dirtier writes (0 = idle)', '5000')
  .addOption(
    new Option('--pattern <pattern>', 'dirtier access pattern')
      .choices(['sequential', 'uniform', 'hotcold', 'zipf'])
      .default('uniform'),
  )
  .option('--working-set <size>', 'bytes of program memory the dirtier writes (default: all of it)')
  .option('--link <rate>', 'link rate between the hosts: 1gbit, 100mbit, unlimited, ...', '1gbit')
  .addOption(policyOption())
  .option('--warmup <duration>', 'how long the dirtier runs before the migration starts', '1s')
  .addOption(jsonOption())
  .addOption(quietOption())
  .action(async (options) => {
    const result = await runDemoMigrate(withFlags(options));
    finishDemo(
      result,
      options.json,
      printMigrationStats,
      result.memoryVerified && result.domainRunsOnTarget && result.domainGoneFromSource,
    );
  });

demo
  .command('stream')
  .description(
    'two co-resident domains stream bytes both ways over guest sockets while one is migrated',
  )
  .addOption(
    new Option('--mode <mode>', 'inter-VM carrier mode').choices([...STREAM_MODES]).default('off'),
  )
  .option('--bytes <size>', 'bytes each direction carries', '64MiB')
  .addOption(
    new Option(
      '--migrate <which>',
      'which domain to migrate: sender (the client, vm2), receiver (the server, vm1) or none',
    )
      .choices(['sender', 'receiver', 'none'])
      .default('receiver'),
  )
  .option(
    '--migrate-after <duration>',
    'how long the streams run before the migration starts',
    '500ms',
  )
  .option('--memory <size>', 'guest memory of each domain', '64MiB')
  .option(
    '--migrate-channel-pages',
    "send channel pages with the migrating domain (real Xen's grant behaviour)",
  )
  .option('--link <rate>', 'link rate between the hosts', '1gbit')
  .addOption(policyOption())
  .addOption(jsonOption())
  .addOption(quietOption())
  .action(async (options) => {
    const result = await runDemoStream(withFlags(options));
    finishDemo(result, options.json, printStreamResult, result.digestsMatch);
  });

demo
  .command('mail')
  .description(
    "the paper's workload: Mclient in VM2 sends n x n mails to the mail server in VM1, which is migrated mid-run; every mailbox is checked",
  )
  .addOption(
    new Option('--mode <mode>', 'inter-VM carrier mode')
      .choices([...XENVMC_MODES])
      .default('advance'),
  )
  .option('--n <n>', "Mclient's n: n x n mails", '4')
  .option('--file-size <size>', 'size of the file attached to each mail', '1MB')
  .option('--memory <size>', 'guest memory of VM1, the mail server', '128MiB')
  .option(
    '--migrate-after <duration>',
    'how long Mclient runs before the migration starts',
    '300ms',
  )
  .option('--pacing <duration>', 'pause between two mails', '0ms')
  .option('--no-migrate', 'do not migrate VM1 (a baseline)')
  .option('--seed <n>', "seed of the attachments' contents", '1')
  .option('--link <rate>', 'link rate between the hosts', '1gbit')
  .addOption(policyOption())
  .addOption(jsonOption())
  .addOption(quietOption())
  .action(async (options) => {
    const result = await runDemoMail({
      ...options,
      migrate: options.migrate !== false,
      json: Boolean(options.json),
      quiet: Boolean(options.quiet),
    });
    finishDemo(result, options.json, printMailResult, result.ok);
  });

demo
  .command('faults')
  .description(
    'migrations of a communicating domain with faults chosen by a seed; checks it runs in exactly one place and no stream byte is lost',
  )
  .option('--seed <n>', 'replay the runs of this seed (printed first; random if not given)')
  .option('--runs <n>', 'how many runs', '8')
  .option('--only <kinds>', 'only these fault kinds, comma-separated (see the README)')
  .addOption(jsonOption())
  .addOption(quietOption())
  .action(async (options) => {
    const report = await runDemoFaults(withFlags(options));
    if (options.json) printJson(report);
    else printFaultReport(report);
    if (report.domainsLost || report.domainsDuplicated || report.bytesLost) process.exitCode = 1;
  });

program
  .command('experiment')
  .description(
    "run the paper's experiment: every mode, every point of the scenario's tables, repeated; writes results and a report",
  )
  .argument('[scenario]', 'a preset (quick, paper) or a scenario file (.yaml, .json)', 'quick')
  .option('--out <dir>', 'output directory (default: results/<scenario>-<timestamp>)')
  .option(
    '--netns',
    'each host in its own network namespace, joined by a tc-shaped veth link (root)',
  )
  .option('--remote', 'use the running hosts the scenario lists by address')
  .option('--modes <list>', 'only these modes, comma-separated')
  .option('--repetitions <n>', "override the scenario's repetitions")
  .option('--json', 'print a JSON summary on stdout')
  .addOption(quietOption())
  .option('--verbose', "show the hosts' logs")
  .action(async (scenario: string, options) => {
    const results = await experimentCommand(scenario, withFlags(options));
    if (results.runs.some((run) => !run.ok)) process.exitCode = 1;
  });

program
  .command('report')
  .description('re-render report.html, report.md and results.csv from DIR/results.json')
  .argument('<dir>', 'an experiment output directory')
  .option('--json', 'print the written files as JSON')
  .action(async (dir: string, options) => {
    await reportCommand(dir, { json: Boolean(options.json) });
  });

try {
  await program.parseAsync(process.argv);
} catch (error) {
  const message = describeError(error);
  if (jsonErrors) {
    printJson({
      error: {
        code: isTestbedError(error) ? error.code : 'ERROR',
        message: (error as Error).message ?? message,
      },
    });
  }
  process.stderr.write(`xenvmc: ${message}\n`);
  if (process.env.XENVMC_DEBUG) process.stderr.write(`${(error as Error).stack}\n`);
  process.exitCode = 1;
}
