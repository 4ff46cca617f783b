/** Checks shared by the guest programs' parameter resolvers; each throws `InputError` naming the parameter. */
import { InputError } from '../core/errors.ts';
import { IPV4 } from '../core/ipv4.ts';

export { IPV4 };

/** Checks an integer parameter; throws `InputError` naming it, its value and its range. */
export function checkInteger(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InputError(`${name} must be an integer in [${min}, ${max}]; got ${String(value)}`);
  }
  return value;
}

/** Refuses parameter names `program` does not know; the error lists the ones it knows. */
export function checkKnownParams(
  program: string,
  params: object,
  known: ReadonlySet<string>,
): void {
  const unknown = Object.keys(params).filter((name) => !known.has(name));
  if (unknown.length > 0) {
    throw new InputError(
      `unknown ${program} parameter ${unknown.join(', ')}; known: ${[...known].join(', ')}`,
    );
  }
}

/** A client's `peerIp` (the server's IPv4 address); a server takes none and gets null. */
export function clientPeerIp(role: 'server' | 'client', peerIp: unknown): string | null {
  if (role === 'server') {
    if (peerIp !== undefined) {
      throw new InputError('peerIp is for a client only; a server accepts any peer');
    }
    return null;
  }
  if (typeof peerIp !== 'string' || !IPV4.test(peerIp)) {
    throw new InputError(`a client needs peerIp, the server's IPv4 address; got ${String(peerIp)}`);
  }
  return peerIp;
}
