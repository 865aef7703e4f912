import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

/**
 * Response bodies arrive as many short-lived 64 KiB buffers whose memory lives outside the JS
 * heap. V8 only collects them when its young generation fills with JS objects, which those small
 * wrappers barely do, so tens of MiB of dead chunks pile up between collections and the mount's
 * RSS overshoots its budget. A young-generation collection after every few MiB received costs
 * well under a millisecond and keeps that garbage small.
 */
export class GcNudge {
  private readonly gc: (opts: { type: 'minor' | 'major' }) => void
  private received = 0

  constructor(private readonly everyBytes: number) {
    setFlagsFromString('--expose-gc')
    this.gc = runInNewContext('gc') as (opts: { type: 'minor' | 'major' }) => void
  }

  add(bytes: number): void {
    this.received += bytes
    if (this.received >= this.everyBytes) {
      this.received = 0
      this.gc({ type: 'minor' })
    }
  }
}
