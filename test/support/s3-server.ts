// Tests run against a real S3 server (Swift + s3api, scripts/s3-server), never a mock.
//
// Where the server comes from, first match wins:
//  1. O3_TEST_SERVER, a JSON S3ServerInfo: a server someone started by hand.
//  2. The one that test/support/global-setup.ts started for the current tap run. tap 21 runs
//     its `before` script as a separate process whose environment does not reach the test
//     files, so it leaves the info in .tap/s3-server/<runner pid>.json; a test finds it by
//     walking up its own process ancestry, which also ignores files from other runs (other
//     engineers run tap in this same tree) and from runs that were killed.
//  3. A server of its own, stopped at teardown, on exit, on SIGINT/SIGTERM, and by the
//     script's watchdog if this process dies without running any of those.
import { execFile, execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { CreateBucketCommand, PutBucketVersioningCommand, S3Client } from '@aws-sdk/client-s3'
import type { Test } from 'tap'
import { projectRoot } from '../../lib/paths.js'
import { O3Client, resolveConfig, type O3ClientOptions } from '../../lib/o3/index.js'

export interface S3ServerInfo {
  endpoint: string
  region: string
  accessKeyId: string
  secretAccessKey: string
  dir: string
}

export interface StartOptions {
  /** The script's watchdog stops the server once this process is gone. Default: this process. */
  watchPid?: number
  /** Stop it when this process exits or gets SIGINT/SIGTERM. Default true. */
  stopOnExit?: boolean
}

const ROOT = projectRoot()
const SCRIPT = path.join(ROOT, 'scripts', 's3-server')
export const RUN_STATE_DIR = path.join(ROOT, '.tap', 's3-server')

const execFileP = promisify(execFile)

const owned = new Set<string>()
let handlersInstalled = false

function stopOwnedSync(): void {
  for (const dir of owned) {
    try {
      execFileSync(SCRIPT, ['stop', dir], { stdio: 'ignore', timeout: STOP_DEADLINE_MS })
    } catch {
      // the watchdog is the backstop; an exit handler must not throw
    }
    owned.delete(dir)
  }
}

function installExitHandlers(): void {
  if (handlersInstalled) return
  handlersInstalled = true
  process.on('exit', stopOwnedSync)
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const onSignal = (): void => {
      stopOwnedSync()
      process.removeListener(sig, onSignal)
      // Re-raise so the process still dies of the signal: a listener of our own would
      // otherwise turn Ctrl-C into a no-op (and signal-exit, which tap uses, only re-raises
      // when it is the last listener).
      process.kill(process.pid, sig)
    }
    process.on(sig, onSignal)
  }
}

export function parseServerOutput(stdout: string): S3ServerInfo {
  const kv = new Map<string, string>()
  for (const line of stdout.split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim())
    if (m) kv.set(m[1], m[2])
  }
  const get = (k: string): string => {
    const v = kv.get(k)
    if (!v) throw new Error(`scripts/s3-server start printed no ${k}; output was:\n${stdout}`)
    return v
  }
  return {
    endpoint: get('O3_ENDPOINT'),
    region: get('O3_REGION'),
    accessKeyId: get('O3_ACCESS_KEY_ID'),
    secretAccessKey: get('O3_SECRET_ACCESS_KEY'),
    dir: get('S3_SERVER_DIR'),
  }
}

export async function startS3Server(opts: StartOptions = {}): Promise<S3ServerInfo & { stop(): Promise<void> }> {
  const watchPid = opts.watchPid ?? process.pid
  let stdout: string
  try {
    ;({ stdout } = await execFileP(SCRIPT, ['start', '--watch-pid', String(watchPid)], {
      timeout: 120_000,
    }))
  } catch (err) {
    const e = err as Error & { stderr?: string }
    throw new Error(`could not start the test S3 server (scripts/s3-server start): ${e.stderr?.trim() || e.message}`)
  }
  const info = parseServerOutput(stdout)
  if (opts.stopOnExit ?? true) {
    installExitHandlers()
    owned.add(info.dir)
  }
  let stopped: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopped ??= stopS3Server(info.dir)
    return stopped
  }
  return { ...info, stop }
}

/**
 * How long a stop may take: it ends in removing the server's data, as many files as the tests
 * stored (mount-listing's 10,000 objects took over a minute on a loaded machine), so a deadline
 * for a hung script only.
 */
const STOP_DEADLINE_MS = 600_000

/** Stops a server by its directory; a no-op if it is already stopped. */
export async function stopS3Server(dir: string): Promise<void> {
  await execFileP(SCRIPT, ['stop', dir], { timeout: STOP_DEADLINE_MS })
  owned.delete(dir)
}

function isServerInfo(v: unknown): v is S3ServerInfo {
  if (typeof v !== 'object' || v === null) return false
  const o = v as Record<string, unknown>
  return ['endpoint', 'region', 'accessKeyId', 'secretAccessKey', 'dir'].every((k) => typeof o[k] === 'string')
}

function parentOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // the command name (field 2) may contain spaces and parentheses: parse after the last ')'
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    return ppid > 0 ? ppid : undefined
  } catch {
    return undefined
  }
}

/** Path of the info file that global-setup writes for the tap runner with this PID. */
export function runStateFile(runnerPid: number): string {
  return path.join(RUN_STATE_DIR, `${runnerPid}.json`)
}

function runServer(): S3ServerInfo | undefined {
  for (let pid = parentOf(process.pid); pid !== undefined && pid > 1; pid = parentOf(pid)) {
    const file = runStateFile(pid)
    if (!existsSync(file)) continue
    try {
      const info: unknown = JSON.parse(readFileSync(file, 'utf8'))
      if (isServerInfo(info) && existsSync(info.dir)) return info
    } catch {
      // half-written or foreign: fall back to a server of our own
    }
    return undefined
  }
  return undefined
}

export async function useS3Server(t: Test): Promise<S3ServerInfo> {
  const fromEnv = process.env.O3_TEST_SERVER
  if (fromEnv) {
    const info: unknown = JSON.parse(fromEnv)
    if (!isServerInfo(info)) {
      throw new Error('O3_TEST_SERVER must be a JSON object with endpoint, region, accessKeyId, secretAccessKey, dir')
    }
    return info
  }
  const shared = runServer()
  if (shared) return shared
  const own = await startS3Server()
  t.teardown(() => own.stop())
  const { stop: _stop, ...info } = own
  return info
}

/** The four settings that reach this server; what a client or a child process needs of its info. */
export type ServerCredentials = Pick<S3ServerInfo, 'endpoint' | 'region' | 'accessKeyId' | 'secretAccessKey'>

/** The O3_* variables that point a child process (a mount, a trainer, a CLI) at this server. */
export function serverEnv(info: ServerCredentials): Record<string, string> {
  return { O3_ENDPOINT: info.endpoint, O3_REGION: info.region, O3_ACCESS_KEY_ID: info.accessKeyId, O3_SECRET_ACCESS_KEY: info.secretAccessKey }
}

/** Our O3 client on this server, credentials passed in-process; `endpoint` overrides the server's (a fault proxy in front of it). */
export function serverClient(info: ServerCredentials, location: string, options: O3ClientOptions = {}): O3Client {
  const { endpoint = info.endpoint, ...rest } = options
  return O3Client.open(location, { ...rest, config: resolveConfig({ endpoint, region: info.region }, serverEnv(info)) })
}

export function s3Client(info: S3ServerInfo): S3Client {
  return new S3Client({
    endpoint: info.endpoint,
    region: info.region,
    credentials: { accessKeyId: info.accessKeyId, secretAccessKey: info.secretAccessKey },
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  })
}

/** Buckets outlive a test file when the server is shared by the run: use unique names. */
export async function createBucket(info: S3ServerInfo, name: string): Promise<void> {
  const client = s3Client(info)
  try {
    await client.send(new CreateBucketCommand({ Bucket: name }))
  } finally {
    client.destroy()
  }
}

/** Puts the bucket under versioning (S3 PutBucketVersioning): every write then keeps the versions before it. */
export async function enableVersioning(info: S3ServerInfo, name: string): Promise<void> {
  const client = s3Client(info)
  try {
    await client.send(new PutBucketVersioningCommand({ Bucket: name, VersioningConfiguration: { Status: 'Enabled' } }))
  } finally {
    client.destroy()
  }
}

/** A new bucket under versioning, as O3's buckets are. */
export async function createVersionedBucket(info: S3ServerInfo, name: string): Promise<void> {
  await createBucket(info, name)
  await enableVersioning(info, name)
}
