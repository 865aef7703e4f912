#!/usr/bin/env node
/**
 * `o3ckpt`: inspect and fetch a run's checkpoints in O3. Every byte it hands over has been checked
 * against the recorded sha256 and CID; secrets come only from the environment (O3_*, AKAVE_*).
 */
import { open, rename, rm } from 'node:fs/promises'
import path from 'node:path'
import { addO3Flags } from '../lib/cli/o3-flags.js'
import { newCommand, runCli } from '../lib/cli/run-cli.js'
import { O3Client, O3Error, O3IntegrityError, O3NotFoundError, O3UsageError, type O3Flags } from '../lib/o3/index.js'
import { checkDataLineage } from './data-check.js'
import { CheckpointStore, type ManifestEntry } from './index.js'
import { TRUST_SIGNER_FLAG, TrustPolicy } from './trust.js'
import { DTYPE_SIZE } from '../lib/state-tensor.js'

interface GlobalFlags extends O3Flags {
  json?: boolean
}

function openStore(run: string, flags: GlobalFlags): CheckpointStore {
  if (!/^(o3|s3):\/\//.test(run)) throw new O3UsageError(`run location ${JSON.stringify(run)} must look like o3://bucket/prefix/run`)
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
  const [manifest, latest] = await Promise.all([store.readManifest(), store.readLatest()])
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
      const mark = e.name === latest?.name ? '*' : ' '
      const who = problem === undefined ? (signer ?? 'unsigned') : `${e.signer ?? 'unsigned'}  INTEGRITY: ${problem}`
      print(`${mark} ${e.name}  step ${e.step}  epoch ${e.epoch}  ${mib(e.size).padStart(11)}  ${e.cid}  ${who}  ${e.time}`)
    }
  if (problems > 0)
    throw new O3IntegrityError(
      `${store.location}: ${problems === 1 ? "1 checkpoint's sidecar disagrees" : `${problems} checkpoints' sidecars disagree`} with manifest.json or fail their own checks (listed above); o3ckpt verify checks them in full`,
    )
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
  const manifest = await store.readManifest()
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

async function get(store: CheckpointStore, ref: string, opts: TrustFlags & { output?: string }): Promise<void> {
  const trust = TrustPolicy.fromFlags(opts.trustSigner)
  const entry = await store.resolve(ref)
  await store.readRecord(entry, { trust })
  const out = path.resolve(opts.output ?? `${entry.name}.safetensors`)
  // Written beside the target and renamed only once verified, so `out` is never half or wrong.
  const tmp = `${out}.${process.pid}.partial`
  // Opened before the download so that a failure to create it (a leftover .partial, no
  // permission) is an ordinary rejection with a one-line message.
  const file = await open(tmp, 'wx')
  try {
    await store.download(entry, async (chunk) => {
      await file.write(chunk)
    })
    await file.close()
    await rename(tmp, out)
  } catch (err) {
    await file.close().catch(() => {})
    await rm(tmp, { force: true })
    throw err
  }
  print(`${out}  ${entry.cid}  ${mib(entry.size)}  verified`)
}

async function show(store: CheckpointStore, ref: string): Promise<void> {
  const entry = await store.resolve(ref)
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

async function main(): Promise<number> {
  const program = addO3Flags(newCommand('o3ckpt').description('List, verify, fetch and inspect content-addressed checkpoints in Akave O3')).option(
    '--json',
    'machine-readable output',
  )
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
    .option('-o, --output <file>', 'destination (default <name>.safetensors)')
    .option(...TRUST_SIGNER_FLAG)
    .description('download a checkpoint to a local file, verified (bytes, signature, signer) before it appears')
    .action(withStore((s, ref: string, opts: TrustFlags & { output?: string }) => get(s, ref, opts)))
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

runCli('o3ckpt', main)
