import { readFileSync } from 'node:fs'

/**
 * A small file the user named (credentials, a signing key, a config), or the error `fail` makes of
 * one line saying which file could not be read and why.
 */
export function readUserFile(path: string, what: string, fail: (message: string) => Error): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    throw fail(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? err}; check the path and its permissions`)
  }
}
