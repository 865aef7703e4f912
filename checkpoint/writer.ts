import { mkdir, rename, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { ContentDigest } from '../lib/content/cid.js'
import { hashedUpload } from '../lib/content/hashed-upload.js'
import { putSidecar } from '../lib/content/sidecar.js'
import { startHashThread } from '../lib/content/thread-hasher.js'
import { loadSigner, type Signer } from '../lib/content/signer.js'
import { O3IntegrityError, O3UsageError, type O3Client } from '../lib/o3/index.js'
import { silentLogger, type Logger } from '../lib/log.js'
import { encodeHeader, type StateTensor } from './safetensors.js'
import { encodeMeta, type CheckpointMeta } from './meta.js'
import { CheckpointStore } from './store.js'
import {
  CHECKPOINT_DIR,
  LATEST_KEY,
  MANIFEST_KEY,
  checkpointName,
  dataKey,
  sidecarKey,
  signRecord,
  type CheckpointRecord,
  type LatestPointer,
  type Manifest,
  type ManifestEntry,
} from './records.js'

/**
 * The commit steps in their order; `part` fires after each stored part of the data when it goes
 * as a multipart upload (a checkpoint no larger than one part is a single PUT).
 */
export type CommitStep = 'part' | 'data' | 'sidecar' | 'manifest' | 'latest'

export interface WriterOptions {
  /** Multipart part size in bytes; O3 prefers large parts. Default 16 MiB. A smaller checkpoint is one PUT. */
  partSize?: number
  /** Parts uploading at once. Default 4. Peak extra memory is partSize x (parallel + 1). */
  parallel?: number
  /** Where each sidecar is also written on local disk. Default `checkpoints/<bucket>/<prefix>`. */
  localDir?: string
  /** Retention: keep the newest N checkpoints (default: keep all)… */
  keepLast?: number
  /** …and also every Kth save (by save number). */
  keepEvery?: number
  /** Signs each record; default from AKAVE_PRIVATE_KEY / AKAVE_PRIVATE_KEY_FILE, `null` for none. */
  signer?: Signer | null
  logger?: Logger
  /** Runs after each commit step (tests use it to crash between steps). */
  onStep?: (step: CommitStep, name: string) => void
}

export interface SavedCheckpoint {
  entry: ManifestEntry
  record: CheckpointRecord
  digest: ContentDigest
}

/**
 * Writes a run's checkpoints to O3 in one pass each: safetensors bytes into a multipart upload
 * (one PUT when they fit in a part), sha256 and CID computed from a copy of the same buffers on a worker thread (started with the writer), then the commit sequence data -> sidecar ->
 * manifest -> `latest`. A run has one writer at a time: opening one clears what a crashed
 * predecessor left (multipart uploads, objects no manifest entry names), never a checkpoint the
 * manifest names.
 */
export class CheckpointWriter {
  private readonly log: Logger
  private readonly localDir: string
  private readonly signer: Signer | undefined
  private inflight: Promise<SavedCheckpoint> | undefined
  /**
   * Manifest entries up to this seq are committed (`latest` moved to them or past them); a later one
   * is a save killed between its manifest entry and `latest`, which a save of the same step replaces.
   */
  private committedSeq: number

  private constructor(
    /** The run's read side, on the same client: resume and load go through it. */
    readonly store: CheckpointStore,
    private manifest: Manifest,
    latest: LatestPointer | undefined,
    private readonly options: WriterOptions,
  ) {
    this.log = options.logger ?? silentLogger
    this.localDir = options.localDir ?? path.join('checkpoints', this.client.scope.bucket, this.client.scope.prefix)
    this.signer = options.signer === null ? undefined : (options.signer ?? loadSigner())
    // Without a usable latest every entry counts as committed, as resume then takes the newest that verifies.
    const latestNamed = latest !== undefined && manifest.checkpoints.some((e) => e.name === latest.name)
    this.committedSeq = latestNamed ? latest.seq : maxSeq(manifest)
    for (const [k, v] of [
      ['keepLast', options.keepLast],
      ['keepEvery', options.keepEvery],
    ] as const) {
      if (v !== undefined && !(Number.isSafeInteger(v) && v >= 1)) throw new O3UsageError(`${k} must be a positive integer (got ${v})`)
    }
  }

  static async open(client: O3Client, options: WriterOptions = {}): Promise<CheckpointWriter> {
    startHashThread()
    const store = new CheckpointStore(client, options.logger)
    const manifest = await store.readManifest()
    // A malformed latest is the store's to warn about when it resumes; here it only means that
    // nothing says which entries were committed.
    const latest = await store.readLatest().catch((err: unknown) => {
      if (err instanceof O3IntegrityError) return undefined
      throw err
    })
    const writer = new CheckpointWriter(store, manifest, latest, options)
    await writer.clearLeftovers()
    return writer
  }

  private get client(): O3Client {
    return this.store.client
  }

  /** Address that signs this writer's records, if any. */
  get signerAddress(): string | undefined {
    return this.signer?.address
  }

  /** Checkpoints committed so far, oldest first. */
  get checkpoints(): readonly ManifestEntry[] {
    return this.manifest.checkpoints
  }

  /**
   * Aborts multipart uploads and deletes objects under checkpoints/ that no manifest entry names
   * (a save killed before its manifest entry, retention killed after its manifest write). Nothing
   * the manifest names is deleted, whatever `latest` says or whether it can be read at all.
   */
  private async clearLeftovers(): Promise<void> {
    for await (const u of this.client.listMultipartUploads(CHECKPOINT_DIR)) {
      this.log.warn({ key: u.key }, 'aborting a multipart upload left by an interrupted save')
      await this.client.abortMultipartUpload(u.key, u.uploadId)
    }
    const keep = new Set(this.manifest.checkpoints.flatMap((e) => [dataKey(e.name), sidecarKey(e.name)]))
    for await (const o of this.client.list(CHECKPOINT_DIR)) {
      if (o.type === 'object' && !keep.has(o.key)) {
        this.log.warn({ key: o.key }, 'deleting an object no checkpoint of the manifest names')
        await this.client.delete(o.key)
      }
    }
  }

  private async putJson(key: string, value: unknown, signal?: AbortSignal): Promise<void> {
    await this.client.put(key, `${JSON.stringify(value, null, 2)}\n`, { contentType: 'application/json', signal })
  }

  /**
   * Saves `state` and commits it. The buffers must not change until this settles. Waits for a
   * background save still in flight first, so that at most one upload runs at a time.
   */
  async save(state: readonly StateTensor[], meta: CheckpointMeta, options: { signal?: AbortSignal } = {}): Promise<SavedCheckpoint> {
    await this.flush()
    return this.saveNow(state, meta, options.signal)
  }

  /**
   * Starts saving `state` in the background and returns once the upload has started, so that
   * training goes on meanwhile. The buffers become the writer's until the save completes: pass a
   * snapshot (the trainer's `stateDict()` copies out of the live tensors). If a previous
   * background save is still running this waits for it first, and rethrows its failure.
   */
  async saveAsync(state: readonly StateTensor[], meta: CheckpointMeta, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.flush()
    const p = this.saveNow(state, meta, options.signal)
    // Reported by flush(); logged now so that a failure is seen even if nobody flushes.
    p.catch((err: Error) => this.log.error({ step: meta.step, err: err.message }, 'background checkpoint failed'))
    this.inflight = p
  }

  /** Waits for the background save, if any; returns its result or throws its failure. */
  async flush(): Promise<SavedCheckpoint | undefined> {
    const p = this.inflight
    if (!p) return undefined
    try {
      return await p
    } finally {
      if (this.inflight === p) this.inflight = undefined
    }
  }

  private step(step: CommitStep, name: string): void {
    this.options.onStep?.(step, name)
  }

  private async saveNow(state: readonly StateTensor[], meta: CheckpointMeta, signal?: AbortSignal): Promise<SavedCheckpoint> {
    const name = checkpointName(meta.step)
    const existing = this.manifest.checkpoints.find((e) => e.name === name)
    if (existing && existing.seq <= this.committedSeq) {
      throw new O3UsageError(`${this.store.location}: checkpoint ${name} already exists; each step is saved once`)
    }
    if (existing) this.log.warn({ checkpoint: name }, 'saving again a step whose save was killed before latest moved to it; the new one replaces it')
    const key = dataKey(name)
    const started = Date.now()
    const header = encodeHeader(state, encodeMeta(meta))
    const digest = await hashedUpload(
      this.client,
      key,
      [header, ...state.map((t) => t.data)],
      state.reduce((n, t) => n + t.data.length, header.length),
      {
        partSize: this.options.partSize,
        parallel: this.options.parallel,
        signal,
        contentType: 'application/octet-stream',
        onPartStored: () => this.step('part', name),
        logger: this.log,
      },
    )
    this.step('data', name)

    const head = await this.client.head(key, signal)
    if (head.size !== digest.size) throw new O3IntegrityError(`${this.store.where(key)}: server reports ${head.size} bytes after writing ${digest.size}`)
    const record = signRecord(
      {
        version: 1,
        name,
        cid: digest.cid,
        sha256: digest.sha256,
        size: digest.size,
        time: new Date().toISOString(),
        step: meta.step,
        epoch: meta.epoch,
        model: meta.model,
        networkRootCid: head.networkRootCid,
        networkState: head.networkState,
        data: meta.dataLineage,
      },
      this.signer,
    )
    await this.writeLocalSidecar(name, await putSidecar(this.client, key, record, signal))
    this.step('sidecar', name)

    const seq = maxSeq(this.manifest) + 1
    const entry: ManifestEntry = {
      seq,
      name,
      cid: record.cid,
      sha256: record.sha256,
      size: record.size,
      step: meta.step,
      epoch: meta.epoch,
      time: record.time,
      signer: record.signer,
    }
    const manifest: Manifest = { version: 1, checkpoints: [...this.manifest.checkpoints.filter((e) => e.name !== name), entry] }
    await this.putJson(MANIFEST_KEY, manifest, signal)
    this.manifest = manifest
    this.step('manifest', name)

    const latest: LatestPointer = { version: 1, name, cid: record.cid, seq, time: record.time }
    await this.putJson(LATEST_KEY, latest, signal)
    this.committedSeq = seq
    this.step('latest', name)
    this.log.info({ checkpoint: name, cid: record.cid, bytes: record.size, ms: Date.now() - started, signer: record.signer }, 'checkpoint committed')

    await this.applyRetention(entry)
    return { entry, record, digest }
  }

  private async writeLocalSidecar(name: string, text: string): Promise<void> {
    await mkdir(this.localDir, { recursive: true })
    const file = path.join(this.localDir, `${name}.safetensors.cid`)
    const tmp = `${file}.${process.pid}.tmp`
    await writeFile(tmp, text)
    await rename(tmp, file)
  }

  /**
   * Keeps the newest `keepLast` and every `keepEvery`th save. The manifest drops an entry before
   * its objects go, so it never names a deleted checkpoint; a crash in between leaves objects that
   * the next writer's open removes.
   */
  private async applyRetention(current: ManifestEntry): Promise<void> {
    const { keepLast, keepEvery } = this.options
    if (keepLast === undefined) return
    const all = this.manifest.checkpoints
    const newest = new Set(all.slice(-keepLast).map((e) => e.name))
    const keep = (e: ManifestEntry) => e.name === current.name || newest.has(e.name) || (keepEvery !== undefined && e.seq % keepEvery === 0)
    const drop = all.filter((e) => !keep(e))
    if (drop.length === 0) return
    this.manifest = { version: 1, checkpoints: all.filter(keep) }
    await this.putJson(MANIFEST_KEY, this.manifest)
    for (const e of drop) {
      try {
        await this.client.delete(sidecarKey(e.name))
        await this.client.delete(dataKey(e.name))
        await rm(path.join(this.localDir, `${e.name}.safetensors.cid`), { force: true })
        this.log.info({ checkpoint: e.name }, 'retention removed a checkpoint')
      } catch (err) {
        this.log.warn({ checkpoint: e.name, err: (err as Error).message }, 'retention could not remove a checkpoint; the next writer will')
      }
    }
  }
}

function maxSeq(manifest: Manifest): number {
  return manifest.checkpoints.reduce((m, e) => Math.max(m, e.seq), 0)
}
