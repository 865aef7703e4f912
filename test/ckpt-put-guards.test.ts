/**
 * `o3ckpt put` against the real S3 server: steps and `--replace`, bad input refused before
 * anything is uploaded, and a put interrupted by a second SIGINT.
 */
import { execFile, type ChildProcess } from 'node:child_process'
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { randomFillSync } from 'node:crypto'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { CheckpointStore, type ManifestEntry } from '../checkpoint/index.js'
import { createBucket, useS3Server } from './support/s3-server.js'
import { startFaultProxy } from './support/fault-proxy.js'
import { keys, uploads } from './support/objects.js'
import { openClient, tempDir } from './fixtures/ckpt.js'
import { o3ckptOn, pytorchCheckpoints } from './fixtures/ckpt-put.js'

const MiB = 1 << 20

const info = await useS3Server(t)
const bucket = `ckpt-put-guards-${process.pid}`
await createBucket(info, bucket)
const o3ckpt = o3ckptOn(info)
const fixtures = await pytorchCheckpoints(t)

function runOf(name: string): { run: string; client: ReturnType<typeof openClient>; store: CheckpointStore } {
  const client = openClient(t, info, `${bucket}/runs/${name}`)
  return { run: `o3://${bucket}/runs/${name}`, client, store: new CheckpointStore(client) }
}

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
