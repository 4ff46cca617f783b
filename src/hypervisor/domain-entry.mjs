// Worker entry: lets a domain thread load the TypeScript sources through tsx (the project
// runs from source; see the README). Kept as plain JavaScript because a worker cannot start
// from a .ts file by itself.
import { register } from 'tsx/esm/api';

register();
await import('./domain-thread.ts');
