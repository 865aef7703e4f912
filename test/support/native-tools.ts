// The mount core's C++ test tools (cpp/mount/tests/), built under ASan + UBSan by
// scripts/test-native into build-native/mount-tests/, and a way to run one and read its JSON.
import { spawn } from 'node:child_process'
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
