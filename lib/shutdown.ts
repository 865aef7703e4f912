/**
 * Two-stage shutdown for long-running commands: the first SIGINT/SIGTERM asks the work to stop at
 * its next safe point (`requested` becomes true, `onRequest` runs); a second one runs `onForce`,
 * which must leave nothing half-written (abort uploads, unmount), and exits at once.
 */
export interface Shutdown {
  readonly requested: boolean
  readonly signal: AbortSignal
  dispose(): void
}

export function installShutdown(handlers: {
  onRequest?: (sig: NodeJS.Signals) => void
  onForce: (sig: NodeJS.Signals) => Promise<void> | void
  forceExitCode?: number
}): Shutdown {
  const controller = new AbortController()
  let count = 0
  const handle = (sig: NodeJS.Signals) => {
    count++
    if (count === 1) {
      controller.abort(new Error(`stopped by ${sig}`))
      handlers.onRequest?.(sig)
      return
    }
    void Promise.resolve(handlers.onForce(sig)).finally(() => process.exit(handlers.forceExitCode ?? 130))
  }
  process.on('SIGINT', handle)
  process.on('SIGTERM', handle)
  return {
    get requested() {
      return count > 0
    },
    signal: controller.signal,
    dispose() {
      process.off('SIGINT', handle)
      process.off('SIGTERM', handle)
    },
  }
}
