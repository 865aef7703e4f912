// The data lineage a checkpoint records is untrusted input like any key: `o3ckpt verify --data`
// never follows a recorded path out of the data directory (`..`, absolute paths, symlinks), reads
// only regular files there (not a device or a FIFO, which never end), and believes a record only
// under the trust policy.
import { execFile, execFileSync } from 'node:child_process'
import { mkdirSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { signerFromHex } from '../lib/content/signer.js'
import { digestContent } from '../lib/content/cid.js'
import { MAX_DATASET_MANIFEST_BYTES } from '../lib/content/dataset-manifest.js'
import type { DataLineage } from '../lib/content/lineage.js'
import { cliCommand } from '../lib/paths.js'
import { CheckpointWriter } from '../checkpoint/index.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { openClient, syntheticState, tempDir } from './fixtures/ckpt.js'

const OWNER = signerFromHex('ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80', 'owner key')
const ATTACKER = signerFromHex('59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d', 'attacker key')
const info = await useS3Server(t)
const bucket = `ckpt-lineage-${process.pid}`
await createBucket(info, bucket)

const cli = cliCommand('checkpoint/cli.ts')
/** o3ckpt, killed after 60 s: a verify that hashes /dev/zero never ends by itself. */
function o3ckpt(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [...cli.execArgv, cli.file, ...args],
      { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...serverEnv(info) }, timeout: 60_000 },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr }),
    )
  })
}

// The data directory, a secret beside it, and things inside it that are not regular files.
const scratch = tempDir(t)
const data = path.join(scratch, 'data')
mkdirSync(data)
const good = Buffer.from('the training data\n')
writeFileSync(path.join(data, 'a.bin'), good)
const secret = Buffer.from(`not for the auditor ${process.pid}\n`)
writeFileSync(path.join(scratch, 'secret.txt'), secret)
symlinkSync('/dev/zero', path.join(data, 'zero'))
symlinkSync(path.join(scratch, 'secret.txt'), path.join(data, 'link'))
execFileSync('mkfifo', [path.join(data, 'fifo')])
const goodCid = (await digestContent(good)).cid
const secretCid = (await digestContent(secret)).cid

/** A run with one checkpoint whose record names `lineage`, signed by `signer` (or not). */
async function runWith(t: Test, name: string, lineage: DataLineage, signer: typeof OWNER | null): Promise<string> {
  const client = openClient(t, info, `${bucket}/${name}`)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), signer })
  await writer.save(syntheticState([4096]), { step: 1, epoch: 0, model: 'm', dataLineage: lineage })
  return `o3://${bucket}/${name}`
}

const files = (p: string): DataLineage => ({ files: [{ path: p, cid: goodCid, size: good.length }], verified: false })

t.test('a recorded path outside the data directory is refused, and nothing outside is read', async (t) => {
  for (const [name, p] of [
    ['dotdot', '../secret.txt'],
    ['absolute', path.join(scratch, 'secret.txt')],
    ['inner-dotdot', 'sub/../../secret.txt'],
  ]) {
    const run = await runWith(t, name, files(p), null)
    const v = await o3ckpt('verify', run, 'latest', '--data', data)
    t.equal(v.code, 65, `${name}: integrity exit: ${v.stderr}`)
    t.match(v.stdout + v.stderr, `data lineage path ${JSON.stringify(p)} is not a relative path below the data directory`, `${name}: says why`)
    t.notMatch(v.stdout + v.stderr, secretCid, `${name}: the secret's CID is not printed`)
  }
  // A manifest path is a path too.
  const run = await runWith(t, 'manifest-dotdot', { manifest: { path: '../secret.txt', cid: secretCid }, verified: true }, null)
  const v = await o3ckpt('verify', run, 'latest', '--data', data)
  t.equal(v.code, 65)
  t.match(v.stdout + v.stderr, 'data lineage path "../secret.txt" is not a relative path')
})

t.test('only regular files inside the data directory are read: not a symlink out, a device or a FIFO', async (t) => {
  for (const [name, why] of [
    ['link', /link: cannot be read \(it leads outside/],
    ['zero', /zero: cannot be read \(it leads outside/],
    ['fifo', /fifo: cannot be read \(not a regular file\)/],
  ] as const) {
    const run = await runWith(t, `special-${name}`, files(name), null)
    const v = await o3ckpt('verify', run, 'latest', '--data', data)
    t.equal(v.code, 65, `${name}: ends with the integrity exit (null: killed after 60 s): ${v.stderr}`)
    t.match(v.stdout, why, name)
    t.notMatch(v.stdout, secretCid)
  }
  const fine = await o3ckpt('verify', await runWith(t, 'regular', files('a.bin'), null), 'latest', '--data', data)
  t.equal(fine.code, 0, fine.stderr)
  t.match(fine.stdout, /^OK {4}step-0000000001 {2}data at .* is the data it was trained on/m)
})

t.test('verify --data reads the records under the same trust policy as the rest of verify', async (t) => {
  // The owner signed step 1, a second key step 2; naming that key accepts step 2 for all of verify.
  const client = openClient(t, info, `${bucket}/two-signers`)
  await (
    await CheckpointWriter.open(client, { localDir: tempDir(t), signer: OWNER })
  ).save(syntheticState([4096]), {
    step: 1,
    epoch: 0,
    model: 'm',
    dataLineage: files('a.bin'),
  })
  await (
    await CheckpointWriter.open(client, { localDir: tempDir(t), signer: ATTACKER })
  ).save(syntheticState([4096]), {
    step: 2,
    epoch: 0,
    model: 'm',
    dataLineage: files('a.bin'),
  })
  const run = `o3://${bucket}/two-signers`
  const named = await o3ckpt('verify', run, 'step-0000000002', '--data', data, '--trust-signer', ATTACKER.address)
  t.equal(named.code, 0, `the named signer counts for the data check too: ${named.stderr}`)
  t.match(named.stdout, /^OK {4}step-0000000002 {2}data at .* is the data it was trained on/m)
  const firstUse = await o3ckpt('verify', run, 'step-0000000002', '--data', data)
  t.equal(firstUse.code, 65, 'without it, the run signer (the owner) is required')
  t.notMatch(firstUse.stdout, /^OK .*data at/m)
})

t.test('a dataset manifest larger than one may be, in a directory or in O3, is refused before it is read: a FAIL line, exit 65', async (t) => {
  const size = MAX_DATASET_MANIFEST_BYTES + 1
  const dir = tempDir(t)
  // Sparse: a byte over the cap costs no disk.
  writeFileSync(path.join(dir, 'big.json'), '')
  truncateSync(path.join(dir, 'big.json'), size)
  // The same size in O3: 64 MiB parts of zeros, then the byte over.
  const remote = openClient(t, info, `${bucket}/oversized-data`)
  const id = await remote.createMultipartUpload('big.json')
  const zeros = Buffer.alloc(64 << 20)
  const parts = []
  for (let n = 1; n * zeros.length <= MAX_DATASET_MANIFEST_BYTES; n++) parts.push(await remote.uploadPart('big.json', id, n, zeros))
  parts.push(await remote.uploadPart('big.json', id, parts.length + 1, Buffer.alloc(size - parts.length * zeros.length)))
  await remote.completeMultipartUpload('big.json', id, parts)

  const run = await runWith(t, 'manifest-oversized', { manifest: { path: 'big.json', cid: goodCid }, verified: true }, null)
  for (const location of [dir, `o3://${bucket}/oversized-data`]) {
    const v = await o3ckpt('verify', run, 'latest', '--data', location)
    t.equal(v.code, 65, `${location}: ${v.stderr}`)
    t.match(v.stdout, `big.json: cannot be read (${size} bytes, more than the ${MAX_DATASET_MANIFEST_BYTES} a dataset manifest may have)`, location)
  }
})
