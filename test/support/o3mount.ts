// Runs the real o3mount CLI in its own process (a process that serves a FUSE mount must never
// read from it synchronously) and guarantees the mount and the process are gone after the test.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { projectRoot } from '../../lib/paths.js'
import { MOUNT_NODE_FLAGS } from '../../fs-driver/node-flags.js'
import type { Test } from 'tap'
import { serverEnv, type S3ServerInfo } from './s3-server.js'
import type { StatsSnapshot } from '../../fs-driver/stats.js'

const ROOT = projectRoot()
/** The newest modification time of the sources the CLI is built from. */
function newestSource(): number {
  let newest = 0
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs)
    }
  }
  walk(path.join(ROOT, 'fs-driver'))
  walk(path.join(ROOT, 'lib'))
  return newest
}

/**
 * The built CLI when dist/ is up to date (as `npm test` leaves it: the tsx loader alone adds some
 * 20 MiB to the mount's RSS, which the memory test measures), else the sources through tsx, so
 * that a test never runs stale code.
 */
const BUILT = path.join(ROOT, 'dist', 'fs-driver', 'cli.js')
const CLI = existsSync(BUILT) && statSync(BUILT).mtimeMs >= newestSource() ? [BUILT] : ['--import', 'tsx', path.join(ROOT, 'fs-driver', 'cli.ts')]

export function mountEnv(info: S3ServerInfo, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    ...process.env,
    ...serverEnv(info),
    O3_LOG_LEVEL: 'info',
    ...extra,
  }
}

export interface Mounted {
  mountpoint: string
  pid: number
  statsFile: string
  child: ChildProcess
  /** Everything the mount wrote to stderr so far (its JSON log). */
  log(): string
  stats(): StatsSnapshot
  /** Unmounts (lazily) and waits for the process to exit; safe to call twice. */
  stop(): Promise<void>
}

const live = new Map<number, string>()
process.on('exit', () => {
  for (const [pid, mp] of live) {
    try {
      execFileSync('fusermount', ['-u', '-z', mp], { stdio: 'ignore' })
    } catch {
      // not mounted any more
    }
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // already gone
    }
  }
})

export function tempMountpoint(t: Test): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'o3mount-mnt-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

/** Mounts `location` and resolves once the kernel serves it. */
export async function mount(t: Test, info: S3ServerInfo, location: string, opts: MountOpts = {}): Promise<Mounted> {
  const m = startMount(t, info, location, opts)
  await m.ready
  return m
}

type MountOpts = { mountpoint?: string; args?: string[]; env?: NodeJS.ProcessEnv }

/**
 * Starts a mount process and returns at once; `ready` resolves once it logs "mounted" and rejects
 * if it exits first. Stopped at the test's end either way.
 */
export function startMount(t: Test, info: S3ServerInfo, location: string, opts: MountOpts = {}): Mounted & { ready: Promise<void> } {
  const mountpoint = opts.mountpoint ?? tempMountpoint(t)
  const statsFile = path.join(mkdtempSync(path.join(tmpdir(), 'o3mount-stats-')), 'stats.json')
  const child = spawn(process.execPath, [...MOUNT_NODE_FLAGS, ...CLI, mountpoint, location, '--stats-file', statsFile, ...(opts.args ?? [])], {
    cwd: ROOT,
    env: mountEnv(info, opts.env),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()))
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()))
  live.set(child.pid!, mountpoint)
  let stopped: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      await new Promise<void>((resolve) => execFile('fusermount', ['-u', '-z', mountpoint], () => resolve()))
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
      child.kill('SIGTERM')
      await exited(child)
      clearTimeout(timer)
      live.delete(child.pid!)
      rmSync(path.dirname(statsFile), { recursive: true, force: true })
    })()
    return stopped
  }
  t.teardown(stop)
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`o3mount did not mount within 120 s:\n${output}`)), 120_000)
    const onData = () => {
      if (output.includes('"msg":"mounted"')) {
        clearTimeout(timer)
        child.stderr!.off('data', onData)
        resolve()
      }
    }
    child.stderr!.on('data', onData)
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`o3mount exited with ${code} before mounting:\n${output}`))
    })
  })
  // A test that stops the start on purpose need not await it.
  ready.catch(() => {})
  return {
    mountpoint,
    pid: child.pid!,
    statsFile,
    child,
    log: () => output,
    stats: () => JSON.parse(readFileSync(statsFile, 'utf8')) as StatsSnapshot,
    stop,
    ready,
  }
}

/** Runs the CLI to completion (start-up checks, --unmount, --daemon) and returns what it said. */
export function runCli(
  info: S3ServerInfo,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 120_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [...CLI, ...args], { cwd: ROOT, env: mountEnv(info, env), timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: unknown }).code as number | null) : 0
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr })
    })
  })
}

/** Whether anything is mounted at `mountpoint` (read from /proc, so a dead mount does not hang the check). */
export function isMounted(mountpoint: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === mountpoint)
}

/**
 * Polls the mount's stats file (rewritten every 2 s) until `ok` holds, or `ms` have passed (a
 * deadline for a broken mount, not a guess at how long a loaded machine takes); returns the last snapshot.
 */
export async function statsWhen(m: Mounted, ok: (s: StatsSnapshot) => boolean, ms = 120_000): Promise<StatsSnapshot> {
  const end = Date.now() + ms
  for (;;) {
    const s = m.stats()
    if (ok(s) || Date.now() > end) return s
    await sleep(250)
  }
}

/**
 * The mount's log once a line matches `pattern`, or as it is after `ms` (a deadline for a mount
 * that never logs it; the caller's match then fails). Its stderr reaches this process after the
 * kernel has the answer a line is about, so a line is waited for rather than read at once.
 */
export async function logWhen(m: Pick<Mounted, 'log'>, pattern: RegExp, ms = 30_000): Promise<string> {
  const end = Date.now() + ms
  while (!pattern.test(m.log()) && Date.now() <= end) await sleep(20)
  return m.log()
}

/**
 * The first stats snapshot the mount takes after this call: it counts everything done before the
 * call, however late the 2 s timer that writes the file runs on a loaded machine.
 */
export async function freshStats(m: Mounted): Promise<StatsSnapshot> {
  const since = Date.now()
  const s = await statsWhen(m, (x) => Date.parse(x.time) > since)
  if (!(Date.parse(s.time) > since)) throw new Error(`the stats file ${m.statsFile} was not rewritten within 120 s`)
  return s
}

/** The block files of a disk cache directory. */
export function blockFiles(cacheDir: string): string[] {
  const root = path.join(cacheDir, 'blocks')
  return readdirSync(root).flatMap((d) => readdirSync(path.join(root, d)).map((f) => path.join(root, d, f)))
}
