/**
 * Work done once per node for all of its local ranks (the checkpoint download, the o3mount):
 * local rank 0 does it and publishes the result in a directory on the node's disk, one per job and
 * restart attempt; the other local ranks wait for it there.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { DistributedOptions } from '../addon/index.js'
import { localWorldSize } from './distributed.js'

const POLL_MS = 100

export class NodeShare {
  private constructor(
    /** This job's directory on this node, one subdirectory per restart attempt. */
    private readonly jobDir: string,
    readonly dir: string,
    readonly leader: boolean,
    private readonly timeoutSeconds: number,
  ) {}

  /** The share of this rank's node, or undefined when it is the node's only rank. */
  static open(dist: DistributedOptions | undefined, env: NodeJS.ProcessEnv, timeoutSeconds: number, root = tmpdir()): NodeShare | undefined {
    if (!dist || localWorldSize(env) < 2) return undefined
    // torchrun's run id alone is "none" unless --rdzv_id is given: the store address tells jobs apart.
    const job = `${env.TORCHELASTIC_RUN_ID ?? 'job'}-${dist.masterAddr}-${dist.masterPort}`.replace(/[^\w.-]/g, '_')
    const jobDir = join(root, `o3train-node-${job}`)
    const share = new NodeShare(jobDir, join(jobDir, `attempt-${dist.restartCount}`), dist.localRank === 0, timeoutSeconds)
    if (share.leader) {
      // What earlier attempts left behind (a rank killed before it could clean up).
      rmSync(jobDir, { recursive: true, force: true })
      mkdirSync(share.dir, { recursive: true })
    }
    return share
  }

  /** A path in the attempt's directory, for files too big to publish as a value. */
  path(name: string): string {
    return join(this.dir, name)
  }

  /** Local rank 0: makes `value` visible to the other local ranks, all at once. */
  publish(name: string, value: unknown): void {
    const tmp = this.path(`.${name}.tmp`)
    writeFileSync(tmp, JSON.stringify(value))
    renameSync(tmp, this.path(`${name}.json`))
  }

  /** The other local ranks: what local rank 0 published under `name`, once it has. */
  async take<T>(name: string, what: string): Promise<T> {
    const deadline = Date.now() + this.timeoutSeconds * 1000
    for (;;) {
      try {
        return JSON.parse(readFileSync(this.path(`${name}.json`), 'utf8')) as T
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      }
      if (Date.now() > deadline) throw new Error(`local rank 0 did not publish ${what} within --dist-timeout (${this.timeoutSeconds} s; looked in ${this.dir})`)
      await new Promise((r) => setTimeout(r, POLL_MS))
    }
  }

  /** Local rank 0, at its end: removes the job's directory. */
  close(): void {
    if (this.leader) rmSync(this.jobDir, { recursive: true, force: true })
  }
}
