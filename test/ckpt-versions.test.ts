// Checkpoints in a bucket that keeps versions, as O3's do: pruning (o3train --keep-last, o3ckpt
// prune) deletes every version of what it drops, so that the storage is freed; restores read the
// versions that `latest` and the manifest name, so that a writer moving them meanwhile never
// hands over a mix of two checkpoints.
import { execFile, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { cliCommand } from '../lib/paths.js'
import { O3Client, O3IntegrityError, parseLocation, resolveConfig, type ObjectInfo, type ObjectVersion, type RangeOptions } from '../lib/o3/index.js'
import { CheckpointStore, CheckpointWriter, dataKey, sidecarKey, type LoadedCheckpoint, type StateTensor } from '../checkpoint/index.js'
import { createBucket, createVersionedBucket, serverEnv, useS3Server, type S3ServerInfo } from './support/s3-server.js'
import { mountEnv } from './support/o3mount.js'
import { writeFashionSubset } from './support/fashion-subset.js'
import { openClient, syntheticState, tempDir } from './fixtures/ckpt.js'
import { readAll } from './support/objects.js'

const MiB = 1 << 20
const info = await useS3Server(t)
const VERSIONED = `ckpt-ver-${process.pid}`
const PLAIN = `ckpt-plain-${process.pid}`
await createVersionedBucket(info, VERSIONED)
await createBucket(info, PLAIN)

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const meta = (step: number) => ({ step, epoch: 0, model: 'test-model', config: {}, dataPosition: { batch: step } })
const name = (step: number) => `step-${String(step).padStart(10, '0')}`

async function versionsOf(client: O3Client, prefix = ''): Promise<ObjectVersion[]> {
  const out: ObjectVersion[] = []
  for await (const v of client.listVersions(prefix)) out.push(v)
  return out
}

/** `key` per version (delete markers marked), sorted: what a bucket holds, to compare. */
const held = (vs: ObjectVersion[]) => vs.map((v) => `${v.key}${v.deleteMarker ? ' (delete marker)' : ''}`).sort()
const checkpointObjects = (steps: number[]) => steps.flatMap((s) => [dataKey(name(s)), sidecarKey(name(s))]).sort()

function o3ckpt(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--no-warnings', '--import', 'tsx', 'checkpoint/cli.ts', ...args],
      { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...serverEnv(info) } },
      (err, stdout, stderr) => resolve({ code: err ? (err.code as number) : 0, stdout, stderr }),
    )
  })
}

/** The manifest's, latest's and every checkpoint's version pins agree with what the bucket holds now. */
async function checkPins(t: Test, client: O3Client, steps: number[]): Promise<void> {
  const store = new CheckpointStore(client)
  const { latest, manifest } = await store.snapshot()
  t.same(
    manifest.checkpoints.map((e) => e.name),
    steps.map(name),
    'the manifest that latest names lists the kept checkpoints',
  )
  const current = await client.head('manifest.json')
  t.equal(latest?.manifestVersion?.versionId, current.versionId, "latest names the manifest's current version")
  const listed = await versionsOf(client, 'checkpoints/')
  for (const e of manifest.checkpoints) {
    t.same(
      [e.dataVersion?.versionId],
      listed.filter((v) => v.key === dataKey(e.name)).map((v) => v.versionId),
      `${e.name}: its data's one version is the one recorded`,
    )
    t.same(
      [e.sidecarVersion?.versionId],
      listed.filter((v) => v.key === sidecarKey(e.name)).map((v) => v.versionId),
      `${e.name}: so is its sidecar's`,
    )
  }
  for (const key of ['manifest.json', 'latest']) {
    const n = (await versionsOf(client, key)).filter((v) => v.key === key).length
    t.ok(n <= 2, `${key} keeps its current and previous versions only (${n})`)
  }
}

t.test('--keep-last 2 on a versioned bucket: after 5 saves no version of the 3 pruned checkpoints is left', async (t) => {
  const client = openClient(t, info, `${VERSIONED}/keep`)
  // A save that crashed before its commit left data behind; the next writer's start-up deletes
  // it, which in a versioned bucket leaves that version and a delete marker under the key.
  await client.put(dataKey(name(10)), randomBytes(1000))
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null, keepLast: 2 })
  t.same(held(await versionsOf(client, 'checkpoints/')), [dataKey(name(10)), `${dataKey(name(10))} (delete marker)`], 'the leftover is deleted, not gone')
  const states: StateTensor[][] = []
  // 6 MiB + 4 bytes: two parts, so the data's version comes from a multipart completion.
  for (let i = 1; i <= 5; i++) {
    states.push(syntheticState([6 * MiB + 4]))
    await writer.save(states.at(-1)!, meta(i * 10))
  }
  t.same(held(await versionsOf(client, 'checkpoints/')), checkpointObjects([40, 50]), 'one version of each kept object; of the pruned ones none')
  await checkPins(t, client, [40, 50])
  const loaded = await new CheckpointStore(client).load('latest')
  t.equal(sha(loaded.tensors[0]!.data), sha(states[4]![0]!.data), 'latest restores, bit for bit')
})

t.test('o3ckpt prune: --dry-run changes nothing; then every version of the dropped checkpoints goes, the rest verifies', async (t) => {
  const location = `${VERSIONED}/runs/prune`
  const client = openClient(t, info, location)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null })
  for (let i = 1; i <= 5; i++) await writer.save(syntheticState([64 * 1024]), meta(i * 10))
  // A second version of step 10's sidecar (rewritten by hand, say): pruning must take it too.
  await client.put(sidecarKey(name(10)), await readAll(client, sidecarKey(name(10))))
  const before = held(await versionsOf(client))

  const dry = await o3ckpt('prune', `o3://${location}`, '--keep-last', '2', '--keep-every', '2', '--dry-run')
  t.equal(dry.code, 0, dry.stderr)
  t.match(dry.stdout, /would prune\s+step-0000000010\s+3 object versions/)
  t.match(dry.stdout, /would prune\s+step-0000000030\s+2 object versions/)
  t.match(dry.stdout, /: 3 kept, 2 would prune/)
  t.same(held(await versionsOf(client)), before, 'a dry run deletes nothing')

  const r = await o3ckpt('prune', `o3://${location}`, '--keep-last', '2', '--keep-every', '2')
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /pruned\s+step-0000000010\s+3 object versions/)
  t.match(r.stdout, /: 3 kept, 2 pruned/)
  // Kept: the newest two (seq 4, 5) and every second save (seq 2, 4).
  t.same(held(await versionsOf(client, 'checkpoints/')), checkpointObjects([20, 40, 50]), 'ListObjectVersions: no version of step 10 or 30')
  await checkPins(t, client, [20, 40, 50])
  t.equal((await new CheckpointStore(client).readLatest())?.name, name(50), 'latest still names the newest')
  const verify = await o3ckpt('verify', `o3://${location}`)
  t.equal(verify.code, 0, verify.stderr)
  t.equal(verify.stdout.match(/^OK /gm)?.length, 3, 'the kept checkpoints verify')

  const again = await o3ckpt('prune', `o3://${location}`, '--keep-last', '2', '--keep-every', '2')
  t.match(again.stdout, /: 3 kept, 0 pruned/, 'pruning again drops nothing')
  for (const bad of [['--keep-last', '0'], []]) {
    const b = await o3ckpt('prune', `o3://${location}`, ...bad)
    t.equal(b.code, 64, `bad or missing --keep-last (${bad.join(' ') || 'none'}): exit 64`)
    t.equal(b.stderr.trim().split('\n').length, 1, 'one line')
  }
})

t.test('o3ckpt put checkpoints on a versioned bucket: --replace and pruning leave no version of what they drop; a put file reads pinned', async (t) => {
  const location = `${VERSIONED}/runs/put`
  const client = openClient(t, info, location)
  const writer = await CheckpointWriter.open(client, { signer: null })
  const file = (p: string, data: Buffer) => ({ path: p, size: data.length, content: () => [data] })
  const dir = (tag: string) => [file('config.json', Buffer.from(`{"tag":"${tag}"}`)), file('weights/part-0.bin', randomBytes(70_000))]
  await writer.put({ kind: 'directory', path: 'model', files: dir('a'), step: 1 })
  const replaced = await writer.put({ kind: 'directory', path: 'model', files: dir('b'), step: 1, replace: true })
  await writer.put({ kind: 'file', path: 'opt.pt', files: [file('opt.pt', randomBytes(5000))], step: 2 })
  const last = await writer.put({ kind: 'file', path: 'opt.pt', files: [file('opt.pt', randomBytes(5000))], step: 3 })
  t.equal(replaced.entry.rev, 1)
  t.ok(replaced.entry.sidecarVersion && !replaced.entry.dataVersion, "a directory's entry pins its record; its files are named by the record")
  t.ok(last.entry.dataVersion && last.entry.sidecarVersion, "a file's entry pins its data and its record")
  t.same(
    held(await versionsOf(client, 'checkpoints/')),
    [
      'checkpoints/step-0000000001.r1.cid',
      'checkpoints/step-0000000001.r1/config.json',
      'checkpoints/step-0000000001.r1/config.json.cid',
      'checkpoints/step-0000000001.r1/weights/part-0.bin',
      'checkpoints/step-0000000001.r1/weights/part-0.bin.cid',
      'checkpoints/step-0000000002/opt.pt',
      'checkpoints/step-0000000002/opt.pt.cid',
      'checkpoints/step-0000000003/opt.pt',
      'checkpoints/step-0000000003/opt.pt.cid',
    ],
    'ListObjectVersions: nothing of the replaced directory is left, not even a noncurrent version',
  )
  const r = await o3ckpt('prune', `o3://${location}`, '--keep-last', '1')
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /pruned\s+step-0000000001\s+5 object versions/)
  t.same(
    held(await versionsOf(client, 'checkpoints/')),
    ['checkpoints/step-0000000003/opt.pt', 'checkpoints/step-0000000003/opt.pt.cid'],
    'only the newest is left',
  )
  const store = new CheckpointStore(client)
  const entry = await store.resolve('latest')
  t.same(entry.dataVersion, last.entry.dataVersion)
  t.equal((await store.verify(entry)).ok, true, 'and it verifies, read at its pinned version')
})

t.test('o3ckpt prune on an unversioned bucket deletes as before and leaves latest as it was', async (t) => {
  const location = `${PLAIN}/runs/prune`
  const client = openClient(t, info, location)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null })
  for (let i = 1; i <= 3; i++) await writer.save(syntheticState([64 * 1024]), meta(i * 10))
  const latest = await readAll(client, 'latest')
  t.notMatch(latest.toString(), /manifestVersion/, 'no version is recorded where the bucket keeps none')
  const r = await o3ckpt('prune', `o3://${location}`, '--keep-last', '1')
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /: 1 kept, 2 pruned/)
  t.same(held(await versionsOf(client)), [...checkpointObjects([30]), 'latest', 'manifest.json'].sort(), 'only the kept checkpoint is left')
  t.same(await readAll(client, 'latest'), latest, 'latest is not rewritten')
})

/**
 * An O3 client that lets a test act at a given point of a restore: `hook` runs once, before the
 * first request that `when` picks (or, for `mid`, after the first chunk of that GET arrived).
 */
class ObservedClient extends O3Client {
  private hook: { when: (op: 'get' | 'head', key: string) => boolean; mid: boolean; run: () => Promise<void> } | undefined
  fired = false

  at(when: (op: 'get' | 'head', key: string) => boolean, run: () => Promise<void>, mid = false): void {
    this.hook = { when, run, mid }
  }

  private async maybe(op: 'get' | 'head', key: string, mid: boolean): Promise<void> {
    const h = this.hook
    if (!h || h.mid !== mid || !h.when(op, key)) return
    this.hook = undefined
    await h.run()
    this.fired = true
  }

  override async head(key: string, signal?: AbortSignal, versionId?: string): Promise<ObjectInfo> {
    await this.maybe('head', key, false)
    return super.head(key, signal, versionId)
  }

  override iterateRange(key: string, options: RangeOptions = {}): AsyncGenerator<Buffer> {
    const inner = (start: () => AsyncGenerator<Buffer>) =>
      async function* (this: ObservedClient) {
        await this.maybe('get', key, false)
        let first = true
        for await (const c of start()) {
          yield c
          if (first) await this.maybe('get', key, true)
          first = false
        }
      }.call(this)
    return inner(() => super.iterateRange(key, options))
  }
}

const POINTS: { what: string; when: (op: 'get' | 'head', key: string) => boolean; mid?: boolean }[] = [
  { what: 'after latest, before the manifest', when: (op, key) => op === 'get' && key === 'manifest.json' },
  { what: 'after the manifest, before the sidecar', when: (op, key) => op === 'get' && key === sidecarKey(name(20)) },
  { what: "after the sidecar, before the data's HEAD", when: (op, key) => op === 'head' && key === dataKey(name(20)) },
  { what: "after the data's HEAD, before its GET", when: (op, key) => op === 'get' && key === dataKey(name(20)) },
  { what: 'in the middle of the GET of the data', when: (op, key) => op === 'get' && key === dataKey(name(20)), mid: true },
]

for (const [bucket, versioned] of [
  [VERSIONED, true],
  [PLAIN, false],
] as const) {
  t.test(
    `a second writer commits over latest during a restore (${versioned ? 'versioned' : 'unversioned'} bucket): never a mix of two checkpoints`,
    async (t) => {
      for (const [i, point] of POINTS.entries()) {
        const location = `${bucket}/race-${i}`
        const client = new ObservedClient(parseLocation(location), { config: resolveConfig({ endpoint: info.endpoint, region: info.region }, serverEnv(info)) })
        t.teardown(() => client.close())
        const opts = { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null }
        // Two writers on one run, as when a job is started again while the first still runs: the
        // second opens after step 10, then both save step 20, with other bytes.
        const a = await CheckpointWriter.open(client, opts)
        const a1 = syntheticState([3 * MiB])
        await a.save(a1, meta(10))
        const b = await CheckpointWriter.open(openClient(t, info, location), opts)
        const a2 = syntheticState([3 * MiB])
        const savedA2 = await a.save(a2, meta(20))
        const b2 = syntheticState([3 * MiB])
        const known = new Map([
          [sha(a1[0]!.data), 'A step 10'],
          [sha(a2[0]!.data), 'A step 20'],
          [sha(b2[0]!.data), 'B step 20'],
        ])
        client.at(point.when, async () => void (await b.save(b2, meta(20))), point.mid)

        let loaded: LoadedCheckpoint | undefined
        let error: unknown
        try {
          loaded = await new CheckpointStore(client).resume()
        } catch (err) {
          error = err
        }
        t.ok(client.fired, `${point.what}: the second writer committed at that point`)
        if (versioned) {
          t.equal(error, undefined, `${point.what}: the restore succeeds`)
          t.equal(loaded?.entry.cid, savedA2.entry.cid, `${point.what}: with the checkpoint latest named when it began`)
          t.equal(loaded && sha(loaded.tensors[0]!.data), sha(a2[0]!.data), `${point.what}: its bytes, bit for bit`)
        } else if (error) {
          t.type(error, O3IntegrityError, `${point.what}: fails with the integrity error (${(error as Error).message.slice(0, 120)})`)
        }
        if (loaded) {
          // Whatever it returned is one checkpoint whole: its bytes, their digest, the record and the entry agree.
          const got = known.get(sha(loaded.tensors[0]!.data))
          t.ok(got, `${point.what}: the tensors are those of one save (${got})`)
          t.equal(sha(loaded.file), loaded.entry.sha256, `${point.what}: the file is the one the entry names`)
          t.equal(loaded.record.sha256, loaded.entry.sha256, `${point.what}: and the sidecar agrees`)
          t.equal(loaded.meta.step, got?.endsWith('step 10') ? 10 : 20, `${point.what}: and its metadata`)
        }
      }
    },
  )
}

t.test('o3ckpt verify of latest reads the versions it resolved, while a writer replaces them', async (t) => {
  const location = `${VERSIONED}/race-verify`
  const client = new ObservedClient(parseLocation(location), { config: resolveConfig({ endpoint: info.endpoint, region: info.region }, serverEnv(info)) })
  t.teardown(() => client.close())
  const opts = { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null }
  const a = await CheckpointWriter.open(client, opts)
  await a.save(syntheticState([MiB]), meta(10))
  const b = await CheckpointWriter.open(openClient(t, info, location), opts)
  const savedA = await a.save(syntheticState([MiB]), meta(20))
  const store = new CheckpointStore(client)
  const entry = await store.resolve('latest')
  client.at(
    (op, key) => op === 'head' && key === dataKey(name(20)),
    async () => void (await b.save(syntheticState([MiB]), meta(20))),
  )
  const r = await store.verify(entry)
  t.ok(client.fired)
  t.ok(r.ok, 'verified')
  t.equal(r.ok && r.digest.cid, savedA.entry.cid, 'the checkpoint it resolved, not the one written since')
})

t.test('o3train --keep-last 2 on a versioned bucket: 5 checkpoints, the 3 pruned leave no version behind', async (t) => {
  const scratch = mkdtempSync(path.join(tmpdir(), 'o3train-versions-'))
  t.teardown(() => rmSync(scratch, { recursive: true, force: true }))
  const data = path.join(scratch, 'fmnist')
  writeFashionSubset(data, 512, 128)
  const location = `${VERSIONED}/runs/train`
  const cli = cliCommand('trainer/cli.ts')
  const args = ['--data', data, '--dataset', 'fashion-mnist', '--model', 'mlp', '--batch', '64', '--epochs', '5', '--seed', '3']
  const run = spawn(process.execPath, [...cli.execArgv, cli.file, ...args, '--ckpt', `o3://${location}`, '--ckpt-every', 'epoch', '--keep-last', '2'], {
    cwd: scratch,
    env: mountEnv(info as S3ServerInfo),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => void (run.exitCode === null && run.kill('SIGKILL')))
  let stderr = ''
  run.stderr.on('data', (d: Buffer) => (stderr += d))
  const code = await new Promise<number | null>((resolve) => run.once('exit', resolve))
  if (code !== 0) t.comment(stderr.slice(-4000))
  t.equal(code, 0, 'o3train exits 0')
  t.equal(stderr.split('"checkpoint committed"').length - 1, 5, 'five checkpoints were committed')
  const client = openClient(t, info, location)
  const kept = (await new CheckpointStore(client).readManifest()).checkpoints.map((e) => e.step)
  t.equal(kept.length, 2)
  t.same(held(await versionsOf(client, 'checkpoints/')), checkpointObjects(kept), 'ListObjectVersions: only the last two, one version each')
  await checkPins(t, client, kept)
})
