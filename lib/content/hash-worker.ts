import { parentPort } from 'node:worker_threads'
import { ContentHasher } from './cid.js'
import type { FromHashWorker, ToHashWorker } from './thread-hasher.js'

/**
 * The thread that hashes for ThreadHasher: one ContentHasher per session, fed the blocks that
 * the main thread copies in; each block goes back once hashed, to be filled again.
 */
const port = parentPort!
const sessions = new Map<number, ContentHasher>()
const post = (m: FromHashWorker, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer)

port.on('message', (m: ToHashWorker) => {
  if (m.type === 'drop') {
    sessions.delete(m.id)
    return
  }
  let hasher = sessions.get(m.id)
  if (!hasher) sessions.set(m.id, (hasher = new ContentHasher()))
  if (m.type === 'block') {
    hasher.update(new Uint8Array(m.block, 0, m.length)).then(
      () => post({ type: 'free', id: m.id, block: m.block }, [m.block]),
      // The failure is reported by digest; the block still goes back so that nobody waits for it.
      () => post({ type: 'free', id: m.id, block: m.block }, [m.block]),
    )
    return
  }
  sessions.delete(m.id)
  hasher.digest().then(
    (digest) => post({ type: 'digest', id: m.id, digest, leaves: [...hasher.leafDigests], dagSize: hasher.dagSize }),
    (err: Error) => post({ type: 'digest', id: m.id, error: err.message }),
  )
})
