import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { cliCommand, projectRoot } from '../../lib/paths.js'

/** Debian's python3, which sees python3-torch. */
export const PYTHON = '/usr/bin/python3'
export const EXAMPLES = join(projectRoot(), 'examples', 'pytorch')

export interface Ran {
  code: number | null
  stdout: string
  stderr: string
}

/**
 * Runs the project's commands and Debian's python3-torch side by side in `cwd`, with `env` added
 * to this process's environment: what the PyTorch interop tests compare is one against the other.
 */
export function pytorchRunner(cwd: string, env: NodeJS.ProcessEnv) {
  const run = (file: string, args: string[]): Promise<Ran> =>
    new Promise((resolve) => {
      const childEnv = { ...process.env, ...env, PYTHONDONTWRITEBYTECODE: '1', OPENBLAS_NUM_THREADS: '1' }
      execFile(file, args, { cwd, env: childEnv, maxBuffer: 64 << 20, timeout: 300_000 }, (err, stdout, stderr) => {
        const code = err ? (err as { code?: unknown }).code : 0
        resolve({ code: typeof code === 'number' ? code : null, stdout, stderr })
      })
    })
  return {
    /** One of the project's commands (`trainer/cli.ts`, ...), as cliCommand starts it. */
    node: (source: string, args: string[]) => {
      const cli = cliCommand(source)
      return run(process.execPath, [...cli.execArgv, cli.file, ...args])
    },
    python: (args: string[]) => run(PYTHON, args),
  }
}
