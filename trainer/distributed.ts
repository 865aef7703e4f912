/**
 * o3train as a worker under torchrun: the job it belongs to, read from torchrun's environment
 * (Kubeflow's PyTorchJob sets the same variables), and `--nproc-per-node`, which re-runs o3train
 * under a standalone torchrun.
 */
import { spawnSync } from 'node:child_process'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'
import type { DistributedOptions } from '../addon/index.js'

/** A torchrun variable that is missing or malformed while others are set. */
class DistEnvError extends CliError {
  constructor(message: string) {
    super(message, ExitCode.usage)
  }
}

function intVar(env: NodeJS.ProcessEnv, name: string, fallback?: number): number {
  const raw = env[name]
  if (raw === undefined || raw === '') {
    if (fallback !== undefined) return fallback
    throw new DistEnvError(
      `${name} is not set but WORLD_SIZE is: run o3train under torchrun, or set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT together`,
    )
  }
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 0) throw new DistEnvError(`${name} must be a non-negative integer (got ${JSON.stringify(raw)})`)
  return n
}

/** The job this process is a rank of, or undefined when WORLD_SIZE is unset (one process, as always). */
export function distributedFromEnv(env: NodeJS.ProcessEnv, timeoutSeconds: number): DistributedOptions | undefined {
  if (env.WORLD_SIZE === undefined) return undefined
  const worldSize = intVar(env, 'WORLD_SIZE')
  if (worldSize < 1) throw new DistEnvError('WORLD_SIZE must be at least 1')
  const rank = intVar(env, 'RANK')
  if (rank >= worldSize) throw new DistEnvError(`RANK ${rank} is not below WORLD_SIZE ${worldSize}`)
  if (!env.MASTER_ADDR) throw new DistEnvError("MASTER_ADDR is not set but WORLD_SIZE is: run o3train under torchrun, or set it to rank 0's address")
  return {
    rank,
    worldSize,
    // A PyTorchJob without torchrun sets no LOCAL_RANK: one rank per pod.
    localRank: intVar(env, 'LOCAL_RANK', 0),
    masterAddr: env.MASTER_ADDR,
    masterPort: intVar(env, 'MASTER_PORT'),
    restartCount: intVar(env, 'TORCHELASTIC_RESTART_COUNT', 0),
    useAgentStore: env.TORCHELASTIC_USE_AGENT_STORE === 'True',
    socketIfname: env.GLOO_SOCKET_IFNAME || undefined,
    timeoutSeconds,
  }
}

/** Ranks on this node; torchrun sets LOCAL_WORLD_SIZE, a bare PyTorchJob pod runs one. */
export function localWorldSize(env: NodeJS.ProcessEnv): number {
  return intVar(env, 'LOCAL_WORLD_SIZE', 1)
}

/**
 * The torchrun command line that runs `argv` (o3train's own, without --nproc-per-node) as
 * `nproc` local ranks. Debian's torchrun 1.13 takes underscore flags only and, under Python 3.11,
 * crashes unless given `--redirects 1 --tee 1`; current torchrun accepts all of these too.
 */
export function torchrunArgs(nproc: number, self: string[], argv: string[]): string[] {
  return ['--standalone', `--nproc_per_node=${nproc}`, '--redirects', '1', '--tee', '1', '--no_python', ...self, ...argv]
}

/** Runs o3train again under torchrun and returns its exit status. */
export function runUnderTorchrun(nproc: number, argv: string[], torchrun = process.env.O3_TORCHRUN ?? 'torchrun'): number {
  // execArgv too: run from sources, o3train is `node --import tsx trainer/cli.ts`.
  const self = [process.execPath, ...process.execArgv, process.argv[1]]
  const r = spawnSync(torchrun, torchrunArgs(nproc, self, argv), { stdio: 'inherit' })
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new CliError(
      `--nproc-per-node needs torchrun, which is not installed (${torchrun} not found): apt-get install python3-torch, or pip install torch`,
      ExitCode.usage,
    )
  }
  if (r.error) throw r.error
  return r.status ?? 1
}
