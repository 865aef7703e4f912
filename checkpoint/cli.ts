#!/usr/bin/env node
/**
 * `o3ckpt`: put checkpoints of any framework into a run in O3, and inspect, fetch and prune a
 * run's checkpoints. Every byte it hands over has been checked against the recorded sha256 and CID;
 * secrets come only from the environment (O3_*, AKAVE_*).
 */
import { existsSync } from 'node:fs'
import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { InvalidArgumentError } from 'commander'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'
import { addO3Flags } from '../lib/cli/o3-flags.js'
import { newCommand, runCli } from '../lib/cli/run-cli.js'
import { loadSigner } from '../lib/content/signer.js'
import { createLogger } from '../lib/log.js'
import { O3Client, O3Error, O3IntegrityError, O3NotFoundError, O3UsageError, type O3Flags } from '../lib/o3/index.js'
import { createProgress } from '../lib/progress.js'
import { installShutdown } from '../lib/shutdown.js'
import { checkDataLineage } from './data-check.js'
import { CheckpointStore, CheckpointWriter, type CheckpointRecord, type ManifestEntry } from './index.js'
import { putLineage } from './put-lineage.js'
import { scanPutPath } from './put-source.js'
import { contentKey, entryPrefix } from './records.js'
import { TRUST_SIGNER_FLAG, TrustPolicy } from './trust.js'
import { prune } from './retention.js'
import { positiveInt } from '../lib/cli/number-arg.js'
import { DTYPE_SIZE } from '../lib/state-tensor.js'

interface GlobalFlags extends O3Flags {
  json?: boolean
}

function checkRun(run: string): void {
  if (!/^(o3|s3):\/\//.test(run)) throw new O3UsageError(`run location ${JSON.stringify(run)} must look like o3://bucket/prefix/run`)
}

function openStore(run: string, flags: GlobalFlags): CheckpointStore {
  checkRun(run)
  return new CheckpointStore(O3Client.open(run, flags))
}

function mib(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${n} B`
}

function print(line: string): void {
  process.stdout.write(`${line}\n`)
}

/** Sidecars read at once by ls. */
const LS_PARALLEL = 8

/**
 * Lists the manifest's checkpoints, each with what its own sidecar says: the signer whose
 * signature verifies, or why the sidecar is not to be believed (it disagrees with the manifest,
 * its signature fails, it is missing). Any such problem is an O3IntegrityError once all are listed.
 */
async function ls(store: CheckpointStore, flags: GlobalFlags): Promise<void> {
  const { manifest, latest } = await store.snapshot()
  const rows: { entry: ManifestEntry; signer?: string; problem?: string }[] = []
  for (let i = 0; i < manifest.checkpoints.length; i += LS_PARALLEL) {
    const batch = manifest.checkpoints.slice(i, i + LS_PARALLEL)
    rows.push(
      ...(await Promise.all(
        batch.map((entry) =>
          store.readSignedRecord(entry).then(
            ({ signer }) => ({ entry, signer }),
            (err: unknown) => {
              if (!(err instanceof O3IntegrityError || err instanceof O3NotFoundError)) throw err
              return { entry, problem: err.message }
            },
          ),
        ),
      )),
    )
  }
  const problems = rows.filter((r) => r.problem !== undefined).length
  if (flags.json)
    print(
      JSON.stringify(
        { latest: latest?.name ?? null, checkpoints: rows.map((r) => ({ ...r.entry, ...(r.problem === undefined ? {} : { problem: r.problem }) })) },
        null,
        2,
      ),
    )
  else if (manifest.checkpoints.length === 0) {
    // A missing bucket has no manifest either: say which one it is, with its exit status.
    await store.client.checkBucket()
    print(`${store.location}: no checkpoints`)
  } else
    for (const { entry: e, signer, problem } of rows) {
      const mark = e.name === latest?.name && e.seq === latest.seq ? '*' : ' '
      const who = problem === undefined ? (signer ?? 'unsigned') : `${e.signer ?? 'unsigned'}  INTEGRITY: ${problem}`
      print(`${mark} ${e.name}  step ${e.step}  epoch ${e.epoch}  ${mib(e.size).padStart(11)}  ${e.cid}  ${who}  ${e.time}${shownPath(e)}`)
    }
  if (problems > 0)
    throw new O3IntegrityError(
      `${store.location}: ${problems === 1 ? "1 checkpoint's sidecar disagrees" : `${problems} checkpoints' sidecars disagree`} with manifest.json or fail their own checks (listed above); o3ckpt verify checks them in full`,
    )
}

/** What a put stored, as `ls` shows it: `  model.pt`, `  hf-model/` for a directory; nothing for o3train's own. */
function shownPath(e: ManifestEntry): string {
  return e.kind === undefined ? '' : `  ${e.path}${e.kind === 'directory' ? '/' : ''}`
}

/** Whether the data each checkpoint names is the data at `location` now; an O3IntegrityError for the first that is not. */
async function verifyData(
  store: CheckpointStore,
  entries: ManifestEntry[],
  location: string,
  trust: TrustPolicy,
  flags: GlobalFlags,
): Promise<O3Error | undefined> {
  let failure: O3Error | undefined
  for (const entry of entries) {
    const data = (await store.readRecord(entry, { trust })).data
    const problems = data ? await checkDataLineage(data, location, flags) : [`${entry.name} records no data lineage (saved before o3train recorded it)`]
    const what = data?.manifest ? `manifest ${data.manifest.cid}` : `${data?.files?.length ?? 0} files`
    if (flags.json) print(JSON.stringify({ name: entry.name, data: location, ok: problems.length === 0, problems }))
    else
      print(
        problems.length === 0
          ? `OK    ${entry.name}  data at ${location} is the data it was trained on (${what}${data?.verified ? ', reads verified' : ''})`
          : `FAIL  ${entry.name}  data at ${location}: ${problems.join('; ')}`,
      )
    if (problems.length > 0) failure ??= new O3IntegrityError(`${entry.name}: the data at ${location} is not the data it was trained on (${problems[0]})`)
  }
  return failure
}

interface TrustFlags {
  trustSigner?: string[]
}

async function verify(store: CheckpointStore, ref: string | undefined, opts: TrustFlags & { data?: string }, flags: GlobalFlags): Promise<void> {
  const trust = TrustPolicy.fromFlags(opts.trustSigner)
  const { manifest } = await store.snapshot()
  const entries: ManifestEntry[] = ref ? [await store.resolve(ref)] : manifest.checkpoints
  if (entries.length === 0) throw new O3UsageError(`${store.location}: no checkpoints to verify`)
  let failure: O3Error | undefined
  for (const entry of entries) {
    const r = await store.verify(entry, { trust })
    if (flags.json)
      print(
        JSON.stringify(
          r.ok
            ? { name: entry.name, ok: true, cid: r.digest.cid, sha256: r.digest.sha256, signer: r.signer ?? null }
            : { name: entry.name, ok: false, error: r.error.message },
        ),
      )
    else if (r.ok) print(`OK    ${entry.name}  ${r.digest.cid}  sha256 ${r.digest.sha256}  ${r.signer ? `signed by ${r.signer}` : 'unsigned'}`)
    else print(`FAIL  ${entry.name}  ${r.error.message}`)
    if (!r.ok) failure ??= r.error
  }
  if (opts.data) failure ??= await verifyData(store, entries, opts.data, trust, flags)
  if (failure) throw failure
}

/** Set by a second SIGINT/SIGTERM: the forced shutdown then owns the exit (130). */
const kill = new AbortController()

/**
 * `o3ckpt get`: a SIGINT/SIGTERM stops the download at once, removes what it wrote and exits 130;
 * a second one exits as soon as that removal is done (or after 10 s).
 */
async function get(store: CheckpointStore, ref: string, opts: TrustFlags & { output?: string }): Promise<void> {
  let inFlight: Promise<unknown> | undefined
  const shutdown = installShutdown({
    onForce: async (sig) => {
      kill.abort(new Error(`aborted by a second ${sig}`))
      await Promise.race([inFlight?.catch(() => undefined), delay(10_000, undefined, { ref: false })])
    },
  })
  const { signal } = shutdown
  try {
    const trust = TrustPolicy.fromFlags(opts.trustSigner)
    const entry = await store.resolve(ref, signal)
    const record = await store.readRecord(entry, { trust, signal })
    const out = path.resolve(opts.output ?? entry.path ?? `${entry.name}.safetensors`)
    inFlight = entry.kind === 'directory' ? getDirectory(store, entry, record, out, signal) : getFile(store, entry, out, signal)
    await inFlight
    print(`${out}${entry.kind === 'directory' ? '/' : ''}  ${entry.cid}  ${mib(entry.size)}  verified`)
  } catch (err) {
    // The abort surfaces as whatever the request in flight made of it; the signal is the cause.
    if (signal.aborted) throw new CliError(`${(signal.reason as Error).message}: nothing was written`, ExitCode.interrupted)
    throw err
  } finally {
    shutdown.dispose()
  }
}

async function getFile(store: CheckpointStore, entry: ManifestEntry, out: string, signal: AbortSignal): Promise<void> {
  // Written beside the target and renamed only once verified, so `out` is never half or wrong.
  const tmp = `${out}.${process.pid}.partial`
  // Opened before the download so that a failure to create it (a leftover .partial, no
  // permission) is an ordinary rejection with a one-line message.
  const file = await open(tmp, 'wx')
  try {
    await store.download(entry, async (chunk) => void (await file.write(chunk)), signal)
    await file.close()
    await rename(tmp, out)
  } catch (err) {
    await file.close().catch(() => {})
    await rm(tmp, { force: true })
    throw err
  }
}

/**
 * Every file of a directory checkpoint, each verified (sidecar, signer, bytes, CID) and the
 * directory's CID rebuilt, into a directory beside `out` that is renamed to it only then.
 */
async function getDirectory(store: CheckpointStore, entry: ManifestEntry, record: CheckpointRecord, out: string, signal: AbortSignal): Promise<void> {
  if (existsSync(out)) throw new O3UsageError(`${out} exists; remove it or name another directory with -o`)
  const tmp = `${out}.${process.pid}.partial`
  await mkdir(tmp)
  try {
    await store.downloadDirectory(
      entry,
      record,
      async (f) => {
        const target = path.join(tmp, ...f.path.split('/'))
        await mkdir(path.dirname(target), { recursive: true })
        const file: FileHandle = await open(target, 'wx')
        return { write: async (chunk) => void (await file.write(chunk)), close: () => file.close() }
      },
      signal,
    )
    await rename(tmp, out)
  } catch (err) {
    await rm(tmp, { recursive: true, force: true })
    throw err
  }
}

interface PruneFlags {
  keepLast: number
  keepEvery?: number
  dryRun?: boolean
}

/** Applies a retention policy to a run, as `o3train --keep-last/--keep-every` does after each save. */
async function pruneRun(store: CheckpointStore, opts: PruneFlags, flags: GlobalFlags): Promise<void> {
  const { manifest, latest } = await store.snapshot()
  if (!latest) {
    // A missing bucket has no latest either: say which one it is, with its exit status.
    await store.client.checkBucket()
    return print(`${store.location}: no committed checkpoint, nothing to prune`)
  }
  const r = await prune(store.client, manifest, latest, { keepLast: opts.keepLast, keepEvery: opts.keepEvery }, { dryRun: opts.dryRun })
  const verb = opts.dryRun ? 'would prune' : 'pruned'
  for (const { entry, versions, bytes } of r.removed) {
    if (flags.json) print(JSON.stringify({ name: entry.name, pruned: !opts.dryRun, versions, bytes }))
    else print(`${verb.padEnd(11)} ${entry.name}  ${versions} object versions  ${mib(bytes)}`)
  }
  for (const { entry, error } of r.failed) {
    if (flags.json) print(JSON.stringify({ name: entry.name, pruned: false, error: error.message }))
    else print(`FAIL        ${entry.name}  ${error.message}`)
  }
  const kept = manifest.checkpoints.length - r.removed.length - r.failed.length
  const freed = r.removed.reduce((n, x) => n + x.bytes, 0)
  if (flags.json) print(JSON.stringify({ kept, pruned: r.removed.length, bytes: freed, dryRun: opts.dryRun === true }))
  else print(`${store.location}: ${kept} kept, ${r.removed.length} ${verb}, ${mib(freed)} ${opts.dryRun ? 'to free' : 'freed'}`)
  if (r.failed.length > 0) throw r.failed[0]!.error
}

async function show(store: CheckpointStore, ref: string): Promise<void> {
  const entry = await store.resolve(ref)
  // A put's file may be in any format (a torch.save pickle, say); its record is what there is to show.
  if (entry.kind === 'directory' || (entry.kind === 'file' && !entry.path?.endsWith('.safetensors'))) {
    const record = await store.readRecord(entry)
    return print(JSON.stringify({ data: record.data ?? null, record }, null, 2))
  }
  const [record, header] = await Promise.all([store.readRecord(entry), store.readHeader(entry)])
  print(
    JSON.stringify(
      {
        data: record.data ?? null,
        record,
        metadata: header.metadata,
        headerBytes: header.dataStart,
        tensors: header.tensors.map((t) => ({
          name: t.name,
          dtype: t.dtype,
          shape: t.shape,
          bytes: t.offsets[1] - t.offsets[0],
          elementBytes: DTYPE_SIZE[t.dtype],
        })),
      },
      null,
      2,
    ),
  )
}

interface PutFlags extends TrustFlags {
  step?: number
  epoch?: number
  meta?: Record<string, string>
  data?: string
  replace?: boolean
}

const countArg = (flag: string) => (v: string) => {
  const n = Number(v)
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`${flag} takes a non-negative integer, not ${JSON.stringify(v)}`)
  return n
}

const metaArg = (v: string, prev: Record<string, string> = {}): Record<string, string> => {
  const eq = v.indexOf('=')
  const key = v.slice(0, eq)
  if (eq < 1 || !/^[A-Za-z0-9_.-]+$/.test(key))
    throw new InvalidArgumentError(`--meta takes key=value with a key of letters, digits, '_', '.' or '-', not ${JSON.stringify(v)}`)
  if (Object.hasOwn(prev, key)) throw new InvalidArgumentError(`--meta ${key} is given twice`)
  return { ...prev, [key]: v.slice(eq + 1) }
}

/** `chunks`, each counted as it goes to the upload. */
async function* counted(chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>, count: (bytes: number) => void): AsyncGenerator<Uint8Array> {
  for await (const c of chunks) {
    count(c.length)
    yield c
  }
}

/** Longest key S3 takes, in bytes. */
const MAX_KEY_BYTES = 1024

/**
 * `o3ckpt put PATH RUN`: everything about PATH is checked before anything is uploaded, then it
 * is committed as one checkpoint. The first SIGINT/SIGTERM lets the put finish (it is one
 * commit); a second aborts it: multipart uploads aborted, what it wrote removed, `latest` where
 * it was, exit 130.
 */
async function put(input: string, run: string, opts: PutFlags, flags: GlobalFlags): Promise<void> {
  checkRun(run)
  const trust = TrustPolicy.fromFlags(opts.trustSigner)
  const source = await scanPutPath(input)
  const signer = loadSigner()
  const client = O3Client.open(run, flags)
  const log = createLogger('o3ckpt')
  try {
    // The longest key: a file's sidecar in a replaced step's folder.
    const longest = Math.max(...source.files.map((f) => Buffer.byteLength(f.path)))
    const room = MAX_KEY_BYTES - Buffer.byteLength(`${client.scope.prefix}/${entryPrefix({ name: 'step-0000000000', rev: 999_999 })}/.cid`)
    if (longest > room)
      throw new O3UsageError(`${input}: a path of ${longest} bytes makes an O3 key longer than ${MAX_KEY_BYTES} bytes under ${run}; shorten it`)
    await client.checkBucket()
    const dataLineage = opts.data ? await putLineage(opts.data, flags) : undefined
    const total = source.files.reduce((n, f) => n + f.size, 0)
    const progress = createProgress(`put ${input}`, { unit: 'bytes' })
    let read = 0
    let parts = 0
    const files = source.files.map((f) => ({
      ...f,
      content: () => counted(f.content(), (n) => progress.update({ done: (read += n), total, fields: { parts } })),
    }))
    const writer = await CheckpointWriter.open(client, {
      signer: signer ?? null,
      logger: log,
      onStep: (step, name) => {
        if (step !== 'part') return
        parts++
        log.debug({ checkpoint: name, parts }, 'part stored')
      },
    })
    // The trust policy readers apply, applied before anything is written: a put they would refuse is no use.
    await writer.store.checkTrust(signer?.address, `${writer.store.location}: this put`, trust)

    let inFlight: Promise<unknown> | undefined
    const shutdown = installShutdown({
      onRequest: (sig) => log.warn({ signal: sig }, 'finishing the put: it is one commit; send the signal again to abort it'),
      onForce: async (sig) => {
        log.warn({ signal: sig }, 'aborting the put in flight')
        kill.abort(new Error(`aborted by a second ${sig}`))
        // The put aborts its uploads and removes what it wrote when the signal fires; wait for that, but not forever.
        await Promise.race([inFlight?.catch(() => undefined), delay(10_000, undefined, { ref: false })])
      },
    })
    try {
      const saving = writer.put(
        { kind: source.kind, path: source.name, files, step: opts.step, epoch: opts.epoch, replace: opts.replace, meta: opts.meta, dataLineage },
        { signal: kill.signal },
      )
      inFlight = saving
      const { entry } = await saving
      progress.stop({ parts })
      const key = entry.kind === 'directory' ? `${entryPrefix(entry)}/` : contentKey(entry)
      if (flags.json) print(JSON.stringify({ ...entry, location: `${writer.store.location}/${key}` }))
      else print(`${entry.name}  ${entry.cid}  ${mib(entry.size)}  ${entry.signer ? `signed by ${entry.signer}` : 'unsigned'}  ${writer.store.location}/${key}`)
    } finally {
      shutdown.dispose()
    }
  } finally {
    client.close()
  }
}

async function main(): Promise<number> {
  const program = addO3Flags(newCommand('o3ckpt').description('Put, list, verify, fetch, inspect and prune content-addressed checkpoints in Akave O3')).option(
    '--json',
    'machine-readable output',
  )
  program
    .command('put')
    .argument('<path>', 'a checkpoint file (torch.save, safetensors, …) or directory (Hugging Face model, PyTorch DCP, …)')
    .argument('<run>', 'o3://bucket/prefix/run')
    .option('--step <n>', "the checkpoint's step (default: the run's last step + 1)", countArg('--step'))
    .option('--epoch <n>', 'the epoch it ends or falls in (default 0)', countArg('--epoch'))
    .option('--meta <key=value>', 'recorded and signed with the checkpoint (repeatable)', metaArg)
    .option('--data <dir|o3://bucket/prefix>', 'the data it was trained on: its dataset manifest, else every file, is recorded by CID')
    .option('--replace', 'replace the checkpoint of --step if the run has one')
    .option(...TRUST_SIGNER_FLAG)
    .description("store a file or directory as the run's next checkpoint: CIDs, signed sidecars, manifest, then latest")
    .action((input: string, run: string, opts: PutFlags) => put(input, run, opts, program.opts()))
  let store: CheckpointStore | undefined
  const withStore =
    <A extends unknown[]>(fn: (s: CheckpointStore, ...rest: A) => Promise<void>) =>
    async (run: string, ...rest: A) => {
      store = openStore(run, program.opts<GlobalFlags>())
      await fn(store, ...rest)
    }
  program
    .command('ls')
    .argument('<run>', 'o3://bucket/prefix/run')
    .description('checkpoints with CIDs, sizes and signers (* = latest)')
    .action(withStore((s) => ls(s, program.opts())))
  program
    .command('verify')
    .argument('<run>')
    .argument('[checkpoint]', 'name, CID or "latest"; all when omitted')
    .option(...TRUST_SIGNER_FLAG)
    .option('--data <dir|o3://bucket/prefix>', 'also check that the data each checkpoint was trained on is the data at this location now')
    .description('download, recompute sha256 and CID, compare with sidecar and manifest, check signatures and their signer')
    .action(withStore((s, ref: string | undefined, opts: TrustFlags & { data?: string }) => verify(s, ref, opts, program.opts())))
  program
    .command('get')
    .argument('<run>')
    .argument('<checkpoint>', 'name, CID or "latest"')
    .option('-o, --output <path>', "destination (default: the put file's or directory's own name, or <name>.safetensors)")
    .option(...TRUST_SIGNER_FLAG)
    .description('download a checkpoint to a local file or directory, verified (bytes, CIDs, signature, signer) before it appears')
    .action(withStore((s, ref: string, opts: TrustFlags & { output?: string }) => get(s, ref, opts)))
  program
    .command('prune')
    .argument('<run>')
    .requiredOption('--keep-last <n>', 'keep the newest N committed checkpoints', positiveInt('--keep-last'))
    .option('--keep-every <k>', 'and also every Kth save', positiveInt('--keep-every'))
    .option('--dry-run', 'say what would be pruned and how much it holds; change nothing')
    .description(
      'drop older checkpoints from the manifest, then delete their objects: in a bucket that keeps versions, every version, so that the storage is freed',
    )
    .action(withStore((s, opts: PruneFlags) => pruneRun(s, opts, program.opts())))
  program
    .command('show')
    .argument('<run>')
    .argument('<checkpoint>', 'name, CID or "latest"')
    .description('the sidecar record, safetensors metadata and tensor table')
    .action(withStore((s, ref: string) => show(s, ref)))
  try {
    await program.parseAsync(process.argv)
  } finally {
    store?.client.close()
  }
  return 0
}

runCli('o3ckpt', main, { exitOwnedElsewhere: () => kill.signal.aborted })
