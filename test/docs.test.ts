/** The documentation quotes code as it is: each TypeScript snippet of a page is in the files it names. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { dist } from './helpers.js';

const root = join(dist, '..');
const read = (path: string): string => readFileSync(join(root, path), 'utf8');
const snippets = (markdown: string): string[] => [...markdown.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);

describe('documentation snippets', () => {
  it('docs/tutorial.md quotes samples/edu/index.ts and test/tutorial.test.ts', () => {
    const sources = read('samples/edu/index.ts') + read('test/tutorial.test.ts');
    const quoted = snippets(read('docs/tutorial.md'));
    assert.ok(quoted.length >= 5, 'the tutorial has its snippets');
    for (const snippet of quoted) assert.ok(sources.includes(snippet), `not in the files:\n${snippet}`);
  });
});
