import type { CompletedPart, O3Client, StoredObject } from './client.js'
import { O3UsageError } from './errors.js'

export interface MultipartOptions {
  /** Bytes per part (S3 needs at least 5 MiB for every part but the last). */
  partSize: number
  /** Parts uploading at once. */
  parallel: number
  signal?: AbortSignal
  contentType?: string
  /**
   * Sees every part, in order, before its buffer is reused (e.g. to hash it). The buffer is
   * recycled once both the upload and this promise have settled.
   */
  tap?: (part: Buffer) => Promise<void>
  /** Called after each part is stored (used by tests to kill a save midway). */
  onPartStored?: (partNumber: number) => void
}

/**
 * A write stream into one multipart upload. Parts are sent from the caller's buffers where they
 * can be, else copied into at most `parallel + 1` part-sized buffers recycled as parts are
 * stored, so memory stays bounded whatever the object's size. The first failure aborts the other parts; `abort()` then removes the upload, waiting for
 * parts in flight first so that none lands after the abort.
 */
export class MultipartSink {
  private readonly pool: Buffer[] = []
  private allocated = 0
  private current: Buffer | undefined
  private fill = 0
  private partNumber = 0
  private readonly parts: CompletedPart[] = []
  private readonly inFlight = new Set<Promise<void>>()
  private readonly controller = new AbortController()
  private failure: unknown
  private waiter: (() => void) | undefined
  private bytes = 0
  private closed = false
  private readonly onAbort = () => this.fail(this.options.signal!.reason)

  private constructor(
    private readonly client: O3Client,
    readonly key: string,
    readonly uploadId: string,
    private readonly options: MultipartOptions,
  ) {
    options.signal?.addEventListener('abort', this.onAbort, { once: true })
  }

  private close(): void {
    this.closed = true
    this.options.signal?.removeEventListener('abort', this.onAbort)
  }

  static async open(client: O3Client, key: string, options: MultipartOptions): Promise<MultipartSink> {
    if (!(options.partSize >= 5 << 20) || !(options.parallel >= 1)) {
      throw new O3UsageError(`multipart: part size must be at least 5 MiB and parallelism at least 1 (got ${options.partSize}, ${options.parallel})`)
    }
    options.signal?.throwIfAborted()
    // Not cancelled midway: a create cut short can leave an upload on the server whose id we never learn.
    const uploadId = await client.createMultipartUpload(key, { contentType: options.contentType })
    if (options.signal?.aborted) {
      await client.abortMultipartUpload(key, uploadId)
      options.signal.throwIfAborted()
    }
    return new MultipartSink(client, key, uploadId, options)
  }

  /** Bytes written so far. */
  get size(): number {
    return this.bytes
  }

  private fail(err: unknown): void {
    this.failure ??= err ?? new Error('multipart upload aborted')
    this.controller.abort(this.failure)
    this.wake()
  }

  private wake(): void {
    const w = this.waiter
    this.waiter = undefined
    w?.()
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure
  }

  /** Waits until `ready()` holds or the upload fails. */
  private async until(ready: () => boolean): Promise<void> {
    while (!ready()) {
      this.check()
      await new Promise<void>((resolve) => (this.waiter = resolve))
    }
    this.check()
  }

  private async acquire(): Promise<Buffer> {
    if (this.pool.length === 0 && this.allocated <= this.options.parallel) {
      this.allocated++
      // Outside Node's shared pool, so that a recycled part never aliases other data.
      return Buffer.allocUnsafeSlow(this.options.partSize)
    }
    await this.until(() => this.pool.length > 0)
    return this.pool.pop()!
  }

  /**
   * Adds `chunk` to the upload. A part that lies wholly inside one chunk is sent from the chunk
   * itself; only parts that straddle chunks are copied into a pooled buffer. So `chunk` must stay
   * unchanged until finish() or abort() settles.
   */
  async write(chunk: Uint8Array): Promise<void> {
    if (this.closed) throw new O3UsageError('multipart: write after finish or abort')
    this.check()
    const { partSize } = this.options
    let off = 0
    while (off < chunk.length) {
      if (this.fill === 0 && chunk.length - off >= partSize) {
        await this.dispatch(Buffer.from(chunk.buffer, chunk.byteOffset + off, partSize))
        off += partSize
        this.bytes += partSize
        continue
      }
      this.current ??= await this.acquire()
      const n = Math.min(chunk.length - off, partSize - this.fill)
      this.current.set(chunk.subarray(off, off + n), this.fill)
      this.fill += n
      off += n
      this.bytes += n
      if (this.fill === partSize) await this.dispatchCurrent()
    }
  }

  private async dispatchCurrent(): Promise<void> {
    const buf = this.current!
    const body = buf.subarray(0, this.fill)
    this.current = undefined
    this.fill = 0
    await this.dispatch(body, buf)
  }

  /** Uploads `body` as the next part; `pooled`, if given, returns to the pool afterwards. */
  private async dispatch(body: Buffer, pooled?: Buffer): Promise<void> {
    await this.until(() => this.inFlight.size < this.options.parallel)
    const n = ++this.partNumber
    const tapped = this.options.tap?.(body)
    const job = (async () => {
      try {
        const [part] = await Promise.all([this.client.uploadPart(this.key, this.uploadId, n, body, this.controller.signal), tapped])
        this.parts.push(part)
        this.options.onPartStored?.(n)
        if (pooled) this.pool.push(pooled)
      } catch (err) {
        this.fail(err)
      }
    })()
    this.inFlight.add(job)
    void job.finally(() => {
      this.inFlight.delete(job)
      this.wake()
    })
  }

  /** Sends the last part and completes the upload; the object exists only after this. */
  async finish(): Promise<StoredObject & { size: number }> {
    this.check()
    // An empty object still needs one (empty) part.
    if (this.fill > 0 || this.partNumber === 0) {
      this.current ??= await this.acquire()
      await this.dispatchCurrent()
    }
    this.close()
    await this.until(() => this.inFlight.size === 0)
    this.options.signal?.throwIfAborted()
    // Like the create, the completion runs to its end once started, so that the caller knows which way it went.
    const stored = await this.client.completeMultipartUpload(this.key, this.uploadId, this.parts)
    return { ...stored, size: this.bytes }
  }

  /** Cancels the upload and removes its parts from the server. */
  async abort(reason?: unknown): Promise<void> {
    this.close()
    this.fail(reason)
    await Promise.allSettled([...this.inFlight])
    await this.client.abortMultipartUpload(this.key, this.uploadId)
  }
}
