/**
 * A command started in its own process group (torchrun and the ranks it starts), with its output
 * collected, and killed as a group when the test ends, stopped ranks included.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import type { Test } from 'tap'

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

export interface GroupRun {
  child: ChildProcess
  done: Promise<Exit>
  /** stdout and stderr so far, in arrival order. */
  output(): string
  /** Resolves once `test` holds for the output; rejects if the command exits first or after `timeoutMs`. */
  waitFor(test: (output: string) => boolean, what: string, timeoutMs?: number): Promise<void>
}

export function startGroup(t: Test, command: string, args: string[], env: NodeJS.ProcessEnv): GroupRun {
  const child = spawn(command, args, { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  let all = ''
  const waiters = new Set<() => void>()
  const feed = (d: Buffer, to: 'out' | 'err') => {
    if (to === 'out') stdout += d
    else stderr += d
    all += d
    for (const w of waiters) w()
  }
  child.stdout!.on('data', (d: Buffer) => feed(d, 'out'))
  child.stderr!.on('data', (d: Buffer) => feed(d, 'err'))
  const done = new Promise<Exit>((resolve) => child.once('exit', (code, signal) => setImmediate(() => resolve({ code, signal, stdout, stderr }))))
  t.teardown(() => killGroup(child.pid!))
  return {
    child,
    done,
    output: () => all,
    waitFor: (test, what, timeoutMs = 120_000) =>
      new Promise((resolve, reject) => {
        const finish = (err?: Error) => {
          clearTimeout(timer)
          waiters.delete(check)
          if (err) reject(err)
          else resolve()
        }
        const check = () => test(all) && finish()
        const timer = setTimeout(() => finish(new Error(`never saw ${what}:\n${all}`)), timeoutMs)
        waiters.add(check)
        void done.then(() => (test(all) ? finish() : finish(new Error(`exited before ${what}:\n${all}`))))
        check()
      }),
  }
}

/** SIGKILL to every process of the group; SIGCONT first so that stopped ones die too. */
export function killGroup(pgid: number): void {
  for (const sig of ['SIGKILL', 'SIGCONT'] as const) {
    try {
      process.kill(-pgid, sig)
    } catch {
      // The group is gone.
    }
  }
}

/** The processes whose parent is `pid`, with the RANK and TORCHELASTIC_RESTART_COUNT torchrun gave each. */
export function childRanks(pid: number): { pid: number; rank: number; restart: number }[] {
  const out: { pid: number; rank: number; restart: number }[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid !== pid) continue
      const environ = readFileSync(`/proc/${name}/environ`, 'utf8')
      const rank = /(?:^|\0)RANK=(\d+)/.exec(environ)?.[1]
      const restart = /(?:^|\0)TORCHELASTIC_RESTART_COUNT=(\d+)/.exec(environ)?.[1]
      if (rank !== undefined) out.push({ pid: Number(name), rank: Number(rank), restart: Number(restart ?? 0) })
    } catch {
      // It exited while we looked.
    }
  }
  return out.sort((a, b) => a.rank - b.rank)
}

/** The JSON log lines in `output` (torchrun's --tee puts a `[defaultN]:` prefix before a rank's stdout lines). */
export function logLines(output: string): { pid?: number; msg?: string; [k: string]: unknown }[] {
  const lines = []
  for (const l of output.split('\n')) {
    const i = l.indexOf('{"level"')
    if (i < 0) continue
    try {
      lines.push(JSON.parse(l.slice(i)) as { pid?: number; msg?: string })
    } catch {
      // A line still being written.
    }
  }
  return lines
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ')
  } catch {
    return false
  }
}
