/**
 * Goal: a domain's `socketBufferBytes` is validated where domains are created: the control
 * API refuses a size that is not whole pages or out of range, and the host refuses one that
 * leaves its sockbuf region fewer than 8 slots, each with a 400 naming the field and without
 * booting anything; a valid size boots a domain whose guest runs.
 * Method: the API's routes (`buildControlApi`) over a real `Host` in this process, driven
 * with `app.inject` (no socket); one 32 MiB domain is booted (a worker thread).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { realClock } from '../core/clock.ts';
import { buildControlApi } from './control-api.ts';
import { Host } from './host.ts';

const TOKEN = randomBytes(24).toString('hex');
const MIB = 2 ** 20;

let host: Host;
let app: FastifyInstance;

async function create(
  body: object,
): Promise<{ status: number; json: { error: { message: string } } }> {
  const response = await app.inject({
    method: 'POST',
    url: '/v1/domains',
    headers: { authorization: `Bearer ${TOKEN}` },
    payload: body,
  });
  return { status: response.statusCode, json: response.json() };
}

describe('domain config: socketBufferBytes', () => {
  before(async () => {
    host = new Host(
      { clock: realClock },
      {
        name: 'config-test',
        linkListen: { host: '127.0.0.1', port: 0 },
        clusterKey: randomBytes(32),
        linkBytesPerSec: null,
        memoryLimitBytes: 64 * MIB,
        log: () => {},
      },
    );
    await host.listen();
    app = buildControlApi(host, { token: TOKEN, onShutdown: () => {} });
    await app.ready();
  });

  after(async () => {
    await app?.close();
    await host?.close();
  });

  it('refuses sizes that are not whole pages or out of range, naming the field', async () => {
    for (const bad of [0, 1000, 4095, 6144, 2 ** 27, 'big', 16384.5]) {
      const { status, json } = await create({
        name: 'bad',
        memory: '32MiB',
        ip: '10.9.0.1',
        socketBufferBytes: bad,
      });
      assert.equal(status, 400, `${JSON.stringify(bad)}: 400`);
      assert.match(JSON.stringify(json), /socketBufferBytes/, `${bad}: the error names the field`);
    }
    assert.equal(host.memoryUsedBytes(), 0, 'nothing was booted');
  });

  it('refuses a size that leaves the sockbuf region fewer than 8 slots', async () => {
    // 32 MiB: 4 MiB of sockbuf; 512 KiB buffers make 4 slots.
    const { status, json } = await create({
      name: 'few-slots',
      memory: '32MiB',
      ip: '10.9.0.1',
      socketBufferBytes: 512 * 1024,
    });
    assert.equal(status, 400, `400: ${JSON.stringify(json)}`);
    assert.match(json.error.message, /socketBufferBytes .* fewer than 8 socket slots/, 'says why');
    assert.equal(host.memoryUsedBytes(), 0, 'nothing was booted');
  });

  it('boots a domain with small buffers', async () => {
    const { status, json } = await create({
      name: 'many-sockets',
      memory: '32MiB',
      ip: '10.9.0.1',
      socketBufferBytes: 16 * 1024,
    });
    assert.equal(status, 201, `201: ${JSON.stringify(json)}`);
    assert.equal(host.summary('many-sockets').status, 'running', 'the domain runs');
  });
});
