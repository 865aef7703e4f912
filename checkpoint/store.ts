import { ContentHasher, CID_BLOCK_SIZE, normalizeCid, verifyDigest, type ContentDigest } from '../lib/content/cid.js'
import { sidecarKeyOf } from '../lib/content/sidecar.js'
import { directoryCid } from '../lib/content/unixfs-directory.js'
import { O3Error, O3IntegrityError, O3NotFoundError, O3UsageError, type O3Client } from '../lib/o3/index.js'
import { silentLogger, type Logger } from '../lib/log.js'
import { parseHeader, parseSafetensors, headerLength, type SafetensorsHeader, type StateTensor } from './safetensors.js'
import {
  LATEST_KEY,
  MANIFEST_KEY,
  checkFileRecord,
  checkRecordAgainstEntry,
  checkSignature,
  contentKey,
  currentEntry,
  directoryFileKey,
  parseLatest,
  parseManifest,
  parseRecord,
  recordKey,
  type CheckpointRecord,
  type DirectoryFileRecord,
  type LatestPointer,
  type Manifest,
  type ManifestEntry,
} from './records.js'
import { decodeMeta, type CheckpointMeta } from './meta.js'
import { TrustPolicy } from './trust.js'

/** Manifests, pointers and sidecars are small; a larger one is not ours and is not read whole. */
export const CONTROL_OBJECT_MAX = 4 << 20

export interface ReadOptions {
  signal?: AbortSignal
  /** Whose signatures are accepted; default: trust on first use per run. */
  trust?: TrustPolicy
}

export interface LoadedCheckpoint {
  entry: ManifestEntry
  record: CheckpointRecord
  meta: CheckpointMeta
  header: SafetensorsHeader
  /** The whole verified file. */
  file: Buffer
  /** Views of `file`. */
  tensors: StateTensor[]
}

/**
 * Read side of a run's checkpoints in O3: `latest` -> manifest -> sidecar -> data. Nothing is
 * returned before the bytes have been checked against the recorded sha256 and CID.
 */
export class CheckpointStore {
  private readonly log: Logger

  constructor(
    readonly client: O3Client,
    logger?: Logger,
  ) {
    this.log = logger ?? silentLogger
  }

  /** `o3://bucket/prefix` of the run, for messages. */
  get location(): string {
    return `o3://${this.client.location}`
  }

  /** `o3://bucket/prefix/key` of one of the run's objects, for messages. */
  where(key: string): string {
    return `${this.location}/${key}`
  }

  /** A control object's text, read no further than CONTROL_OBJECT_MAX; undefined when it does not exist. */
  private async readText(key: string, signal?: AbortSignal): Promise<string | undefined> {
    try {
      const chunks: Buffer[] = []
      let size = 0
      for await (const c of this.client.iterateRange(key, { signal })) {
        size += c.length
        if (size > CONTROL_OBJECT_MAX)
          throw new O3IntegrityError(
            `${this.where(key)} is larger than ${CONTROL_OBJECT_MAX} bytes, too large for a checkpoint control object; it was not written by o3ckpt`,
          )
        chunks.push(c)
      }
      return Buffer.concat(chunks).toString('utf8')
    } catch (err) {
      if (err instanceof O3NotFoundError) return undefined
      throw err
    }
  }

  /** The run's manifest; empty when the run has none yet. */
  async readManifest(signal?: AbortSignal): Promise<Manifest> {
    const text = await this.readText(MANIFEST_KEY, signal)
    return text === undefined ? { version: 1, checkpoints: [] } : parseManifest(text, this.where(MANIFEST_KEY))
  }

  async readLatest(signal?: AbortSignal): Promise<LatestPointer | undefined> {
    const text = await this.readText(LATEST_KEY, signal)
    return text === undefined ? undefined : parseLatest(text, this.where(LATEST_KEY))
  }

  /** Finds a checkpoint by `latest`, by name (`step-0000000100`, with or without `.safetensors`) or by CID. */
  async resolve(ref: string, signal?: AbortSignal): Promise<ManifestEntry> {
    const manifest = await this.readManifest(signal)
    let found: ManifestEntry | undefined
    if (ref === 'latest') {
      const latest = await this.readLatest(signal)
      if (!latest) throw new O3NotFoundError(`${this.location} has no committed checkpoint (no ${LATEST_KEY})`)
      found = this.latestEntry(manifest, latest)
    } else {
      found = currentEntry(manifest.checkpoints, ref.replace(/\.safetensors$/, ''))
      if (!found && /^(baf|Qm)/.test(ref)) {
        const cid = normalizeCid(ref)
        // The newest with that CID: the manifest lists entries in the order they were saved.
        found = [...manifest.checkpoints].reverse().find((e) => e.cid === cid)
      }
    }
    if (!found) throw new O3NotFoundError(`${this.location}: no checkpoint ${JSON.stringify(ref)} in ${MANIFEST_KEY}; run \`o3ckpt ls\` to see them`)
    return found
  }

  private latestEntry(manifest: Manifest, latest: LatestPointer): ManifestEntry {
    // By seq as well: while a replacement commits, the manifest lists its name twice.
    const entry = manifest.checkpoints.find((e) => e.name === latest.name && e.seq === latest.seq) ?? currentEntry(manifest.checkpoints, latest.name)
    if (!entry) throw new O3IntegrityError(`${this.where(LATEST_KEY)} names ${latest.name}, which ${MANIFEST_KEY} does not list`)
    if (normalizeCid(entry.cid) !== normalizeCid(latest.cid))
      throw new O3IntegrityError(`${this.where(LATEST_KEY)}: CID ${latest.cid} differs from the manifest's ${entry.cid}`)
    return entry
  }

  /**
   * The sidecar of a checkpoint, checked against the manifest, its signature and the trust policy.
   * `manifest` saves a read when the caller holds it already.
   */
  async readRecord(entry: ManifestEntry, options: ReadOptions = {}, manifest?: Manifest): Promise<CheckpointRecord> {
    const { record, signer } = await this.readSignedRecord(entry, options.signal)
    const trust = options.trust ?? TrustPolicy.firstUse
    await this.checkTrust(signer, this.where(recordKey(entry)), trust, manifest ?? (await this.readManifest(options.signal)), options.signal)
    return record
  }

  /** Throws O3IntegrityError unless `trust` accepts `signer` (undefined: unsigned) for this run, as TrustPolicy.check says. */
  async checkTrust(signer: string | undefined, what: string, trust: TrustPolicy, manifest: Manifest, signal?: AbortSignal): Promise<void> {
    await trust.check(signer, what, manifest, async (e) => (await this.readSignedRecord(e, signal)).signer)
  }

  /** A sidecar whose signature, if any, checks; nothing said yet about whether its signer is trusted. */
  private async readSignedRecord(entry: ManifestEntry, signal?: AbortSignal): Promise<{ record: CheckpointRecord; signer?: string }> {
    const key = recordKey(entry)
    const text = await this.readText(key, signal)
    if (text === undefined) throw new O3NotFoundError(`${this.where(key)} is missing`)
    const record = parseRecord(text, this.where(key))
    checkRecordAgainstEntry(record, entry, this.where(key))
    return { record, signer: checkSignature(record, this.where(key)) }
  }

  /**
   * The ETag of an object once HEAD shows it is as long as `source` (the manifest, or a directory's
   * record) says, so that nothing is sized by a record's word alone.
   */
  private async checkedEtag(key: string, size: number, source: string, signal?: AbortSignal): Promise<string> {
    const head = await this.client.head(key, signal)
    if (head.size !== size) throw new O3IntegrityError(`${this.where(key)} is ${head.size} bytes but ${source} records ${size}; one of them was altered`)
    return head.etag
  }

  /**
   * Streams a file checkpoint's bytes to `consume` while hashing them, then checks size, sha256
   * and CID against the manifest. What `consume` received is only trustworthy once this resolves.
   */
  async download(entry: ManifestEntry, consume: (chunk: Buffer) => Promise<void> | void, signal?: AbortSignal): Promise<ContentDigest> {
    return (await this.downloadObject(contentKey(entry), entry, MANIFEST_KEY, consume, signal)).digest
  }

  /** One object's bytes to `consume`, hashed as they pass and checked against `expected`; also the DAG size of its CID. */
  private async downloadObject(
    key: string,
    expected: ContentDigest,
    source: string,
    consume: (chunk: Buffer) => Promise<void> | void,
    signal?: AbortSignal,
  ): Promise<{ digest: ContentDigest; dagSize: number }> {
    const ifMatch = await this.checkedEtag(key, expected.size, source, signal)
    const hasher = new ContentHasher()
    let size = 0
    // An empty object has no range to ask for; HEAD said it is empty.
    const chunks = expected.size === 0 ? [] : this.client.iterateRange(key, { signal, pin: { etag: ifMatch } })
    for await (const chunk of chunks) {
      size += chunk.length
      if (size > expected.size) throw new O3IntegrityError(`${this.where(key)} is longer than its recorded ${expected.size} bytes`)
      await Promise.all([hasher.update(chunk), consume(chunk)])
    }
    const digest = await hasher.digest()
    verifyDigest(this.where(key), digest, expected)
    return { digest, dagSize: hasher.dagSize }
  }

  /**
   * Streams every file of a directory checkpoint: each file's sidecar is checked against the
   * record (CID, sha256, size, signature, signer), its bytes go to the consumer `open` returns for
   * its path while they are hashed and checked, and at the end the directory CID rebuilt from the
   * files' recomputed CIDs must be the entry's. `record` must come from readRecord (trust checked).
   * What the consumers received is only trustworthy once this resolves.
   */
  async downloadDirectory(
    entry: ManifestEntry,
    record: CheckpointRecord,
    open: (file: DirectoryFileRecord) => Promise<FileSink> | FileSink,
    signal?: AbortSignal,
  ): Promise<ContentDigest> {
    const where = this.where(recordKey(entry))
    const members: { path: string; cid: string; dagSize: number }[] = []
    for (const file of record.files ?? []) {
      const key = directoryFileKey(entry, file.path)
      const sidecar = await this.readText(sidecarKeyOf(key), signal)
      if (sidecar === undefined) throw new O3NotFoundError(`${this.where(sidecarKeyOf(key))} is missing`)
      checkFileRecord(sidecar, record, file, this.where(sidecarKeyOf(key)))
      const sink = await open(file)
      try {
        const { digest, dagSize } = await this.downloadObject(key, file, "the checkpoint's record", (c) => sink.write(c), signal)
        members.push({ path: file.path, cid: digest.cid, dagSize })
      } finally {
        await sink.close()
      }
    }
    const dir = directoryCid(members, (message) => new O3IntegrityError(`${where}: ${message}`))
    const digest = { cid: dir.cid, sha256: dir.sha256, size: (record.files ?? []).reduce((n, f) => n + f.size, 0) }
    verifyDigest(`${where} (the directory)`, digest, entry)
    return digest
  }

  /** The whole verified file in one buffer, hashed in place (no second copy). */
  async fetchVerified(entry: ManifestEntry, signal?: AbortSignal): Promise<Buffer> {
    const key = contentKey(entry)
    const ifMatch = await this.checkedEtag(key, entry.size, MANIFEST_KEY, signal)
    const buf = Buffer.allocUnsafeSlow(entry.size)
    const hasher = new ContentHasher()
    let pos = 0
    let hashed = 0
    for await (const chunk of this.client.iterateRange(key, { signal, pin: { etag: ifMatch } })) {
      if (pos + chunk.length > buf.length) throw new O3IntegrityError(`${this.where(key)} is longer than its recorded ${entry.size} bytes`)
      chunk.copy(buf, pos)
      pos += chunk.length
      // Whole 1 MiB blocks of `buf` are hashed where they lie.
      const aligned = pos - (pos % CID_BLOCK_SIZE)
      if (aligned - hashed >= 8 * CID_BLOCK_SIZE) {
        await hasher.update(buf.subarray(hashed, aligned))
        hashed = aligned
      }
    }
    await hasher.update(buf.subarray(hashed, pos))
    verifyDigest(this.where(key), await hasher.digest(), entry)
    return buf
  }

  /** Downloads, verifies and parses a checkpoint. */
  async load(ref: string | ManifestEntry, options: ReadOptions = {}, manifest?: Manifest): Promise<LoadedCheckpoint> {
    const entry = typeof ref === 'string' ? await this.resolve(ref, options.signal) : ref
    const record = await this.readRecord(entry, options, manifest)
    return this.parse(entry, record, await this.fetchVerified(entry, options.signal))
  }

  /** A checkpoint from its verified bytes: those `fetchVerified` returned, or a node-local copy of them. */
  parse(entry: ManifestEntry, record: CheckpointRecord, file: Buffer): LoadedCheckpoint {
    const { header, tensors } = parseSafetensors(file, this.where(contentKey(entry)))
    return { entry, record, header, file, tensors, meta: decodeMeta(header.metadata, this.where(contentKey(entry))) }
  }

  /**
   * The checkpoint to resume from: the one `latest` names or, if it fails verification, the newest
   * earlier one that passes (each failure logged as a warning). Undefined when nothing was ever
   * committed; O3IntegrityError when checkpoints exist but none verifies.
   */
  async resume(options: ReadOptions = {}): Promise<LoadedCheckpoint | undefined> {
    const manifest = await this.readManifest(options.signal)
    let latest: LatestPointer | undefined
    try {
      latest = await this.readLatest(options.signal)
    } catch (err) {
      if (!(err instanceof O3IntegrityError)) throw err
      this.log.warn({ err: err.message }, "latest pointer unreadable; trying the manifest's checkpoints")
    }
    const committed = latest ? manifest.checkpoints.filter((e) => e.seq <= latest.seq) : manifest.checkpoints
    if (!latest && committed.length === 0) return undefined
    const candidates = [...committed].sort((a, b) => b.seq - a.seq)
    const failures: string[] = []
    for (const entry of candidates) {
      try {
        if (latest && entry.name === latest.name) this.latestEntry(manifest, latest)
        const loaded = await this.load(entry, options, manifest)
        if (failures.length > 0) this.log.warn({ checkpoint: entry.name, cid: entry.cid, skipped: failures }, 'resuming from an earlier checkpoint')
        return loaded
      } catch (err) {
        if (!(err instanceof O3IntegrityError || err instanceof O3NotFoundError)) throw err
        failures.push(`${entry.name}: ${err.message}`)
        this.log.warn({ checkpoint: entry.name, err: err.message }, 'checkpoint failed verification; falling back to the previous one')
      }
    }
    throw new O3IntegrityError(`${this.location}: no checkpoint passes verification (${failures.join(' | ') || 'latest names none'})`)
  }

  /** The safetensors header of a stored checkpoint, read with two ranged GETs. */
  async readHeader(entry: ManifestEntry, signal?: AbortSignal): Promise<SafetensorsHeader> {
    const key = contentKey(entry)
    const first = await this.client.getBytes(key, 0, 7, { signal })
    const n = headerLength(first, entry.size, this.where(key))
    const prefix = await this.client.getBytes(key, 0, 8 + n - 1, { signal })
    return parseHeader(prefix, entry.size, this.where(key))
  }

  /** Full check of one checkpoint: sidecar, signature and its signer's trust, bytes. Never throws for a bad checkpoint. */
  async verify(entry: ManifestEntry, options: ReadOptions = {}, manifest?: Manifest): Promise<VerifyResult> {
    try {
      const record = await this.readRecord(entry, options, manifest)
      const digest =
        entry.kind === 'directory'
          ? await this.downloadDirectory(entry, record, () => DISCARD, options.signal)
          : await this.download(entry, () => undefined, options.signal)
      return { entry, ok: true, signer: record.signer, digest }
    } catch (err) {
      if (!(err instanceof O3Error) || err instanceof O3UsageError) throw err
      return { entry, ok: false, error: err }
    }
  }
}

/** Where downloadDirectory sends one file's bytes. */
export interface FileSink {
  write(chunk: Buffer): Promise<void> | void
  close(): Promise<void> | void
}

const DISCARD: FileSink = { write: () => undefined, close: () => undefined }

export type VerifyResult = { entry: ManifestEntry; ok: true; signer?: string; digest: ContentDigest } | { entry: ManifestEntry; ok: false; error: O3Error }
