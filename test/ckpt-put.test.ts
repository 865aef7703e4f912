/**
 * `o3ckpt put` against the real S3 server, with checkpoints written by Debian's python3-torch: a
 * torch.save file, a safetensors file and a model directory with nested folders, each put,
 * listed, verified and fetched back byte-identical; the directory CID against the hand-written
 * reference builder; tampering; signed puts and the trust policy. (ckpt-put-guards.test.ts: steps,
 * bad input, the interrupted put.)
 */
import { createReadStream, existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { signerFromHex } from '../lib/content/signer.js'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { CheckpointStore, directoryFileKey, recordKey, type ManifestEntry } from '../checkpoint/index.js'
import { createBucket, useS3Server } from './support/s3-server.js'
import { keys, readAll } from './support/objects.js'
import { referenceCid, referenceDirectoryCid } from './support/reference-dag.js'
import { openClient, tempDir } from './fixtures/ckpt.js'
import { o3ckptOn, pytorchCheckpoints, tree } from './fixtures/ckpt-put.js'

const KEY_A = 'ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80'
const KEY_B = '59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d'
const ADDRESS_A = signerFromHex(KEY_A, 'a').address
const ADDRESS_B = signerFromHex(KEY_B, 'b').address

const info = await useS3Server(t)
const bucket = `ckpt-put-${process.pid}`
await createBucket(info, bucket)
const o3ckpt = o3ckptOn(info)
const fixtures = await pytorchCheckpoints(t)

function runOf(name: string): { run: string; client: ReturnType<typeof openClient>; store: CheckpointStore } {
  const client = openClient(t, info, `${bucket}/runs/${name}`)
  return { run: `o3://${bucket}/runs/${name}`, client, store: new CheckpointStore(client) }
}

t.test('a torch.save file and a safetensors file: put, listed, verified, fetched back byte-identical', async (t) => {
  const { run, store } = runOf('files')
  const pt = path.join(fixtures, 'model.pt')
  const st = path.join(fixtures, 'model.safetensors')

  const first = await o3ckpt(['--json', 'put', pt, run, '--epoch', '3', '--meta', 'framework=pytorch', '--meta', 'model=mlp'])
  t.equal(first.code, 0, first.stderr)
  const entry = JSON.parse(first.stdout) as ManifestEntry & { location: string }
  t.match(entry, { name: 'step-0000000001', step: 1, epoch: 3, kind: 'file', path: 'model.pt', size: statSync(pt).size })
  t.equal(entry.cid, await referenceCid(createReadStream(pt) as AsyncIterable<Buffer>), 'the CID kubo would print for the file')
  t.equal(entry.location, `${run}/checkpoints/step-0000000001/model.pt`)

  const second = await o3ckpt(['put', st, run])
  t.equal(second.code, 0, second.stderr)
  t.match(second.stdout, /^step-0000000002 {2}baf/, "the step defaults to the run's last + 1")

  const ls = await o3ckpt(['ls', run])
  t.equal(ls.code, 0, ls.stderr)
  const lines = ls.stdout.trimEnd().split('\n')
  t.equal(lines.length, 2)
  t.match(lines[0], /^ {2}step-0000000001 +step 1 +epoch 3 .* unsigned .* model\.pt$/)
  t.match(lines[1], /^\* step-0000000002 .* model\.safetensors$/)

  const v = await o3ckpt(['verify', run])
  t.equal(v.code, 0, v.stderr)
  t.match(v.stdout, /^OK {4}step-0000000001 /m)
  t.match(v.stdout, /^OK {4}step-0000000002 /m)

  const out = tempDir(t)
  const g1 = await o3ckpt(['get', run, 'step-0000000001', '-o', path.join(out, 'back.pt')])
  t.equal(g1.code, 0, g1.stderr)
  t.ok(readFileSync(path.join(out, 'back.pt')).equals(readFileSync(pt)), 'the torch.save file comes back byte-identical')
  // Without -o, get writes the file under its own name.
  const g2 = await o3ckpt(['get', run, 'latest'], {}, undefined, out)
  t.equal(g2.code, 0, g2.stderr)
  t.ok(readFileSync(path.join(out, 'model.safetensors')).equals(readFileSync(st)), 'the safetensors file comes back byte-identical')

  const shownPt = JSON.parse((await o3ckpt(['show', run, 'step-0000000001'])).stdout)
  t.same(shownPt.record.meta, { framework: 'pytorch', model: 'mlp' }, '--meta is recorded')
  const shownSt = await o3ckpt(['show', run, 'latest'])
  t.equal(shownSt.code, 0, shownSt.stderr)
  t.ok(
    (JSON.parse(shownSt.stdout) as { tensors: { name: string }[] }).tensors.some((x) => x.name.endsWith('.weight')),
    'show lists the tensors of a safetensors file',
  )
  t.equal((await store.readLatest())?.name, 'step-0000000002')
})

t.test('a model directory with nested folders: one entry, its CID the one kubo prints, every file verified on the way back', async (t) => {
  const { run, client } = runOf('dir')
  const dir = path.join(fixtures, 'hf-model')
  const put = await o3ckpt(['--json', 'put', dir, run, '--step', '100', '--epoch', '1', '--data', '/usr/share/datasets/fashion-mnist'])
  t.equal(put.code, 0, put.stderr)
  const entry = JSON.parse(put.stdout) as ManifestEntry
  t.match(entry, { name: 'step-0000000100', kind: 'directory', path: 'hf-model' })
  t.equal(entry.cid, await referenceDirectoryCid(dir), 'the UnixFS directory CID, as the independent builder computes it')

  const files = tree(dir)
  t.ok(files['.metadata'] && files['rng/deeper/state.pt'], 'the fixture has a hidden file and nested folders')
  const stored = await keys(client)
  for (const p of Object.keys(files)) {
    t.ok(stored.includes(directoryFileKey(entry, p)), `${p} is stored`)
    t.ok(stored.includes(`${directoryFileKey(entry, p)}.cid`), `${p} has its sidecar`)
    const sidecar = (await readAll(client, `${directoryFileKey(entry, p)}.cid`)).toString()
    t.equal(sidecar.split('\n')[0], await referenceCid([files[p]!]), `${p}: its sidecar's first line is its own CID`)
  }
  t.equal((await readAll(client, recordKey(entry))).toString().split('\n')[0], entry.cid, "the directory's sidecar starts with the directory CID")

  const ls = await o3ckpt(['ls', run])
  t.match(ls.stdout, /^\* step-0000000100 .* hf-model\/$/m)
  const v = await o3ckpt(['verify', run, 'latest', '--data', '/usr/share/datasets/fashion-mnist'])
  t.equal(v.code, 0, v.stderr)
  t.match(v.stdout, new RegExp(`^OK {4}step-0000000100 {2}${entry.cid}`, 'm'))
  t.match(v.stdout, /^OK {4}step-0000000100 {2}data at \/usr\/share\/datasets\/fashion-mnist is the data it was trained on \(4 files\)/m)

  const out = path.join(tempDir(t), 'back')
  const g = await o3ckpt(['get', run, 'latest', '-o', out])
  t.equal(g.code, 0, g.stderr)
  const back = tree(out)
  t.same(Object.keys(back).sort(), Object.keys(files).sort(), 'the same files')
  for (const p of Object.keys(files)) t.ok(back[p]!.equals(files[p]!), `${p} byte-identical`)
  t.equal(await referenceDirectoryCid(out), entry.cid, 'the fetched directory hashes to the entry CID again')
  const again = await o3ckpt(['get', run, 'latest', '-o', out])
  t.equal(again.code, ExitCode.usage, 'an existing directory is not overwritten')
  t.match(again.stderr, /exists; remove it or name another/)

  const shown = JSON.parse((await o3ckpt(['show', run, 'latest'])).stdout)
  t.equal(shown.record.files.length, Object.keys(files).length, 'show lists every file')
  t.equal(shown.data.files.length, 4, 'the data lineage names the four idx files')
})

t.test('a tampered file inside a directory entry: verify and get fail (65), no directory appears', async (t) => {
  const { run, client } = runOf('tamper')
  const dir = path.join(fixtures, 'hf-model')
  const put = await o3ckpt(['--json', 'put', dir, run])
  t.equal(put.code, 0, put.stderr)
  const entry = JSON.parse(put.stdout) as ManifestEntry
  const key = directoryFileKey(entry, 'tokenizer/vocab.txt')
  const bytes = await readAll(client, key)
  bytes[100]! ^= 0x01
  await client.put(key, bytes)

  const v = await o3ckpt(['verify', run])
  t.equal(v.code, ExitCode.integrity, v.stderr)
  t.match(v.stdout, /^FAIL {2}step-0000000001 .*tokenizer\/vocab\.txt.*does not match/m)
  const out = tempDir(t)
  const g = await o3ckpt(['get', run, 'latest', '-o', path.join(out, 'model')])
  t.equal(g.code, ExitCode.integrity)
  t.equal(g.stderr.trim().split('\n').length, 1, 'one line')
  t.same(readdirSync(out), [], 'neither the directory nor a partial one is left')
  bytes[100]! ^= 0x01
  await client.put(key, bytes)

  // A file's sidecar that disagrees with the record, and a record whose path would leave the directory.
  const sidecarKey = `${directoryFileKey(entry, 'config.json')}.cid`
  const sidecar = (await readAll(client, sidecarKey)).toString()
  await client.put(sidecarKey, sidecar.replace(/"size":\d+/, '"size":1'))
  const s = await o3ckpt(['verify', run])
  t.equal(s.code, ExitCode.integrity)
  t.match(s.stdout, /^FAIL {2}step-0000000001 .*config\.json\.cid: file sidecar disagrees with the checkpoint's record \(size 1 vs 59\)/m)
  await client.put(sidecarKey, sidecar)
  t.equal((await o3ckpt(['verify', run])).code, 0, 'restored, it verifies')
  const record = (await readAll(client, recordKey(entry))).toString()
  await client.put(recordKey(entry), record.replace('"path":"config.json"', '"path":"../escape.json"'))
  const e = await o3ckpt(['get', run, 'latest', '-o', path.join(out, 'model')])
  t.equal(e.code, ExitCode.integrity)
  t.match(e.stderr, /file 1 of the record has an invalid path \("\.\.\/escape\.json"\)/)
  t.same(readdirSync(out), [], 'nothing written')
  t.notOk(existsSync(path.join(path.dirname(out), 'escape.json')))
})

t.test('signed puts: the signer is recorded; another signer is refused before anything is uploaded, and by readers', async (t) => {
  const { run, client } = runOf('signed')
  const a = await o3ckpt(['put', path.join(fixtures, 'hf-model'), run], { AKAVE_PRIVATE_KEY: KEY_A })
  t.equal(a.code, 0, a.stderr)
  t.match(a.stdout, new RegExp(`signed by ${ADDRESS_A}`))
  const before = await keys(client)

  const b = await o3ckpt(['put', path.join(fixtures, 'model.pt'), run], { AKAVE_PRIVATE_KEY: KEY_B })
  t.equal(b.code, ExitCode.integrity, b.stderr)
  t.match(b.stderr, new RegExp(`this put: signed by ${ADDRESS_B}, but this run's signer .* is ${ADDRESS_A}`))
  const unsigned = await o3ckpt(['put', path.join(fixtures, 'model.pt'), run])
  t.equal(unsigned.code, ExitCode.integrity)
  t.match(unsigned.stderr, /this put: unsigned, but this run's signer/)
  t.same(await keys(client), before, 'neither uploaded anything')

  const named = await o3ckpt(['put', path.join(fixtures, 'model.pt'), run, '--trust-signer', ADDRESS_B], { AKAVE_PRIVATE_KEY: KEY_B })
  t.equal(named.code, 0, named.stderr)
  const v = await o3ckpt(['verify', run])
  t.equal(v.code, ExitCode.integrity, 'readers trust neither of two signers on first use')
  t.match(v.stdout, /^FAIL {2}step-0000000001 .*signed by 2 different keys/m)
  t.match(v.stdout, /^FAIL {2}step-0000000002 .*signed by 2 different keys/m)
  const va = await o3ckpt(['verify', run, '--trust-signer', ADDRESS_A])
  t.match(va.stdout, new RegExp(`^OK {4}step-0000000001 .*signed by ${ADDRESS_A}`, 'm'))
  t.match(va.stdout, new RegExp(`^FAIL {2}step-0000000002 .*signed by ${ADDRESS_B}, but the trusted signer`, 'm'))
  const vb = await o3ckpt(['verify', run, 'latest', '--trust-signer', ADDRESS_B])
  t.equal(vb.code, 0, vb.stderr)
  const out = path.join(tempDir(t), 'model')
  t.equal(
    (await o3ckpt(['get', run, 'step-0000000001', '-o', out, '--trust-signer', ADDRESS_A])).code,
    0,
    'the directory signed by the named signer is fetched',
  )
  t.ok(existsSync(path.join(out, 'rng', 'deeper', 'state.pt')))
})
