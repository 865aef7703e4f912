// The mount core's C++ test tools (cpp/mount/tests/), built under ASan + UBSan by
// scripts/test-native into build-native/mount-tests/, and a way to run one and read its JSON.
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { projectRoot } from '../../lib/paths.js'

const ROOT = projectRoot()
const BUILD_DIR = process.env.O3_NATIVE_BUILD_DIR ?? path.join(ROOT, 'build-native')

export interface Run {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs a command to its end, collecting its output; `env` replaces the environment when given whole. */
export function run(command: string, args: string[], options: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: ROOT, env: options.env ?? process.env, timeout: options.timeoutMs ?? 300_000 })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
    child.stdin.end(options.input ?? '')
  })
}

let built: Promise<void> | undefined

/** Builds the tools once per process (incremental: seconds when nothing changed). */
export function buildNativeTools(): Promise<void> {
  built ??= run(path.join(ROOT, 'scripts/test-native'), ['--build-only'], { timeoutMs: 900_000 }).then((r) => {
    if (r.code !== 0) throw new Error(`scripts/test-native --build-only failed (${r.code ?? r.signal}):\n${r.stdout}${r.stderr}`)
  })
  return built
}

export function toolPath(name: string): string {
  return path.join(BUILD_DIR, 'mount-tests', name)
}

/**
 * The environment a tool runs in: no inherited CA or proxy settings (the machine sets some for its
 * own use), sanitizers that stop at the first report, plus `extra`.
 */
export function toolEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const k of ['PATH', 'HOME', 'LANG', 'TMPDIR']) if (process.env[k] !== undefined) env[k] = process.env[k]
  env.ASAN_OPTIONS = 'detect_leaks=1:halt_on_error=1'
  env.UBSAN_OPTIONS = 'print_stacktrace=1:halt_on_error=1'
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) env[k] = v
  return env
}

export interface FetchToolOptions {
  endpoint: string
  region: string
  accessKeyId: string
  secretAccessKey: string
  sessionToken?: string
  bucket: string
  key: string
  /** [offset, length] of each range, fetched concurrently (or one after another with `sequential`). */
  ranges: [number, number][]
  etag?: string
  versionId?: string
  size?: number
  caBundle?: string
  maxConnections?: number
  connectTimeoutMs?: number
  requestTimeoutMs?: number
  attempts?: number
  baseDelayMs?: number
  /** The sink offers at most this many bytes per space(). */
  sinkChunk?: number
  warm?: number
  closeAfterMs?: number
  sequential?: boolean
}

export interface RangeResult {
  offset: number
  length: number
  written: number
  status: string
  message: string
  pin: { etag: string; versionId: string }
  timing: { queuedUs: number; firstByteUs: number; connectUs: number; transferUs: number; totalUs: number; bytes: number; attempts: number }
}

export interface FetchToolResult {
  results: RangeResult[]
  stats: {
    requests: number
    retries: number
    errors: number
    bytesReceived: number
    connectionsOpened: number
    connectionsBeforeFetches: number
    queued: number
    inFlight: number
    firstByteUsAverage: number
    bytesPerSecondPerConnection: number
  }
  maxRssKb: number
  /** CPU microseconds of the whole tool and of its main thread: the difference is the engine's thread. */
  cpuUs: { process: number; mainThread: number }
  violations: string[]
  /** The output file: each range's bytes at its offset, zeros elsewhere. */
  image: Buffer
  /** The tool's exit status and stderr (sanitizer reports land there). */
  code: number | null
  stderr: string
}

/** Runs fetch_tool (build it first with buildNativeTools) and returns what it printed and wrote. */
export async function fetchTool(o: FetchToolOptions): Promise<FetchToolResult> {
  const dir = mkdtempSync(path.join(tmpdir(), 'o3-fetch-tool-'))
  try {
    const out = path.join(dir, 'image')
    const args = ['--endpoint', o.endpoint, '--region', o.region, '--bucket', o.bucket, '--key', o.key, '--out', out]
    for (const [offset, length] of o.ranges) args.push('--range', `${offset}:${length}`)
    const opt = (flag: string, v: string | number | boolean | undefined): void => {
      if (v !== undefined) args.push(`--${flag}`, typeof v === 'boolean' ? (v ? '1' : '0') : String(v))
    }
    opt('etag', o.etag)
    opt('version-id', o.versionId)
    opt('size', o.size)
    opt('ca-bundle', o.caBundle)
    opt('max-connections', o.maxConnections)
    opt('connect-timeout-ms', o.connectTimeoutMs)
    opt('request-timeout-ms', o.requestTimeoutMs)
    opt('attempts', o.attempts)
    opt('base-delay-ms', o.baseDelayMs)
    opt('sink-chunk', o.sinkChunk)
    opt('warm', o.warm)
    opt('close-after-ms', o.closeAfterMs)
    opt('sequential', o.sequential)
    const env = toolEnv({ O3_ACCESS_KEY_ID: o.accessKeyId, O3_SECRET_ACCESS_KEY: o.secretAccessKey, O3_SESSION_TOKEN: o.sessionToken })
    const r = await run(toolPath('fetch_tool'), args, { env })
    const line = r.stdout.trim().split('\n').at(-1) ?? ''
    if (!line.startsWith('{')) throw new Error(`fetch_tool printed no result (exit ${r.code ?? r.signal}):\n${r.stdout}${r.stderr}`)
    const parsed = JSON.parse(line) as Omit<FetchToolResult, 'image' | 'code' | 'stderr'>
    return { ...parsed, image: existsSync(out) ? readFileSync(out) : Buffer.alloc(0), code: r.code, stderr: r.stderr }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
