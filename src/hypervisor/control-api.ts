/**
 * The host's control API: HTTP/JSON for the CLI and the experiment runner, served by fastify
 * (schema-validated bodies, so a bad request names its field). Every request needs the bearer
 * token; the server binds to loopback unless told otherwise.
 */
import { timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { isTestbedError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES, parseBytes } from '../core/units.ts';
import { SOCKET_BUFFER_BYTES_REQUEST_MIN } from '../guest/netstack.ts';
import { REGION_NAMES } from '../memory/layout.ts';
import { STREAM_BUFFER_BYTES_MAX } from '../net/limits.ts';
import type { Host } from './host.ts';

/**
 * HTTP status per error code. A bad request is a 4xx; a guest that cannot boot with the
 * programs it was given is 422 (the request was well-formed but cannot be carried out); a
 * peer host that cannot be reached or fails the cluster-key check is 502 (504 when it does
 * not answer in time), as a gateway would answer; a full host is 507. 500 is left for bugs.
 */
const STATUS_BY_CODE: Record<string, number> = {
  INPUT_INVALID: 400,
  DOMAIN_UNKNOWN: 404,
  DOMAIN_EXISTS: 409,
  DOMAIN_STATE: 409,
  DOMAIN_CRASHED: 409,
  DOMAIN_BOOT_FAILED: 422,
  LINK_CLOSED: 502,
  LINK_AUTH_FAILED: 502,
  LINK_MALFORMED: 502,
  LINK_TIMEOUT: 504,
  HOST_NO_MEMORY: 507,
};

const programSchema = {
  type: 'object',
  required: ['kind'],
  additionalProperties: false,
  properties: {
    kind: { type: 'string', minLength: 1, maxLength: 64 },
    params: { type: 'object' },
    dataPages: { type: 'integer', minimum: 1 },
  },
} as const;

const createDomainSchema = {
  type: 'object',
  required: ['name', 'memory'],
  additionalProperties: false,
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 64 },
    memory: {
      anyOf: [
        { type: 'string', maxLength: 32 },
        { type: 'integer', minimum: 1 },
      ],
    },
    ip: { anyOf: [{ type: 'string', format: 'ipv4' }, { type: 'null' }] },
    tenant: { type: 'string', minLength: 1, maxLength: 64 },
    programs: { type: 'array', maxItems: 16, items: programSchema },
    regionPages: {
      type: 'object',
      additionalProperties: false,
      properties: Object.fromEntries(REGION_NAMES.map((n) => [n, { type: 'integer', minimum: 1 }])),
    },
    // Whole pages; what fits the domain's sockbuf region is checked by the host.
    socketBufferBytes: {
      type: 'integer',
      minimum: SOCKET_BUFFER_BYTES_REQUEST_MIN,
      maximum: STREAM_BUFFER_BYTES_MAX,
      multipleOf: PAGE_SIZE_BYTES,
    },
  },
} as const;

const migrateSchema = {
  type: 'object',
  required: ['to'],
  additionalProperties: false,
  properties: {
    to: { type: 'string', minLength: 3, maxLength: 300 },
    policy: { type: 'string', enum: ['paper', 'xen', 'qemu'] },
    policyOptions: { type: 'object', additionalProperties: { type: 'number' } },
  },
} as const;

export interface ControlApiInit {
  token: string;
  /** The address to bind; the CLI's default is loopback (`xenvmc host --control`). */
  host: string;
  port: number;
  /** Called after /v1/shutdown has answered. */
  onShutdown: () => void;
}

/** Starts the control API on `init.host:init.port`; resolves once it listens. */
export async function startControlApi(
  host: Host,
  init: ControlApiInit,
): Promise<{ app: FastifyInstance; url: string }> {
  const app = buildControlApi(host, init);
  const url = await app.listen({ host: init.host, port: init.port });
  return { app, url };
}

/**
 * The control API's routes, not listening: `startControlApi` binds it, tests call
 * `app.inject` (no socket).
 */
export function buildControlApi(
  host: Host,
  init: Pick<ControlApiInit, 'token' | 'onShutdown'>,
): FastifyInstance {
  const expected = Buffer.from(`Bearer ${init.token}`);
  const authorized = (request: FastifyRequest): boolean => {
    const given = Buffer.from(request.headers.authorization ?? '');
    return given.length === expected.length && timingSafeEqual(given, expected);
  };
  const unauthorized = {
    error: {
      code: 'UNAUTHORIZED',
      message: "missing or wrong bearer token (see the host's ready line or XENVMC_TOKEN)",
    },
  };
  const app = Fastify({
    logger: false,
    bodyLimit: 1 << 20,
    // A URL the router cannot decode (bad percent-encoding, a too long parameter) skips the
    // hooks: check the token here too, and answer in the API's error shape.
    frameworkErrors: (error, request, genericReply) => {
      const reply = genericReply as FastifyReply;
      if (!authorized(request)) return reply.code(401).send(unauthorized);
      return reply
        .code(error.statusCode ?? 400)
        .send({ error: { code: 'INPUT_INVALID', message: error.message } });
    },
  });

  app.addHook('onRequest', async (request, reply) => {
    if (!authorized(request)) return reply.code(401).send(unauthorized);
  });

  // Unknown routes answer in the same shape as every other error (after the token check).
  app.setNotFoundHandler((request, reply) =>
    reply.code(404).send({
      error: {
        code: 'NOT_FOUND',
        message: `no route ${request.method} ${request.url.slice(0, 200)}`,
      },
    }),
  );

  app.setErrorHandler((thrown, _request, reply) => {
    const error = thrown as Error;
    if (isTestbedError(error)) {
      return reply.code(STATUS_BY_CODE[error.code] ?? 500).send({ error: error.toJSON() });
    }
    const validation = (error as { validation?: unknown }).validation;
    if (validation) {
      return reply.code(400).send({ error: { code: 'INPUT_INVALID', message: error.message } });
    }
    const status = (error as { statusCode?: number }).statusCode ?? 500;
    return reply.code(status).send({
      error: { code: status === 500 ? 'INTERNAL' : 'BAD_REQUEST', message: error.message },
    });
  });

  app.get('/v1/host', async () => ({
    name: host.name,
    link: host.linkAddress(),
    linkBytesPerSec: host.linkBytesPerSec,
    memoryUsedBytes: host.memoryUsedBytes(),
    memoryLimitBytes: host.memoryLimit(),
    network: host.networkCounters(),
    xenvmc: host.xenvmcView(),
    domains: host.listDomains(),
  }));

  app.get('/v1/domains', async () => host.listDomains());

  /** The link sampler's series (bytes per interval and traffic class leaving this host). */
  app.get<{ Querystring: { since?: string } }>('/v1/link-samples', async (request) => {
    const since = Number(request.query.since ?? 0);
    return host.sampler.series().filter((sample) => sample.tMs >= since);
  });

  app.post('/v1/domains', { schema: { body: createDomainSchema } }, async (request, reply) => {
    const body = request.body as {
      name: string;
      memory: string | number;
      ip?: string | null;
      tenant?: string;
      programs?: { kind: string; params?: object; dataPages?: number }[];
      regionPages?: Record<string, number>;
      socketBufferBytes?: number;
    };
    const memoryBytes =
      typeof body.memory === 'number' ? body.memory : parseBytes(body.memory, 'memory');
    const summary = await host.createDomain({
      name: body.name,
      memoryBytes,
      ip: body.ip ?? null,
      tenant: body.tenant,
      programs: (body.programs ?? []).map((p) => ({
        kind: p.kind,
        params: p.params ?? {},
        dataPages: p.dataPages,
      })),
      regionPages: body.regionPages,
      socketBufferBytes: body.socketBufferBytes,
    });
    return reply.code(201).send(summary);
  });

  app.get<{ Params: { name: string } }>('/v1/domains/:name', async (request) => {
    const summary = host.summary(request.params.name);
    const stats =
      summary.status === 'running' || summary.status === 'paused'
        ? await host.domainStats(request.params.name)
        : null;
    return { ...summary, stats };
  });

  app.post<{ Params: { name: string } }>('/v1/domains/:name/pause', async (request) =>
    host.pauseDomain(request.params.name),
  );
  app.post<{ Params: { name: string } }>('/v1/domains/:name/resume', async (request) =>
    host.resumeDomain(request.params.name),
  );
  app.delete<{ Params: { name: string } }>('/v1/domains/:name', async (request, reply) => {
    await host.destroyDomain(request.params.name);
    return reply.code(204).send();
  });

  app.post<{ Params: { name: string } }>(
    '/v1/domains/:name/migrate',
    { schema: { body: migrateSchema } },
    async (request, reply) => {
      const body = request.body as {
        to: string;
        policy?: string;
        policyOptions?: Record<string, number>;
      };
      const record = host.startMigration(request.params.name, body.to, body);
      return reply.code(202).send(record);
    },
  );

  app.post(
    '/v1/link-test',
    {
      schema: {
        body: {
          type: 'object',
          required: ['to', 'bytes'],
          additionalProperties: false,
          properties: {
            to: { type: 'string', minLength: 3, maxLength: 300 },
            bytes: { type: 'integer', minimum: 1 },
          },
        },
      },
    },
    async (request) => {
      const body = request.body as { to: string; bytes: number };
      return host.linkTest(body.to, body.bytes);
    },
  );

  app.post(
    '/v1/peers',
    {
      schema: {
        body: {
          type: 'object',
          required: ['links'],
          additionalProperties: false,
          properties: {
            links: {
              type: 'array',
              maxItems: 256,
              items: { type: 'string', minLength: 3, maxLength: 300 },
            },
          },
        },
      },
    },
    async (request) => ({ peers: host.addPeers((request.body as { links: string[] }).links) }),
  );

  app.get('/v1/forwards', async () => host.listForwards());
  app.post(
    '/v1/forwards',
    {
      schema: {
        body: {
          type: 'object',
          required: ['domain', 'port'],
          additionalProperties: false,
          properties: {
            listen: { type: 'string', minLength: 3, maxLength: 300 },
            domain: { type: 'string', minLength: 1, maxLength: 64 },
            port: { type: 'integer', minimum: 1, maximum: 65535 },
          },
        },
      },
    },
    async (request, reply) => {
      const body = request.body as { listen?: string; domain: string; port: number };
      const view = await host.addForward({
        listen: body.listen ?? '127.0.0.1:0',
        domain: body.domain,
        port: body.port,
      });
      return reply.code(201).send(view);
    },
  );

  app.get<{ Params: { id: string } }>('/v1/migrations/:id', async (request) =>
    host.migration(request.params.id),
  );

  app.post('/v1/shutdown', async (_request, reply) => {
    reply.send({ ok: true });
    setImmediate(init.onShutdown);
  });

  return app;
}
