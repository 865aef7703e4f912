import { availableParallelism } from 'node:os'
import { THREAD_ENV_DEFAULTS } from '../addon/index.js'
import { localWorldSize } from './distributed.js'

/** How o3train uses the CPU, printed at start so that a run's speed can be read against it. */
export interface ThreadSetup {
  cores: number
  /** torch intra-op threads: --threads, else one per core, shared among the ranks on this node. */
  threads: number
  /** The thread variables in effect (the addon's defaults unless the user set them). */
  env: Record<keyof typeof THREAD_ENV_DEFAULTS, string>
}

/**
 * One intra-op thread per core (per core of this rank's share of the node), with OpenMP waiting passively and a one-thread OpenBLAS (set by
 * the addon's loader): the loader threads then get the cores whenever torch's threads wait.
 */
export function threadSetup(threads: number | undefined, env: NodeJS.ProcessEnv = process.env): ThreadSetup {
  const cores = availableParallelism()
  const keys = Object.keys(THREAD_ENV_DEFAULTS) as (keyof typeof THREAD_ENV_DEFAULTS)[]
  return {
    cores,
    threads: threads ?? Math.max(1, Math.floor(cores / localWorldSize(env))),
    env: Object.fromEntries(keys.map((k) => [k, env[k] ?? THREAD_ENV_DEFAULTS[k]])) as ThreadSetup['env'],
  }
}
