/**
 * `o3ckpt put` against the real S3 server, with checkpoints written by Debian's python3-torch: a
 * torch.save file, a safetensors file and a model directory with nested folders, each put,
 * listed, verified and fetched back byte-identical; the directory CID against the hand-written
 * reference builder; tampering, bad input, an interrupted put and the trust policy.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { randomFillSync } from 'node:crypto'
import path from 'node:path'
import t from 'tap'
import { signerFromHex } from '../lib/content/signer.js'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { cliCommand, projectRoot } from '../lib/paths.js'
import { CheckpointStore, directoryFileKey, recordKey, type ManifestEntry } from '../checkpoint/index.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { startFaultProxy } from './support/fault-proxy.js'
import { keys, readAll, uploads } from './support/objects.js'
import { referenceCid, referenceDirectoryCid } from './support/reference-dag.js'
import { openClient, tempDir } from './fixtures/ckpt.js'

const MiB = 1 << 20
const KEY_A = 'ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80'
const KEY_B = '59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d'
const ADDRESS_A = signerFromHex(KEY_A, 'a').address
const ADDRESS_B = signerFromHex(KEY_B, 'b').address

const info = await useS3Server(t)
const bucket = `ckpt-put-${process.pid}`
await createBucket(info, bucket)

interface Outcome {
  code: number | null
  stdout: string
  stderr: string
}

function o3ckpt(args: string[], env: Record<string, string> = {}, started?: (child: ChildProcess, stderr: () => string) => void): Promise<Outcome> {
  const cli = cliCommand('checkpoint/cli.ts')
  const child = spawn(process.execPath, [...cli.execArgv, cli.file, ...args], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...serverEnv(info), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
  started?.(child, () => stderr)
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })))
}

/** The checkpoints Debian's python3-torch writes, made once for every test. */
const fixtures = tempDir(t)
await new Promise<void>((resolve, reject) =>
  execFile('/usr/bin/python3', [path.join(projectRoot(), 'test/fixtures/make_checkpoints.py'), fixtures], (err, _o, stderr) =>
    err ? reject(new Error(`make_checkpoints.py failed: ${stderr}`)) : resolve(),
  ),
)

/** Every file below `root` with its bytes, by `/`-separated path. */
function tree(root: string, rel = ''): Record<string, Buffer> {
  const out: Record<string, Buffer> = {}
  for (const name of readdirSync(path.join(root, rel))) {
    const p = rel === '' ? name : `${rel}/${name}`
    if (statSync(path.join(root, p)).isDirectory()) Object.assign(out, tree(root, p))
    else out[p] = readFileSync(path.join(root, p))
  }
  return out
}

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
  const g2 = await new Promise<Outcome>((resolve) => {
    const cli = cliCommand('checkpoint/cli.ts')
    execFile(
      process.execPath,
      [...cli.execArgv, cli.file, 'get', run, 'latest'],
      { cwd: out, env: { PATH: process.env.PATH, ...serverEnv(info) } },
      (err, stdout, stderr) => resolve({ code: err ? (err.code as number) : 0, stdout, stderr }),
    )
  })
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

t.test('steps: an existing one is refused, --replace replaces it and removes the old objects', async (t) => {
  const { run, client, store } = runOf('replace')
  const pt = path.join(fixtures, 'model.pt')
  t.equal((await o3ckpt(['put', pt, run, '--step', '5'])).code, 0)
  const before = await keys(client)
  const again = await o3ckpt(['put', path.join(fixtures, 'model.safetensors'), run, '--step', '5'])
  t.equal(again.code, ExitCode.usage)
  t.match(again.stderr, /step-0000000005 already exists; pass --replace/)
  t.same(await keys(client), before, 'nothing uploaded')

  const r = await o3ckpt(['--json', 'put', path.join(fixtures, 'hf-model'), run, '--step', '5', '--replace'])
  t.equal(r.code, 0, r.stderr)
  const entry = JSON.parse(r.stdout) as ManifestEntry
  t.match(entry, { name: 'step-0000000005', kind: 'directory', rev: 1 })
  const manifest = await store.readManifest()
  t.same(
    manifest.checkpoints.map((e) => [e.name, e.kind, e.rev]),
    [['step-0000000005', 'directory', 1]],
    'the manifest lists the new entry only',
  )
  t.equal((await store.readLatest())?.seq, entry.seq, 'latest names it')
  t.notOk(
    (await keys(client)).some((k) => k.startsWith('checkpoints/step-0000000005/')),
    "the replaced checkpoint's objects are gone",
  )
  t.equal((await o3ckpt(['verify', run])).code, 0)
})

t.test('bad input: one line, the usage or not-found status, nothing uploaded', async (t) => {
  const { run, client } = runOf('bad')
  const dir = tempDir(t)
  const make = (name: string, files: Record<string, string>) => {
    const root = path.join(dir, name)
    mkdirSync(root, { recursive: true })
    for (const [p, text] of Object.entries(files)) {
      mkdirSync(path.dirname(path.join(root, p)), { recursive: true })
      writeFileSync(path.join(root, p), text)
    }
    return root
  }
  const leaving = make('leaving', { 'a.bin': 'a' })
  symlinkSync(path.join(fixtures, 'model.pt'), path.join(leaving, 'link.pt'))
  const fifo = make('fifo', { 'a.bin': 'a' })
  await new Promise<void>((resolve, reject) => execFile('mkfifo', [path.join(fifo, 'pipe')], (err) => (err ? reject(err) : resolve())))
  const emptySub = make('empty-sub', { 'a.bin': 'a' })
  mkdirSync(path.join(emptySub, 'nothing'))
  const cases: [string, string[], number, RegExp][] = [
    ['a missing PATH', [path.join(dir, 'nope'), run], ExitCode.notFound, /does not exist/],
    ['an empty directory', [make('empty', {}), run], ExitCode.usage, /is an empty directory/],
    ['an empty subdirectory', [emptySub, run], ExitCode.usage, /nothing is an empty directory/],
    ['a symlink leaving the directory', [leaving, run], ExitCode.usage, /link\.pt is a symlink to .*, outside/],
    ['a fifo', [fifo, run], ExitCode.usage, /pipe is a fifo/],
    ['a fifo as PATH', [path.join(fifo, 'pipe'), run], ExitCode.usage, /is a fifo; give a regular file or a directory/],
    ['a name taken by sidecars', [make('cid-name', { 'weights.bin.cid': 'x' }), run], ExitCode.usage, /"weights\.bin\.cid" cannot be a key in O3/],
    ['a name with a newline', [make('newline', { 'bad\nname': 'x' }), run], ExitCode.usage, /cannot be a key in O3: it contains a control character/],
    ['a bad --meta', [path.join(fixtures, 'model.pt'), run, '--meta', 'novalue'], ExitCode.usage, /--meta takes key=value/],
    ['a bad --step', [path.join(fixtures, 'model.pt'), run, '--step', '-1'], ExitCode.usage, /--step takes a non-negative integer/],
    ['a run that is not o3://', [path.join(fixtures, 'model.pt'), `${bucket}/runs/bad`], ExitCode.usage, /must look like o3:\/\//],
  ]
  for (const [what, args, code, message] of cases) {
    const r = await o3ckpt(['put', ...args])
    t.equal(r.code, code, `${what}: exit ${code} (${r.stderr.trim()})`)
    t.match(r.stderr, message, what)
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`)
  }
  t.same(await keys(client), [], 'nothing was uploaded')
  t.same(await uploads(client), [], 'no multipart upload was started')
})

t.test('a second SIGINT after the first part is stored aborts the put: exit 130, latest on the previous entry, no upload open', async (t) => {
  const { run, client, store } = runOf('interrupted')
  t.equal((await o3ckpt(['put', path.join(fixtures, 'model.safetensors'), run])).code, 0)
  const committed = await keys(client)
  const big = path.join(tempDir(t), 'big.bin')
  writeFileSync(big, randomFillSync(Buffer.allocUnsafe(40 * MiB)))
  // The requests go through a proxy that can hold them. Its latency (with its 1 MiB buffer per
  // connection: at most 2 MiB/s each) has the 8 MiB last part stored seconds before the two of
  // 16 MiB; once one is stored, the proxy holds the rest until the abort is under way.
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  proxy.setLatency(500)
  let child: ChildProcess | undefined
  const seen = (stderr: () => string, pattern: RegExp) =>
    new Promise<void>((resolve, reject) => {
      const look = () => {
        if (pattern.test(stderr())) return resolve()
        if (child?.exitCode !== null) return reject(new Error(`the put ended before ${pattern}: ${stderr()}`))
        child.stderr!.once('data', look)
      }
      look()
    })
  const done = o3ckpt(['put', big, run], { O3_ENDPOINT: proxy.endpoint, O3_LOG_LEVEL: 'debug' }, (c, stderr) => {
    child = c
    void (async () => {
      await seen(stderr, /"msg":"part stored"/)
      proxy.stall(10 * 60_000)
      c.kill('SIGINT')
      await seen(stderr, /send the signal again to abort it/)
      c.kill('SIGINT')
      await seen(stderr, /aborting the put in flight/)
      proxy.clear()
    })().catch(() => c.kill('SIGKILL'))
  })
  t.teardown(() => child?.kill('SIGKILL'))
  const r = await done
  t.equal(r.code, ExitCode.interrupted, r.stderr)
  t.equal((await store.readLatest())?.name, 'step-0000000001', 'latest stays on the previous checkpoint')
  t.same(await uploads(client), [], 'the multipart upload was aborted')
  t.same(await keys(client), committed, 'nothing of the aborted put is left')
  t.equal((await o3ckpt(['verify', run])).code, 0, 'the run verifies')
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
  t.equal(v.code, ExitCode.integrity, 'readers trust the run’s first signer')
  t.match(v.stdout, new RegExp(`^OK {4}step-0000000001 .*signed by ${ADDRESS_A}`, 'm'))
  t.match(v.stdout, new RegExp(`^FAIL {2}step-0000000002 .*signed by ${ADDRESS_B}, but this run's signer`, 'm'))
  const vb = await o3ckpt(['verify', run, 'latest', '--trust-signer', ADDRESS_B])
  t.equal(vb.code, 0, vb.stderr)
  const out = path.join(tempDir(t), 'model')
  t.equal((await o3ckpt(['get', run, 'step-0000000001', '-o', out])).code, 0, "the directory signed by the run's signer is fetched")
  t.ok(existsSync(path.join(out, 'rng', 'deeper', 'state.pt')))
})
