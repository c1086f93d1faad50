// Host programs tsvisor runs for the user: there, or one line naming the package.
import test from 'ava';
import { ensureHostTool } from '../src/util/host-tools.js';

test('a host tool on PATH is used as it is', (t) => {
  const said: string[] = [];
  t.is(ensureHostTool('sh', 'dash', (l) => said.push(l), false), null);
  t.deepEqual(said, []);
});

test('a missing host tool, without root: one line naming the apt-get install to run, nothing installed', (t) => {
  const said: string[] = [];
  const line = ensureHostTool('tsvisor-no-such-tool', 'iputils-ping', (l) => said.push(l), false);
  t.is(line, 'tsvisor-no-such-tool is not installed (install it with: sudo apt-get install iputils-ping)');
  t.deepEqual(said, [], 'no install was tried');
});
