#!/usr/bin/env node
// The xenvmc command. xenvmc runs from its TypeScript sources through tsx (a dependency), so a
// fresh clone needs no build step: `npm ci` and go.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/main.ts');
