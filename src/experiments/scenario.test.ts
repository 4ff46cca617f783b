import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { isTestbedError } from '../core/errors.ts';
import { PRESETS, presetScenario } from './presets.ts';
import { loadScenarioFile, parseScenario, planRuns } from './scenario.ts';

const MINIMAL = {
  name: 'tiny',
  hosts: ['a', 'b'],
  domains: [
    { name: 'vm1', memory: '32MiB', ip: '10.77.0.1', role: 'mail-server' },
    { name: 'vm2', memory: '16MiB', ip: '10.77.0.2', role: 'mclient' },
  ],
  migrate: { domain: 'vm1', from: 'a', to: 'b' },
  tables: [{ name: 't', fileSize: '64KiB', n: [1, 2] }],
};

function errorOf(value: unknown): string {
  try {
    parseScenario(value, 'test');
  } catch (error) {
    assert.ok(isTestbedError(error, 'INPUT_INVALID'), 'a bad scenario is an input error');
    return (error as Error).message;
  }
  assert.fail('the scenario was accepted');
}

describe('scenarios', () => {
  test('both presets are valid and say what they scale', () => {
    for (const name of Object.keys(PRESETS)) {
      const scenario = presetScenario(name);
      assert.equal(scenario.name, name, 'the preset has its name');
      assert.deepEqual(
        scenario.modes,
        ['off', 'xenvmc', 'xenvmc-suspend', 'advance'],
        'every mode by default',
      );
    }
    assert.equal(presetScenario('paper').domains[0]!.memory, 2 ** 30, 'paper: VM1 has 1 GiB');
    assert.deepEqual(
      presetScenario('paper').tables.map((t) => [t.fileSize, t.n]),
      [
        [1_000_000, [4, 8, 12, 16, 20]],
        [3_000_000, [4, 8, 12, 16, 20]],
      ],
      "paper: the paper's two tables",
    );
    assert.ok(presetScenario('quick').scaled.length >= 3, 'quick lists what it scaled');
    assert.throws(() => presetScenario('nope'), /no preset 'nope'/, 'an unknown preset is named');
  });

  test('defaults are filled in', () => {
    const scenario = parseScenario(MINIMAL, 'test');
    assert.equal(scenario.repetitions, 3, 'three repetitions by default');
    assert.equal(scenario.link.bandwidth, '1gbit', "the paper's link by default");
    assert.equal(scenario.policy, 'paper', "the paper's stop rule by default");
    assert.equal(scenario.tables[0]!.fileSize, 65536, 'sizes are parsed');
    assert.equal(scenario.domains[0]!.tenant, 'lab', 'one tenant by default');
  });

  test('errors name the field', () => {
    assert.match(
      errorOf({ ...MINIMAL, tables: [{ name: 't', fileSize: '64KiB', n: [1, 0] }] }),
      /tables\.0\.n\.1:/,
      'a bad n is named by its path',
    );
    assert.match(
      errorOf({
        ...MINIMAL,
        domains: [{ ...MINIMAL.domains[0], memory: 'lots' }, MINIMAL.domains[1]],
      }),
      /domains\.0\.memory:/,
      'a bad size is named',
    );
    assert.match(errorOf({ ...MINIMAL, colour: 'red' }), /colour|Unrecognized key/, 'unknown keys');
    assert.match(
      errorOf({ ...MINIMAL, migrate: { domain: 'vm9', from: 'a', to: 'a' } }),
      /migrate\.domain: no domain named vm9.*migrate\.to: must differ/,
      'cross-field checks name their fields',
    );
    assert.match(
      errorOf({
        ...MINIMAL,
        domains: [MINIMAL.domains[0], { ...MINIMAL.domains[1], role: 'mail-server' }],
      }),
      /exactly one domain must have role mclient/,
      'the two roles are required',
    );
    assert.match(errorOf({ ...MINIMAL, modes: ['fast'] }), /modes\.0:/, 'an unknown mode');
  });

  test('a YAML file loads; a broken one says where', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'xenvmc-scenario-'));
    try {
      const good = path.join(dir, 'good.yaml');
      writeFileSync(
        good,
        `name: tiny\nhosts: [a, b]\ndomains:\n  - { name: vm1, memory: 32MiB, ip: 10.77.0.1, role: mail-server }\n  - { name: vm2, memory: 16MiB, ip: 10.77.0.2, role: mclient }\nmigrate: { domain: vm1, from: a, to: b }\ntables:\n  - { name: t, fileSize: 1MB, n: [2] }\n`,
      );
      assert.equal(loadScenarioFile(good).tables[0]!.fileSize, 1_000_000, 'YAML parsed');
      const bad = path.join(dir, 'bad.yaml');
      writeFileSync(bad, 'name: [unclosed\n');
      assert.throws(() => loadScenarioFile(bad), /bad\.yaml is not valid YAML/, 'a YAML error');
      assert.throws(
        () => loadScenarioFile(path.join(dir, 'missing.yaml')),
        /cannot read scenario/,
        'a missing file',
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('runs: mode-major, then repetition, table and n; seeds differ by repetition only', () => {
    const scenario = parseScenario(
      { ...MINIMAL, repetitions: 2, modes: ['off', 'advance'] },
      'test',
    );
    const runs = planRuns(scenario);
    assert.equal(runs.length, 2 * 2 * 2, 'modes x repetitions x points');
    assert.deepEqual(
      runs.map((r) => r.id),
      [
        't/off/n1/r1',
        't/off/n2/r1',
        't/off/n1/r2',
        't/off/n2/r2',
        't/advance/n1/r1',
        't/advance/n2/r1',
        't/advance/n1/r2',
        't/advance/n2/r2',
      ],
      'a full sweep of every point comes before the next repetition',
    );
    const seeds = (mode: string, repetition: number) =>
      runs.find((r) => r.mode === mode && r.repetition === repetition)!.seed;
    assert.equal(seeds('off', 1), seeds('advance', 1), 'modes compare the same mails');
    assert.notEqual(seeds('off', 1), seeds('off', 2), 'repetitions are not copies');
  });
});
