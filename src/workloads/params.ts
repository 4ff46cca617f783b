/** Checks shared by the guest programs' parameter resolvers; each throws `InputError` naming the parameter. */
import { InputError } from '../core/errors.ts';

export { IPV4 } from '../core/ipv4.ts';

/** Checks an integer parameter; throws `InputError` naming it, its value and its range. */
export function checkInteger(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InputError(`${name} must be an integer in [${min}, ${max}]; got ${String(value)}`);
  }
  return value;
}
