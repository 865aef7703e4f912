import { execFileSync, fork, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cliCommand } from '../lib/paths.js'
import type { TrainOptions } from './options.js'

export interface RunMount {
  dir: string
  pid: number
  /** Unmounts and removes the mountpoint; safe to call twice and after the mount died. */
  close(): Promise<void>
}

/** A mount that lives no longer than the run: o3mount in its own process (a process must not read its own FUSE mount). */
export async function mountForRun(location: string, o: Pick<TrainOptions, 'endpoint' | 'region' | 'credentialsFile' | 'profile'>, logFile: string): Promise<RunMount> {
  const dir = mkdtempSync(join(tmpdir(), 'o3train-data-'))
  const args = [dir, location.replace(/^o3:\/\//, ''), '--metadata-ttl', 'indefinite', '--log-file', logFile]
  for (const [flag, v] of [['--endpoint', o.endpoint], ['--region', o.region], ['--credentials-file', o.credentialsFile], ['--profile', o.profile]] as const) {
    if (v) args.push(flag, v)
  }
  const cli = cliCommand('fs-driver/cli.ts')
  const child: ChildProcess = fork(cli.file, args, {
    execArgv: cli.execArgv,
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    env: { ...process.env, O3MOUNT_DAEMON_CHILD: '1' },
  })
  const exited = new Promise<number>((resolve) => child.once('exit', (code, sig) => resolve(code ?? (sig ? 128 : 1))))
  const ready = await new Promise<{ error?: string; exitCode?: number } | undefined>((resolve) => {
    child.once('message', (m: { ready?: unknown; error?: string; exitCode?: number }) => resolve(m.ready ? undefined : m))
    void exited.then((code) => resolve({ error: `o3mount exited (${code}) before mounting; see ${logFile}`, exitCode: code }))
  })
  if (ready) {
    rmdirSync(dir)
    throw Object.assign(new Error(`cannot mount ${location}: ${ready.error}`), { exitCode: ready.exitCode })
  }
  child.disconnect()
  let closed = false
  return {
    dir,
    pid: child.pid!,
    async close() {
      if (closed) return
      closed = true
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
        await exited
        clearTimeout(timer)
      }
      // A mount that was killed leaves the mountpoint disconnected (ENOTCONN) until it is lazily unmounted.
      try {
        execFileSync('fusermount', ['-u', '-z', dir], { stdio: 'ignore' })
      } catch {
        // Not mounted any more: the normal case after a clean stop.
      }
      rmdirSync(dir)
    },
  }
}
