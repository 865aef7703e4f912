import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

let root: string | undefined

/**
 * The directory holding o3mount's package.json. Modules run both from their sources (tsx, tap)
 * and compiled under dist/, so a fixed number of `..` would be wrong in one of the two.
 */
export function projectRoot(): string {
  if (root) return root
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const pkg = join(dir, 'package.json')
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'o3mount') return (root = dir)
    const up = dirname(dir)
    if (up === dir) throw new Error(`cannot find o3mount's package.json above ${fileURLToPath(import.meta.url)}`)
    dir = up
  }
}

/** o3mount's version, as its package.json gives it: what every command's --version prints. */
export function packageVersion(): string {
  return (JSON.parse(readFileSync(join(projectRoot(), 'package.json'), 'utf8')) as { version: string }).version
}

/**
 * How to start one of the project's commands (`fs-driver/cli.ts`, ...) as a child process: the
 * compiled file under dist/ when this code runs compiled, else its source through tsx, so that
 * tests exercise the sources they were started from.
 */
export function cliCommand(source: string): { file: string; execArgv: string[] } {
  const compiled = !fileURLToPath(import.meta.url).endsWith('.ts')
  return compiled
    ? { file: join(projectRoot(), 'dist', source.replace(/\.ts$/, '.js')), execArgv: [] }
    : // Resolved here: a bare `tsx` would be looked up from the child's working directory.
      { file: join(projectRoot(), source), execArgv: ['--import', import.meta.resolve('tsx')] }
}
