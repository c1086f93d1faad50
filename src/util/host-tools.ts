// Host programs tsvisor runs for the user (ping for the sandbox's host → guest
// check): found on PATH, installed from Debian's archive when tsvisor runs as
// root with apt-get (saying so), or else named with the one line to run.
import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

function onPath(command: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    try {
      accessSync(join(dir, command), constants.X_OK);
      return true;
    } catch {
      /* not in this directory */
    }
  }
  return false;
}

/**
 * Makes sure `command` (from Debian package `pkg`) is there. Returns null
 * when it is (perhaps just installed), else one line saying how to get it.
 * `mayInstall`: real root (not root in a user namespace of tsvisor's own).
 */
export function ensureHostTool(command: string, pkg: string, say: (line: string) => void, mayInstall = process.getuid?.() === 0): string | null {
  if (onPath(command)) return null;
  if (mayInstall && onPath('apt-get')) {
    say(`installing ${pkg} for ${command} (apt-get)`);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    let r = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', pkg], { stdio: 'ignore', env });
    if (r.status !== 0) {
      // A fresh machine may have no package lists yet.
      spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env });
      r = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', pkg], { stdio: 'ignore', env });
    }
    if (r.status === 0 && onPath(command)) return null;
  }
  return `${command} is not installed (install it with: sudo apt-get install ${pkg})`;
}
