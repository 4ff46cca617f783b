/**
 * A small client for a host's control API (HTTP/JSON, bearer token), used by the CLI, the
 * demos and the experiment runner. Errors from the host come back as `TestbedError`s with
 * the host's code and message.
 */
import { TestbedError } from '../core/errors.ts';

export class ControlClient {
  readonly url: string;
  private readonly token: string;

  constructor(init: { url: string; token: string }) {
    this.url = init.url.replace(/\/$/, '');
    this.token = init.token;
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  delete(path: string): Promise<void> {
    return this.request<void>('DELETE', path);
  }

  private async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    let response: Response;
    try {
      response = await fetch(`${this.url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new TestbedError(
        'HOST_UNREACHABLE',
        `cannot reach the host's control API at ${this.url} (${(error as Error).message}); is \`xenvmc host\` running?`,
        { cause: error },
      );
    }
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      throw new TestbedError(
        'HOST_BAD_REPLY',
        `host answered ${response.status} with non-JSON: ${text.slice(0, 200)}`,
      );
    }
    if (!response.ok) {
      const error = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
      throw new TestbedError(error?.code ?? `HTTP_${response.status}`, error?.message ?? text);
    }
    return parsed as T;
  }
}
