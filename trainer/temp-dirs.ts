/**
 * What o3train keeps under the temp directory lives in directories named for the process that
 * owns them, `o3train-<kind>-<pid namespace>.<pid>.<start time>-<suffix>`, so that nothing
 * outlives the run that wrote it, whatever killed it: a run removes its own at its end, and every
 * start removes those of this user whose owner is dead (kill -9, a crash, a lost node).
 */
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fusermountUnmount } from '../fs-driver/mount-table.js'
import type { Logger } from '../lib/log.js'
import { isRunning, processStart } from '../lib/processes.js'

export type TempKind = 'run' | 'node'

const NAME = /^o3train-(run|node)-(\d+)\.(\d+)\.(\d+)-[A-Za-z0-9]+$/

/** The inode of this process's pid namespace: a pid means this process only within it. */
function pidNamespace(): string {
  return /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? '0'
}

/** The prefix of this process's temp directories of `kind`. */
function ownPrefix(kind: TempKind): string {
  return `o3train-${kind}-${pidNamespace()}.${process.pid}.${processStart(process.pid) ?? 0}-`
}

/** A fresh private (0700) directory for this run, with an unpredictable name. */
export function makeRunDir(root = tmpdir()): string {
  return mkdtempSync(join(root, ownPrefix('run')))
}

/**
 * The directory of `kind` named `suffix`, made by this process (mode 0700, failing if it exists):
 * for a name other processes find by its suffix.
 */
export function makeNamedDir(kind: TempKind, suffix: string, root = tmpdir()): string {
  const dir = join(root, `${ownPrefix(kind)}${suffix}`)
  mkdirSync(dir, { mode: 0o700 })
  return dir
}

/** The names in `root` of `kind` whose suffix is `suffix` (any owner, alive or not). */
export function findNamedDirs(kind: TempKind, suffix: string, root = tmpdir()): string[] {
  return readdirSync(root).filter((n) => n.endsWith(`-${suffix}`) && NAME.exec(n)?.[1] === kind)
}

/** The mountpoints at or below `dir`, from this process's mount table. */
function mountsUnder(dir: string): string[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => unescape(l.split(' ')[4] ?? ''))
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
}

/**
 * Removes what dead o3train runs of this user left in `root`: only directories named as above,
 * owned by this user (not symlinks), whose owner process (same pid namespace, pid and start time)
 * is gone. A data mount left inside one (its o3mount was killed too) is lazily unmounted first;
 * one that cannot be is left alone, with a warning.
 */
export async function sweepDeadRuns(log: Logger, root = tmpdir()): Promise<void> {
  const ns = pidNamespace()
  const uid = process.getuid!()
  let names: string[]
  try {
    names = readdirSync(root)
  } catch {
    return
  }
  for (const name of names) {
    const m = NAME.exec(name)
    if (!m || m[2] !== ns || isRunning(Number(m[3]), Number(m[4]))) continue
    const dir = join(root, name)
    try {
      // The sticky temp directory lets nobody else rename or replace an entry this user owns.
      const st = lstatSync(dir)
      if (!st.isDirectory() || st.uid !== uid) continue
      for (const mp of mountsUnder(dir).reverse()) await fusermountUnmount(mp).catch(() => undefined)
      if (removeTempDir(dir, log)) log.info({ dir }, 'removed what a dead o3train run left in the temp directory')
    } catch (err) {
      // Another start (a rank beside this one) removed it first.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue
      log.warn({ dir, err: (err as Error).message }, 'could not remove what a dead o3train run left in the temp directory')
    }
  }
}

/**
 * Removes `dir` and everything in it, unless something is still mounted there: a recursive removal
 * must never walk into a mount. Says why it did not, and returns whether it did.
 */
export function removeTempDir(dir: string, log: Logger): boolean {
  const mounts = mountsUnder(dir)
  if (mounts.length > 0) {
    log.warn({ dir, mounts }, 'left in place: something is still mounted there')
    return false
  }
  try {
    rmSync(dir, { recursive: true, force: true })
    return true
  } catch (err) {
    log.warn({ dir, err: (err as Error).message }, 'could not remove an o3train temp directory; the next o3train start will')
    return false
  }
}
