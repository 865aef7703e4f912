/**
 * Work done once per node for all of its local ranks (the checkpoint download, the o3mount):
 * local rank 0 does it and publishes the result in a private directory on the node's disk, one per
 * restart attempt; the other local ranks wait for it there and check what they read.
 *
 * The directory's name ends in a digest of the attempt's log directory, which torchrun creates
 * with mkdtemp under its own private directory and names to each rank in TORCHELASTIC_ERROR_FILE:
 * the node's ranks know it, other users cannot guess it. Local rank 0 makes the directory (0700,
 * failing if it exists) and its files (0600, never overwriting); the others read it only if it is
 * a directory of this user with mode 0700, and its files without following symlinks. Local rank 0
 * removes it at its end; if it is killed, the next o3train start on the node does (temp-dirs.ts).
 */
import { createHash } from 'node:crypto'
import { closeSync, constants, fstatSync, lstatSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import type { DistributedOptions } from '../addon/index.js'
import type { Logger } from '../lib/log.js'
import { localWorldSize } from './distributed.js'
import { findNamedDirs, makeNamedDir } from './temp-dirs.js'

const POLL_MS = 100

export class NodeShare {
  private constructor(
    /** The digest that ends the directory's name. */
    private readonly secret: string,
    readonly leader: boolean,
    private readonly timeoutSeconds: number,
    private readonly root: string,
    /** The directory, once made (local rank 0) or found and checked (the others). */
    private dir: string | undefined,
  ) {}

  /**
   * The share of this rank's node, or undefined when it is the node's only rank, or when torchrun
   * gave no TORCHELASTIC_ERROR_FILE to derive a private name from (each rank then works alone).
   */
  static open(dist: DistributedOptions | undefined, env: NodeJS.ProcessEnv, timeoutSeconds: number, log: Logger, root = tmpdir()): NodeShare | undefined {
    if (!dist || localWorldSize(env) < 2) return undefined
    const errorFile = env.TORCHELASTIC_ERROR_FILE
    if (!errorFile) {
      log.warn('no TORCHELASTIC_ERROR_FILE (not started by torchrun?): each local rank downloads the checkpoint and mounts the data itself')
      return undefined
    }
    // <log dir>/attempt_<n>/<local rank>/error.json: the attempt's directory is the node's.
    const secret = createHash('sha256')
      .update(`o3train node share\0${dirname(dirname(errorFile))}`)
      .digest('hex')
      .slice(0, 32)
    const leader = dist.localRank === 0
    return new NodeShare(secret, leader, timeoutSeconds, root, leader ? makeNamedDir('node', secret, root) : undefined)
  }

  /** Local rank 0: makes `value` visible to the other local ranks, all at once. */
  publish(name: string, value: unknown): void {
    this.write(`.${name}.tmp`, JSON.stringify(value))
    renameSync(join(this.dir!, `.${name}.tmp`), join(this.dir!, `${name}.json`))
  }

  /** Local rank 0: a file for the other local ranks (0600, never one that exists). */
  write(name: string, data: string | Uint8Array): void {
    writeFileSync(join(this.dir!, name), data, { mode: 0o600, flag: 'wx' })
  }

  /** The other local ranks: what local rank 0 published under `name`, once it has. */
  async take<T>(name: string, what: string): Promise<T> {
    const deadline = Date.now() + this.timeoutSeconds * 1000
    for (;;) {
      const text = this.found() && this.readIfThere(`${name}.json`)
      if (text) return JSON.parse(text.toString('utf8')) as T
      if (Date.now() > deadline) {
        throw new Error(
          `local rank 0 did not publish ${what} within --dist-timeout (${this.timeoutSeconds} s; looked in ${this.root} for o3train-node-*-${this.secret})`,
        )
      }
      await new Promise((r) => setTimeout(r, POLL_MS))
    }
  }

  /** The other local ranks: a file local rank 0 wrote (after it published that it had). */
  read(name: string): Buffer {
    const data = this.found() && this.readIfThere(name)
    if (!data) throw new Error(`${name} is missing from local rank 0's share directory ${this.dir ?? this.root}`)
    return data
  }

  /** Whether local rank 0's directory is there; throws if it is not one this rank may trust. */
  private found(): boolean {
    if (this.dir) return true
    const names = findNamedDirs('node', this.secret, this.root)
    if (names.length === 0) return false
    if (names.length > 1) throw new Error(`more than one share directory for this node in ${this.root}: ${names.join(', ')}`)
    const dir = join(this.root, names[0]!)
    const st = lstatSync(dir)
    if (!st.isDirectory() || st.uid !== process.getuid!() || (st.mode & 0o777) !== 0o700) {
      throw new Error(`${dir} is not a private directory of this user (a symlink, another owner, or not mode 0700); refusing to read it`)
    }
    this.dir = dir
    return true
  }

  /** A file of the directory, opened without following a symlink; undefined while it does not exist. */
  private readIfThere(name: string): Buffer | undefined {
    let fd: number
    try {
      fd = openSync(join(this.dir!, name), constants.O_RDONLY | constants.O_NOFOLLOW)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    try {
      const st = fstatSync(fd)
      if (!st.isFile() || st.uid !== process.getuid!()) throw new Error(`${join(this.dir!, name)} is not a file of this user; refusing to read it`)
      return readFileSync(fd)
    } finally {
      closeSync(fd)
    }
  }

  /** Local rank 0, at its end: removes the directory. */
  close(): void {
    if (this.leader && this.dir) rmSync(this.dir, { recursive: true, force: true })
  }
}
