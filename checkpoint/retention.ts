import { O3Error, type O3Client, type ObjectVersion, type StoredObject } from '../lib/o3/index.js'
import { silentLogger, type Logger } from '../lib/log.js'
import { LATEST_KEY, MANIFEST_KEY, dataKey, sidecarKey, versionPin, type LatestPointer, type Manifest, type ManifestEntry } from './records.js'

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
  /** Versions and delete markers deleted; in a bucket without versions, the data and the sidecar. */
  versions: number
  /** Bytes freed: the versions' sizes as listed; in a bucket without versions, the data's recorded size. */
  bytes: number
}

export interface PruneResult {
  manifest: Manifest
  latest: LatestPointer
  removed: Removed[]
  /** Checkpoints dropped from the manifest whose objects could not all be deleted; the next writer's start-up removes them. */
  failed: { entry: ManifestEntry; error: O3Error }[]
}

/**
 * Applies `policy` to a run, under the commit protocol: the manifest without the dropped entries,
 * then `latest` again naming that manifest's version (where the bucket keeps versions), and only
 * then their objects, so that neither the manifest nor `latest` ever names a deleted checkpoint.
 * In a bucket that keeps versions (enabled or suspended) every version of the dropped data and
 * sidecars is deleted, delete markers too, so their storage is freed; there `manifest.json` and
 * `latest` also keep only their current and previous versions (a reader that is two commits
 * behind reads `latest` again: CheckpointStore.snapshot). Without versions each object is deleted
 * once, as before. A failure while deleting leaves objects no manifest names, which the next
 * writer's start-up removes.
 */
export async function prune(
  client: O3Client,
  manifest: Manifest,
  latest: LatestPointer,
  policy: RetentionPolicy,
  options: { dryRun?: boolean; logger?: Logger; signal?: AbortSignal } = {},
): Promise<PruneResult> {
  const log = options.logger ?? silentLogger
  const drop = checkpointsToDrop(manifest, latest, policy)
  if (drop.length === 0) return { manifest, latest, removed: [], failed: [] }
  const versioned = (await client.bucketVersioning(options.signal)) !== 'unversioned'
  if (options.dryRun) {
    const removed = []
    for (const entry of drop) removed.push(versioned ? (await listVersions(client, entry, options.signal)).removed : unversioned(entry))
    return { manifest, latest, removed, failed: [] }
  }
  const dropped = new Set(drop.map((e) => e.name))
  const kept: Manifest = { version: 1, checkpoints: manifest.checkpoints.filter((e) => !dropped.has(e.name)) }
  const stored = await putJson(client, MANIFEST_KEY, kept, options.signal)
  let pointer = latest
  const manifestVersion = versionPin(stored)
  if (manifestVersion) {
    pointer = { ...latest, manifestVersion }
    await putJson(client, LATEST_KEY, pointer, options.signal)
  }
  const removed: Removed[] = []
  const failed: PruneResult['failed'] = []
  for (const entry of drop) {
    try {
      const r = versioned ? await deleteVersions(client, entry, options.signal) : await deleteOnce(client, entry)
      removed.push(r)
      log.info({ checkpoint: entry.name, versions: r.versions, bytes: r.bytes }, 'retention removed a checkpoint')
    } catch (err) {
      if (!(err instanceof O3Error) || options.signal?.aborted) throw err
      failed.push({ entry, error: err })
      log.warn({ checkpoint: entry.name, err: err.message }, 'retention could not remove a checkpoint; the next writer will')
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

function unversioned(entry: ManifestEntry): Removed {
  return { entry, versions: 2, bytes: entry.size }
}

/** As before versions: the sidecar, then the data. */
async function deleteOnce(client: O3Client, entry: ManifestEntry): Promise<Removed> {
  await client.delete(sidecarKey(entry.name))
  await client.delete(dataKey(entry.name))
  return unversioned(entry)
}

/** Every version and delete marker of a checkpoint's sidecar, then of its data, with their total size. */
async function listVersions(client: O3Client, entry: ManifestEntry, signal?: AbortSignal): Promise<{ removed: Removed; list: ObjectVersion[] }> {
  const data = dataKey(entry.name)
  const sidecar = sidecarKey(entry.name)
  const list: ObjectVersion[] = []
  // One listing covers both: the sidecar's key is the data's with `.cid` after it.
  for await (const v of client.listVersions(data, { signal })) if (v.key === data || v.key === sidecar) list.push(v)
  list.sort((a, b) => Number(b.key === sidecar) - Number(a.key === sidecar))
  return { list, removed: { entry, versions: list.length, bytes: list.reduce((n, v) => n + v.size, 0) } }
}

async function deleteVersions(client: O3Client, entry: ManifestEntry, signal?: AbortSignal): Promise<Removed> {
  const { list, removed } = await listVersions(client, entry, signal)
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
