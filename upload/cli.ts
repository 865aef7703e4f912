#!/usr/bin/env node
/**
 * `o3upload`: puts a local directory tree into `o3://bucket/prefix`, each file with a `<file>.cid`
 * sidecar (lib/content/sidecar.ts), so that the data a model was trained on can be checked with
 * stock IPFS tools like its checkpoints, and, once every file is stored, one manifest of the tree
 * (`<prefix>/.o3-manifest.json`, lib/content/dataset-manifest.ts) that mounts verify reads against. The first SIGINT/SIGTERM stops after the file in flight;
 * a second aborts that file's upload at once, leaving neither parts nor a sidecar behind.
 * With `--webdataset` the directory (a folder per class of images) is written as WebDataset tar
 * shards first (upload/webdataset.ts), into a local directory or, through a temporary one, to O3.
 */
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { InvalidArgumentError } from 'commander'
import { parseSize } from '../fs-driver/options.js'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'
import { addO3Flags } from '../lib/cli/o3-flags.js'
import { newCommand, runCli } from '../lib/cli/run-cli.js'
import type { ContentDigest } from '../lib/content/cid.js'
import { hashedUpload } from '../lib/content/hashed-upload.js'
import { putSidecar } from '../lib/content/sidecar.js'
import { DATASET_MANIFEST_NAME, buildDatasetManifest, formatDatasetManifest, type ManifestFile } from '../lib/content/dataset-manifest.js'
import { loadSigner } from '../lib/content/signer.js'
import { createLogger } from '../lib/log.js'
import { O3Client, O3NotFoundError, O3UsageError, type O3Flags, type StoredObject } from '../lib/o3/index.js'
import { createProgress } from '../lib/progress.js'
import { readExactly } from '../lib/read-exactly.js'
import { installShutdown } from '../lib/shutdown.js'
import { directorySink, writeShards } from './webdataset.js'
import type { Signer } from '../lib/content/signer.js'
import { digestContent } from '../lib/content/cid.js'

interface UploadFlags extends O3Flags {
  createBucket?: boolean
  webdataset?: boolean
  shardSize: number
}

const shardSizeArg = (v: string): number => {
  try {
    const n = parseSize(v, '--shard-size')
    if (n < 4096) throw new Error(`--shard-size ${v} is too small: a shard needs room for at least one sample`)
    return n
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message)
  }
}

interface LocalFile {
  file: string
  /** Its path below the directory, `/`-separated: the key below the prefix. */
  key: string
  size: number
}

/** Aborted by a second signal; the forced-exit handler then owns the process's exit. */
const kill = new AbortController()

/** Every regular file below `dir`, by key; local `.cid` files and manifests are left out, since each upload writes its own. */
async function listFiles(dir: string): Promise<LocalFile[]> {
  if (!(await stat(dir).catch(() => undefined))?.isDirectory())
    throw new CliError(`${dir} is not a directory; give the local directory to upload`, ExitCode.usage)
  const files: LocalFile[] = []
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile() || e.name.endsWith('.cid') || e.name === DATASET_MANIFEST_NAME) continue
    const file = path.join(e.parentPath, e.name)
    files.push({ file, key: path.relative(dir, file).split(path.sep).join('/'), size: (await stat(file)).size })
  }
  return files.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
}

/**
 * The file's bytes, each chunk counted as it goes to the upload: exactly the size it was listed
 * with, which chose how it is uploaded (a single PUT holds it all in memory), or the upload fails
 * and leaves nothing of it behind.
 */
async function* readCounted(f: LocalFile, count: (bytes: number) => void): AsyncGenerator<Buffer> {
  const changed = (counts: string) => new O3UsageError(`${f.file} changed while it was uploaded (${counts}); run o3upload again once it is written`)
  for await (const chunk of readExactly(f.file, f.size, changed)) {
    count(chunk.length)
    yield chunk
  }
}

/**
 * The data, then its sidecar: a file whose data did not complete never gets one. Its manifest
 * record holds the version the upload made where the bucket names one, which mounts then read.
 */
async function uploadFile(client: O3Client, f: LocalFile, count: (bytes: number) => void, signal: AbortSignal): Promise<ManifestFile> {
  let leaves: readonly string[] = []
  let stored: StoredObject = { etag: '' }
  const digest: ContentDigest = await hashedUpload(client, f.key, readCounted(f, count), f.size, {
    signal,
    onDag: (d) => (leaves = d.leaves),
    onStored: (s) => (stored = s),
  })
  await putSidecar(client, f.key, { ...digest, time: new Date().toISOString() }, signal)
  const version = stored.versionId ? { versionId: stored.versionId, etag: stored.etag } : {}
  return { ...digest, leaves: [...leaves], ...version }
}

async function openBucket(client: O3Client, create: boolean): Promise<void> {
  if (create) return client.createBucket()
  try {
    await client.checkBucket()
  } catch (err) {
    if (err instanceof O3NotFoundError) throw new O3NotFoundError(`${err.message}; pass --create-bucket to create it`)
    throw err
  }
}

async function main(): Promise<number> {
  const program = addO3Flags(
    newCommand('o3upload')
      .description(
        `Upload a local directory tree to Akave O3, each file with a <file>.cid sidecar (its CID on the first line, then its sha256, size and time), then the tree's ${DATASET_MANIFEST_NAME} (every file's CID and 1 MiB leaf digests, signed with AKAVE_PRIVATE_KEY when set)`,
      )
      .argument('<dir>', 'local directory to upload')
      .argument('<location>', 'o3://bucket/prefix to upload it to')
      .option('--create-bucket', 'create the bucket if it does not exist')
      .option(
        '--webdataset',
        'write <dir> (a folder per class of JPEG/PNG images) as WebDataset tar shards of <key>.png|jpg + <key>.cls, samples shuffled; <location> may then be a local directory',
      )
      .option('--shard-size <size>', 'with --webdataset: close each shard before it passes this size (default 64M)', shardSizeArg, 64 << 20),
  )
  await program.parseAsync(process.argv)
  const [dir, location] = program.args as [string, string]
  const flags = program.opts<UploadFlags>()
  const remote = /^(o3|s3):\/\//.test(location)
  if (!remote && !flags.webdataset) throw new O3UsageError(`location ${JSON.stringify(location)} must look like o3://bucket/prefix`)
  if (!flags.webdataset) return uploadDirectory(dir, location, flags)
  await listFiles(dir) // checks that it is a directory
  if (!remote) return writeShardsTo(dir, location, flags.shardSize)
  // Shards are uploaded like any file (hashed, with a sidecar), from a local copy: a shard's size,
  // which its upload needs up front, is known only once it is written.
  const staging = await mkdtemp(path.join(tmpdir(), 'o3upload-shards-'))
  try {
    await writeShardsTo(dir, staging, flags.shardSize)
    return await uploadDirectory(staging, location, flags)
  } finally {
    await rm(staging, { recursive: true, force: true })
  }
}

async function writeShardsTo(dir: string, out: string, shardSize: number): Promise<number> {
  const written = await writeShards(dir, directorySink(out), { shardSize })
  const samples = written.shards.reduce((n, s) => n + s.samples, 0)
  process.stdout.write(`${JSON.stringify({ event: 'shards', dir: out, shards: written.shards.length, samples, classes: written.classes })}\n`)
  return 0
}

async function uploadDirectory(dir: string, location: string, flags: UploadFlags): Promise<number> {
  const files = await listFiles(dir)
  // Checked before any upload: a bad key must not cost a whole upload first.
  const signer = loadSigner()
  const client = O3Client.open(location, flags)
  try {
    await openBucket(client, flags.createBucket === true)
    return await uploadAll(client, files, location.replace(/\/+$/, ''), signer)
  } finally {
    client.close()
  }
}

async function putManifest(client: O3Client, files: Record<string, ManifestFile>, signer: Signer | undefined, where: string, tty: boolean): Promise<void> {
  const text = formatDatasetManifest(buildDatasetManifest(files, signer))
  await client.put(DATASET_MANIFEST_NAME, text, { contentType: 'application/json', signal: kill.signal })
  const { cid } = await digestContent(Buffer.from(text))
  const line = { event: 'manifest', location: `${where}/${DATASET_MANIFEST_NAME}`, cid, files: Object.keys(files).length, signer: signer?.address ?? null }
  process.stdout.write(
    tty ? `manifest ${line.location} ${cid} (${line.files} files, ${signer ? `signed by ${signer.address}` : 'unsigned'})\n` : `${JSON.stringify(line)}\n`,
  )
}

/** Uploads `files` in turn with progress and the two-signal stop; results on stdout. */
async function uploadAll(client: O3Client, files: LocalFile[], where: string, signer: Signer | undefined): Promise<number> {
  const log = createLogger('o3upload')
  let inFlight: Promise<unknown> | undefined
  const shutdown = installShutdown({
    onRequest: (sig) => log.warn({ signal: sig }, 'stopping after the file in flight; send it again to abort that one too'),
    onForce: async (sig) => {
      log.warn({ signal: sig }, 'aborting the upload in flight')
      kill.abort(new Error(`aborted by a second ${sig}`))
      // The upload aborts its multipart upload when the signal fires; wait for that, but not forever.
      await Promise.race([inFlight?.catch(() => undefined), delay(10_000, undefined, { ref: false })])
    },
  })
  // One JSON line per file when piped; on a terminal the bar, then a summary.
  const tty = process.stdout.isTTY === true
  const total = files.reduce((n, f) => n + f.size, 0)
  const progress = createProgress(`upload to ${where}`, { unit: 'bytes' })
  let bytes = 0
  let done = 0
  let stored = 0
  const manifest: Record<string, ManifestFile> = {}
  const report = () => progress.update({ done: bytes, total, fields: { files: `${done}/${files.length}` } })
  const count = (n: number) => {
    bytes += n
    report()
  }
  try {
    report()
    for (const f of files) {
      if (shutdown.requested) break
      const upload = uploadFile(client, f, count, kill.signal)
      inFlight = upload
      const { leaves, ...d } = await upload
      manifest[f.key] = { ...d, leaves }
      done++
      stored += d.size
      report()
      if (!tty) process.stdout.write(`${JSON.stringify({ event: 'file', location: `${where}/${f.key}`, ...d })}\n`)
    }
  } finally {
    progress.stop({ files: `${done}/${files.length}` })
    shutdown.dispose()
  }
  // Only a complete tree gets a manifest: one naming part of it would pass the rest off as uncovered.
  if (done === files.length) await putManifest(client, manifest, signer, where, tty)
  const summary = { event: 'summary', location: where, files: done, bytes: stored }
  process.stdout.write(tty ? `uploaded ${done} files (${stored} bytes) to ${where}\n` : `${JSON.stringify(summary)}\n`)
  if (done < files.length)
    throw new CliError(`stopped by a signal after ${done} of ${files.length} files; run the same command again to upload them all`, ExitCode.interrupted)
  return 0
}

runCli('o3upload', main, { exitOwnedElsewhere: () => kill.signal.aborted })
