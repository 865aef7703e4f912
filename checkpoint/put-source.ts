import type { Stats } from 'node:fs'
import { lstat, readdir, realpath, stat } from 'node:fs/promises'
import path from 'node:path'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'
import { checkDirectoryLayout } from '../lib/content/unixfs-directory.js'
import { O3UsageError } from '../lib/o3/errors.js'
import { readExactly } from '../lib/read-exactly.js'
import { nameProblem } from './records.js'
import type { PutRequest } from './writer.js'

/** A local file or directory, checked and listed for `o3ckpt put`. */
export interface PutSource {
  kind: PutRequest['kind']
  /** Its own name: the checkpoint's `path`. */
  name: string
  files: PutRequest['files']
}

function what(st: Stats): string {
  if (st.isFIFO()) return 'a fifo'
  if (st.isSocket()) return 'a socket'
  if (st.isBlockDevice() || st.isCharacterDevice()) return 'a device'
  return 'neither a regular file nor a directory'
}

const usage = (message: string) => new O3UsageError(message)

/** `file`'s bytes for the put, which fails (one line) if it is no longer the size it was listed with. */
const contentOf = (file: string, size: number, shown: string) => () =>
  readExactly(file, size, (counts) => usage(`${shown} changed while it was read (${counts}); put it again once it is written`))

/** `where` names the directory holding `name` (or PATH itself); the name is quoted, as it may hold anything. */
function checkName(name: string, where: string): void {
  const problem = nameProblem(name)
  if (problem) throw usage(`${where}: ${JSON.stringify(name)} cannot be a key in O3: ${problem}; rename it`)
}

/**
 * Checks and lists PATH for a put, before anything is uploaded. A file is one checkpoint file; a
 * directory gives every regular file below it (hidden ones too: a PyTorch DCP directory has
 * `.metadata`), by `/`-separated path. Refused with one line: a missing PATH (exit 66); an empty
 * directory or subdirectory, which O3 cannot hold; a symlink that leaves the directory or points at
 * a directory; a fifo, socket or device; a name that cannot be a key (usage, exit 64). A symlink to
 * a file inside the directory is stored as that file's bytes, as `cp -rL` would copy it.
 */
export async function scanPutPath(input: string): Promise<PutSource> {
  const top = await stat(input).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') throw new CliError(`${input} does not exist; give the file or directory to put`, ExitCode.notFound)
    throw usage(`${input} cannot be read (${err.code ?? err.message}); give a file or directory you can read`)
  })
  const name = path.basename(path.resolve(input))
  checkName(name, input)
  if (top.isFile()) return { kind: 'file', name, files: [{ path: name, size: top.size, content: contentOf(input, top.size, input) }] }
  if (!top.isDirectory()) throw usage(`${input} is ${what(top)}; give a regular file or a directory`)

  const root = await realpath(input)
  const files: PutSource['files'] = []
  const walk = async (dir: string, rel: string): Promise<void> => {
    const entries = await readdir(dir)
    if (entries.length === 0)
      throw usage(`${rel === '' ? input : path.join(input, rel)} is an empty directory; O3 keeps no empty directories, so remove it or put a file in it`)
    for (const entry of entries.sort()) {
      checkName(entry, path.join(input, rel))
      const relPath = rel === '' ? entry : `${rel}/${entry}`
      const shown = path.join(input, relPath)
      const full = path.join(dir, entry)
      let st = await lstat(full)
      let source = full
      if (st.isSymbolicLink()) {
        const target = await realpath(full).catch(() => undefined)
        if (target === undefined) throw new CliError(`${shown} is a symlink to nothing; remove it or make it point at a file`, ExitCode.notFound)
        if (target !== root && !target.startsWith(`${root}${path.sep}`))
          throw usage(`${shown} is a symlink to ${target}, outside ${input}; copy the file in instead`)
        st = await stat(target)
        if (st.isDirectory()) throw usage(`${shown} is a symlink to a directory; only symlinks to files are followed`)
        source = target
      }
      if (st.isDirectory()) await walk(full, relPath)
      else if (st.isFile()) {
        const size = st.size
        files.push({ path: relPath, size, content: contentOf(source, size, shown) })
      } else throw usage(`${shown} is ${what(st)}; a checkpoint directory may hold only regular files and directories`)
    }
  }
  await walk(root, '')
  checkDirectoryLayout(files, (message) => usage(`${input}: ${message}`))
  return { kind: 'directory', name, files }
}
