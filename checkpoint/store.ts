import { ContentHasher, CID_BLOCK_SIZE, digestContent, normalizeCid, verifyDigest, type ContentDigest } from '../lib/content/cid.js'
import { sidecarKeyOf } from '../lib/content/sidecar.js'
import { directoryCid } from '../lib/content/unixfs-directory.js'
import { O3Error, O3IntegrityError, O3NotFoundError, O3UsageError, sameEtag, type O3Client, type ObjectPin } from '../lib/o3/index.js'
import { silentLogger, type Logger } from '../lib/log.js'
import { collectUpTo } from '../lib/collect-up-to.js'
import { parseHeader, parseSafetensors, headerLength, type SafetensorsHeader, type StateTensor } from './safetensors.js'
import {
  CHECKPOINT_DIR,
  CHECKPOINT_NAME,
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
  type VersionPin,
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
  private runSignerFound: Promise<string | undefined> | undefined

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

  /**
   * A control object's text, read no further than CONTROL_OBJECT_MAX; undefined when it does not
   * exist. With `pin`, exactly that version, and O3NotFoundError when it is gone.
   */
  private async readText(key: string, signal?: AbortSignal, pin?: VersionPin): Promise<string | undefined> {
    try {
      // A copy: the client records on a pin what the responses say.
      const bytes = await collectUpTo(
        this.client.iterateRange(key, { signal, pin: pin && { ...pin } }),
        CONTROL_OBJECT_MAX,
        () =>
          new O3IntegrityError(
            `${this.where(key)} is larger than ${CONTROL_OBJECT_MAX} bytes, too large for a checkpoint control object; it was not written by o3ckpt`,
          ),
      )
      return bytes.toString('utf8')
    } catch (err) {
      if (!(err instanceof O3NotFoundError)) throw err
      if (pin) throw new O3NotFoundError(`${this.where(key)}: version ${pin.versionId} is gone (${err.message})`, { cause: err })
      return undefined
    }
  }

  /** The run's manifest (the version `pin` names, if given); empty when the run has none yet. */
  async readManifest(signal?: AbortSignal, pin?: VersionPin): Promise<Manifest> {
    const text = await this.readText(MANIFEST_KEY, signal, pin)
    return text === undefined ? { version: 1, checkpoints: [] } : parseManifest(text, this.where(MANIFEST_KEY))
  }

  /**
   * readManifest() of a run whose `latest` is `latest` (undefined: none that parses), with
   * O3IntegrityError where manifest.json is missing but the run has checkpoints: without it nothing
   * tells a checkpoint from a leftover, so a writer would delete them all and resume would start
   * the run afresh. The manifest is written before `latest`, and before its first commit a run
   * holds the objects of one save at most (each writer's open deletes those of the one before):
   * so `latest`, or the objects of more than one checkpoint, mean that the manifest was lost.
   */
  async runManifest(latest: LatestPointer | undefined, signal?: AbortSignal, pin?: VersionPin): Promise<Manifest> {
    const text = await this.readText(MANIFEST_KEY, signal, pin)
    if (text !== undefined) return parseManifest(text, this.where(MANIFEST_KEY))
    let found = latest && `${LATEST_KEY} names ${latest.name}`
    const saves = new Set<string>()
    if (!found)
      for await (const o of this.client.list('', { signal })) {
        if (o.type !== 'object') continue
        if (o.key === LATEST_KEY) found = `${LATEST_KEY} exists`
        else if (o.key.startsWith(CHECKPOINT_DIR)) saves.add(o.key.slice(CHECKPOINT_DIR.length).split(/[./]/)[0]!)
      }
    if (!found && saves.size > 1) found = `${CHECKPOINT_DIR} holds the objects of ${saves.size} checkpoints`
    if (found)
      throw new O3IntegrityError(
        `${this.where(MANIFEST_KEY)} is missing but ${found}: the run's checkpoints cannot be told from leftovers; restore ${MANIFEST_KEY} (nothing was deleted)`,
      )
    return { version: 1, checkpoints: [] }
  }

  /**
   * `latest`, then the manifest committed with it: the version `latest` names where the bucket
   * keeps versions, so that a writer moving either meanwhile cannot hand over a manifest of another
   * commit. Such a version is gone only when later commits trimmed it: then `latest` is read again.
   * Without versions (or `latest`), the manifest as it is now. `onBadLatest`, if given, is told of
   * a `latest` that is no valid pointer, which then counts as absent; else that is an O3IntegrityError.
   */
  async snapshot(signal?: AbortSignal, onBadLatest?: (err: O3IntegrityError) => void): Promise<{ latest?: LatestPointer; manifest: Manifest }> {
    for (let attempt = 1; ; attempt++) {
      let latest: LatestPointer | undefined
      try {
        latest = await this.readLatest(signal)
      } catch (err) {
        if (!(err instanceof O3IntegrityError) || !onBadLatest) throw err
        onBadLatest(err)
      }
      try {
        return { latest, manifest: await this.runManifest(latest, signal, latest?.manifestVersion) }
      } catch (err) {
        if (!(err instanceof O3NotFoundError) || !latest?.manifestVersion || attempt >= 3) throw err
        this.log.info({ err: err.message }, 'the run committed again while it was read; reading latest again')
      }
    }
  }

  async readLatest(signal?: AbortSignal): Promise<LatestPointer | undefined> {
    const text = await this.readText(LATEST_KEY, signal)
    return text === undefined ? undefined : parseLatest(text, this.where(LATEST_KEY))
  }

  /**
   * Finds a checkpoint by `latest`, by name (`step-0000000100`, with or without `.safetensors`) or by
   * CID, in the manifest `latest` names (see snapshot).
   */
  async resolve(ref: string, signal?: AbortSignal): Promise<ManifestEntry> {
    const { latest, manifest } = await this.snapshot(signal)
    let found: ManifestEntry | undefined
    if (ref === 'latest') {
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

  /** The sidecar of a checkpoint, checked against the manifest, its signature and the trust policy. */
  async readRecord(entry: ManifestEntry, options: ReadOptions = {}): Promise<CheckpointRecord> {
    const { record, signer } = await this.readSignedRecord(entry, options.signal)
    const trust = options.trust ?? TrustPolicy.firstUse
    await this.checkTrust(signer, this.where(recordKey(entry)), trust, options.signal)
    return record
  }

  /** Throws O3IntegrityError unless `trust` accepts `signer` (undefined: unsigned) for this run, as TrustPolicy.check says. */
  async checkTrust(signer: string | undefined, what: string, trust: TrustPolicy, signal?: AbortSignal): Promise<void> {
    await trust.check(signer, what, () => this.runSigner(signal))
  }

  /**
   * The run's signer under trust on first use: the one signer of its record sidecars whose
   * signatures verify, read from the sidecars under checkpoints/ themselves. The manifest's signer
   * fields are never believed, only compared with the sidecars (checkRecordAgainstEntry), so that
   * deleting them cannot make a signed run accept unsigned checkpoints. Undefined when no record is
   * signed; O3IntegrityError when some are but no signature verifies, or when they verify to more
   * than one signer: anyone who can write to the bucket can add a record signed by their own key,
   * at any step, so no order among them tells which is the run's. Found once per store (a listing
   * and the records' reads), a failure asked again.
   */
  runSigner(signal?: AbortSignal): Promise<string | undefined> {
    this.runSignerFound ??= this.findRunSigner(signal).catch((err: unknown) => {
      this.runSignerFound = undefined
      throw err
    })
    return this.runSignerFound
  }

  private async findRunSigner(signal?: AbortSignal): Promise<string | undefined> {
    // A record is `<name>.safetensors.cid`, `<folder>.cid` (a directory) or `<folder>/<file>.cid`
    // (a put file); deeper sidecars are a directory's per-file records.
    const keys: string[] = []
    for await (const o of this.client.list(CHECKPOINT_DIR, { signal })) {
      if (o.type === 'object' && o.key.endsWith('.cid') && o.key.slice(CHECKPOINT_DIR.length).split('/').length <= 2) keys.push(o.key)
    }
    let signed = 0
    // By address, lower case; the first spelling seen names it in messages.
    const signers = new Map<string, string>()
    for (const key of keys.sort()) {
      let record: CheckpointRecord | undefined
      try {
        const text = await this.readText(key, signal)
        record = text === undefined ? undefined : parseRecord(text, this.where(key))
      } catch (err) {
        if (!(err instanceof O3IntegrityError)) throw err
      }
      if (record?.signer === undefined && record?.signature === undefined) continue
      // A record copied under another checkpoint's key does not count.
      if (!CHECKPOINT_NAME.test(record.name) || recordKey(record) !== key) continue
      signed++
      try {
        const signer = checkSignature(record, this.where(key))!
        if (!signers.has(signer.toLowerCase())) signers.set(signer.toLowerCase(), signer)
      } catch (err) {
        if (!(err instanceof O3IntegrityError)) throw err
      }
    }
    if (signers.size > 1)
      throw new O3IntegrityError(
        `${this.location}: its checkpoints are signed by ${signers.size} different keys (${[...signers.values()].join(', ')}), so trust on first use cannot tell which is the run's; name the signer to trust with --trust-signer`,
      )
    if (signers.size === 1) return [...signers.values()][0]
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
    const key = recordKey(entry)
    const text = await this.readText(key, signal, entry.sidecarVersion)
    if (text === undefined) throw new O3NotFoundError(`${this.where(key)} is missing`)
    const record = parseRecord(text, this.where(key))
    checkRecordAgainstEntry(record, entry, this.where(key))
    return { record, signer: checkSignature(record, this.where(key)) }
  }

  /**
   * The version of an object to read, once HEAD shows it is as long as `source` (the manifest, or a
   * directory's record) says, so that nothing is sized by a record's word alone: the version
   * `recorded` names where the bucket keeps versions (its ETag checked too), else the one there
   * now. Every read of the object is pinned to it.
   */
  private async checkedPin(key: string, size: number, source: string, recorded: VersionPin | undefined, signal?: AbortSignal): Promise<ObjectPin> {
    const head = await this.client.head(key, signal, recorded?.versionId)
    if (recorded && !sameEtag(head.etag, recorded.etag))
      throw new O3IntegrityError(`${this.where(key)} version ${recorded.versionId} has ETag ${head.etag}, but ${source} records ${recorded.etag}`)
    if (head.size !== size) throw new O3IntegrityError(`${this.where(key)} is ${head.size} bytes but ${source} records ${size}; one of them was altered`)
    return { etag: head.etag, versionId: recorded?.versionId ?? head.versionId }
  }

  /**
   * Streams a file checkpoint's bytes to `consume` while hashing them, then checks size, sha256
   * and CID against the manifest. What `consume` received is only trustworthy once this resolves.
   */
  async download(entry: ManifestEntry, consume: (chunk: Buffer) => Promise<void> | void, signal?: AbortSignal): Promise<ContentDigest> {
    return (await this.downloadObject(contentKey(entry), entry, MANIFEST_KEY, consume, signal, entry.dataVersion)).digest
  }

  /** One object's bytes to `consume`, hashed as they pass and checked against `expected`; also the DAG size of its CID. */
  private async downloadObject(
    key: string,
    expected: ContentDigest,
    source: string,
    consume: (chunk: Buffer) => Promise<void> | void,
    signal?: AbortSignal,
    recorded?: VersionPin,
  ): Promise<{ digest: ContentDigest; dagSize: number }> {
    const pin = await this.checkedPin(key, expected.size, source, recorded, signal)
    const hasher = new ContentHasher()
    let size = 0
    // An empty object has no range to ask for; HEAD said it is empty.
    const chunks = expected.size === 0 ? [] : this.client.iterateRange(key, { signal, pin })
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
    const pin = await this.checkedPin(key, entry.size, MANIFEST_KEY, entry.dataVersion, signal)
    const buf = Buffer.allocUnsafeSlow(entry.size)
    const hasher = new ContentHasher()
    let pos = 0
    let hashed = 0
    for await (const chunk of this.client.iterateRange(key, { signal, pin })) {
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

  /**
   * A checkpoint from a copy of its bytes made by someone else (a node's shared download), checked
   * as a download is: the entry and record come from the run itself (the record under the trust
   * policy), and the copy's size, sha256 and CID must be theirs.
   */
  async loadCopy(name: string, file: Buffer, options: ReadOptions = {}): Promise<LoadedCheckpoint> {
    const entry = currentEntry((await this.readManifest(options.signal)).checkpoints, name)
    if (!entry) throw new O3NotFoundError(`${this.location}: no checkpoint ${JSON.stringify(name)} in ${MANIFEST_KEY}`)
    const record = await this.readRecord(entry, options)
    verifyDigest(`${this.where(contentKey(entry))} (a local copy)`, await digestContent(file), entry)
    return this.parse(entry, record, file)
  }

  /** A checkpoint from its verified bytes (those `fetchVerified` returned, or a copy loadCopy checked). */
  parse(entry: ManifestEntry, record: CheckpointRecord, file: Buffer): LoadedCheckpoint {
    const { header, tensors } = parseSafetensors(file, this.where(contentKey(entry)))
    return { entry, record, header, file, tensors, meta: decodeMeta(header.metadata, this.where(contentKey(entry))) }
  }

  /**
   * The checkpoint to resume from: the one `latest` names or, if it fails verification, the newest
   * earlier one that passes (each failure logged as a warning). Undefined when nothing was ever
   * committed; O3IntegrityError when checkpoints exist but none verifies, or the run's signer cannot be told.
   */
  async resume(options: ReadOptions = {}): Promise<LoadedCheckpoint | undefined> {
    const { latest, manifest } = await this.usableSnapshot(options.signal)
    const committed = latest ? manifest.checkpoints.filter((e) => e.seq <= latest.seq) : manifest.checkpoints
    if (!latest && committed.length === 0) return undefined
    const candidates = [...committed].sort((a, b) => b.seq - a.seq)
    await (options.trust ?? TrustPolicy.firstUse).checkRun(() => this.runSigner(options.signal))
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
   * snapshot(), with `latest` only where it names a checkpoint of the manifest: a missing,
   * malformed or dangling `latest` is said in a warning (while the manifest lists checkpoints) and
   * left out, and then every checkpoint of the manifest is a candidate, the newest that verifies first.
   */
  private async usableSnapshot(signal?: AbortSignal): Promise<{ latest?: LatestPointer; manifest: Manifest }> {
    let why: string | undefined
    const { latest, manifest } = await this.snapshot(signal, (err) => (why = err.message))
    if (latest && manifest.checkpoints.some((e) => e.name === latest.name)) return { latest, manifest }
    why ??= latest ? `${this.where(LATEST_KEY)} names ${latest.name}, which ${MANIFEST_KEY} does not list` : `${this.where(LATEST_KEY)} is missing`
    if (manifest.checkpoints.length > 0) this.log.warn({ err: why }, "latest pointer unusable; resuming from the manifest's newest checkpoint that verifies")
    return { manifest }
  }

  /** The safetensors header of a stored checkpoint, read with two ranged GETs. */
  async readHeader(entry: ManifestEntry, signal?: AbortSignal): Promise<SafetensorsHeader> {
    const key = contentKey(entry)
    const pin = await this.checkedPin(key, entry.size, MANIFEST_KEY, entry.dataVersion, signal)
    const first = await this.client.getBytes(key, 0, 7, { signal, pin })
    const n = headerLength(first, entry.size, this.where(key))
    const prefix = await this.client.getBytes(key, 0, 8 + n - 1, { signal, pin })
    return parseHeader(prefix, entry.size, this.where(key))
  }

  /** Full check of one checkpoint: sidecar, signature and its signer's trust, bytes. Never throws for a bad checkpoint. */
  async verify(entry: ManifestEntry, options: ReadOptions = {}): Promise<VerifyResult> {
    try {
      const record = await this.readRecord(entry, options)
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
