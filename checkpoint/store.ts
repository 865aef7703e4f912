import { ContentHasher, CID_BLOCK_SIZE, normalizeCid, verifyDigest, type ContentDigest } from '../lib/content/cid.js'
import { O3Error, O3IntegrityError, O3NotFoundError, O3UsageError, type O3Client } from '../lib/o3/index.js'
import { silentLogger, type Logger } from '../lib/log.js'
import { parseHeader, parseSafetensors, headerLength, type SafetensorsHeader, type StateTensor } from './safetensors.js'
import {
  CHECKPOINT_DIR,
  CHECKPOINT_NAME,
  LATEST_KEY,
  MANIFEST_KEY,
  checkRecordAgainstEntry,
  checkSignature,
  dataKey,
  parseLatest,
  parseManifest,
  parseRecord,
  sidecarKey,
  type CheckpointRecord,
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
  /** The run's signer under trust on first use, once found (undefined: the run signed nothing). */
  private firstSignerFound: Promise<string | undefined> | undefined

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
      const name = ref.replace(/\.safetensors$/, '')
      found = manifest.checkpoints.find((e) => e.name === name)
      if (!found && /^(baf|Qm)/.test(ref)) {
        const cid = normalizeCid(ref)
        found = manifest.checkpoints.find((e) => e.cid === cid)
      }
    }
    if (!found) throw new O3NotFoundError(`${this.location}: no checkpoint ${JSON.stringify(ref)} in ${MANIFEST_KEY}; run \`o3ckpt ls\` to see them`)
    return found
  }

  private latestEntry(manifest: Manifest, latest: LatestPointer): ManifestEntry {
    const entry = manifest.checkpoints.find((e) => e.name === latest.name)
    if (!entry) throw new O3IntegrityError(`${this.where(LATEST_KEY)} names ${latest.name}, which ${MANIFEST_KEY} does not list`)
    if (normalizeCid(entry.cid) !== normalizeCid(latest.cid))
      throw new O3IntegrityError(`${this.where(LATEST_KEY)}: CID ${latest.cid} differs from the manifest's ${entry.cid}`)
    return entry
  }

  /** The sidecar of a checkpoint, checked against the manifest, its signature and the trust policy. */
  async readRecord(entry: ManifestEntry, options: ReadOptions = {}): Promise<CheckpointRecord> {
    const { record, signer } = await this.readSignedRecord(entry, options.signal)
    const trust = options.trust ?? TrustPolicy.firstUse
    await trust.check(signer, this.where(sidecarKey(entry.name)), () => this.firstSigner(options.signal))
    return record
  }

  /**
   * The run's signer under trust on first use: the signer of its earliest sidecar (by step) whose
   * signature verifies, read from the sidecars under checkpoints/ themselves. The manifest's signer
   * fields are never believed, only compared with the sidecars (checkRecordAgainstEntry), so that
   * deleting them cannot make a signed run accept unsigned checkpoints. Undefined when no sidecar is
   * signed; O3IntegrityError when some are but no signature verifies.
   */
  firstSigner(signal?: AbortSignal): Promise<string | undefined> {
    this.firstSignerFound ??= this.findFirstSigner(signal).catch((err: unknown) => {
      this.firstSignerFound = undefined
      throw err
    })
    return this.firstSignerFound
  }

  private async findFirstSigner(signal?: AbortSignal): Promise<string | undefined> {
    const names: string[] = []
    for await (const o of this.client.list(CHECKPOINT_DIR, { signal })) {
      if (o.type !== 'object') continue
      const name = o.key.slice(CHECKPOINT_DIR.length).replace(/\.safetensors\.cid$/, '')
      if (CHECKPOINT_NAME.test(name) && sidecarKey(name) === o.key) names.push(name)
    }
    let signed = 0
    for (const name of names.sort()) {
      const key = sidecarKey(name)
      let record: CheckpointRecord | undefined
      try {
        const text = await this.readText(key, signal)
        record = text === undefined ? undefined : parseRecord(text, this.where(key))
      } catch (err) {
        if (!(err instanceof O3IntegrityError)) throw err
      }
      if (record?.signer === undefined && record?.signature === undefined) continue
      signed++
      try {
        // A record copied under another checkpoint's name does not count.
        if (record.name === name) return checkSignature(record, this.where(key))
      } catch (err) {
        if (!(err instanceof O3IntegrityError)) throw err
      }
    }
    if (signed === 0) return undefined
    throw new O3IntegrityError(
      `${this.location}: ${signed} sidecars carry a signature but none verifies, so the run's signer is unknown; name the signer to trust with --trust-signer`,
    )
  }

  /**
   * A sidecar checked against its manifest entry, with its signer once the signature, if any,
   * checks; nothing said yet about whether that signer is trusted.
   */
  async readSignedRecord(entry: ManifestEntry, signal?: AbortSignal): Promise<{ record: CheckpointRecord; signer?: string }> {
    const key = sidecarKey(entry.name)
    const text = await this.readText(key, signal)
    if (text === undefined) throw new O3NotFoundError(`${this.where(key)} is missing`)
    const record = parseRecord(text, this.where(key))
    checkRecordAgainstEntry(record, entry, this.where(key))
    return { record, signer: checkSignature(record, this.where(key)) }
  }

  /**
   * The ETag of a checkpoint's data once HEAD shows the object is as long as the manifest says, so
   * that nothing is sized by a manifest's word alone.
   */
  private async checkedDataEtag(entry: ManifestEntry, signal?: AbortSignal): Promise<string> {
    const key = dataKey(entry.name)
    const head = await this.client.head(key, signal)
    if (head.size !== entry.size)
      throw new O3IntegrityError(`${this.where(key)} is ${head.size} bytes but ${MANIFEST_KEY} records ${entry.size}; one of them was altered`)
    return head.etag
  }

  /**
   * Streams a checkpoint's bytes to `consume` while hashing them, then checks size, sha256 and CID
   * against the manifest. What `consume` received is only trustworthy once this resolves.
   */
  async download(entry: ManifestEntry, consume: (chunk: Buffer) => Promise<void> | void, signal?: AbortSignal): Promise<ContentDigest> {
    const key = dataKey(entry.name)
    const ifMatch = await this.checkedDataEtag(entry, signal)
    const hasher = new ContentHasher()
    let size = 0
    for await (const chunk of this.client.iterateRange(key, { signal, pin: { etag: ifMatch } })) {
      size += chunk.length
      if (size > entry.size) throw new O3IntegrityError(`${this.where(key)} is longer than its recorded ${entry.size} bytes`)
      await Promise.all([hasher.update(chunk), consume(chunk)])
    }
    const digest = await hasher.digest()
    verifyDigest(this.where(key), digest, entry)
    return digest
  }

  /** The whole verified file in one buffer, hashed in place (no second copy). */
  async fetchVerified(entry: ManifestEntry, signal?: AbortSignal): Promise<Buffer> {
    const key = dataKey(entry.name)
    const ifMatch = await this.checkedDataEtag(entry, signal)
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
  async load(ref: string | ManifestEntry, options: ReadOptions = {}): Promise<LoadedCheckpoint> {
    const entry = typeof ref === 'string' ? await this.resolve(ref, options.signal) : ref
    const record = await this.readRecord(entry, options)
    return this.parse(entry, record, await this.fetchVerified(entry, options.signal))
  }

  /** A checkpoint from its verified bytes: those `fetchVerified` returned, or a node-local copy of them. */
  parse(entry: ManifestEntry, record: CheckpointRecord, file: Buffer): LoadedCheckpoint {
    const { header, tensors } = parseSafetensors(file, this.where(dataKey(entry.name)))
    return { entry, record, header, file, tensors, meta: decodeMeta(header.metadata, this.where(dataKey(entry.name))) }
  }

  /**
   * The checkpoint to resume from: the one `latest` names or, if it fails verification, the newest
   * earlier one that passes (each failure logged as a warning). Undefined when nothing was ever
   * committed; O3IntegrityError when checkpoints exist but none verifies.
   */
  async resume(options: ReadOptions = {}): Promise<LoadedCheckpoint | undefined> {
    const manifest = await this.readManifest(options.signal)
    const latest = await this.usableLatest(manifest, options.signal)
    const committed = latest ? manifest.checkpoints.filter((e) => e.seq <= latest.seq) : manifest.checkpoints
    if (!latest && committed.length === 0) return undefined
    const candidates = [...committed].sort((a, b) => b.seq - a.seq)
    const failures: string[] = []
    for (const entry of candidates) {
      try {
        if (latest && entry.name === latest.name) this.latestEntry(manifest, latest)
        const loaded = await this.load(entry, options)
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

  /**
   * `latest` where it names a checkpoint of `manifest`; undefined when it is missing, malformed or
   * names another (each said in a warning while the manifest lists checkpoints), and then every
   * checkpoint of the manifest is a candidate, the newest that verifies first.
   */
  private async usableLatest(manifest: Manifest, signal?: AbortSignal): Promise<LatestPointer | undefined> {
    let latest: LatestPointer | undefined
    let why: string
    try {
      latest = await this.readLatest(signal)
      if (latest && manifest.checkpoints.some((e) => e.name === latest!.name)) return latest
      why = latest ? `${this.where(LATEST_KEY)} names ${latest.name}, which ${MANIFEST_KEY} does not list` : `${this.where(LATEST_KEY)} is missing`
    } catch (err) {
      if (!(err instanceof O3IntegrityError)) throw err
      why = err.message
    }
    if (manifest.checkpoints.length > 0) this.log.warn({ err: why }, "latest pointer unusable; resuming from the manifest's newest checkpoint that verifies")
    return undefined
  }

  /** The safetensors header of a stored checkpoint, read with two ranged GETs. */
  async readHeader(entry: ManifestEntry, signal?: AbortSignal): Promise<SafetensorsHeader> {
    const key = dataKey(entry.name)
    const first = await this.client.getBytes(key, 0, 7, { signal })
    const n = headerLength(first, entry.size, this.where(key))
    const prefix = await this.client.getBytes(key, 0, 8 + n - 1, { signal })
    return parseHeader(prefix, entry.size, this.where(key))
  }

  /** Full check of one checkpoint: sidecar, signature and its signer's trust, bytes. Never throws for a bad checkpoint. */
  async verify(entry: ManifestEntry, options: ReadOptions = {}): Promise<VerifyResult> {
    try {
      const record = await this.readRecord(entry, options)
      const digest = await this.download(entry, () => undefined, options.signal)
      return { entry, ok: true, signer: record.signer, digest }
    } catch (err) {
      if (!(err instanceof O3Error) || err instanceof O3UsageError) throw err
      return { entry, ok: false, error: err }
    }
  }
}

export type VerifyResult = { entry: ManifestEntry; ok: true; signer?: string; digest: ContentDigest } | { entry: ManifestEntry; ok: false; error: O3Error }
