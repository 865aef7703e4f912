import { setTimeout as sleep } from 'node:timers/promises'

/**
 * Waits for an observable event (a counter, a file, a process state) instead of sleeping for a
 * guessed time: polls `cond` until it holds. The deadline is only there so that a broken test
 * fails instead of hanging; it is generous, because a loaded machine is slow, not broken.
 */
export async function until(cond: () => boolean, what: string, ms = 120_000, everyMs = 20): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000} s waiting for ${what}`)
    await sleep(everyMs)
  }
}
