import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { describe, it } from 'node:test';
import { Random } from '../core/random.ts';
import { type ReadIntoPath, readInto } from './read-into.ts';

/** A server socket (accepted, the case Node's own `onread` does not cover) and its client. */
async function acceptedPair(): Promise<{ client: net.Socket; accepted: net.Socket }> {
  const server = net.createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const acceptedReady = once(server, 'connection');
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [accepted] = (await acceptedReady) as [net.Socket];
  server.close();
  return { client, accepted };
}

function randomBytes(seed: number, length: number): Buffer {
  const bytes = Buffer.alloc(length);
  new Random(seed).fill(bytes);
  return bytes;
}

describe('readInto', () => {
  for (const path of ['reused-buffer', 'data-events'] as ReadIntoPath[]) {
    it(`delivers an accepted socket's bytes whole and in order, pausing on false (${path})`, async () => {
      const { client, accepted } = await acceptedPair();
      const sent = randomBytes(11, 5 * 1024 * 1024 + 123);
      const buffer = new Uint8Array(64 * 1024);
      const received: Buffer[] = [];
      let reads = 0;
      let pauses = 0;
      const taken = readInto(
        accepted,
        buffer,
        (bytes) => {
          // A copy: the view is only valid until this returns.
          received.push(Buffer.from(bytes));
          reads++;
          if (reads % 10 === 0) {
            // Pause now and then, as the migration receiver does around its steps.
            pauses++;
            setTimeout(() => accepted.resume(), 2);
            return false;
          }
          return true;
        },
        { path },
      );
      assert.equal(taken, path, 'the path asked for was taken');
      const ended = once(accepted, 'end');
      accepted.resume();
      client.end(sent);
      await ended;
      assert.ok(pauses > 0, 'the socket was paused at least once');
      assert.ok(Buffer.concat(received).equals(sent), 'every byte once, in order');
      if (path === 'reused-buffer') {
        assert.ok(
          received.every((chunk) => chunk.byteLength <= buffer.byteLength),
          'each read filled at most the reused buffer',
        );
      }
      accepted.destroy();
    });
  }

  it('passes on bytes Node had buffered before it was called', async () => {
    const { client, accepted } = await acceptedPair();
    // Let the socket read once into Node's own buffer, then hand it over paused.
    accepted.resume();
    client.write(Buffer.from('early'));
    await once(accepted, 'readable');
    accepted.pause();
    const received: Buffer[] = [];
    readInto(accepted, new Uint8Array(1024), (bytes) => {
      received.push(Buffer.from(bytes));
      return true;
    });
    const ended = once(accepted, 'end');
    accepted.resume();
    client.end(Buffer.from(' and late'));
    await ended;
    assert.equal(Buffer.concat(received).toString(), 'early and late', 'nothing lost');
  });
});
