/**
 * o3train as a worker under torchrun: the job it belongs to, read from torchrun's environment
 * (Kubeflow's PyTorchJob sets the same variables), and `--nproc-per-node`, which re-runs o3train
 * under a standalone torchrun.
 */
import { spawn } from 'node:child_process'
import { constants } from 'node:os'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'
import type { DistributedOptions } from '../addon/index.js'
import type { Logger } from '../lib/log.js'
import { childPids } from '../lib/processes.js'

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

/**
 * Runs o3train again under torchrun and resolves with the exit status o3train alone would give.
 * torchrun runs in a process group of its own, so that a terminal's Ctrl-C reaches this process
 * only; each SIGINT/SIGTERM is passed on once to every rank (torchrun's own handler would pass a
 * second one on, which forces the ranks to exit at once): the first stops them at a step boundary
 * with a final checkpoint, and torchrun, seeing them all exit 0, exits 0; a second makes them exit
 * at once (130). Either way this waits for torchrun and its ranks to end.
 */
export async function runUnderTorchrun(nproc: number, argv: string[], log: Logger, torchrun = process.env.O3_TORCHRUN ?? 'torchrun'): Promise<number> {
  // execArgv too: run from sources, o3train is `node --import tsx trainer/cli.ts`.
  const self = [process.execPath, ...process.execArgv, process.argv[1]!]
  const child = spawn(torchrun, torchrunArgs(nproc, self, argv), { stdio: ['ignore', 'inherit', 'inherit'], detached: true })
  let signals = 0
  let agentSignalled = false
  const forward = (sig: NodeJS.Signals) => {
    signals++
    const ranks = childPids(child.pid!)
    if (ranks.length > 0) {
      for (const pid of ranks) sendSignal(pid, sig)
      log.warn(
        { signal: sig, ranks: ranks.length },
        signals === 1
          ? 'passed on to the ranks: they stop at the next step boundary and write a final checkpoint; send it again to exit at once'
          : 'passed on to the ranks: they exit at once',
      )
    } else {
      // No rank started yet (or none left): torchrun itself stops the group.
      agentSignalled = true
      sendSignal(child.pid!, sig)
      log.warn({ signal: sig }, 'passed on to torchrun: no rank is running')
    }
  }
  process.on('SIGINT', forward)
  process.on('SIGTERM', forward)
  try {
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once('error', reject)
      child.once('exit', (c, s) => resolve([c, s]))
    })
    if (signals >= 2 || agentSignalled) return ExitCode.interrupted
    return code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new CliError(
        `--nproc-per-node needs torchrun, which is not installed (${torchrun} not found): apt-get install python3-torch, or pip install torch`,
        ExitCode.usage,
      )
    }
    throw err
  } finally {
    process.off('SIGINT', forward)
    process.off('SIGTERM', forward)
  }
}

function sendSignal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig)
  } catch {
    // It exited meanwhile.
  }
}
