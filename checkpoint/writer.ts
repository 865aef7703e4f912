import { mkdir, rename, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { ContentDigest } from '../lib/content/cid.js'
import { hashedUpload } from '../lib/content/hashed-upload.js'
import type { DataLineage } from '../lib/content/lineage.js'
import { putSidecar, sidecarKeyOf } from '../lib/content/sidecar.js'
import { startHashThread } from '../lib/content/thread-hasher.js'
import { loadSigner, type Signer } from '../lib/content/signer.js'
import { checkDirectoryLayout, directoryCid } from '../lib/content/unixfs-directory.js'
import { O3IntegrityError, O3UsageError, type O3Client, type ObjectInfo, type StoredObject } from '../lib/o3/index.js'
import { silentLogger, type Logger } from '../lib/log.js'
import { encodeHeader, type StateTensor } from './safetensors.js'
import { encodeMeta, type CheckpointMeta } from './meta.js'
import { CheckpointStore } from './store.js'
import { checkpointsToDrop, dropCheckpoints, putJson } from './retention.js'
import {
  CHECKPOINT_DIR,
  LATEST_KEY,
  MANIFEST_KEY,
  checkpointName,
  contentKey,
  currentEntries,
  definedFields,
  directoryFileKey,
  entryPrefix,
  nameProblem,
  ownsKey,
  signFileRecord,
  signRecord,
  type CheckpointRecord,
  type EntryKind,
  type EntryRef,
  type LatestPointer,
  type Manifest,
  type ManifestEntry,
  type VersionPin,
  versionPin,
} from './records.js'

/**
 * The commit steps in their order; `part` fires after each stored part of the data when it goes
 * as a multipart upload (a checkpoint no larger than one part is a single PUT).
 */
export type CommitStep = 'part' | 'data' | 'sidecar' | 'manifest' | 'latest'

export interface WriterOptions {
  /** Multipart part size in bytes; O3 prefers large parts. Default 16 MiB. A smaller checkpoint is one PUT. */
  partSize?: number
  /** Parts uploading at once. Default 4. Peak extra memory: uploadBufferBytes(partSize, parallel). */
  parallel?: number
  /** Where each of o3train's sidecars is also written on local disk (not a put's). Default `checkpoints/<bucket>/<prefix>`. */
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
  /** The run's `latest` as this writer last read or wrote it. */
  private latest: LatestPointer | undefined
  /**
   * Manifest entries up to this seq are committed (`latest` moved to them or past them); a later one
   * is a save killed between its manifest entry and `latest`, which the next commit replaces (a save
   * of its step) or leaves out of the manifest.
   */
  private committedSeq: number
  /** The checkpoint the run went on from, while an earlier one than `latest` names (continueFrom). */
  private resumedBehindLatest: ManifestEntry | undefined

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
    this.latest = latest
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
    // A malformed latest is the store's to warn about when it resumes; here it only means that
    // nothing says which entries were committed.
    const latest = await store.readLatest().catch((err: unknown) => {
      if (err instanceof O3IntegrityError) return undefined
      throw err
    })
    const manifest = await store.runManifest(latest)
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
   * the manifest names is deleted, whatever `latest` says or whether it can be read at all; nor
   * anything at all when the objects of the checkpoint `latest` names would go (O3IntegrityError).
   */
  private async clearLeftovers(): Promise<void> {
    // Entries after the committed ones are saves killed between manifest and latest: they stay
    // until the next commit. An entry replaced by a committed one of its name goes.
    const committed = this.manifest.checkpoints.filter((e) => e.seq <= this.committedSeq)
    const kept = [...currentEntries(committed), ...this.manifest.checkpoints.filter((e) => e.seq > this.committedSeq)]
    const unnamed: string[] = []
    for await (const o of this.client.list(CHECKPOINT_DIR)) if (o.type === 'object' && !kept.some((e) => ownsKey(e, o.key))) unnamed.push(o.key)
    // The protocol writes no latest that its manifest lacks while the checkpoint is there: the
    // manifest lost the entry (an older one put back, an edit), and this would delete the newest checkpoint.
    const latest = this.latest
    if (latest && !kept.some((e) => e.name === latest.name)) {
      const its = unnamed.filter((key) => key.startsWith(`${CHECKPOINT_DIR}${latest.name}.`) || key.startsWith(`${CHECKPOINT_DIR}${latest.name}/`))
      if (its.length > 0)
        throw new O3IntegrityError(
          `${this.store.where(LATEST_KEY)} names ${latest.name}, which ${MANIFEST_KEY} does not list, but its objects are there (${its.join(', ')}): restore ${MANIFEST_KEY} (nothing was deleted)`,
        )
    }
    for await (const u of this.client.listMultipartUploads(CHECKPOINT_DIR)) {
      this.log.warn({ key: u.key }, 'aborting a multipart upload left by an interrupted save')
      await this.client.abortMultipartUpload(u.key, u.uploadId)
    }
    if (kept.length !== this.manifest.checkpoints.length) {
      this.manifest = { version: 1, checkpoints: kept }
      await this.putJson(MANIFEST_KEY, this.manifest)
    }
    for (const key of unnamed) {
      this.log.warn({ key }, 'deleting an object no checkpoint of the manifest names')
      await this.client.delete(key)
    }
  }

  /**
   * Tells the writer which checkpoint the run goes on from. From an earlier one than `latest`
   * names (`--resume <name>`, or resume's fallback past checkpoints that fail verification), the
   * first save moves `latest` back to it before writing anything: the checkpoints after it then
   * count as never committed, so that the run's saves of their steps replace them, and that
   * commit leaves the others out of the manifest.
   */
  continueFrom(entry: ManifestEntry): void {
    this.resumedBehindLatest = entry.seq === this.committedSeq ? undefined : entry
  }

  private async putJson(key: string, value: unknown, signal?: AbortSignal): Promise<StoredObject> {
    return putJson(this.client, key, value, signal)
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
    const header = encodeHeader(state, encodeMeta(meta))
    const content: PutFile = { path: '', size: state.reduce((n, t) => n + t.data.length, header.length), content: () => [header, ...state.map((t) => t.data)] }
    return this.commit({ step: meta.step, epoch: meta.epoch, replace: false, files: [content], fields: { model: meta.model, data: meta.dataLineage } }, signal)
  }

  /**
   * Stores a file or a directory of any format as one checkpoint of the run, committed like
   * o3train's own (data, sidecars, manifest, `latest`): `o3ckpt put`. Each file is streamed from
   * `content()` into its own upload, hashed on the hashing thread; a directory's entry CID is the
   * UnixFS directory CID of its files. A step already in the run is refused unless `replace`.
   */
  async put(request: PutRequest, options: { signal?: AbortSignal } = {}): Promise<SavedCheckpoint> {
    await this.flush()
    const bad = (message: string) => new O3UsageError(`${request.path}: ${message}`)
    const pathProblem = nameProblem(request.path)
    if (pathProblem) throw bad(`cannot name a checkpoint: ${pathProblem}`)
    if (request.kind === 'file' && request.files.length !== 1) throw bad('a file checkpoint holds exactly one file')
    if (request.kind === 'directory') {
      for (const f of request.files) {
        const problem = f.path
          .split('/')
          .map(nameProblem)
          .find((p) => p !== undefined)
        if (problem) throw bad(`${JSON.stringify(f.path)} is not a valid key below the checkpoint: ${problem}`)
      }
      checkDirectoryLayout(request.files, bad)
    }
    for (const [k, v] of [
      ['step', request.step],
      ['epoch', request.epoch],
    ] as const) {
      if (v !== undefined && !(Number.isSafeInteger(v) && v >= 0)) throw new O3UsageError(`${k} must be a non-negative integer (got ${v})`)
    }
    return this.commit(
      {
        step: request.step ?? this.nextStep(),
        epoch: request.epoch ?? 0,
        kind: request.kind,
        path: request.path,
        replace: request.replace === true,
        // Stored, listed and hashed in one order: by path bytes, as records list them.
        files: [...request.files].sort((a, b) => Buffer.compare(Buffer.from(a.path), Buffer.from(b.path))),
        fields: { meta: request.meta, data: request.dataLineage },
      },
      options.signal,
    )
  }

  /** The step of a put that names none: one past the run's last, or 1 in an empty run. */
  nextStep(): number {
    return this.manifest.checkpoints.reduce((m, e) => Math.max(m, e.step), 0) + 1
  }

  /**
   * The one commit path of every checkpoint: its objects (each with its sidecar for a directory),
   * its record, the manifest, then `latest`. A failure before the manifest removes what this
   * commit wrote (a multipart upload in flight is aborted by hashedUpload); after it, the objects
   * stay for the next writer's open to judge. A replaced entry is dropped once `latest` has moved.
   */
  private async commit(plan: CommitPlan, signal?: AbortSignal): Promise<SavedCheckpoint> {
    if (this.resumedBehindLatest) await this.moveLatestTo(this.resumedBehindLatest, signal)
    const name = checkpointName(plan.step)
    // Every earlier entry of the step goes once this one is committed: the committed one a
    // --replace replaces, and a save killed between its manifest entry and `latest`.
    const previous = this.manifest.checkpoints.filter((e) => e.name === name)
    if (previous.some((e) => e.seq <= this.committedSeq) && !plan.replace) {
      const hint = plan.kind === undefined ? 'each step is saved once' : 'pass --replace to replace it, or another --step'
      throw new O3UsageError(`${this.store.location}: checkpoint ${name} already exists; ${hint}`)
    }
    if (previous.length > 0 && !plan.replace)
      this.log.warn({ checkpoint: name }, 'saving again a step whose save was killed before latest moved to it; the new one replaces it')
    // o3train's own objects have one key per step, which the new save overwrites; a put's go to a
    // folder of their own revision, so that the committed ones stay whole until `latest` moves.
    const overwritten = plan.kind === undefined ? previous : []
    const rev = previous.length > 0 && plan.kind !== undefined ? Math.max(...previous.map((e) => e.rev ?? 0)) + 1 : undefined
    const ref: EntryRef = definedFields({ name, kind: plan.kind, path: plan.path, rev })
    const started = Date.now()
    const written: string[] = []
    let record: CheckpointRecord
    let digest: ContentDigest
    let versions: Pick<ManifestEntry, 'dataVersion' | 'sidecarVersion'>
    try {
      ;({ record, digest, versions } = await this.storeObjects(ref, plan, written, signal))
    } catch (err) {
      await this.removeKeys(written)
      throw err
    }

    const seq = maxSeq(this.manifest) + 1
    const committed = this.manifest.checkpoints.filter((e) => e.seq <= this.committedSeq)
    const entry: ManifestEntry = definedFields({
      seq,
      ...ref,
      cid: record.cid,
      sha256: record.sha256,
      size: record.size,
      step: plan.step,
      epoch: plan.epoch,
      time: record.time,
      signer: record.signer,
      ...versions,
    })
    // Entries after the committed ones were never committed: once `latest` names this one with a
    // higher seq they would pass for committed, so they are left out (their objects go at the next open).
    const manifest: Manifest = { version: 1, checkpoints: [...committed.filter((e) => !overwritten.includes(e)), entry] }
    const manifestVersion = versionPin(await this.putJson(MANIFEST_KEY, manifest, signal))
    this.manifest = manifest
    this.step('manifest', name)

    const latest: LatestPointer = definedFields({ version: 1, name, cid: record.cid, seq, time: record.time, manifestVersion })
    await this.putJson(LATEST_KEY, latest, signal)
    this.latest = latest
    this.committedSeq = seq
    this.step('latest', name)
    this.log.info({ checkpoint: name, cid: record.cid, bytes: record.size, ms: Date.now() - started, signer: record.signer }, 'checkpoint committed')

    const replaced = committed.filter((e) => e.name === name && !overwritten.includes(e))
    if (replaced.length > 0) await this.dropEntries(replaced, 'replaced')
    await this.applyRetention()
    return { entry, record, digest }
  }

  /**
   * Points `latest` at `entry`, with the manifest as it is (written again for its version, where
   * the bucket keeps versions): a crash from here on resumes from where this run went on from, and
   * the checkpoints after it are no longer committed.
   */
  private async moveLatestTo(entry: ManifestEntry, signal?: AbortSignal): Promise<void> {
    const manifestVersion = versionPin(await this.putJson(MANIFEST_KEY, this.manifest, signal))
    const latest: LatestPointer = definedFields({ version: 1, name: entry.name, cid: entry.cid, seq: entry.seq, time: entry.time, manifestVersion })
    await this.putJson(LATEST_KEY, latest, signal)
    const left = this.manifest.checkpoints.filter((e) => e.seq > entry.seq).map((e) => e.name)
    this.log.warn(
      { checkpoint: entry.name, was: this.latest?.name, left },
      'latest moved back to the checkpoint this run resumed from; its next commit replaces or leaves out the checkpoints after it',
    )
    this.latest = latest
    this.committedSeq = entry.seq
    this.resumedBehindLatest = undefined
  }

  /**
   * Uploads the plan's files and writes their sidecars and the record; every key it writes goes to
   * `written` first. Where the bucket keeps versions, also the versions of a file checkpoint's data
   * and of the record that the writes made, for the manifest entry.
   */
  private async storeObjects(
    ref: EntryRef,
    plan: CommitPlan,
    written: string[],
    signal?: AbortSignal,
  ): Promise<{ record: CheckpointRecord; digest: ContentDigest; versions: { dataVersion?: VersionPin; sidecarVersion?: VersionPin } }> {
    const { name } = ref
    const stored: { path: string; digest: ContentDigest; dagSize: number; head: ObjectInfo; version?: VersionPin }[] = []
    for (const file of plan.files) {
      const key = ref.kind === 'directory' ? directoryFileKey(ref, file.path) : contentKey(ref)
      written.push(key)
      let dagSize = 0
      let version: VersionPin | undefined
      const digest = await hashedUpload(this.client, key, file.content(), file.size, {
        partSize: this.options.partSize,
        parallel: this.options.parallel,
        signal,
        contentType: 'application/octet-stream',
        onPartStored: () => this.step('part', name),
        onDag: (d) => (dagSize = d.dagSize),
        onStored: (s) => (version = versionPin(s)),
        logger: this.log,
      })
      const head = await this.client.head(key, signal)
      if (head.size !== digest.size) throw new O3IntegrityError(`${this.store.where(key)}: server reports ${head.size} bytes after writing ${digest.size}`)
      if (ref.kind === 'directory') {
        const fileRecord = signFileRecord(
          {
            version: 1,
            name,
            rev: ref.rev,
            path: file.path,
            cid: digest.cid,
            sha256: digest.sha256,
            size: digest.size,
            time: new Date().toISOString(),
            step: plan.step,
            networkRootCid: head.networkRootCid,
            networkState: head.networkState,
          },
          this.signer,
        )
        written.push(sidecarKeyOf(key))
        await putSidecar(this.client, key, fileRecord, signal)
      }
      stored.push({ path: file.path, digest, dagSize, head, version })
    }
    this.step('data', name)

    let digest: ContentDigest
    let extra: Partial<CheckpointRecord>
    if (ref.kind === 'directory') {
      const dir = directoryCid(
        stored.map((f) => ({ path: f.path, cid: f.digest.cid, dagSize: f.dagSize })),
        (message) => new O3UsageError(`${ref.path}: ${message}`),
      )
      digest = { cid: dir.cid, sha256: dir.sha256, size: stored.reduce((n, f) => n + f.digest.size, 0) }
      extra = { files: stored.map((f) => ({ path: f.path, cid: f.digest.cid, sha256: f.digest.sha256, size: f.digest.size })) }
    } else {
      digest = stored[0]!.digest
      extra = { networkRootCid: stored[0]!.head.networkRootCid, networkState: stored[0]!.head.networkState }
    }
    const record = signRecord(
      {
        version: 1,
        ...ref,
        cid: digest.cid,
        sha256: digest.sha256,
        size: digest.size,
        time: new Date().toISOString(),
        step: plan.step,
        epoch: plan.epoch,
        ...plan.fields,
        ...extra,
      },
      this.signer,
    )
    const subject = ref.kind === 'directory' ? entryPrefix(ref) : contentKey(ref)
    written.push(sidecarKeyOf(subject))
    const sidecar = await putSidecar(this.client, subject, record, signal)
    // o3train keeps a local copy of each record beside its run; a put's files are the caller's own.
    if (ref.kind === undefined) await this.writeLocalSidecar(name, sidecar.text)
    this.step('sidecar', name)
    const dataVersion = ref.kind === 'directory' ? undefined : stored[0]!.version
    return { record, digest, versions: { dataVersion, sidecarVersion: versionPin(sidecar.stored) } }
  }

  /** Deletes what a failed commit wrote; what cannot be deleted now, the next writer's open does. */
  private async removeKeys(keys: readonly string[]): Promise<void> {
    for (const key of keys) {
      try {
        await this.client.delete(key)
      } catch (err) {
        this.log.warn({ key, err: (err as Error).message }, 'could not remove an object of a failed checkpoint; the next writer will')
      }
    }
  }

  private async writeLocalSidecar(name: string, text: string): Promise<void> {
    await mkdir(this.localDir, { recursive: true })
    const file = path.join(this.localDir, `${name}.safetensors.cid`)
    const tmp = `${file}.${process.pid}.tmp`
    await writeFile(tmp, text)
    await rename(tmp, file)
  }

  /** Keeps the newest `keepLast` and every `keepEvery`th save (retention.ts says which, and how they go). */
  private async applyRetention(): Promise<void> {
    const { keepLast, keepEvery } = this.options
    if (keepLast === undefined || !this.latest) return
    const drop = checkpointsToDrop(this.manifest, this.latest, { keepLast, keepEvery })
    if (drop.length > 0) await this.dropEntries(drop, 'retention')
  }

  /**
   * Takes `entries` out of the manifest (and `latest` onto that manifest's version), then deletes
   * their objects: every version of them where the bucket keeps versions (retention.ts).
   */
  private async dropEntries(entries: readonly ManifestEntry[], why: 'retention' | 'replaced'): Promise<void> {
    const message = why === 'retention' ? 'retention removed a checkpoint' : 'removed the replaced checkpoint'
    let r
    try {
      r = await dropCheckpoints(this.client, this.manifest, this.latest!, entries, { logger: this.log, message })
    } catch (err) {
      // Committed already: a replaced entry still listed is harmless, and the next writer drops it.
      if (why === 'retention') throw err
      this.log.warn({ err: (err as Error).message }, 'could not drop the replaced checkpoint from the manifest; the next writer will')
      return
    }
    this.manifest = r.manifest
    this.latest = r.latest
    for (const { entry } of r.removed) if (entry.kind === undefined) await rm(path.join(this.localDir, `${entry.name}.safetensors.cid`), { force: true })
  }
}

/** One file of a checkpoint: its path below a put directory (its own name, or '', for a single file), its size and its bytes. */
export interface PutFile {
  path: string
  size: number
  /** Called once; yields exactly `size` bytes, in chunks that stay unchanged until the upload settles. */
  content: () => Iterable<Uint8Array> | AsyncIterable<Uint8Array>
}

/** What `o3ckpt put` stores: one file, or a directory's files, with the fields of its record. */
export interface PutRequest {
  kind: EntryKind
  /** The file's or the directory's own name: `get` writes it there by default. */
  path: string
  files: PutFile[]
  /** Default: the run's last step + 1 (nextStep). */
  step?: number
  /** Default 0. */
  epoch?: number
  /** Replace the step's checkpoint if the run has one (else: refused). */
  replace?: boolean
  /** `--meta key=value`, recorded and signed with the record. */
  meta?: Record<string, string>
  dataLineage?: DataLineage
}

interface CommitPlan {
  step: number
  epoch: number
  kind?: EntryKind
  path?: string
  replace: boolean
  files: PutFile[]
  fields: Pick<CheckpointRecord, 'model' | 'meta' | 'data'>
}

function maxSeq(manifest: Manifest): number {
  return manifest.checkpoints.reduce((m, e) => Math.max(m, e.seq), 0)
}
