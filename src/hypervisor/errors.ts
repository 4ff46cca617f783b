import { TestbedError } from '../core/errors.ts';

export type HypervisorErrorCode =
  | 'DOMAIN_UNKNOWN'
  | 'DOMAIN_EXISTS'
  | 'DOMAIN_STATE'
  | 'DOMAIN_CRASHED'
  | 'DOMAIN_BOOT_FAILED'
  | 'DOMAIN_TIMEOUT'
  | 'HOST_NO_MEMORY';

export class HypervisorError extends TestbedError<HypervisorErrorCode> {
  constructor(code: HypervisorErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'HypervisorError';
  }
}
