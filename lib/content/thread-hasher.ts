import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker, type WorkerOptions } from 'node:worker_threads'
import { CID_BLOCK_SIZE, type ContentDigest } from './cid.js'

export type ToHashWorker = { type: 'block'; id: number; block: ArrayBuffer; length: number } | { type: 'digest' | 'drop'; id: number }
export type FromHashWorker =
  | { type: 'free'; id: number; block: ArrayBuffer }
  | { type: 'digest'; id: number; digest?: ContentDigest; leaves?: string[]; dagSize?: number; error?: string }

/**
 * Blocks copied to the hashing thread and not yet hashed, per session: the in-flight cap that
 * bounds this class's memory (plus the few blocks the worker's leaf hashing copies).
 */
const BLOCKS_IN_FLIGHT = 6

interface Session {
  free: ArrayBuffer[]
  wakeFree?: () => void
  done?: { resolve: (d: ContentDigest) => void; reject: (err: Error) => void }
  /** The sha256 of each 1 MiB leaf, in order, once the digest is in. */
  leaves?: string[]
  /** The DAG's cumulative size, once the digest is in. */
  dagSize?: number
}

/**
 * hash-worker.js when built; from the sources (tests under tsx) hash-worker.ts, which needs the
 * tsx loader registered in the worker itself: workers do not inherit `--import` hooks.
 */
function workerScript(): [string | URL, WorkerOptions?] {
  if (path.extname(fileURLToPath(import.meta.url)) === '.js') return [new URL('./hash-worker.js', import.meta.url)]
  const api = JSON.stringify(import.meta.resolve('tsx/esm/api'))
  const script = JSON.stringify(new URL('./hash-worker.ts', import.meta.url).href)
  return [`import(${api}).then((tsx) => { tsx.register(); return import(${script}) })`, { eval: true }]
}

/**
 * One worker thread for the process, started on first use; it holds the event loop open only
 * while some hash is unfinished.
 */
class HashThread {
  private worker: Worker | undefined
  private nextId = 1
  private readonly sessions = new Map<number, Session>()

  private start(): Worker {
    const w = new Worker(...workerScript())
    w.on('message', (m: FromHashWorker) => this.receive(m))
    w.on('error', (err) => this.failAll(err))
    w.on('exit', (code) => {
      this.worker = undefined
      this.failAll(new Error(`the hashing thread exited (code ${code})`))
    })
    return w
  }

  /** Starts the thread ahead of its first hash, holding nothing open. */
  warm(): void {
    if (this.worker) return
    this.worker = this.start()
    if (this.sessions.size === 0) this.worker.unref()
  }

  open(): { id: number; session: Session } {
    this.worker ??= this.start()
    if (this.sessions.size === 0) this.worker.ref()
    const id = this.nextId++
    const session: Session = { free: [] }
    this.sessions.set(id, session)
    return { id, session }
  }

  send(m: ToHashWorker): void {
    if (!this.worker) throw new Error('the hashing thread is gone')
    this.worker.postMessage(m, m.type === 'block' ? [m.block] : [])
  }

  alive(id: number): boolean {
    return this.sessions.has(id)
  }

  /** Forgets a session whose digest nobody will ask for (its upload failed). */
  drop(id: number): void {
    const s = this.sessions.get(id)
    if (!s) return
    this.close(id)
    s.wakeFree?.()
    this.worker?.postMessage({ type: 'drop', id } satisfies ToHashWorker)
  }

  private close(id: number): void {
    this.sessions.delete(id)
    if (this.sessions.size === 0) this.worker?.unref()
  }

  private receive(m: FromHashWorker): void {
    const s = this.sessions.get(m.id)
    if (!s) return
    if (m.type === 'free') {
      s.free.push(m.block)
      const wake = s.wakeFree
      s.wakeFree = undefined
      wake?.()
      return
    }
    this.close(m.id)
    s.leaves = m.leaves
    s.dagSize = m.dagSize
    if (m.digest) s.done?.resolve(m.digest)
    else s.done?.reject(new Error(m.error ?? 'hashing failed'))
  }

  private failAll(err: Error): void {
    for (const [id, s] of this.sessions) {
      this.close(id)
      s.done?.reject(err)
      s.wakeFree?.()
    }
  }
}

const thread = new HashThread()

/**
 * Starts the hashing thread now (a fixed ~15 MiB: a JS isolate with the UnixFS importer), so
 * that the first hash neither waits for it nor counts it in its own memory.
 */
export function startHashThread(): void {
  thread.warm()
}

/**
 * ContentHasher's CID + sha256 computed on a worker thread, so that hashing a large upload takes
 * nothing from the event loop but one copy of the bytes into 1 MiB blocks (the copy the leaf
 * hashing made anyway). `update` settles once `chunk` is copied, so the caller may reuse it at
 * once; at most BLOCKS_IN_FLIGHT blocks wait for the worker.
 */
export class ThreadHasher {
  private readonly id: number
  private readonly session: Session
  private allocated = 0
  private block: Uint8Array | undefined
  private fill = 0
  private size = 0
  private ended = false
  /** The copy in progress: updates run one after another. */
  private copying: Promise<void> = Promise.resolve()

  constructor() {
    ;({ id: this.id, session: this.session } = thread.open())
  }

  private async nextBlock(): Promise<Uint8Array> {
    const s = this.session
    while (s.free.length === 0 && this.allocated >= BLOCKS_IN_FLIGHT) {
      await new Promise<void>((resolve) => (s.wakeFree = resolve))
      if (!thread.alive(this.id)) throw new Error('the hashing thread failed')
    }
    const buf = s.free.pop()
    if (buf) return new Uint8Array(buf)
    this.allocated++
    return new Uint8Array(new ArrayBuffer(CID_BLOCK_SIZE))
  }

  private sendBlock(): void {
    const block = this.block!
    this.block = undefined
    thread.send({ type: 'block', id: this.id, block: block.buffer as ArrayBuffer, length: this.fill })
    this.fill = 0
  }

  /**
   * Adds the next bytes. Settles once they are copied; `chunk` is the caller's again then. Calls
   * that overlap (a multipart tap does not wait for the previous part) are taken in call order.
   */
  update(chunk: Uint8Array): Promise<void> {
    if (this.ended) return Promise.reject(new Error('ThreadHasher.update after digest'))
    const copied = this.copying.then(() => this.copy(chunk))
    this.copying = copied.catch(() => undefined)
    return copied
  }

  private async copy(chunk: Uint8Array): Promise<void> {
    this.size += chunk.length
    let off = 0
    while (off < chunk.length) {
      this.block ??= await this.nextBlock()
      const n = Math.min(chunk.length - off, CID_BLOCK_SIZE - this.fill)
      this.block.set(chunk.subarray(off, off + n), this.fill)
      this.fill += n
      off += n
      if (this.fill === CID_BLOCK_SIZE) this.sendBlock()
    }
  }

  /** Ends the content and returns its CID, sha256 and size. */
  async digest(): Promise<ContentDigest> {
    this.ended = true
    await this.copying
    return new Promise((resolve, reject) => {
      this.session.done = { resolve, reject }
      if (this.fill > 0) this.sendBlock()
      thread.send({ type: 'digest', id: this.id })
    })
  }

  /** The sha256 (hex) of each 1 MiB leaf of the CID, in order; complete once digest() resolved. */
  get leafDigests(): readonly string[] {
    return this.session.leaves ?? []
  }

  /** The cumulative size of the content's DAG (ContentHasher.dagSize); known once digest() resolved. */
  get dagSize(): number {
    if (this.session.dagSize === undefined) throw new Error('ThreadHasher.dagSize before digest')
    return this.session.dagSize
  }

  /** Gives up on this content (its upload failed), releasing the worker's share of it. */
  abort(): void {
    this.ended = true
    thread.drop(this.id)
  }
}
