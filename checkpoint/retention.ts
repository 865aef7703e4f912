import { O3Error, type O3Client, type ObjectVersion, type StoredObject } from '../lib/o3/index.js'
import { silentLogger, type Logger } from '../lib/log.js'
import {
  LATEST_KEY,
  MANIFEST_KEY,
  dataKey,
  entryPrefix,
  ownsKey,
  recordKey,
  sidecarKey,
  versionPin,
  type LatestPointer,
  type Manifest,
  type ManifestEntry,
} from './records.js'

/** Keep the newest `keepLast` committed checkpoints and also every `keepEvery`th save (by `seq`). */
export interface RetentionPolicy {
  keepLast: number
  keepEvery?: number
}

/**
 * The checkpoints `policy` drops from `manifest`: committed ones only (up to `latest`), never the
 * one `latest` names. Entries after `latest` were never committed and are left to the next writer.
 */
export function checkpointsToDrop(manifest: Manifest, latest: LatestPointer, policy: RetentionPolicy): ManifestEntry[] {
  const committed = manifest.checkpoints.filter((e) => e.seq <= latest.seq)
  const newest = new Set(committed.slice(-policy.keepLast).map((e) => e.name))
  const keep = (e: ManifestEntry) => e.name === latest.name || newest.has(e.name) || (policy.keepEvery !== undefined && e.seq % policy.keepEvery === 0)
  return committed.filter((e) => !keep(e))
}

export interface Removed {
  entry: ManifestEntry
  /** Versions and delete markers deleted; in a bucket without versions, the objects deleted. */
  versions: number
  /** Bytes freed: the versions' sizes as listed; in a bucket without versions, the checkpoint's recorded size. */
  bytes: number
}

export interface DropResult {
  manifest: Manifest
  latest: LatestPointer
  removed: Removed[]
  /** Checkpoints dropped from the manifest whose objects could not all be deleted; the next writer's start-up removes them. */
  failed: { entry: ManifestEntry; error: O3Error }[]
}

export interface DropOptions {
  logger?: Logger
  signal?: AbortSignal
  /** The log line of each checkpoint removed. */
  message?: string
}

/**
 * Applies `policy` to a run (see dropCheckpoints); with `dryRun`, only says what it would remove
 * and how much that holds.
 */
export async function prune(
  client: O3Client,
  manifest: Manifest,
  latest: LatestPointer,
  policy: RetentionPolicy,
  options: DropOptions & { dryRun?: boolean } = {},
): Promise<DropResult> {
  const drop = checkpointsToDrop(manifest, latest, policy)
  if (!options.dryRun) return dropCheckpoints(client, manifest, latest, drop, options)
  const versioned = drop.length > 0 && (await client.bucketVersioning(options.signal)) !== 'unversioned'
  const removed: Removed[] = []
  for (const entry of drop)
    removed.push(
      versioned ? (await versionsOf(client, entry, options.signal)).removed : { entry, versions: (await objectsOf(client, entry)).length, bytes: entry.size },
    )
  return { manifest, latest, removed, failed: [] }
}

/**
 * Takes `drop` out of the run under the commit protocol: the manifest without them, then `latest`
 * again naming that manifest's version (where the bucket keeps versions), and only then their
 * objects, record first, so that neither the manifest nor `latest` ever names a deleted checkpoint
 * and what is left of one never passes for complete. In a bucket that keeps versions (enabled or
 * suspended) every version and delete marker of the dropped checkpoints' objects is deleted, so
 * their storage is freed, and `manifest.json` and `latest` keep only their current and previous
 * versions (a reader two commits behind reads `latest` again: CheckpointStore.snapshot). Without
 * versions each object is deleted once, as before. A failure to write the manifest or `latest`
 * throws before anything is deleted; one while deleting is reported in `failed`.
 */
export async function dropCheckpoints(
  client: O3Client,
  manifest: Manifest,
  latest: LatestPointer,
  drop: readonly ManifestEntry[],
  options: DropOptions = {},
): Promise<DropResult> {
  if (drop.length === 0) return { manifest, latest, removed: [], failed: [] }
  const log = options.logger ?? silentLogger
  const versioned = (await client.bucketVersioning(options.signal)) !== 'unversioned'
  const kept: Manifest = { version: 1, checkpoints: manifest.checkpoints.filter((e) => !drop.includes(e)) }
  const manifestVersion = versionPin(await putJson(client, MANIFEST_KEY, kept, options.signal))
  let pointer = latest
  if (manifestVersion) {
    pointer = { ...latest, manifestVersion }
    await putJson(client, LATEST_KEY, pointer, options.signal)
  }
  const removed: Removed[] = []
  const failed: DropResult['failed'] = []
  for (const entry of drop) {
    try {
      const r = versioned ? await deleteVersions(client, entry, options.signal) : await deleteOnce(client, entry)
      removed.push(r)
      log.info({ checkpoint: entry.name, seq: entry.seq, versions: r.versions, bytes: r.bytes }, options.message ?? 'retention removed a checkpoint')
    } catch (err) {
      if (!(err instanceof O3Error) || options.signal?.aborted) throw err
      failed.push({ entry, error: err })
      log.warn({ checkpoint: entry.name, err: err.message }, 'could not remove a checkpoint; the next writer will')
    }
  }
  if (versioned) {
    try {
      await trimHistory(client, [MANIFEST_KEY, LATEST_KEY], options.signal)
    } catch (err) {
      if (!(err instanceof O3Error) || options.signal?.aborted) throw err
      log.warn({ err: err.message }, 'could not delete old versions of the manifest and latest; the next pruning will')
    }
  }
  return { manifest: kept, latest: pointer, removed, failed }
}

/** How a control object is written: pretty JSON with a newline. */
export function putJson(client: O3Client, key: string, value: unknown, signal?: AbortSignal): Promise<StoredObject> {
  return client.put(key, `${JSON.stringify(value, null, 2)}\n`, { contentType: 'application/json', signal })
}

/** Without versions, a checkpoint's objects: its record first, then its data (o3train's one object, or everything below a put's folder). */
async function objectsOf(client: O3Client, e: ManifestEntry): Promise<string[]> {
  if (e.kind === undefined) return [sidecarKey(e.name), dataKey(e.name)]
  const keys = [recordKey(e)]
  for await (const o of client.list(`${entryPrefix(e)}/`)) if (o.type === 'object') keys.push(o.key)
  return keys
}

/** As before versions: each object deleted once. */
async function deleteOnce(client: O3Client, e: ManifestEntry): Promise<Removed> {
  const keys = await objectsOf(client, e)
  for (const key of keys) await client.delete(key)
  return { entry: e, versions: keys.length, bytes: e.size }
}

/** Every version and delete marker of a checkpoint's own objects, its record's first, with their total size. */
async function versionsOf(client: O3Client, entry: ManifestEntry, signal?: AbortSignal): Promise<{ removed: Removed; list: ObjectVersion[] }> {
  const list: ObjectVersion[] = []
  // One listing covers them all: every key a checkpoint owns starts with its folder's name.
  for await (const v of client.listVersions(entryPrefix(entry), { signal })) if (ownsKey(entry, v.key)) list.push(v)
  // The record first, so that what is left of a checkpoint never passes for complete; then by key,
  // descending, and within a key the current version last. Real S3 needs no order, but Swift 2.30's
  // s3api, when the current version is deleted by id, "restores" the newest version it lists under
  // the key taken as a prefix (`x.cid`'s for `x`), and waits 60 s for a request body that never
  // comes: in this order no version is left under that prefix by then.
  const record = recordKey(entry)
  const rank = (v: ObjectVersion) => (v.key === record ? 0 : 1)
  list.sort((a, b) => rank(a) - rank(b) || (a.key < b.key ? 1 : a.key > b.key ? -1 : 0) || Number(a.isLatest) - Number(b.isLatest))
  return { list, removed: { entry, versions: list.length, bytes: list.reduce((n, v) => n + v.size, 0) } }
}

async function deleteVersions(client: O3Client, entry: ManifestEntry, signal?: AbortSignal): Promise<Removed> {
  const { list, removed } = await versionsOf(client, entry, signal)
  for (const v of list) await client.deleteVersion(v.key, v.versionId, signal)
  return removed
}

/** Deletes all but the current and the previous version of each key. */
async function trimHistory(client: O3Client, keys: readonly string[], signal?: AbortSignal): Promise<void> {
  for (const key of keys) {
    const versions = []
    for await (const v of client.listVersions(key, { signal })) if (v.key === key && !v.deleteMarker) versions.push(v)
    // Newest first, as S3 lists a key's versions.
    for (const v of versions.slice(2)) await client.deleteVersion(key, v.versionId, signal)
  }
}
