// Lineage: each checkpoint names the data it was trained on; the CIDs o3train records are those
// the reference importer (ipfs-unixfs-importer, as `ipfs add --cid-version=1 --raw-leaves
// --chunker=size-1048576` builds them) computes, and `o3ckpt verify --data` notices changed data.
import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { importer } from 'ipfs-unixfs-importer'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { digestContent } from '../lib/content/cid.js'
import { DATASET_MANIFEST_NAME } from '../lib/content/dataset-manifest.js'
import { cliCommand } from '../lib/paths.js'
import { CheckpointStore } from '../checkpoint/index.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { mountEnv } from './support/o3mount.js'
import { writeFashionSubset } from './support/fashion-subset.js'
import { putTree } from './support/manifest.js'

const BUCKET = `train-lineage-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())
const scratch = mkdtempSync(join(tmpdir(), 'o3train-lineage-'))
t.teardown(() => rmSync(scratch, { recursive: true, force: true }))
const data = join(scratch, 'fmnist')
const names = writeFashionSubset(data, 256, 64)

/** What `ipfs add --cid-version=1 --raw-leaves --chunker=size-1048576` prints, computed by the reference importer itself. */
async function ipfsAdd(bytes: Buffer): Promise<string> {
  let cid = ''
  const options = { cidVersion: 1 as const, rawLeaves: true, chunker: fixedSize({ chunkSize: 1 << 20 }), layout: balanced({ maxChildrenPerNode: 174 }) }
  for await (const e of importer([{ content: bytes }], { put: async (c: unknown) => c } as never, options)) cid = e.cid.toString()
  return cid
}

function run(cli: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const c = cliCommand(cli)
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [...c.execArgv, c.file, ...args],
      { cwd: scratch, env: mountEnv(info), timeout: 600_000, maxBuffer: 1 << 24 },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr }),
    )
  })
}

const train = ['--dataset', 'fashion-mnist', '--model', 'mlp', '--batch', '64', '--epochs', '1', '--ckpt-every', 'epoch']

t.test('a local directory: the CIDs of the files read, as ipfs add computes them; verify --data notices a change', async (t) => {
  const r = await run('trainer/cli.ts', ['--data', data, ...train, '--ckpt', `o3://${BUCKET}/runs/local`])
  t.equal(r.code, 0, r.stderr)
  const latest = await new CheckpointStore(serverClient(info, `${BUCKET}/runs/local`)).load('latest')
  const lineage = latest.meta.dataLineage!
  const expected = await Promise.all(
    names.sort().map(async (n) => ({ path: n, cid: await ipfsAdd(readFileSync(join(data, n))), size: readFileSync(join(data, n)).length })),
  )
  t.same(lineage, { files: expected, verified: false }, 'every file read, with the reference CID')
  const record = await new CheckpointStore(serverClient(info, `${BUCKET}/runs/local`)).readRecord(latest.entry)
  t.same(record.data, lineage, 'the sidecar records the same')
  const show = await run('checkpoint/cli.ts', ['show', `o3://${BUCKET}/runs/local`, 'latest'])
  t.same((JSON.parse(show.stdout) as { data: unknown }).data, lineage, 'o3ckpt show prints it')

  const ok = await run('checkpoint/cli.ts', ['verify', `o3://${BUCKET}/runs/local`, 'latest', '--data', data])
  t.equal(ok.code, 0, ok.stderr)
  t.match(ok.stdout, /OK .*data at .* is the data it was trained on/)
  const changed = join(scratch, 'changed')
  rmSync(changed, { recursive: true, force: true })
  writeFashionSubset(changed, 256, 64)
  const victim = join(changed, names[0]!)
  const bytes = readFileSync(victim)
  bytes[bytes.length - 1]! ^= 1
  writeFileSync(victim, bytes)
  const bad = await run('checkpoint/cli.ts', ['verify', `o3://${BUCKET}/runs/local`, 'latest', '--data', changed])
  t.equal(bad.code, ExitCode.integrity, bad.stderr)
  t.match(bad.stdout, new RegExp(`FAIL .*${names[0]!.replace(/\./g, '\\.')}: CID`))
})

t.test("o3:// data with a manifest: the manifest's CID, reads verified; verify --data checks the files it names", async (t) => {
  const files = Object.fromEntries(readdirSync(data).map((n) => [n, readFileSync(join(data, n))]))
  await putTree(client, 'datasets/fm', files)
  const manifestCid = (await digestContent(Buffer.concat(await collect(client.iterateRange(`datasets/fm/${DATASET_MANIFEST_NAME}`))))).cid
  const r = await run('trainer/cli.ts', ['--data', `o3://${BUCKET}/datasets/fm`, ...train, '--ckpt', `o3://${BUCKET}/runs/o3`])
  t.equal(r.code, 0, r.stderr)
  const latest = await new CheckpointStore(serverClient(info, `${BUCKET}/runs/o3`)).load('latest')
  t.same(latest.meta.dataLineage, { manifest: { path: DATASET_MANIFEST_NAME, cid: manifestCid }, verified: true })
  const ok = await run('checkpoint/cli.ts', ['verify', `o3://${BUCKET}/runs/o3`, 'latest', '--data', `o3://${BUCKET}/datasets/fm`])
  t.equal(ok.code, 0, ok.stderr)
  const flipped = Buffer.from(files[names[1]!]!)
  flipped[flipped.length - 1]! ^= 1
  await client.put(`datasets/fm/${names[1]}`, flipped)
  const bad = await run('checkpoint/cli.ts', ['verify', `o3://${BUCKET}/runs/o3`, 'latest', '--data', `o3://${BUCKET}/datasets/fm`])
  t.equal(bad.code, ExitCode.integrity, bad.stderr)
  t.match(bad.stdout, /FAIL .*: CID \S+, the manifest recorded/)
})

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = []
  for await (const c of it) out.push(c)
  return out
}
