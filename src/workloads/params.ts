/** Checks shared by the guest programs' parameter resolvers; each throws `InputError` naming the parameter. */
import { InputError } from '../core/errors.ts';

/** A dotted-quad IPv4 address. */
export const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** Checks an integer parameter; throws `InputError` naming it, its value and its range. */
export function checkInteger(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InputError(`${name} must be an integer in [${min}, ${max}]; got ${String(value)}`);
  }
  return value;
}
