import { fork, type ChildProcess } from 'node:child_process'
import { closeSync, readFileSync } from 'node:fs'
import { constants } from 'node:os'
import { cliCommand } from '../lib/paths.js'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { MountError } from './mount-error.js'
import { MOUNT_NODE_FLAGS } from './node-flags.js'
import { openPrivateFile } from './paths.js'
import type { MountedInfo } from './mount.js'

/**
 * Set in the environment of a mount started by launchMount(): `daemon` (outlives its parent) or
 * `tied` (unmounts when its parent goes away, even by kill -9, because the IPC channel closes).
 */
export const LAUNCHED_AS = 'O3MOUNT_LAUNCHED_AS'

export interface LaunchedMount {
  info: MountedInfo
  child: ChildProcess
  /** Resolves with the mount process's exit status. */
  exited: Promise<number>
}

/**
 * Starts o3mount in a process of its own (a process must never read from a FUSE mount it serves)
 * and resolves once it serves the mountpoint, or rejects with its one-line error and exit status.
 */
export async function launchMount(args: string[], options: { logFile: string; detached: boolean; env?: NodeJS.ProcessEnv }): Promise<LaunchedMount> {
  const cli = cliCommand('fs-driver/cli.ts')
  const logFd = openPrivateFile(options.logFile, 'append')
  const child = fork(cli.file, [...args, '--log-file', options.logFile], {
    execArgv: [...MOUNT_NODE_FLAGS, ...cli.execArgv],
    detached: options.detached,
    stdio: ['ignore', logFd, logFd, 'ipc'],
    env: { ...(options.env ?? process.env), [LAUNCHED_AS]: options.detached ? 'daemon' : 'tied' },
  })
  closeSync(logFd)
  const exited = new Promise<number>((resolve) =>
    child.once('exit', (code, sig) => resolve(code ?? (sig ? 128 + (constants.signals[sig] ?? 0) : ExitCode.internal))),
  )
  const outcome = await new Promise<MountedInfo | MountError>((resolve) => {
    child.once('message', (m: { ready?: MountedInfo; error?: string; exitCode?: number }) =>
      resolve(m.ready ?? new MountError(m.error ?? 'failed to mount', m.exitCode ?? ExitCode.internal)),
    )
    void exited.then((code) => {
      const tail = readFileSync(options.logFile, 'utf8').trim().split('\n').slice(-3).join(' | ')
      resolve(new MountError(`o3mount exited (${code}) before mounting; last log lines: ${tail}`, code || ExitCode.internal))
    })
  })
  if (outcome instanceof MountError) throw outcome
  if (options.detached) {
    child.disconnect()
    child.unref()
  }
  return { info: outcome, child, exited }
}
